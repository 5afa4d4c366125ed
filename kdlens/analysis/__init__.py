"""Explain what distillation did: agreement, fidelity, statistical tests, verdicts, paper reproduction.

DataFrame in, DataFrame out: every function takes tidy tables (``kdlens._schema``) and returns
one. The metrics and tests also take plain columns (lists, arrays, pandas Series) instead of a
table, e.g. ``agreement(student_answers=[...], teacher_answers=[...])`` or
``mcnemar(a=[...], b=[...])``; :mod:`kdlens.analysis.columns` holds the adapters. Nothing here
loads a language model; the sentence encoder for embedding fidelity is loaded lazily, only when that metric is asked for.

Every test that feeds a sentence returns a three-way ``verdict`` (``supported``, ``contradicted``,
``inconclusive``) read from its confidence interval against a stated smallest effect of interest,
with the unit of analysis and n in its ``sentence`` (:mod:`kdlens.analysis.verdicts`). Reports and
notebooks print those sentences; they never decide.
"""

from __future__ import annotations

from kdlens.analysis.ablations import (
    RESULTS_METRICS,
    add_gain,
    axis_curve,
    join_results,
    run_metrics,
    seed_summary,
    teacher_gap,
)
from kdlens.analysis.columns import as_frame, examples_from_columns, tokens_from_columns
from kdlens.analysis.grid_tests import (
    DEFAULT_CENTER,
    DEFAULT_EXPECT,
    ablation_tests,
    axis_contrasts,
    kd_vs_sft,
    teacher_gap_tests,
)
from kdlens.analysis.harness import bootstrap_stderr, harness_accuracy, mean_stderr
from kdlens.analysis.mode_fit import fit_to_bimodal
from kdlens.analysis.paper import improvements, reproduce, robustness
from kdlens.analysis.paradox import paradox_test
from kdlens.analysis.power import minimal_detectable_effect, seed_sd, seeds_needed
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
from kdlens.analysis.regression import (
    GEE_SMALL_SAMPLE_GROUPS,
    MODEL_COLUMNS,
    fit_gee,
    fit_logistic,
    fit_mixed,
    gee,
    logistic,
    mixed,
)
from kdlens.analysis.stats import (
    PADJUST_METHODS,
    adjust_pvalues,
    anova,
    correlation,
    fisher_se,
    friedman,
    mcnemar,
    pair_models,
    paired_ttest,
    partial_correlation,
    ttest,
    wilcoxon,
)
from kdlens.analysis.teacher_agreement import ANSWER_METRICS, TOKEN_METRICS, agreement, answer_pairs
from kdlens.analysis.verdicts import (
    ACCURACY_MARGIN,
    EXPECTATIONS,
    MIN_CORRELATION_N,
    RHO_MARGIN,
    VERDICTS,
    decide,
    tost,
    tost_correlation,
)

__all__ = [
    "ACCURACY_MARGIN",
    "ANSWER_METRICS",
    "BLEU_SETTINGS",
    "DEFAULT_CENTER",
    "DEFAULT_EXPECT",
    "EXPECTATIONS",
    "GEE_SMALL_SAMPLE_GROUPS",
    "MIN_CORRELATION_N",
    "MODEL_COLUMNS",
    "PADJUST_METHODS",
    "RESULTS_METRICS",
    "RHO_MARGIN",
    "TOKEN_METRICS",
    "VERDICTS",
    "ablation_tests",
    "add_gain",
    "adjust_pvalues",
    "agreement",
    "anova",
    "answer_pairs",
    "as_frame",
    "axis_contrasts",
    "axis_curve",
    "bleu_signature",
    "bootstrap_stderr",
    "correlation",
    "decide",
    "embedding_cosine",
    "examples_from_columns",
    "fidelity",
    "fisher_se",
    "fit_gee",
    "fit_logistic",
    "fit_mixed",
    "fit_to_bimodal",
    "friedman",
    "gee",
    "harness_accuracy",
    "improvements",
    "join_results",
    "kd_vs_sft",
    "load_encoder",
    "logistic",
    "mcnemar",
    "mean_stderr",
    "minimal_detectable_effect",
    "mixed",
    "pair_models",
    "paired_ttest",
    "paradox_test",
    "partial_correlation",
    "reproduce",
    "robustness",
    "rouge_l",
    "run_metrics",
    "seed_summary",
    "seed_sd",
    "seeds_needed",
    "sentence_bleu",
    "summarize_fidelity",
    "teacher_gap",
    "teacher_gap_tests",
    "tokens_from_columns",
    "tost",
    "tost_correlation",
    "ttest",
    "wilcoxon",
]
