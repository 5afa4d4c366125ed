"""Three-way verdicts read from confidence intervals, equivalence tests (TOST), and their sentences.

A verdict says whether the data support, contradict, or cannot decide a stated hypothesis. It is
read from a two-sided confidence interval ``[low, high]`` of the effect at ``level`` and from a
smallest effect of interest (SESOI) ``m`` (``margin``), never from a p-value alone:

expect      supported                            contradicted                             inconclusive
==========  ===================================  =======================================  ============
greater     low > 0 (and high >= m)              high < m: any rise is below the SESOI    otherwise
less        high < 0 (and low <= -m)             low > -m                                 otherwise
two-sided   CI excludes 0, not within (-m, m)    CI within (-m, m) (equivalence)          otherwise
equivalent  CI within (-m, m) (equivalence)      CI excludes 0, not within (-m, m)        otherwise
==========  ===================================  =======================================  ============

"No relation" / "no effect" is therefore only ever claimed by an equivalence test: the interval lies
inside ``(-m, m)``. With a 95% interval the directional decisions are one-sided tests at 2.5% and
the equivalence decision is a TOST at 2.5% (pass ``level=0.90`` for the TOSTER convention, 5%).
The default margins (:data:`kdlens.analysis.RHO_MARGIN`, :data:`kdlens.analysis.ACCURACY_MARGIN`) are conventions a user should
=======
==========  =================================  ==========================================  ============
expect      supported                          contradicted                                inconclusive
==========  =================================  ==========================================  ============
greater     low > 0 (and high >= m)            high < m: any rise is below the SESOI       otherwise
less        high < 0 (and low <= -m)           low > -m                                    otherwise
two-sided   CI excludes 0, not within (-m, m)  CI within (-m, m) (equivalence)             otherwise
equivalent  CI within (-m, m) (equivalence)    CI outside (-m, m): low >= m or high <= -m  otherwise
==========  =================================  ==========================================  ============

"Contradicted" always means the interval rules out every effect the hypothesis counts: a rise of
``m`` or more for ``greater``, an effect of ``m`` or more for ``two-sided``, and every effect within
``(-m, m)`` for ``equivalent`` (a minimum-effect test; Murphy & Myors 1999). An interval that
excludes 0 but still reaches into ``(-m, m)`` (e.g. rho in [0.05, 0.35] with ``m = 0.3``) is
compatible with "no relation of interest" and leaves it ``inconclusive``. "No relation" / "no
effect" is only ever claimed by an equivalence test: the interval lies inside ``(-m, m)``.

With a 95% interval the directional decisions are one-sided tests at 2.5% and the equivalence
decision is a TOST at 2.5% (pass ``level=0.90`` for the TOSTER convention, 5%, which :func:`tost`
uses by default).
The default margins (:data:`kdlens.analysis.RHO_MARGIN`, :data:`kdlens.analysis.ACCURACY_MARGIN`) are conventions a user should
restate for their setting; every sentence names the margin it used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from kdlens._schema import EQUIVALENCE_COLUMNS, VERDICT_COLUMNS
from kdlens.analysis._validate import require_columns, require_level
from kdlens.analysis.stats import (
    _FISHER_SE,
    _grouped,
    _no_spread,
    _numeric,
    adjust_pvalues,
    partial_rank_residuals,
)

__all__ = [
    "ACCURACY_MARGIN",
    "EXPECTATIONS",
    "MIN_CORRELATION_N",
    "RHO_MARGIN",
    "VERDICTS",
    "decide",
    "tost",
    "tost_correlation",
]

#: the three verdicts, relative to the stated hypothesis
VERDICTS: tuple[str, ...] = ("supported", "contradicted", "inconclusive")
#: directions a hypothesis can state (see the module docstring)
EXPECTATIONS: tuple[str, ...] = ("greater", "less", "two-sided", "equivalent")
#: default SESOI of a correlation: ``|rho| < 0.3`` counts as no relation of interest (Cohen's "medium" is 0.3)
RHO_MARGIN = 0.3
#: default SESOI of an accuracy (or agreement, BLEU) difference: 2 points on kdlens' 0-1 scale
ACCURACY_MARGIN = 0.02
#: fewest units (minus covariates) for a verdict from a Fisher-z interval of a correlation; below it
#: the interval undercovers (Bonett & Wright 2000 validate it from n = 10)
MIN_CORRELATION_N = 10


def _check_expect(expect: str, margin: float) -> None:
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect must be one of {EXPECTATIONS}, got {expect!r}")
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin (the smallest effect of interest) must be a finite number >= 0, got {margin!r}")
    if expect in ("equivalent", "two-sided") and margin == 0:
        raise ValueError(f"expect={expect!r} needs margin > 0: 'no effect' is only shown within a stated +-margin")


def decide(ci_low: float, ci_high: float, *, expect: str, margin: float) -> str:
    """The verdict on a hypothesis from a two-sided confidence interval and a smallest effect of interest.

    Parameters
    ----------
    ci_low, ci_high : float
        Two-sided confidence interval of the effect (NaN gives ``"inconclusive"``).
    expect : {"greater", "less", "two-sided", "equivalent"}
        What the hypothesis states: a rise, a fall, some effect, or no effect of interest.
    margin : float
        Smallest effect of interest ``m >= 0`` (``> 0`` for ``two-sided`` and ``equivalent``), in
        the units of the interval.

    Returns
    -------
    str
        ``"supported"``, ``"contradicted"`` or ``"inconclusive"``.

    Notes
    -----
    The rules are in the module docstring: a directional hypothesis is supported when the CI
    excludes 0 in its direction, and contradicted when the CI excludes every effect of at least
    ``m`` in its direction; "no effect" (``equivalent``) is supported only when the CI lies inside
    ``(-m, m)``, the confidence-interval form of the two one-sided tests (Schuirmann 1987; Lakens,
    Scheel & Isager 2018, *AMPPS* 1:259, figure 1), and contradicted only when the CI lies outside
    ``(-m, m)`` (it rules out every effect the hypothesis allows).
    """
    _check_expect(expect, margin)
    low, high = float(ci_low), float(ci_high)
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > high:
        raise ValueError(f"ci_low must be <= ci_high, got [{low}, {high}]")
    if expect == "greater":
        return "contradicted" if high < margin else "supported" if low > 0 else "inconclusive"
    if expect == "less":
        return "contradicted" if low > -margin else "supported" if high < 0 else "inconclusive"
    within = -margin < low and high < margin
    if expect == "two-sided":
        excludes_zero = low > 0 or high < 0
        return "contradicted" if within else "supported" if excludes_zero else "inconclusive"
    outside = low >= margin or high <= -margin
    return "supported" if within else "contradicted" if outside else "inconclusive"


# --------------------------------------------------------------------------- sentences


def _num(x: float, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a" if x is None or math.isnan(float(x)) else ("+inf" if x > 0 else "-inf")
    value = float(x) * scale
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _why(low: float, high: float, expect: str, margin: float, verdict: str, m: str) -> str:
    """The reason of a verdict, in words (``m`` is the margin already formatted with its unit)."""
    if verdict == "inconclusive":
        if expect == "greater":
            return f"the CI includes 0 and rises of {m} or more"
        if expect == "less":
            return f"the CI includes 0 and falls of {m} or more"
        if expect == "equivalent" and (low > 0 or high < 0):
            return (f"the CI excludes 0 but reaches both within and beyond ±{m}: the data cannot tell an effect "
                    "smaller than the margin from one of interest")
        return f"the CI includes 0 and reaches beyond ±{m}: the data cannot tell no effect from one of interest"
    if expect == "greater":
        if verdict == "supported":
            return "the CI lies above 0"
        return "the CI lies below 0: it goes the other way" if high < 0 else \
            f"the CI lies below +{m}: any rise is smaller than the smallest effect of interest"
    if expect == "less":
        if verdict == "supported":
            return "the CI lies below 0"
        return "the CI lies above 0: it goes the other way" if low > 0 else \
            f"the CI lies above -{m}: any fall is smaller than the smallest effect of interest"
    within = f"the CI lies within ±{m} (equivalence test)"
    if expect == "two-sided":
        return f"the CI excludes 0 and reaches beyond ±{m}" if verdict == "supported" else within
    return within if verdict == "supported" else f"the CI lies outside ±{m}: every effect within the margin is ruled out"


def _sentence(row: dict, *, scale: float, units: str, label: str) -> str:
    """One sentence: hypothesis, verdict, estimate with CI, n and unit, and the reason."""
    verdict = row["verdict"]
    n_text = f"n = {int(row['n'])} {row['unit']}"
    if not math.isfinite(row["ci_low"]) or not math.isfinite(row["ci_high"]):
        why = row["note"] or "no interval could be computed"
        signed = scale != 1.0 or label not in ("rho", "r", "partial rho")
        est = "" if not math.isfinite(row["estimate"]) else \
            f"{label} = {_num(row['estimate'], scale, signed=signed)}{units}, "
        return f"{row['hypothesis']}: {verdict} ({why}; {est}{n_text})."
    signed = scale != 1.0 or label not in ("rho", "r", "partial rho")
    m = f"{_num(row['margin'], scale)}{units}"
    est = (f"{label} = {_num(row['estimate'], scale, signed=signed)}{units}, {round(100 * row['level'])}% CI "
           f"[{_num(row['ci_low'], scale, signed=signed)}, {_num(row['ci_high'], scale, signed=signed)}], {n_text}")
    why = _why(row["ci_low"], row["ci_high"], row["expect"], row["margin"], verdict, m)
    tail = f"; {row['note']}" if row["note"] else ""
    return f"{row['hypothesis']}: {verdict} ({est}; {why}{tail})."


def verdict_row(*, hypothesis: str, test: str, unit: str, estimate: float, ci_low: float, ci_high: float,
                level: float, expect: str, margin: float, statistic: float = math.nan, dof: float = math.nan,
                p_val: float = math.nan, n: int = 0, mde: float = math.nan, note: str = "",
                scale: float = 1.0, units: str = "", label: str = "mean") -> dict:
    """One row of :data:`kdlens._schema.VERDICT_COLUMNS` with its verdict and sentence.

    ``scale`` and ``units`` only change the sentence (e.g. 100 and ``" points"`` for a difference
    of rates); the numbers in the row stay in the data's units. A non-empty ``note`` with a NaN
    interval means the row was not tested and is ``inconclusive`` for that reason.
    """
    row = {"hypothesis": hypothesis, "test": test, "unit": unit, "estimate": float(estimate),
           "ci_low": float(ci_low), "ci_high": float(ci_high), "level": float(level), "expect": expect,
           "margin": float(margin), "statistic": float(statistic), "dof": float(dof), "p_val": float(p_val),
           "p_adj": math.nan, "n": int(n), "mde": float(mde), "note": note}
    row["verdict"] = decide(row["ci_low"], row["ci_high"], expect=expect, margin=margin)
    row["sentence"] = _sentence(row, scale=scale, units=units, label=label)
    return row


def finish_verdicts(rows: list[dict], lead: Sequence[str], padjust: str) -> pd.DataFrame:
    """Assemble verdict rows (``lead`` columns first) and fill ``p_adj`` across them (one family)."""
    table = pd.DataFrame(rows, columns=[*lead, *VERDICT_COLUMNS])
    if len(table):
        table["p_adj"] = adjust_pvalues(table["p_val"].to_numpy(dtype=float), padjust)
    table["n"] = table["n"].astype("int64")
    return table


# --------------------------------------------------------------------------- intervals


def mean_interval(values: np.ndarray, *, level: float, expect: str, margin: float) -> dict:
    """Mean of independent units with its t interval and the p-value matching ``expect``.

    Returns a dict with ``estimate, ci_low, ci_high, statistic, dof, p_val, n, sd`` (NaN where
    fewer than 2 units or zero variance). ``p_val`` is one-sided for ``greater``/``less``,
    two-sided for ``two-sided`` and the TOST p (the larger of the two one-sided p-values against
    ``-margin`` and ``+margin``) for ``equivalent``.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    out = dict.fromkeys(("estimate", "ci_low", "ci_high", "statistic", "dof", "p_val", "sd"), math.nan)
    out["n"] = n
    if n == 0:
        return out
    out["estimate"] = float(x.mean())
    if n < 2:
        return out
    sd = float(x.std(ddof=1))
    out["sd"], out["dof"] = sd, float(n - 1)
    # equal values up to rounding (e.g. 0.56 - 0.50 per seed) have no variance to build a t interval on
    if _no_spread(x):
        out["sd"] = 0.0
        return out
    se = sd / math.sqrt(n)
    q = sps.t.ppf(0.5 + level / 2, n - 1)
    out["ci_low"], out["ci_high"] = out["estimate"] - q * se, out["estimate"] + q * se
    t = out["estimate"] / se
    out["statistic"] = t
    if expect == "greater":
        out["p_val"] = float(sps.t.sf(t, n - 1))
    elif expect == "less":
        out["p_val"] = float(sps.t.cdf(t, n - 1))
    elif expect == "two-sided":
        out["p_val"] = float(2 * sps.t.sf(abs(t), n - 1))
    else:
        out["p_val"] = float(max(sps.t.sf((out["estimate"] + margin) / se, n - 1),
                                 sps.t.cdf((out["estimate"] - margin) / se, n - 1)))
    return out


