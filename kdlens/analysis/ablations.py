"""Ablations as DataFrames: one run's examples summarised, runs joined back to their results, gains.

A sweep (:mod:`kdlens.sweep`) expands a spec into a runs table, one row per run with its axes;
here :func:`run_metrics` summarises one run's examples (and tokens) table per task,
:func:`join_results` joins those summaries back onto the runs, :func:`add_gain` adds each run's
gain over its SFT baseline, and :func:`axis_curve` and :func:`teacher_gap` are the summaries the
plots draw. Nothing here knows how a run was configured or trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kdlens._schema import KD_ONLY_KEYS, RUNS_COLUMNS
from kdlens.analysis._validate import require_columns, require_nonempty

__all__ = [
    "RESULTS_METRICS",
    "add_gain",
    "axis_curve",
    "join_results",
    "run_metrics",
    "seed_summary",
    "teacher_gap",
]

#: metric columns of :func:`run_metrics` (and of a sweep's results.parquet)
RESULTS_METRICS: dict[str, str] = {
    "accuracy": "share of examples the run answers correctly (greedy)",
    "teacher_accuracy": "share of the same examples its teacher answers correctly",
    "agreement": "share of examples where the run's extracted answer equals the teacher's",
    "bleu": "mean sentence BLEU (sacrebleu / 100, in [0, 1]) of the run's rationale against the teacher's",
    "token_forward_kl": "mean per-token KL(teacher || run) on the teacher's outputs (nats)",
    "token_reverse_kl": "mean per-token KL(run || teacher) on the teacher's outputs (nats)",
    "token_top1_agreement": "share of teacher-output tokens where both models' top-1 token is the same",
}


def run_metrics(
    examples: pd.DataFrame,
    *,
    model_id: str,
    teacher: str | None = "teacher",
    tokens: pd.DataFrame | None = None,
    fidelity: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per-task summary of one model: accuracy, agreement and fidelity with its teacher.

    Parameters
    ----------
    examples : DataFrame
        Examples table (``kdlens._schema.EXAMPLES_COLUMNS``) holding ``model_id`` and, when given,
        the ``teacher``'s greedy outputs on the same examples.
    model_id : str
        The model summarised.
    teacher : str or None
        The teacher's ``model_id``; None skips the teacher-relative columns (NaN).
    tokens : DataFrame, optional
        Tokens table of ``model_id`` against ``teacher`` (token KL and top-1 agreement).
    fidelity : bool
        Compute the sentence BLEU of the model's rationales against the teacher's.
    n_boot, seed, level
        Percentile bootstrap over examples (within task for ``task="all"``).

    Returns
    -------
    DataFrame
        One row per task plus ``task="all"``: ``task, n,`` then for each metric of
        :data:`RESULTS_METRICS` the value and, for ``accuracy`` and ``agreement``, ``_ci_low`` and
        ``_ci_high``. Rates and BLEU are in [0, 1]; KL in nats.
    """
    from kdlens.analysis.rationale_fidelity import fidelity as fidelity_table
    from kdlens.analysis.rationale_fidelity import summarize_fidelity
    from kdlens.analysis.teacher_agreement import agreement

    require_columns(examples, ["model_id", "task", "example_id", "sample", "correct"], what="examples")
    mine = examples.loc[(examples["model_id"] == model_id) & (examples["sample"] == 0)]
    if mine.empty:
        known = sorted(map(str, examples["model_id"].unique()))
        raise ValueError(f"model_id {model_id!r} has no greedy rows in the examples; known: {known}")
    if teacher is None or teacher not in set(examples["model_id"]):
        if teacher is not None:
            raise ValueError(f"teacher {teacher!r} is not a model_id of the examples; "
                             f"known: {sorted(map(str, examples['model_id'].unique()))} (pass teacher=None to skip)")
        return _accuracy_only(mine, n_boot=n_boot, seed=seed, level=level)

    both = examples.loc[examples["model_id"].isin([model_id, teacher])]
    agree = agreement(both, teacher=teacher, tokens=tokens, students=[model_id], n_boot=n_boot, seed=seed, level=level)
    wide = {}
    for metric, column in (("student_accuracy", "accuracy"), ("teacher_accuracy", "teacher_accuracy"),
                           ("answer_agreement", "agreement"), ("token_forward_kl", "token_forward_kl"),
                           ("token_reverse_kl", "token_reverse_kl"), ("token_top1_agreement", "token_top1_agreement")):
        part = agree.loc[agree["metric"] == metric].set_index("task")
        wide[column] = part["value"]
        if column in ("accuracy", "agreement"):
            wide[f"{column}_ci_low"] = part["ci_low"]
            wide[f"{column}_ci_high"] = part["ci_high"]
        if column == "accuracy":
            wide["n"] = part["n"]
    out = pd.DataFrame(wide)
    if fidelity:
        fid = fidelity_table(both, teacher=teacher, references=("teacher",), metrics=("bleu",))
        summary = summarize_fidelity(fid, n_boot=0)
        bleu = summary.loc[(summary["metric"] == "bleu") & (summary["model_id"] == model_id)].set_index("task")["value"]
        out["bleu"] = bleu
    return _finish_metrics(out)


