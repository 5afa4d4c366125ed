"""How many seeds a difference needs, and the smallest difference the seeds at hand can detect.

Both come from the t test of a mean over independent units (seeds, or paired seed differences):
power at a true effect ``delta`` with ``n`` units, unit standard deviation ``sd`` and level ``alpha``
is that of the noncentral t with noncentrality ``delta sqrt(n) / sd`` (statsmodels ``TTestPower``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kdlens._schema import POWER_COLUMNS, RUNS_COLUMNS
from kdlens.analysis._validate import require_columns, require_level
from kdlens.analysis.ablations import metric_columns

__all__ = ["minimal_detectable_effect", "seed_sd", "seeds_needed"]

#: columns of a results table that describe a run's outcome or identity, not its configuration
_NOT_CONFIG = {"task", "n", "teacher_id", "baseline_run_id", *RUNS_COLUMNS}


def _check_power(power: float) -> None:
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}; e.g. power=0.8")


def minimal_detectable_effect(sd: float, n: int, *, level: float = 0.95, power: float = 0.8) -> float:
    """Smallest true mean effect that a two-sided t test at ``1 - level`` detects with ``power``.

    Parameters
    ----------
    sd : float
        Standard deviation of one unit (a seed, or a paired seed difference).
    n : int
        Number of units.
    level, power : float

    Returns
    -------
    float
        ``d * sd`` where ``d`` solves ``TTestPower().power(d, n, 1 - level) = power``; NaN when
        ``n < 2`` or ``sd`` is not a positive finite number.

    Notes
    -----
    Cohen (1988), *Statistical Power Analysis for the Behavioral Sciences*, ch. 2; statsmodels
    ``TTestPower.solve_power``.
    """
    require_level(level)
    _check_power(power)
    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    from statsmodels.stats.power import TTestPower

    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=1 - level, power=power, alternative="two-sided")
    return float(np.asarray(d).item()) * sd


def _config_columns(results: pd.DataFrame, seed: str) -> list[str]:
    skip = _NOT_CONFIG | set(metric_columns()) | {seed}
    return [c for c in results.columns
            if c not in skip and not c.endswith("_gain") and not c.startswith("baseline_")]


def seed_sd(results: pd.DataFrame, *, metric: str = "accuracy_gain", seed: str = "seed", task: str = "all",
            group: Sequence[str] | None = None) -> tuple[float, int, int]:
    """Pooled within-configuration standard deviation of ``metric`` across seeds.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (one row per run and task); without a ``seed`` column every run
        has one seed and the variance is unknown.
    metric : str
        ``"accuracy_gain"`` (the paired KD - SFT difference of a seed) or a level such as
        ``"accuracy"``.
    seed : str
        Column telling seeds apart.
    task : str
        Rows of this task (``"all"`` pools the tasks, per run).
    group : list of str, optional
        Columns that define a configuration; default every axis column but ``seed``.

    Returns
    -------
    sd, dof, n_groups : float, int, int
        ``sqrt(sum_g (n_g - 1) s_g^2 / sum_g (n_g - 1))`` over configurations ``g`` with at least
        two seeds, its degrees of freedom, and the number of such configurations (NaN, 0, 0 when
        no configuration has two seeds).
    """
    require_columns(results, [metric, "task"], what="results")
    if seed not in results.columns:  # no seed axis: every run has the base seed, one per configuration
        return math.nan, 0, 0
    part = results.loc[(results["task"] == task) & results[metric].notna()]
    group = _config_columns(part, seed) if group is None else list(group)
    require_columns(part, group, what="results")
    ss, dof, groups = 0.0, 0, 0
    keyed = part.assign(**{c: part[c].astype(str) for c in group}) if group else part.assign(_all="all")
    for _, g in keyed.groupby(group or ["_all"], sort=True, dropna=False):
        values = g[metric].to_numpy(float)
        if g[seed].nunique() >= 2 and len(values) >= 2:
            ss += float(((values - values.mean()) ** 2).sum())
            dof += len(values) - 1
            groups += 1
    return (math.sqrt(ss / dof) if dof else math.nan), dof, groups


def _sd_upper(sd: float, dof: float, confidence: float) -> float:
    """One-sided upper confidence bound of a standard deviation estimated on ``dof`` degrees of freedom:
    ``sd * sqrt(dof / chi2_{1 - confidence}(dof))`` (NaN without degrees of freedom)."""
    if not (math.isfinite(sd) and math.isfinite(dof) and dof >= 1):
        return math.nan
    from scipy import stats as sps

    return float(sd * math.sqrt(dof / sps.chi2.ppf(1 - confidence, dof)))


def _unit_note(data: pd.DataFrame | None, metric: str) -> str:
    """What one unit of ``seeds`` is, in words."""
    students = 0 if data is None or "student" not in data.columns else data["student"].dropna().nunique()
    if students > 1:
        return (f"seeds counts units of the paired test: (student, seed) pairs when the {students} students are "
                "pooled (kd_vs_sft: one SFT baseline each), seeds per student with by='student'; the sd is "
                "within student (pooling adds any between-student spread of the gain)")
    what = "paired KD - SFT difference" if metric.endswith("_gain") else "difference of two runs"
    return f"seeds counts units of the paired test: one seed is one {what}"


def seeds_needed(
    effect: float | Sequence[float],
    *,
    data: pd.DataFrame | None = None,
    sd: float | None = None,
    sd_dof: float | None = None,
    metric: str = "accuracy_gain",
    seed: str = "seed",
    task: str = "all",
    level: float = 0.95,
    power: float = 0.8,
    sd_confidence: float = 0.8,
) -> pd.DataFrame:
    """Seeds needed to detect a mean difference of ``effect`` with a paired (per-seed) t test.

    Parameters
    ----------
    effect : float or list of float
        True differences to detect, in the metric's units (0.02 = 2 accuracy points).
    data : DataFrame, optional
        A results table: the seed standard deviation is :func:`seed_sd` of ``metric`` in it. For a
        gain (``*_gain``, already a difference of two runs) it is the sd of one seed's difference;
        for a level (``"accuracy"``) the difference of two runs with independent seed noise has
        ``sqrt(2)`` times its sd, which is what the power calculation uses (and ``note`` says).
    sd : float, optional
        The standard deviation of one seed's difference, instead of ``data``.
    sd_dof : float, optional
        Degrees of freedom of ``sd`` (seeds minus 1 of the pilot it comes from), for its upper
        bound; with ``data`` they come from :func:`seed_sd`.
    metric, seed, task
        See :func:`seed_sd` (with ``data``).
    level, power : float
        Two-sided test at ``1 - level`` (the level the verdicts' intervals use), and the power.
    sd_confidence : float
        Confidence of the upper bound ``sd_upper`` of the seed sd (default 0.8, Browne 1995).

    Returns
    -------
    DataFrame
        :data:`kdlens._schema.POWER_COLUMNS`, one row per effect: ``sd`` is the standard deviation
        of one seed's difference used; ``seeds`` = the smallest integer ``n >= 2`` with power at
        least ``power`` (``seeds_exact`` the real-valued solution); ``sd_upper`` is the
        ``sd_confidence`` upper confidence bound of the sd and ``seeds_upper`` the seeds it needs
        (planning on the observed sd from a few seeds gives the target power only about half the
        time). ``note`` says what one unit of ``seeds`` is: with several students kd_vs_sft pools
        (student, seed) pairs, so the count is of such pairs. NaN with a ``note`` when the data
        hold no configuration with two seeds.

    Notes
    -----
    ``n`` solves ``TTestPower().power(effect / sd, n, 1 - level) = power`` (noncentral t;
    statsmodels). Close to Guenther's (1981) ``((z_{1-a/2} + z_{power}) sd / effect)^2 + z^2_{1-a/2} / 2``.
    The sd estimated on ``k`` degrees of freedom has the upper bound
    ``sd sqrt(k / chi2_{1 - c}(k))`` at confidence ``c`` (``(k s^2 / sigma^2 ~ chi2_k``); Browne
    (1995, *Stat. Med.* 14:1933) shows that planning on the 80% bound of a pilot sd reaches the
    intended power with probability of about 80%.
    """
    require_level(level)
    _check_power(power)
    if not 0 < sd_confidence < 1:
        raise ValueError(f"sd_confidence must be in (0, 1), got {sd_confidence}; e.g. sd_confidence=0.8")
    if (data is None) == (sd is None):
        raise ValueError("give either data= (a results table with seeds) or sd= (one seed's standard deviation)")
    effects = [float(effect)] if np.isscalar(effect) else [float(e) for e in effect]
    if not effects or any(not math.isfinite(e) or e == 0 for e in effects):
        raise ValueError(f"effect must be one or more finite non-zero differences, got {effect!r}")
    notes = []
    if data is not None:
        if sd_dof is not None:
            raise ValueError("sd_dof goes with sd=; with data= the degrees of freedom come from the seeds")
        sd_value, dof, groups = seed_sd(data, metric=metric, seed=seed, task=task)
        if not metric.endswith("_gain") and math.isfinite(sd_value):
            # a level's seed sd is that of one run; a paired difference of two runs carries two runs' noise
            notes.append(f"{metric!r} is a level (seed sd {sd_value:.4g}): the difference of two runs has "
                         f"sd sqrt(2) x {sd_value:.4g} (independent seed noise; less if the pairs share noise)")
            sd_value *= math.sqrt(2)
    else:
        if not (math.isfinite(sd) and sd > 0):
            raise ValueError(f"sd must be a positive number, got {sd}")
        if sd_dof is not None and not (math.isfinite(sd_dof) and sd_dof >= 1):
            raise ValueError(f"sd_dof must be a number >= 1 (seeds - 1 of the pilot), got {sd_dof}")
        sd_value, dof, groups = float(sd), (math.nan if sd_dof is None else float(sd_dof)), math.nan
    sd_upper = _sd_upper(sd_value, dof, sd_confidence)
    if math.isfinite(sd_value):
        notes.append(_unit_note(data, metric))
        notes.append(f"seeds_upper: at the {sd_confidence:g} upper confidence bound of the sd ({dof:g} dof)"
                     if math.isfinite(sd_upper) else "no sd_upper: the sd's degrees of freedom are unknown "
                     "(pass sd_dof=)")
    from statsmodels.stats.power import TTestPower

    def solve(e: float, s: float) -> float:
        return float(np.asarray(TTestPower().solve_power(effect_size=abs(e) / s, alpha=1 - level, power=power,
                                                         alternative="two-sided")).item())

    rows = []
    for e in effects:
        row = {"effect": e, "sd": sd_value, "sd_dof": dof, "sd_upper": sd_upper, "n_groups": groups, "level": level,
               "power": power, "seeds": math.nan, "seeds_exact": math.nan, "seeds_upper": math.nan,
               "note": "; ".join(notes)}
        if not math.isfinite(sd_value):
            row["note"] = f"no configuration has two seeds of {metric!r}: the seed variance is unknown"
        elif sd_value == 0:  # every seed gave the same value: no spread to plan from (e.g. a smoke run)
            row["note"] = f"{metric!r} does not vary across seeds (sd 0): no power calculation"
        else:
            exact = solve(e, sd_value)
            row.update(seeds_exact=exact, seeds=max(2, math.ceil(exact - 1e-9)))
            if math.isfinite(sd_upper):
                row["seeds_upper"] = max(2, math.ceil(solve(e, sd_upper) - 1e-9))
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(POWER_COLUMNS))
    out["seeds"] = out["seeds"].astype("Int64")
    out["seeds_upper"] = out["seeds_upper"].astype("Int64")
    return out