def mean_verdict(values: np.ndarray, *, hypothesis: str, unit: str, expect: str, margin: float, level: float,
                 note: str = "", scale: float = 1.0, units: str = "", label: str = "mean") -> dict:
    """A verdict row for the mean of independent units (:func:`mean_interval`), with its ``mde``."""
    from kdlens.analysis.power import minimal_detectable_effect

    st = mean_interval(values, level=level, expect=expect, margin=margin)
    notes = [note] if note else []
    if st["n"] < 2 or not math.isfinite(st["ci_low"]):
        notes.insert(0, f"n = {st['n']}: too few {unit} (or no variation) for an interval")
    return verdict_row(hypothesis=hypothesis, test="mean_t", unit=unit, estimate=st["estimate"], ci_low=st["ci_low"],
                       ci_high=st["ci_high"], level=level, expect=expect, margin=margin, statistic=st["statistic"],
                       dof=st["dof"], p_val=st["p_val"], n=st["n"],
                       mde=minimal_detectable_effect(st["sd"], st["n"], level=level), note="; ".join(notes),
                       scale=scale, units=units, label=label)


def correlation_interval(r: float, n_eff: int, *, method: str, level: float, expect: str, margin: float) -> dict:
    """Fisher-z interval of a (partial) correlation and the p-value matching ``expect``.

    ``n_eff`` is the number of units minus the number of covariates partialled out. The standard
    error of ``atanh(r)`` is ``sqrt(f / (n_eff - 3))`` with ``f = 1`` (Pearson) or ``1.06``
    (Spearman; Fieller, Hartley & Pearson 1957). ``p_val``: the t test of ``r`` with
    ``n_eff - 2`` degrees of freedom for the directional and two-sided cases, the Fisher-z TOST
    against ``+-margin`` (as TOSTER's ``TOSTr``) for ``equivalent``.
    """
    factor, offset = _FISHER_SE[method]
    out = {"estimate": float(r), "ci_low": math.nan, "ci_high": math.nan, "statistic": float(r),
           "dof": float(n_eff - 2), "p_val": math.nan}
    if not math.isfinite(r) or n_eff <= offset or abs(r) >= 1.0:
        return out
    se = math.sqrt(factor / (n_eff - offset))
    z = math.atanh(r)
    q = sps.norm.ppf(0.5 + level / 2)
    out["ci_low"], out["ci_high"] = math.tanh(z - q * se), math.tanh(z + q * se)
    dof = n_eff - 2
    t = r * math.sqrt(dof / (1 - r * r))
    if expect == "greater":
        out["p_val"] = float(sps.t.sf(t, dof))
    elif expect == "less":
        out["p_val"] = float(sps.t.cdf(t, dof))
    elif expect == "two-sided":
        out["p_val"] = float(2 * sps.t.sf(abs(t), dof))
    else:
        bound = math.atanh(min(margin, 1 - 1e-12))
        out["p_val"] = float(max(sps.norm.sf((z + bound) / se), sps.norm.cdf((z - bound) / se)))
    return out