def _accuracy_only(mine: pd.DataFrame, *, n_boot: int, seed: int, level: float) -> pd.DataFrame:
    from kdlens.analysis._bootstrap import ratio_bootstrap_ci

    rows = {}
    scopes = [(task, part) for task, part in mine.groupby("task", sort=True)] + [("all", mine)]
    for task, part in scopes:
        correct = part["correct"].to_numpy(bool).astype(float)
        strata = part["task"].to_numpy() if task == "all" else None
        value, low, high = ratio_bootstrap_ci(correct, np.ones(len(correct)), strata=strata, n_boot=n_boot,
                                              seed=seed, level=level)
        rows[task] = {"accuracy": value, "accuracy_ci_low": low, "accuracy_ci_high": high, "n": len(correct)}
    return _finish_metrics(pd.DataFrame.from_dict(rows, orient="index"))


def _finish_metrics(out: pd.DataFrame) -> pd.DataFrame:
    out.index.name = "task"
    columns = ["n"]
    for metric in RESULTS_METRICS:
        columns.append(metric)
        if metric in ("accuracy", "agreement"):
            columns += [f"{metric}_ci_low", f"{metric}_ci_high"]
    out = out.reindex(columns=columns)
    out["n"] = out["n"].astype("int64")
    for col in columns[1:]:
        out[col] = out[col].astype("float64")
    # tasks in name order, the pooled row last
    order = sorted(t for t in out.index if t != "all") + (["all"] if "all" in out.index else [])
    return out.loc[order].reset_index()


