"""Column names of every tidy table kdlens writes or reads, in one place.

Each tuple is the exact column order of the table. Analyses import these names instead of
spelling strings, so a renamed column fails loudly in one spot.
"""

from __future__ import annotations

__all__ = [
    "EXAMPLES_COLUMNS",
    "TOKENS_COLUMNS",
    "CHOICES_COLUMNS",
    "CHOICES_DTYPES",
    "HARNESS_COLUMNS",
    "STATS_COLUMNS",
    "AGREEMENT_COLUMNS",
    "FIDELITY_COLUMNS",
    "PAPER_COLUMNS",
    "ROBUSTNESS_COLUMNS",
    "VERDICT_COLUMNS",
    "EQUIVALENCE_COLUMNS",
    "MODEL_COLUMNS",
    "POWER_COLUMNS",
    "RUNS_COLUMNS",
    "KD_ONLY_KEYS",
    "EXAMPLES_DTYPES",
    "TOKENS_DTYPES",
]

#: One row per (model_id, task, example_id, sample): written by ``kdlens.eval.evaluate``.
EXAMPLES_COLUMNS: tuple[str, ...] = (
    "model_id",         # str: the name given to the model (teacher, student, sft, ...)
    "task",             # str: task spec, e.g. "chain_sum" or "SVAMP"
    "split",            # str: "train" | "test"
    "example_id",       # str: stable id of the record within the task
    "sample",           # int: 0 for greedy; 0..n-1 for sampling
    "prompt",           # str: the user prompt (before the chat template)
    "output",           # str: the generated text (the rationale)
    "pred_answer",      # str | None: extracted final answer
    "gold_answer",      # str: gold final answer
    "correct",          # bool
    "n_output_tokens",  # int
    "finish_reason",    # str: "eos" | "length"
    "mean_logprob",     # float: mean token log-probability of the output under the model
    "gold_nll",         # float: mean NLL of the gold rationale (NaN when the task has none)
    "gold_rationale",   # str | None
)

#: pandas dtype of each column of :data:`EXAMPLES_COLUMNS` (checked when a table is read)
EXAMPLES_DTYPES: dict[str, str] = {
    "model_id": "string", "task": "string", "split": "string", "example_id": "string",
    "sample": "int64", "prompt": "string", "output": "string", "pred_answer": "string",
    "gold_answer": "string", "correct": "bool", "n_output_tokens": "int64",
    "finish_reason": "string", "mean_logprob": "float64", "gold_nll": "float64",
    "gold_rationale": "string",
}

#: One row per response token of a teacher-forced sequence: ``kdlens.eval.collect_tokens``.
TOKENS_COLUMNS: tuple[str, ...] = (
    "model_id",            # str: the student being compared
    "teacher_id",          # str
    "task",                # str
    "example_id",          # str
    "position",            # int: index of the token within the response
    "token_id",            # int: the actual token
    "teacher_top1",        # int
    "student_top1",        # int
    "top1_agree",          # bool
    "forward_kl",          # float: KL(p_teacher || q_student)
    "reverse_kl",          # float: KL(q_student || p_teacher)
    "teacher_entropy",     # float (nats)
    "student_entropy",     # float (nats)
    "teacher_token_prob",  # float: p_teacher(token)
    "student_token_prob",  # float: q_student(token)
)

#: pandas dtype of each column of :data:`TOKENS_COLUMNS` (checked when a table is read)
TOKENS_DTYPES: dict[str, str] = {
    "model_id": "string", "teacher_id": "string", "task": "string", "example_id": "string",
    "position": "int64", "token_id": "int64", "teacher_top1": "int64", "student_top1": "int64",
    "top1_agree": "bool", "forward_kl": "float64", "reverse_kl": "float64",
    "teacher_entropy": "float64", "student_entropy": "float64", "teacher_token_prob": "float64",
    "student_token_prob": "float64",
}

#: One row per (task, example_id, choice) of a multiple-choice record: ``kdlens.eval.score_choices``.
CHOICES_COLUMNS: tuple[str, ...] = (
    "task",        # str
    "example_id",  # str
    "choice",      # int: index of the choice
    "label",       # str: its label ("A", ARC's "1", ...)
    "text",        # str: the string acc_norm divides by (the choice; the context of Winogrande-style records)
    "loglik",      # float: summed log-probability of the continuation tokens given the context
    "n_tokens",    # int: continuation tokens scored
    "n_chars",     # int: len(text)
    "n_bytes",     # int: UTF-8 bytes of text
    "is_greedy",   # bool: every continuation token was the model's argmax
    "is_gold",     # bool
)

#: pandas dtype of each column of :data:`CHOICES_COLUMNS`
CHOICES_DTYPES: dict[str, str] = {
    "task": "string", "example_id": "string", "choice": "int64", "label": "string", "text": "string",
    "loglik": "float64", "n_tokens": "int64", "n_chars": "int64", "n_bytes": "int64", "is_greedy": "bool",
    "is_gold": "bool",
}

#: Accuracy with its standard error as lm-evaluation-harness reports it: ``kdlens.analysis.harness_accuracy``
#: (grouping columns such as model_id and task come first).
HARNESS_COLUMNS: tuple[str, ...] = ("metric", "value", "stderr", "n")