def correlation_verdict(x: np.ndarray, y: np.ndarray, covariates: pd.DataFrame | None, *, method: str,
                        hypothesis: str, unit: str, expect: str, margin: float, level: float,
                        min_n: int = MIN_CORRELATION_N, note: str = "") -> dict:
    """A verdict row for the (partial) rank or linear correlation of ``x`` and ``y`` given covariates."""
    rx, ry, k, n = partial_rank_residuals(x, y, covariates, method=method)
    test = ("partial_" if k else "") + method
    label = "partial rho" if k and method == "spearman" else "rho" if method == "spearman" else "r"
    base = dict(hypothesis=hypothesis, test=test, unit=unit, level=level, expect=expect, margin=margin, n=n,
                label=label)
    if rx is None:
        return verdict_row(estimate=math.nan, ci_low=math.nan, ci_high=math.nan,
                           note=f"n = {n}: too few complete rows for a correlation", **base)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return verdict_row(estimate=math.nan, ci_low=math.nan, ci_high=math.nan,
                           note="a constant input (after removing the covariates): the correlation is undefined",
                           **base)
    r = float(np.corrcoef(rx, ry)[0, 1])
    ci = correlation_interval(r, n - k, method=method, level=level, expect=expect, margin=margin)
    notes = [note] if note else []
    if n - k < min_n:
        notes.append(f"n = {n - k}{' after ' + str(k) + ' covariate(s)' if k else ''} < {min_n}: too few for "
                     "a correlation interval (Bonett & Wright 2000), no verdict")
        ci["ci_low"] = ci["ci_high"] = math.nan
    elif not math.isfinite(ci["ci_low"]):
        notes.append("|r| = 1: the Fisher-z interval is undefined")
    return verdict_row(estimate=r, ci_low=ci["ci_low"], ci_high=ci["ci_high"], statistic=r, dof=ci["dof"],
                       p_val=ci["p_val"], note="; ".join(notes), **base)


