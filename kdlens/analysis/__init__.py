"""Explain what distillation did: agreement, fidelity, statistical tests, paper reproduction.

DataFrame in, DataFrame out: every function takes tidy tables (``kdlens._schema``) and returns
one. Nothing here loads a language model; the sentence encoder for embedding fidelity is loaded
lazily, only when that metric is asked for.
"""

from __future__ import annotations

from kdlens.analysis.ablations import (
    RESULTS_METRICS,
    add_gain,
    axis_curve,
    join_results,
    run_metrics,
    teacher_gap,
)
from kdlens.analysis.harness import bootstrap_stderr, harness_accuracy, mean_stderr
from kdlens.analysis.mode_fit import fit_to_bimodal
from kdlens.analysis.paper import improvements, reproduce
from kdlens.analysis.paradox import paradox_test
from kdlens.analysis.rationale_fidelity import (
    BLEU_SETTINGS,
    bleu_signature,
    embedding_cosine,
    fidelity,
    load_encoder,
    rouge_l,
    sentence_bleu,
    summarize_fidelity,
)
from kdlens.analysis.regression import MODEL_COLUMNS, fit_gee, fit_logistic, gee, logistic
from kdlens.analysis.stats import (
    PADJUST_METHODS,
    adjust_pvalues,
    anova,
    correlation,
    mcnemar,
    pair_models,
    paired_ttest,
    ttest,
    wilcoxon,
)
from kdlens.analysis.teacher_agreement import ANSWER_METRICS, TOKEN_METRICS, agreement, answer_pairs

__all__ = [
    "ANSWER_METRICS",
    "BLEU_SETTINGS",
    "MODEL_COLUMNS",
    "PADJUST_METHODS",
    "RESULTS_METRICS",
    "TOKEN_METRICS",
    "adjust_pvalues",
    "add_gain",
    "agreement",
    "anova",
    "answer_pairs",
    "axis_curve",
    "bleu_signature",
    "bootstrap_stderr",
    "correlation",
    "embedding_cosine",
    "fidelity",
    "fit_gee",
    "fit_logistic",
    "fit_to_bimodal",
    "gee",
    "harness_accuracy",
    "improvements",
    "join_results",
    "load_encoder",
    "logistic",
    "mcnemar",
    "mean_stderr",
    "pair_models",
    "paired_ttest",
    "paradox_test",
    "reproduce",
    "rouge_l",
    "run_metrics",
    "sentence_bleu",
    "summarize_fidelity",
    "teacher_gap",
    "ttest",
    "wilcoxon",
]
