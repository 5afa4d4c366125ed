"""Explain what distillation did: agreement, fidelity, statistical tests, paper reproduction.

DataFrame in, DataFrame out: every function takes tidy tables (``kdlens._schema``) and returns
one. The metrics and tests also take plain columns (lists, arrays, pandas Series) instead of a
table, e.g. ``agreement(student_answers=[...], teacher_answers=[...])`` or
``mcnemar(a=[...], b=[...])``; :mod:`kdlens.analysis.columns` holds the adapters. Nothing here loads a language model; the sentence encoder for embedding fidelity is loaded
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
from kdlens.analysis.columns import as_frame, examples_from_columns, tokens_from_columns
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
    "as_frame",
    "axis_curve",
    "bleu_signature",
    "correlation",
    "embedding_cosine",
    "examples_from_columns",
    "fidelity",
    "fit_gee",
    "fit_logistic",
    "fit_to_bimodal",
    "gee",
    "improvements",
    "join_results",
    "load_encoder",
    "logistic",
    "mcnemar",
    "pair_models",
    "paired_ttest",
    "paradox_test",
    "reproduce",
    "rouge_l",
    "run_metrics",
    "sentence_bleu",
    "summarize_fidelity",
    "teacher_gap",
    "tokens_from_columns",
    "ttest",
    "wilcoxon",
]