# --------------------------------------------------------------------------- TOST


def _bounds(margin: float | tuple[float, float]) -> tuple[float, float]:
    low, high = (-float(margin), float(margin)) if np.isscalar(margin) else map(float, margin)
    if not low < high:
        raise ValueError(f"equivalence bounds must satisfy low < high, got ({low}, {high}); e.g. margin=0.02")
    return low, high


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}; the TOST CI has level 1 - 2 * alpha")


def tost(
    data: pd.DataFrame,
    *,
    margin: float | tuple[float, float],
    dv: str | None = None,
    a: str | None = None,
    b: str | None = None,
    popmean: float = 0.0,
    alpha: float = 0.05,
    by: str | Sequence[str] | None = None,
    padjust: str = "holm",
) -> pd.DataFrame:
    """Equivalence test (two one-sided t-tests) of a mean, or of paired differences ``a - b``.

    Parameters
    ----------
    data : DataFrame
        One row per independent unit (seed, run, subject); NaN rows are dropped.
    margin : float or (low, high)
        Equivalence bounds on the raw scale of the difference: ``m`` means ``(-m, m)``.
    dv : str, optional
        One-sample test of ``mean(dv) - popmean``.
    a, b : str, optional
        Paired test of ``mean(a - b)`` (give ``a`` and ``b`` instead of ``dv``).
    popmean : float
        Reference value of the one-sample test.
    alpha : float
        Level of each one-sided test; the CI reported has level ``1 - 2 * alpha`` (TOSTER's).
    by, padjust
        One test per group; ``p_adj`` corrects ``p_val`` across groups.

    Returns
    -------
    DataFrame
        ``test`` (``"tost_one_sample"`` or ``"tost_paired"``), the ``by`` columns, then
        :data:`kdlens._schema.EQUIVALENCE_COLUMNS`: ``statistic_low = (d - low) / se`` with its
        upper-tail p, ``statistic_high = (d - high) / se`` with its lower-tail p, ``dof = n - 1``,
        ``p_val = max(p_low, p_high)``, ``equivalent = p_val < alpha``.

    Notes
    -----
    Schuirmann (1987), *J. Pharmacokinet. Biopharm.* 15:657; Lakens (2017), "Equivalence tests: a
    practical primer for t tests, correlations, and meta-analyses", *SPPS* 8:355. The output
    matches R's TOSTER (``TOSTone.raw``, ``TOSTpaired.raw``, ``t_TOST``). Equivalence is shown
    exactly when the ``1 - 2 alpha`` CI lies inside the bounds. The default ``alpha=0.05`` is
    TOSTER's (a 90% CI); the verdict tables read "no effect" from a 95% CI, which is this test at
    ``alpha=0.025``: the two can disagree on the same data unless ``alpha = (1 - level) / 2``.
    """
    if (dv is None) == (a is None or b is None) or (a is None) != (b is None):
        raise ValueError("give either dv= (one-sample) or both a= and b= (paired), e.g. tost(d, dv='gain', margin=0.02)")
    low_b, high_b = _bounds(margin)
    _check_alpha(alpha)
    cols = [dv] if dv is not None else [a, b]
    require_columns(data, cols)
    test = "tost_one_sample" if dv is not None else "tost_paired"

    def one(part: pd.DataFrame) -> list[dict]:
        if dv is not None:
            d = _numeric(part, dv) - popmean
        else:
            d = _numeric(part, a) - _numeric(part, b)
        d = d[np.isfinite(d)]
        n = len(d)
        row = {"test": test, **dict.fromkeys(EQUIVALENCE_COLUMNS, math.nan), "low_bound": low_b,
               "high_bound": high_b, "n": n, "equivalent": False, "note": ""}
        if n < 2 or _no_spread(d):
            row["note"] = f"n = {n} < 2: too few units" if n < 2 else "zero variance: t is undefined"
            row["estimate"] = float(d.mean()) if n else math.nan
            return [row]
        mean, se, dof = float(d.mean()), float(np.std(d, ddof=1)) / math.sqrt(n), n - 1
        t_low, t_high = (mean - low_b) / se, (mean - high_b) / se
        p_low, p_high = float(sps.t.sf(t_low, dof)), float(sps.t.cdf(t_high, dof))
        q = sps.t.ppf(1 - alpha, dof)
        row.update(estimate=mean, statistic_low=t_low, p_low=p_low, statistic_high=t_high, p_high=p_high,
                   dof=float(dof), p_val=max(p_low, p_high), ci_low=mean - q * se, ci_high=mean + q * se,
                   equivalent=max(p_low, p_high) < alpha)
        return [row]

    rows, group_cols = _grouped(data, by, one)
    return _finish_tost(rows, group_cols, padjust)