def join_results(runs: pd.DataFrame, metrics: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Join per-run summaries back onto the runs table (one row per run and task).

    Parameters
    ----------
    runs : DataFrame
        A sweep's runs table (:func:`kdlens.sweep.expand_sweep`: ``run_id`` and axis columns).
    metrics : mapping run_id -> DataFrame
        :func:`run_metrics` of each finished run; runs without an entry are left out.

    Returns
    -------
    DataFrame
        The run's columns (``overrides`` and ``run_dir`` included), then ``task, n`` and the metric
        columns; sorted like ``runs``, tasks in name order with ``"all"`` last.
    """
    require_columns(runs, ["run_id"], what="runs")
    unknown = sorted(set(metrics) - set(runs["run_id"]))
    if unknown:
        raise ValueError(f"metrics for run(s) {unknown} that are not in the runs table")
    frames = [m.assign(run_id=rid) for rid, m in metrics.items()]
    if not frames:
        raise ValueError("no finished run to join: run the sweep first")
    table = pd.concat(frames, ignore_index=True)
    joined = runs.merge(table, on="run_id", how="inner", validate="one_to_many")
    return joined.reset_index(drop=True)


def add_gain(results: pd.DataFrame, *, baseline: str = "sft", match: Sequence[str] | None = None,
             metrics: Sequence[str] = ("accuracy", "agreement", "bleu")) -> pd.DataFrame:
    """Add each run's gain over its baseline run (same student, seed and task; method = ``baseline``).

    Parameters
    ----------
    results : DataFrame
        Output of :func:`join_results`; needs ``method`` and ``task`` columns.
    baseline : str
        Method of the reference runs.
    match : list of str, optional
        Columns a run and its baseline share. Default: every axis column that is not in
        :data:`kdlens._schema.KD_ONLY_KEYS` (e.g. ``student``, ``seed``), plus ``task``.
    metrics : list of str
        Metrics whose gain is added as ``<metric>_gain`` (with ``baseline_<metric>``).

    Returns
    -------
    DataFrame
        ``results`` plus ``baseline_run_id``, ``baseline_<metric>`` and ``<metric>_gain`` columns;
        missing for baseline rows and for runs without a baseline.
    """
    require_columns(results, ["method", "task", "run_id", *metrics], what="results")
    if match is None:
        match = match_columns(results)
    keys = [*match, "task"]
    require_columns(results, keys, what="results")
    base = results.loc[results["method"] == baseline, [*keys, "run_id", *metrics]]
    if base.empty:
        raise ValueError(f"no run has method={baseline!r}: add 'baseline: {baseline}' to the sweep spec")
    if base.duplicated(keys).any():
        raise ValueError(f"several {baseline} runs share {keys}; add the distinguishing axis to match=")
    base = base.rename(columns={"run_id": "baseline_run_id", **{m: f"baseline_{m}" for m in metrics}})
    out = results.merge(base, on=keys, how="left", validate="many_to_one")
    is_base = (out["method"] == baseline).to_numpy()
    out["baseline_run_id"] = out["baseline_run_id"].where(~is_base)
    for metric in metrics:
        out[f"baseline_{metric}"] = out[f"baseline_{metric}"].astype("float64").where(~is_base)
        out[f"{metric}_gain"] = out[metric].astype("float64") - out[f"baseline_{metric}"]
    return out


def match_columns(results: pd.DataFrame) -> list[str]:
    """Columns a run shares with its baseline run: every axis column not in :data:`KD_ONLY_KEYS`
    (e.g. ``student``, ``seed``), without ``method``, ``task`` and the metric columns."""
    skip = set(KD_ONLY_KEYS) | set(RUNS_COLUMNS) | {"method", "task", "n"} | set(metric_columns())
    skip |= {c for c in results.columns if c.endswith("_gain") or c.startswith("baseline_")}
    return [c for c in results.columns if c not in skip]


def metric_columns() -> list[str]:
    """Every metric column of :func:`run_metrics` (with the ``_ci_low``/``_ci_high`` bounds)."""
    cols = []
    for metric in RESULTS_METRICS:
        cols.append(metric)
        if metric in ("accuracy", "agreement"):
            cols += [f"{metric}_ci_low", f"{metric}_ci_high"]
    return cols


def seed_summary(results: pd.DataFrame, *, metric: str = "accuracy", by: Sequence[str] | None = None,
                 seed: str = "seed", task: str = "all", level: float = 0.95) -> pd.DataFrame:
    """One row per setting: the metric's mean over seeds with its t interval, the table a paper reports.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (one row per run and task).
    metric : str
        Metric column (e.g. ``"accuracy"``, ``"agreement"``, ``"bleu"``).
    by : list of str, optional
        Columns that define a setting (default: every axis column of the runs table other than
        ``seed``, i.e. the columns between ``status`` and ``task``).
    seed : str
        The column that replicates a setting.
    task : str
        Which task's rows (``"all"`` pools the tasks).
    level : float
        Confidence level of the interval.

    Returns
    -------
    DataFrame
        ``by`` columns, then ``mean, ci_low, ci_high, sd, n_seeds``: the mean over the setting's
        seeds and the t interval ``mean +- t_{n-1} sd / sqrt(n)`` (symmetric, so a table may print
        it as ``mean ± half-width``); NaN interval with one seed. The unit is the seed (run).
    """
    from scipy import stats as sps

    require_columns(results, [metric, "task"], what="results")
    part = results.loc[results["task"] == task]
    if by is None:
        columns = list(results.columns)
        start = columns.index("status") + 1 if "status" in columns else 0
        stop = columns.index("task") if "task" in columns else len(columns)
        by = [c for c in columns[start:stop] if c not in (seed, "teacher_id")]
    by = [c for c in by if c in part.columns]
    require_nonempty(part, what=f"results with task={task!r}")
    rows = []
    keyed = part.assign(**{c: part[c].map(lambda v: "-" if v is None or v != v else v) for c in by})
    for key, group in keyed.groupby(by, sort=False, dropna=False) if by else [((), part)]:
        values = group[metric].to_numpy(float)
        values = values[np.isfinite(values)]
        n = len(values)
        mean = float(values.mean()) if n else math.nan
        sd = float(values.std(ddof=1)) if n > 1 else math.nan
        half = float(sps.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
        keys = key if isinstance(key, tuple) else (key,)
        rows.append((*keys, mean, mean - half, mean + half, sd, n))
    out = pd.DataFrame(rows, columns=[*by, "mean", "ci_low", "ci_high", "sd", "n_seeds"])
    out["n_seeds"] = out["n_seeds"].astype("int64")
    out.attrs.update({"metric": metric, "task": task, "level": level, "unit": "seeds"})
    return out


def axis_curve(results: pd.DataFrame, axis: str, *, metric: str = "accuracy", hue: str | None = None,
               task: str = "all", level: float = 0.95) -> pd.DataFrame:
    """One point per axis value (and hue group): the metric with its confidence interval.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (:func:`join_results`).
    axis : str
        Column on the x axis, e.g. ``"sigma"`` or ``"temperature"``.
    metric : str
        Metric column; ``<metric>_ci_low``/``_ci_high`` are used when a point is one run.
    hue : str, optional
        Column separating curves (e.g. ``"student"``).
    task : str
        Which task's rows (``"all"`` pools the tasks).
    level : float
        Level of the t interval across runs when several runs (seeds) share a point.

    Returns
    -------
    DataFrame
        Columns ``[hue,] axis, value, ci_low, ci_high, n_runs``, sorted by hue then axis. One run
        per point: its own bootstrap CI (or NaN when the table has none); several: the mean over
        runs and a t interval across them.
    """
    from scipy import stats as sps

    cols = [axis, metric, "task"] + ([hue] if hue else [])
    require_columns(results, cols, what="results")
    part = results.loc[(results["task"] == task) & results[axis].notna()]
    if part.empty:
        raise ValueError(f"results have no rows with task={task!r} and a value of {axis!r}; "
                         f"tasks: {sorted(map(str, results['task'].unique()))}")
    rows = []
    groups = part.groupby([hue, axis] if hue else [axis], sort=True, dropna=False)
    for key, g in groups:
        keys = key if isinstance(key, tuple) else (key,)
        values = g[metric].to_numpy(float)
        values = values[np.isfinite(values)]
        if len(values) == 1:
            low = float(g[f"{metric}_ci_low"].iloc[0]) if f"{metric}_ci_low" in g else math.nan
            high = float(g[f"{metric}_ci_high"].iloc[0]) if f"{metric}_ci_high" in g else math.nan
            value = float(values[0])
        elif len(values) > 1:
            value = float(values.mean())
            half = sps.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
            low, high = value - half, value + half
        else:
            value = low = high = math.nan
        rows.append((*keys, value, low, high, len(values)))
    out = pd.DataFrame(rows, columns=[*([hue] if hue else []), axis, "value", "ci_low", "ci_high", "n_runs"])
    out.attrs.update({"metric": metric, "task": task, "axis": axis})
    return out


def teacher_gap(examples: pd.DataFrame, *, teacher: str) -> pd.DataFrame:
    """Student-minus-teacher accuracy per (model, task), MPDistil's headline comparison.

    Parameters
    ----------
    examples : DataFrame
        Examples table with the teacher's and the students' greedy outputs on the same examples.
    teacher : str
        The teacher's ``model_id``.

    Returns
    -------
    DataFrame
        Columns ``model_id, task, student_accuracy, teacher_accuracy, delta, n`` (``delta`` in
        [-1, 1]; positive = the student beats its teacher), one row per student and task plus
        ``task="all"``; only examples both answered are compared.
    """
    from kdlens.analysis.teacher_agreement import answer_pairs

    pairs = answer_pairs(examples, teacher=teacher)
    require_nonempty(pairs, what="paired examples")
    rows = []
    for model, mp in pairs.groupby("model_id", sort=True):
        scopes = [(task, tp) for task, tp in mp.groupby("task", sort=True)] + [("all", mp)]
        for task, part in scopes:
            s, t = part["student_correct"].mean(), part["teacher_correct"].mean()
            rows.append((model, task, float(s), float(t), float(s - t), len(part)))
    out = pd.DataFrame(rows, columns=["model_id", "task", "student_accuracy", "teacher_accuracy", "delta", "n"])
    out["n"] = out["n"].astype("int64")
    return out
