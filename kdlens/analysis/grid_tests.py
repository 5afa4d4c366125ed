"""Verdicts on a sweep's results: KD against SFT, the σ and τ ablations, the teacher's task awareness.

The unit of analysis is explicit in every row:

* **KD against SFT** is paired within (student, seed, task): each KD run is compared with the SFT
  run of its own student and seed on the same task (:func:`kdlens.analysis.add_gain`). Several KD
  runs that share one baseline are not independent (the baseline's noise is in all their gains),
  so their gains are averaged within the baseline first: the unit is the baseline.
* **Ablation contrasts** compare a level of one axis with its reference level, paired by every
  other setting (seed, student, loss, ...): the unit is the seed (or the paired run).
* A one-at-a-time grid varies each axis alone from a center (σ = 0, τ = 1): a σ contrast uses only
  the runs at τ = 1 and a τ contrast only those at σ = 0, so a τ run never enters a σ test; a grid
  where only τ varies gives no σ test.
* **Student against teacher** (MPDistil's "a student can beat its teacher") is paired within each
  run: its accuracy minus its teacher's on the same items, one difference per run; the unit is
  the seed (run) of a setting, per task.
* A contrast needs two or more units to estimate their variance: with one seed the row says
  ``inconclusive`` and why, instead of testing.

The rows of one call are one family (:mod:`kdlens.analysis.verdicts`): ``p_adj`` corrects across
them, and ``simultaneous=True`` makes their intervals Bonferroni-simultaneous so that the verdicts
hold familywise; by default the intervals are per comparison and each sentence says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kdlens._schema import KD_ONLY_KEYS
from kdlens.analysis._validate import require_columns, require_nonempty
from kdlens.analysis.ablations import add_gain, match_columns
from kdlens.analysis.power import _config_columns
from kdlens.analysis.verdicts import (
    ACCURACY_MARGIN,
    finish_verdicts,
    mean_estimate,
    pending_row,
    require_expect_level,
)

__all__ = ["DEFAULT_CENTER", "DEFAULT_EXPECT", "ablation_tests", "axis_contrasts", "kd_vs_sft", "size_key",
           "teacher_gap_tests"]

#: center of a one-at-a-time σ/τ grid: the σ axis is read at τ = 1, the τ axis at σ = 0
DEFAULT_CENTER: dict[str, Any] = {"sigma": 0.0, "temperature": 1.0}
#: the lecture's claims (REFERENCE.md section 5, findings 4-6): noise lowers accuracy at every σ > 0;
#: τ = 2 raises it and τ = 5 lowers it (other τ: any change); a task-aware teacher raises it
DEFAULT_EXPECT: dict[str, Any] = {"sigma": "less", "temperature": {2.0: "greater", 5.0: "less"},
                                  "teacher_aware": "greater"}
#: reference level of an axis without a center value
_REFERENCE: dict[str, Any] = {"teacher_aware": False}
_SYMBOL = {"sigma": "σ", "temperature": "τ", "teacher_aware": "task-aware teacher"}
_VERB = {"greater": "raises", "less": "lowers", "two-sided": "changes", "equivalent": "does not change"}
_LEAD = ("family", "comparison")


def _describe(axis: str, value: Any) -> str:
    if axis == "teacher_aware":
        return "task-aware teacher" if bool(value) else "task-unaware teacher"
    text = f"{value:g}" if isinstance(value, float | int) and not isinstance(value, bool) else str(value)
    return f"{_SYMBOL.get(axis, axis)} = {text}"


def _kd_rows(results: pd.DataFrame, baseline: str, task: str) -> pd.DataFrame:
    require_columns(results, ["task"], what="results")
    part = results.loc[results["task"] == task]
    if part.empty:
        raise ValueError(f"results have no rows with task={task!r}; tasks: {sorted(map(str, results['task'].unique()))}")
    return part.loc[part["method"] != baseline] if "method" in part.columns else part


def _seed_note(frame: pd.DataFrame, what: str, unit: str) -> str:
    """Why a row with one unit is not tested: one seed in the sweep, or one ``unit`` left to compare."""
    seeds = frame["seed"].nunique() if "seed" in frame.columns else 1
    if seeds <= 1:
        return (f"one seed: {what} needs two or more seeds to estimate their variance "
                "(add e.g. 'replicate: {seed: [0, 1, 2]}' to the sweep spec: every cell then runs with each seed)")
    return f"one {unit}: {what} needs two or more to estimate their variance"


def _varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame.columns and frame[c].astype(str).nunique() > 1]


def _keys(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    if not columns:
        return pd.Series("all", index=frame.index)
    return frame[list(columns)].astype(str).agg("|".join, axis=1)


def kd_vs_sft(
    results: pd.DataFrame,
    *,
    metric: str = "accuracy",
    baseline: str = "sft",
    task: str = "all",
    by: str | Sequence[str] | None = None,
    margin: float = ACCURACY_MARGIN,
    level: float = 0.95,
    padjust: str = "holm",
    simultaneous: bool = False,
    scale: float = 100.0,
    units: str = " points",
) -> pd.DataFrame:
    """Does KD raise ``metric`` over SFT? Paired within (student, seed, task), clustered by baseline.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (one row per run and task) with ``method`` and ``metric``; gains
        ``<metric>_gain`` and ``baseline_run_id`` are used when present (a sweep's
        ``add_sweep_gains``: agreement gains only against the same teacher), else computed with
        :func:`kdlens.analysis.add_gain`.
    metric : str
        ``"accuracy"``, ``"agreement"``, ``"bleu"``, ...
    baseline : str
        Method of the baseline runs.
    task : str
        Task whose rows are compared (``"all"`` pools the tasks within each run).
    by : str or list of str, optional
        Separate verdicts per group (e.g. ``"student"``: finding 1 says small students gain most).
    margin : float
        Smallest effect of interest in the metric's units (default 2 points of a 0-1 rate).
    level : float
        Level of the two-sided t interval the verdicts are read from (familywise with
        ``simultaneous=True``).
    padjust : str
        Correction of ``p_val`` across the rows.
    simultaneous : bool
        Widen the intervals of the rows to Bonferroni-simultaneous ones (level ``1 - (1 - level) /
        m`` for ``m`` tested rows), so that the verdicts hold together at ``level``; default per
        comparison (:mod:`kdlens.analysis.verdicts`).
    scale, units
        How sentences show the metric (default: a 0-1 rate in points).

    Returns
    -------
    DataFrame
        ``family="kd_vs_sft"``, ``comparison``, then ``by`` columns and
        :data:`kdlens._schema.VERDICT_COLUMNS`: one row pooling every KD configuration, plus one row
        per KD configuration (the KD-only settings that vary: loss, σ, τ, method, ...) when there
        are several. ``expect="greater"``; ``estimate`` is the mean over baselines of the baselines'
        mean gain; ``n`` counts baselines; ``p_val`` is the one-sided t test's, compared with
        ``p_alpha = (1 - level) / 2``; ``mde`` is the minimal detectable gain at 80% power.

    Notes
    -----
    Gains sharing a baseline are averaged within it before the one-sample t interval over
    baselines (the cluster-mean analysis; e.g. Donner & Klar 2000, ch. 5); the verdict follows
    :func:`kdlens.analysis.decide`.
    """
    by_cols = [] if by is None else ([by] if isinstance(by, str) else list(by))
    rows = _kd_vs_sft_rows(results, metric=metric, baseline=baseline, task=task, by_cols=by_cols, margin=margin,
                           level=level, scale=scale, units=units)
    return finish_verdicts(rows, [*_LEAD, *by_cols], padjust, level=level, simultaneous=simultaneous)


def _kd_vs_sft_rows(results: pd.DataFrame, *, metric: str, baseline: str, task: str, by_cols: list[str],
                    margin: float, level: float, scale: float, units: str) -> list[dict]:
    require_expect_level("greater", margin, level)
    require_columns(results, ["method", "task", "run_id", metric], what="results")
    gain = f"{metric}_gain"
    table = results if {gain, "baseline_run_id"} <= set(results.columns) else add_gain(
        results, baseline=baseline, metrics=(metric,))
    kd = _kd_rows(table, baseline, task)
    require_nonempty(kd, what=f"KD runs (method != {baseline!r}) of task {task!r}")
    require_columns(kd, by_cols, what="results")
    pair = [c for c in match_columns(table) if c != "teacher_id" and c not in by_cols]
    pair_text = ", ".join([*_varying(table, pair), "task"])
    configs = _varying(kd, [*KD_ONLY_KEYS, "method"])
    groups = [((), kd)] if not by_cols else [
        (key if isinstance(key, tuple) else (key,), g) for key, g in kd.groupby(by_cols, sort=True, dropna=False)]
    rows = []
    for key, g in groups:
        # the sentence names what it is about: the group, and the KD configuration or the pooling
        group_text = (" for " + ", ".join(f"{c} = {k}" for c, k in zip(by_cols, key, strict=True))) if by_cols else ""
        scopes = [("all KD runs", f"KD{group_text}", g)]
        n_configs = g[configs].astype(str).drop_duplicates().shape[0] if len(configs) else 1
        if n_configs > 1:
            scopes[0] = ("all KD runs", f"KD{group_text} (averaged over its {n_configs} configurations of "
                         f"{', '.join(configs)})", g)
            for _, cg in g.groupby(_keys(g, configs), sort=True):
                first = cg.iloc[0]
                label = ", ".join(_describe(c, first[c]) if c in _SYMBOL else f"{c} = {first[c]}" for c in configs)
                scopes.append((label, f"KD at {label}{group_text}", cg))
        for label, subject, part in scopes:
            rows.append({"family": "kd_vs_sft", "comparison": f"{label} vs {baseline}",
                         **dict(zip(by_cols, key, strict=True)),
                         **_kd_row(part, gain, metric, baseline, task, pair_text, margin, scale, units, subject)})
    return rows


def _kd_row(part: pd.DataFrame, gain: str, metric: str, baseline: str, task: str, pair_text: str,
            margin: float, scale: float, units: str, subject: str) -> dict:
    with_gain = part.loc[part[gain].notna()]
    no_value = int(part[metric].isna().sum())
    no_base = int((part[gain].isna() & part[metric].notna()).sum())
    clusters = with_gain.groupby(with_gain["baseline_run_id"].astype(str), sort=True)[gain].mean()
    est, mean, sd, n = mean_estimate(clusters.to_numpy(float))
    notes = []
    if len(with_gain) > n > 0:
        notes.append(f"{len(with_gain)} KD runs share {n} baseline(s): gains averaged within each baseline")
    if no_value:
        notes.append(f"{no_value} KD run(s) with no {metric} value left out")
    if no_base:
        notes.append(f"{no_base} KD run(s) without a {baseline} baseline {metric} left out")
    if n == 0:
        notes = [f"no KD run has a {metric} gain over a {baseline} baseline (agreement and BLEU gains need the "
                 "baseline evaluated against the same teacher)"]
    elif n < 2:
        notes.insert(0, _seed_note(part, "a KD-vs-SFT verdict", "baseline with a gain"))
    elif est is None:
        notes.insert(0, "the gains do not vary across baselines: no interval")
    hypothesis = (f"{subject} raises {metric} over {baseline} (paired within {pair_text}; task {task}; "
                  f"SESOI {margin * scale:g}{units})")
    return pending_row(hypothesis=hypothesis, test="mean_t", unit="baselines", estimate=mean, est=est, sd=sd,
                       expect="greater", margin=margin, n=n, note="; ".join(notes), scale=scale, units=units,
                       label="mean gain")


def teacher_gap_tests(
    results: pd.DataFrame,
    *,
    by: str | Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    baseline: str = "sft",
    expect: str = "greater",
    margin: float = ACCURACY_MARGIN,
    level: float = 0.95,
    padjust: str = "holm",
    simultaneous: bool = False,
) -> pd.DataFrame:
    """Does the student beat its teacher? Student-minus-teacher accuracy per task, paired within run.

    MPDistil's headline table (Sengupta et al. 2024) reports student minus teacher per task; here
    each run gives one difference per task, its ``accuracy`` minus its teacher's
    ``teacher_accuracy`` on the same examples (a sweep's results: :func:`run_metrics`), and the
    runs of one setting (its seeds) are the units of a one-sample t interval.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (one row per run and task) with ``run_id, task, accuracy,
        teacher_accuracy``. A run listed twice (e.g. results of several specs concatenated) counts once.
    by : str or list of str, optional
        Columns that define a setting, tested separately (e.g. the ablation axes). Default: every
        configuration column that varies among the runs, other than ``seed``.
    tasks : list of str, optional
        Tasks tested (``"all"`` pools each run's tasks); default every task but ``"all"``.
    baseline : str
        Method of baseline runs (e.g. SFT), which are left out when the table has a ``method`` column.
    expect : {"greater", "less", "two-sided", "equivalent"}
        The hypothesis' direction; ``"greater"`` is MPDistil's claim (the student beats the teacher).
    margin, level, padjust, simultaneous
        As in :func:`kd_vs_sft`: every row of the call is one family.

    Returns
    -------
    DataFrame
        ``family="teacher_gap"``, ``comparison``, ``setting`` (the setting in words, ``"all runs"``
        without ``by``), ``task``, the ``by`` columns, then :data:`kdlens._schema.VERDICT_COLUMNS`,
        one row per setting and task. ``estimate`` is the mean student-minus-teacher difference
        (a 0-1 rate; positive = the student is better), ``n`` counts runs (seeds).

    Notes
    -----
    The interval covers what varies between the runs: when every run of a setting has the same
    teacher accuracy on a task (one teacher trained once, as in a sweep), it is the students'
    spread over seeds, not the teacher's training, and the row's note says so.
    """
    require_expect_level(expect, margin, level)
    require_columns(results, ["run_id", "task", "accuracy", "teacher_accuracy"], what="results")
    runs = results.drop_duplicates(["run_id", "task"])
    if "method" in runs.columns:
        runs = runs.loc[runs["method"] != baseline]
    require_nonempty(runs, what=f"runs (method != {baseline!r})")
    if by is None:
        by_cols = _varying(runs, _config_columns(runs, "seed"))
    else:
        by_cols = [by] if isinstance(by, str) else list(by)
        require_columns(runs, by_cols, what="results")
    known = sorted(map(str, runs["task"].unique()))
    wanted = [t for t in known if t != "all"] if tasks is None else list(tasks)
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ValueError(f"results have no rows with task {unknown}; tasks: {known}")
    unit = "seeds" if "seed" in runs.columns and runs["seed"].nunique() > 1 else "runs"
    groups = [((), runs)] if not by_cols else [
        (key if isinstance(key, tuple) else (key,), g)
        for key, g in runs.assign(**{c: runs[c].astype(object).where(runs[c].notna(), "-") for c in by_cols})
        .groupby(by_cols, sort=False)]
    rows = []
    for key, group in groups:
        setting = ", ".join(f"{c} = {_plain(k)}" for c, k in zip(by_cols, key, strict=True)) or "all runs"
        for task in wanted:
            part = group.loc[group["task"] == task]
            diffs = (part["accuracy"].astype(float) - part["teacher_accuracy"].astype(float)).to_numpy()
            est, mean, sd, n = mean_estimate(diffs)
            notes = []
            if n < 2:
                notes.append(_seed_note(part, "a student-vs-teacher verdict", "run"))
            elif est is None:
                notes.append("the differences do not vary across runs: no interval")
            teacher = part["teacher_accuracy"].dropna()
            if n >= 2 and teacher.nunique() == 1:
                notes.append("one teacher for every run: the interval covers the students' seeds, not the "
                             "teacher's training")
            where = f" at {setting}" if by_cols else ""
            hypothesis = (f"the student{where} {_VERB_TEACHER[expect]} its teacher on {task} (accuracy minus the "
                          f"teacher's on the same items, per run; SESOI {margin * 100:g} points)")
            rows.append({"family": "teacher_gap", "comparison": f"student vs teacher on {task}{where}",
                         "setting": setting, "task": task, **dict(zip(by_cols, key, strict=True)),
                         **pending_row(hypothesis=hypothesis, test="mean_t", unit=unit, estimate=mean, est=est, sd=sd,
                                       expect=expect, margin=margin, n=n, note="; ".join(notes), scale=100.0,
                                       units=" points", label="mean student - teacher")})
    return finish_verdicts(rows, ["family", "comparison", "setting", "task", *by_cols], padjust, level=level,
                           simultaneous=simultaneous)


_VERB_TEACHER = {"greater": "beats", "less": "trails", "two-sided": "differs from", "equivalent": "matches"}


def _expect_for(expect: Mapping[str, Any], axis: str, level: Any) -> str:
    spec = expect.get(axis, "two-sided")
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if _same(key, level):
                return value
        return "two-sided"
    return spec


def size_key(value: Any) -> tuple:
    """Order of model sizes: a number, the layers of ``"prune:N"``, or the ``1.5`` of ``"...-1.5B"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    text = str(value)
    match = re.search(r"-([0-9.]+)B\b", text) or re.search(r"([0-9.]+)$", text.rsplit(":", 1)[-1])
    return (0, float(match.group(1)), text) if match else (1, 0.0, text)


def _same(a: Any, b: Any) -> bool:
    # bools, ints and floats compare as numbers (a teacher_aware column may hold True or 1.0)
    if isinstance(a, bool | int | float) and isinstance(b, bool | int | float):
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-12)
    return str(a) == str(b)


def _at(frame: pd.DataFrame, column: str, value: Any) -> pd.Series:
    return frame[column].map(lambda v: not _missing(v) and _same(_plain(v), value))


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def axis_contrasts(
    results: pd.DataFrame,
    axis: str,
    *,
    metric: str = "accuracy",
    center: Mapping[str, Any] | None = None,
    reference: Any = None,
    expect: Mapping[str, Any] | None = None,
    baseline: str = "sft",
    task: str = "all",
    margin: float = ACCURACY_MARGIN,
    level: float = 0.95,
    padjust: str = "holm",
    simultaneous: bool = False,
    scale: float = 100.0,
    units: str = " points",
) -> pd.DataFrame:
    """Each level of ``axis`` against its reference level, paired by seed, from a one-at-a-time grid.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (one row per run and task).
    axis : str
        The ablated column (``"sigma"``, ``"temperature"``, ``"teacher_aware"``, or any axis).
    metric : str
        Compared column.
    center : mapping, optional
        The grid's center, default :data:`DEFAULT_CENTER` (σ = 0, τ = 1): when another axis named
        here varies among the KD runs, only its runs at the center value enter (the σ contrasts use
        the τ = 1 runs, the τ contrasts the σ = 0 runs); an axis held at one value (a σ sweep at
        τ = 2) filters nothing and is named in the comparison ("at τ = 2").
    reference : optional
        Level every other level is compared with; default the axis' center (σ = 0, τ = 1), False
        for ``teacher_aware``, else the smallest level. ``"smallest"``/``"largest"`` pick a level by
        ``size_key`` (e.g. the largest student, ``axis="student"``).
    expect : mapping, optional
        Direction claimed per axis, or per axis and level; default :data:`DEFAULT_EXPECT` (the
        lecture's findings); a level not listed gets ``"two-sided"``.
    baseline : str
        Method of baseline runs, which are left out (they carry no KD setting).
    task, margin, level, padjust, simultaneous, scale, units
        As in :func:`kd_vs_sft`.

    Returns
    -------
    DataFrame
        ``family`` (= ``axis``), ``comparison`` (e.g. ``"σ = 2 vs σ = 0 at τ = 1"``), ``level_value``,
        then :data:`kdlens._schema.VERDICT_COLUMNS`; one row per non-reference level. Empty when
        the axis has fewer than two levels among the runs at the center, or no run at the reference
        level (no test); ``attrs["skipped"]`` then holds one line saying why (a list, as in
        :func:`ablation_tests`).

    Notes
    -----
    For each level the differences ``metric(level) - metric(reference)`` of runs that agree on
    every other setting (seed, student, loss, ...) are the units of a one-sample t interval
    (a paired t test). The verdict follows :func:`kdlens.analysis.decide`.
    """
    rows, skipped = _axis_rows(results, axis, metric=metric, center=center, reference=reference, expect=expect,
                               baseline=baseline, task=task, margin=margin, level=level, scale=scale, units=units)
    out = finish_verdicts(rows, [*_LEAD, "level_value"], padjust, level=level, simultaneous=simultaneous)
    if skipped:
        out.attrs["skipped"] = [skipped]
    return out


def _axis_rows(results: pd.DataFrame, axis: str, *, metric: str, center: Mapping[str, Any] | None, reference: Any,
               expect: Mapping[str, Any] | None, baseline: str, task: str, margin: float, level: float,
               scale: float, units: str) -> tuple[list[dict], str]:
    """The pending rows of :func:`axis_contrasts`, and why there are none (``""`` when there are)."""
    center = dict(DEFAULT_CENTER if center is None else center)
    expect = dict(DEFAULT_EXPECT if expect is None else expect)
    require_expect_level("greater", margin, level)
    kd = _kd_rows(results, baseline, task)
    require_columns(kd, [axis, metric], what="results")
    where, filtered = [], []
    for other, value in center.items():
        if other == axis or other not in kd.columns:
            continue
        held = {_plain(v) for v in kd[other] if not _missing(v)}
        if len(held) > 1:  # the other axis varies: read this one at its center, where it alone varies
            kd = kd.loc[_at(kd, other, value)]
            where.append(_describe(other, value))
            filtered.append(_describe(other, value))
        elif held:  # held at one value for every run: no confound, and the sentence says which value
            where.append(_describe(other, held.pop()))
    kd = kd.loc[kd[axis].map(lambda v: not _missing(v))]
    levels = sorted({_plain(v) for v in kd[axis]}, key=lambda v: (str(type(v)), v))
    symbol = _SYMBOL.get(axis, axis)
    if len(levels) < 2:
        return [], (f"{symbol} varies, but not among the runs at {', '.join(filtered)}: no {symbol} test"
                    if filtered else f"{symbol}: the KD runs hold one level: not testable")
    if reference in ("smallest", "largest"):
        ref = sorted(levels, key=size_key)[0 if reference == "smallest" else -1]
    else:
        ref = reference if reference is not None else center.get(axis, _REFERENCE.get(axis, levels[0]))
    if not any(_same(ref, v) for v in levels):
        return [], (f"{symbol}: no run at the reference level {_describe(axis, ref)} (levels "
                    f"{', '.join(_describe(axis, v) for v in levels)}): no {symbol} test; pass "
                    "reference= (or center=) to axis_contrasts")
    pair_cols = [c for c in _config_columns(kd, "seed") if c != axis] + (["seed"] if "seed" in kd.columns else [])
    varying = _varying(kd, pair_cols)
    keyed = kd.assign(_key=_keys(kd, varying))
    ref_values = keyed.loc[_at(keyed, axis, ref)].groupby("_key")[metric].mean()
    at_text = f" at {', '.join(where)}" if where else ""
    unit = "seeds" if varying == ["seed"] else f"paired runs ({', '.join(varying)})" if varying else "run pairs"
    rows = []
    for value in levels:
        if _same(value, ref):
            continue
        direction = _expect_for(expect, axis, value)
        require_expect_level(direction, margin, level)
        mine = keyed.loc[_at(keyed, axis, value)].groupby("_key")[metric].mean()
        diffs = (mine - ref_values).dropna()
        est, mean, sd, n = mean_estimate(diffs.to_numpy(float))
        note = ""
        if n == 0:
            note = f"no run at {_describe(axis, value)} has a matching run at {_describe(axis, ref)}"
        elif n < 2:
            note = _seed_note(keyed, "a contrast", "matched pair of runs")
        elif est is None:
            note = "the differences do not vary across units: no interval"
        hypothesis = (f"{_describe(axis, value)} {_VERB[direction]} {metric} against {_describe(axis, ref)}"
                      f"{at_text} (SESOI {margin * scale:g}{units})")
        rows.append({"family": axis, "comparison": f"{_describe(axis, value)} vs {_describe(axis, ref)}{at_text}",
                     "level_value": value,
                     **pending_row(hypothesis=hypothesis, test="paired_mean_t", unit=unit, estimate=mean, est=est,
                                   sd=sd, expect=direction, margin=margin, n=n, note=note, scale=scale, units=units,
                                   label="mean difference")})
    return rows, ""


def ablation_tests(
    results: pd.DataFrame,
    *,
    metric: str = "accuracy",
    baseline: str = "sft",
    task: str = "all",
    center: Mapping[str, Any] | None = None,
    expect: Mapping[str, Any] | None = None,
    axes: Sequence[str] = ("sigma", "temperature", "teacher_aware"),
    margin: float = ACCURACY_MARGIN,
    level: float = 0.95,
    padjust: str = "holm",
    simultaneous: bool = False,
) -> pd.DataFrame:
    """Every verdict a sweep's results support: KD against SFT and each ablated axis.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table.
    metric, baseline, task, center, expect, margin, level
        See :func:`kd_vs_sft` and :func:`axis_contrasts`.
    axes : list of str
        Axes contrasted when they vary among the KD runs.
    padjust : str
        Correction of ``p_val`` across every row (one family).
    simultaneous : bool
        Bonferroni-simultaneous intervals over every row of the table (one family), as in
        :func:`kd_vs_sft`.

    Returns
    -------
    DataFrame
        ``family, comparison, level_value`` and :data:`kdlens._schema.VERDICT_COLUMNS`: the
        :func:`kd_vs_sft` rows (when the results hold ``baseline`` runs), then the
        :func:`axis_contrasts` rows of each axis. ``attrs["skipped"]`` lists, in words, the axes
        that vary but could not be contrasted (e.g. σ varies only at τ != 1).
    """
    rows, skipped = [], []
    kd = _kd_rows(results, baseline, task)
    if "method" in results.columns and (results["method"] == baseline).any():
        rows += [{**row, "level_value": None} for row in _kd_vs_sft_rows(
            results, metric=metric, baseline=baseline, task=task, by_cols=[], margin=margin, level=level,
            scale=100.0, units=" points")]
    for axis in axes:
        if axis not in kd.columns:
            continue
        values = kd[axis].dropna()
        if values.astype(str).nunique() < 2:
            held = ", ".join(sorted({_describe(axis, _plain(v)) for v in values})) or "no value"
            skipped.append(f"{_SYMBOL.get(axis, axis)}: the KD runs hold one level ({held}): not testable")
            continue
        found, why = _axis_rows(results, axis, metric=metric, center=center, reference=None, expect=expect,
                                baseline=baseline, task=task, margin=margin, level=level, scale=100.0, units=" points")
        rows += found
        if why:
            skipped.append(why)
    out = finish_verdicts(rows, [*_LEAD, "level_value"], padjust, level=level, simultaneous=simultaneous)
    out.attrs["skipped"] = skipped
    return out