def _finish_tost(rows: list[dict], group_cols: list[str], padjust: str) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["test", *group_cols, *EQUIVALENCE_COLUMNS])
    if len(table):
        table["p_adj"] = adjust_pvalues(table["p_val"].to_numpy(dtype=float), padjust)
    table["n"] = table["n"].astype("int64")
    table["equivalent"] = table["equivalent"].astype(bool)
    return table


def tost_correlation(
    data: pd.DataFrame,
    *,
    x: str,
    y: str,
    margin: float = RHO_MARGIN,
    method: str = "spearman",
    covar: Sequence[str] = (),
    alpha: float = 0.05,
    by: str | Sequence[str] | None = None,
    padjust: str = "holm",
) -> pd.DataFrame:
    """Equivalence test that a (partial) correlation lies within ``(-margin, margin)``.

    Parameters
    ----------
    data : DataFrame
        One row per unit; rows with NaN in a used column are dropped.
    x, y : str
        The correlated columns.
    margin : float or (low, high)
        Equivalence bounds on the correlation (default ``|rho| < 0.3``).
    method : {"spearman", "pearson"}
    covar : list of str
        Covariates partialled out (numeric ones ranked for Spearman; non-numeric ones dummy coded).
    alpha, by, padjust
        As in :func:`tost`.

    Returns
    -------
    DataFrame
        ``test`` (``"tost_<method>"`` or ``"tost_partial_<method>"``), ``by`` columns, then
        :data:`kdlens._schema.EQUIVALENCE_COLUMNS`; ``statistic_low/high`` are the z statistics,
        ``dof = n - 2 - k`` for ``k`` covariate columns.

    Notes
    -----
    Fisher's ``z = atanh(r)`` with standard error ``sqrt(f / (n - 3 - k))``, ``f = 1`` for
    Pearson and 1.06 for Spearman (Fieller, Hartley & Pearson 1957);
    ``z_low = (z - atanh(low)) / se`` (p upper tail), ``z_high = (z - atanh(high)) / se`` (p lower
    tail), as TOSTER's ``TOSTr`` (Lakens 2017, *SPPS* 8:355).
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    low_b, high_b = _bounds(margin)
    if not -1 < low_b < high_b < 1:
        raise ValueError(f"correlation bounds must lie in (-1, 1), got ({low_b}, {high_b})")
    _check_alpha(alpha)
    covar = list(covar)
    require_columns(data, [x, y, *covar])
    factor, offset = _FISHER_SE[method]

    def one(part: pd.DataFrame) -> list[dict]:
        cov = part[covar] if covar else None
        rx, ry, k, n = partial_rank_residuals(_numeric(part, x), _numeric(part, y), cov, method=method)
        test = f"tost_{'partial_' if k else ''}{method}"
        row = {"test": test, **dict.fromkeys(EQUIVALENCE_COLUMNS, math.nan), "low_bound": low_b,
               "high_bound": high_b, "n": n, "equivalent": False, "note": ""}
        if rx is None or n - k <= offset or np.ptp(rx) == 0 or np.ptp(ry) == 0:
            row["note"] = f"n = {n} with {k} covariate(s): too few units or a constant input"
            return [row]
        r = float(np.corrcoef(rx, ry)[0, 1])
        if abs(r) >= 1:
            row.update(estimate=r, note="|r| = 1: the Fisher-z test is undefined")
            return [row]
        se = math.sqrt(factor / (n - k - offset))
        z = math.atanh(r)
        z_low, z_high = (z - math.atanh(low_b)) / se, (z - math.atanh(high_b)) / se
        p_low, p_high = float(sps.norm.sf(z_low)), float(sps.norm.cdf(z_high))
        q = sps.norm.ppf(1 - alpha)
        row.update(estimate=r, statistic_low=z_low, p_low=p_low, statistic_high=z_high, p_high=p_high,
                   dof=float(n - 2 - k), p_val=max(p_low, p_high), ci_low=math.tanh(z - q * se),
                   ci_high=math.tanh(z + q * se), equivalent=max(p_low, p_high) < alpha)
        return [row]

    rows, group_cols = _grouped(data, by, one)
    return _finish_tost(rows, group_cols, padjust)


def require_expect_level(expect: str, margin: float, level: float) -> None:
    """Validate ``expect``/``margin``/``level`` before any work (one-line errors)."""
    _check_expect(expect, margin)
    require_level(level)