#: Statistical test results (pingouin style). Tests add a leading "test" column and may add
#: grouping columns (e.g. "task", "method") before these.
STATS_COLUMNS: tuple[str, ...] = (
    "statistic", "dof", "p_val", "p_adj", "ci_low", "ci_high", "effect_size", "n", "alternative",
)

#: Agreement summaries: one row per (model_id, task, metric).
AGREEMENT_COLUMNS: tuple[str, ...] = (
    "model_id", "task", "metric", "value", "ci_low", "ci_high", "n",
)

#: Per-example fidelity between a student's and a reference rationale.
FIDELITY_COLUMNS: tuple[str, ...] = (
    "model_id", "reference", "task", "example_id", "bleu", "rouge_l", "embedding_cosine",
)

#: Output of ``kdlens.analysis.paper.reproduce`` (``p_adj``: Holm within each hypothesis).
PAPER_COLUMNS: tuple[str, ...] = ("hypothesis", "test", "task", "method", "statistic", "p_val", "p_adj", "n")

#: A three-way verdict on one stated hypothesis (DESIGN rule 15). Functions put the columns naming
#: what was compared (e.g. "family", "comparison", "variable") before these.
VERDICT_COLUMNS: tuple[str, ...] = (
    "hypothesis",  # str: the claim tested, in words, with its smallest effect of interest
    "test",        # str: how the interval was computed (e.g. "mean_t", "spearman", "partial_spearman")
    "unit",        # str: what n counts (seeds, baselines, runs, rows of the paper, ...)
    "estimate",    # float: the effect (mean difference in the data's units, or a correlation)
    "ci_low",      # float: two-sided CI at `level`; the verdict is read from it
    "ci_high",     # float
    "level",       # float: confidence level of the CI actually used (Bonferroni's when simultaneous=True)
    "expect",      # str: "greater" | "less" | "two-sided" | "equivalent" (the hypothesis' direction)
    "margin",      # float: smallest effect of interest (SESOI), in the estimate's units
    "statistic",   # float: the statistic of the CI and of p_val: t (means), atanh(r) / se (correlations)
    "dof",         # float: its t reference's degrees of freedom (NaN: the normal)
    "p_val",       # float: p of the test that matches `expect`: one-sided, two-sided, or TOST for "equivalent"
    "p_alpha",     # float: the level p_val is compared with: (1 - level) / 2, or 1 - level for "two-sided";
                   #        p_val < p_alpha exactly when the CI excludes 0 in `expect`'s direction
    "p_adj",       # float: p_val adjusted across the rows of one call (the family)
    "n",           # int: number of units
    "mde",         # float: minimal detectable effect (80% power) from the observed unit variance
    "verdict",     # str: "supported" | "contradicted" | "inconclusive"
    "sentence",    # str: hypothesis, verdict, estimate, CI, n and unit, and why, in one sentence
    "note",        # str: why a row could not be tested (e.g. "one seed"), or a caveat
)

#: The robustness table of ``kdlens.analysis.paper.robustness``: the authors' unit ("as published", shown
#: without a verdict) next to a defensible one ("robust"); omnibus tests (no interval) have an empty
#: ``verdict`` too. ``p_adj`` corrects within each (claim, analysis).
ROBUSTNESS_COLUMNS: tuple[str, ...] = ("claim", "analysis", "task", "method", *VERDICT_COLUMNS)

#: Equivalence tests (two one-sided tests, TOST): ``kdlens.analysis.tost`` and ``tost_correlation``.
EQUIVALENCE_COLUMNS: tuple[str, ...] = (
    "estimate", "low_bound", "high_bound", "statistic_low", "p_low", "statistic_high", "p_high", "dof",
    "p_val", "p_adj", "ci_low", "ci_high", "n", "equivalent", "note",
)

#: Regression tables (``logistic``, ``gee``, ``mixed``): one row per model term. ``p_adj`` corrects
#: across the terms the user named (intercept and nuisance terms such as task effects get NaN); ``dof``
#: is the t reference's degrees of freedom (``mixed``: groups minus fixed effects), NaN for a Wald z.
MODEL_COLUMNS: tuple[str, ...] = (
    "model", "term", "estimate", "std_err", "statistic", "dof", "p_val", "p_adj", "ci_low", "ci_high",
    "effect_size", "n", "note",
)

#: ``kdlens.analysis.seeds_needed``: independent units (seeds, or (student, seed) pairs) for a given
#: effect, at the observed seed sd and at its upper confidence bound (``sd_upper``, ``seeds_upper``).
POWER_COLUMNS: tuple[str, ...] = (
    "effect", "sd", "sd_dof", "sd_upper", "n_groups", "level", "power", "seeds", "seeds_exact", "seeds_upper",
    "note",
)

#: One row per run of a sweep: the run id, its overrides, and where it lives.
RUNS_COLUMNS: tuple[str, ...] = ("run_id", "overrides", "run_dir", "status")

#: config keys (and run-table axis columns) that only matter when a teacher is distilled: an SFT run
#: refuses them, so SFT rows of a grid drop them (the baseline runs once per student and seed) and a
#: run is matched with its baseline on every other axis. ``alpha``/``beta`` are the loss-parameter
#: shorthands of ``loss=jsd beta=0.9``.
KD_ONLY_KEYS: tuple[str, ...] = (
    "sigma", "temperature", "loss", "loss_params", "alpha", "beta", "kd_weight", "feature_weight", "feature",
    "teacher_source", "top_k", "cache_dtype", "scale_by_temperature_squared", "teacher_aware",
)
