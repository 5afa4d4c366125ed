"""Three-way verdicts read from confidence intervals, equivalence tests (TOST), and their sentences.

A verdict says whether the data support, contradict, or cannot decide a stated hypothesis. It is
read from a two-sided confidence interval ``[low, high]`` of the effect at ``level`` and from a
smallest effect of interest (SESOI) ``m`` (``margin``), never from a p-value alone:

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

**The p-value shown is the one that matches the decision.** With a 95% interval the directional
decisions are one-sided tests at 2.5% and the equivalence decision is a TOST at 2.5% (pass
``level=0.90`` for the TOSTER convention, 5%, which :func:`tost` uses by default). Every verdict
table therefore carries ``p_alpha``, the level its ``p_val`` is compared with: ``(1 - level) / 2``
for ``greater``, ``less`` and ``equivalent`` (one-sided and TOST p-values), ``1 - level`` for
``two-sided``; ``p_val < p_alpha`` exactly when the interval excludes 0 in the hypothesis'
direction (inside ``(-m, m)`` for ``equivalent``), because the p-value and the interval come from
the same statistic (a t statistic for means, Fisher's z for correlations). Each sentence says it,
e.g. "one-sided p = 0.028 vs 0.025".

**Families.** The rows one call returns are one family: ``p_adj`` corrects ``p_val`` across them
(Holm by default; ``p_adj < (1 - level) / 2`` is then a familywise decision for the directional
rows). The intervals, and so the verdicts, are per comparison by default, as in most papers, and
every sentence of a family of more than one comparison says so ("per-comparison 95% CI, one of 4;
familywise: simultaneous=True"). ``simultaneous=True`` widens every interval of the family to the
Bonferroni level ``1 - (1 - level) / m`` for ``m`` compared rows (Dunn 1961), so that all the
family's verdicts hold together with probability at least ``level``; ``level`` in the table is
then the level actually used and ``p_alpha`` the Bonferroni one.

The default margins (:data:`kdlens.analysis.RHO_MARGIN`, :data:`kdlens.analysis.ACCURACY_MARGIN`)
are conventions a user should restate for their setting; every sentence names the margin it used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from kdlens._schema import EQUIVALENCE_COLUMNS, VERDICT_COLUMNS
from kdlens.analysis._validate import require_columns, require_level
from kdlens.analysis.stats import (
    _grouped,
    _no_spread,
    _numeric,
    adjust_pvalues,
    fisher_se,
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


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """An effect with its standard error and reference distribution; a row's interval, p-value and
    verdict at any level all follow from it, so they always agree.

    ``value`` is the mean (t intervals) or Fisher's ``atanh(r)`` (``fisher=True``: intervals and
    margins map through ``tanh``/``atanh``); ``dof`` is the t reference's degrees of freedom
    (``inf``: the normal).
    """

    value: float
    se: float
    dof: float = math.inf
    fisher: bool = False

    @property
    def statistic(self) -> float:
        return self.value / self.se

    def interval(self, level: float) -> tuple[float, float]:
        q = float(sps.t.ppf(0.5 + level / 2, self.dof))
        low, high = self.value - q * self.se, self.value + q * self.se
        return (math.tanh(low), math.tanh(high)) if self.fisher else (low, high)

    def p_value(self, expect: str, margin: float) -> float:
        """One-sided p for ``greater``/``less``, two-sided for ``two-sided``, the TOST p (the larger
        one-sided p against ``-margin`` and ``+margin``) for ``equivalent``."""
        t, dof = self.statistic, self.dof
        if expect == "greater":
            return float(sps.t.sf(t, dof))
        if expect == "less":
            return float(sps.t.cdf(t, dof))
        if expect == "two-sided":
            return float(2 * sps.t.sf(abs(t), dof))
        bound = math.atanh(min(margin, 1 - 1e-12)) if self.fisher else margin
        return float(max(sps.t.sf((self.value + bound) / self.se, dof), sps.t.cdf((self.value - bound) / self.se, dof)))


def mean_estimate(values: np.ndarray) -> tuple[Estimate | None, float, float, int]:
    """The t estimate of the mean of independent units: ``(estimate, mean, sd, n)``.

    ``estimate`` is None (no interval) with fewer than 2 finite units or values equal up to
    rounding; ``sd`` (ddof 1) is 0 in the latter case and NaN with fewer than 2 units.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return None, mean, math.nan, n
    # equal values up to rounding (e.g. 0.56 - 0.50 per seed) have no variance to build a t interval on
    if _no_spread(x):
        return None, mean, 0.0, n
    sd = float(x.std(ddof=1))
    return Estimate(mean, sd / math.sqrt(n), float(n - 1)), mean, sd, n


def pending_row(*, hypothesis: str, test: str, unit: str, expect: str, margin: float, n: int, estimate: float,
                est: Estimate | None = None, sd: float = math.nan, note: str = "", statistic: float = math.nan,
                dof: float = math.nan, p_val: float = math.nan, scale: float = 1.0, units: str = "",
                label: str = "mean", no_verdict: str = "", sentence: str = "") -> dict:
    """A verdict row before its family is known; :func:`finish_verdicts` computes its interval.

    ``est`` None: no interval (``note`` says why; ``statistic``, ``dof`` and ``p_val`` may still
    be given, e.g. an exact permutation p). ``sd`` (one unit's standard deviation) gives the
    ``mde``. ``scale``/``units``/``label`` only change the sentence (e.g. 100 and ``" points"``
    for a difference of rates). ``no_verdict`` (the reason) marks a row shown for reference only
    (the authors' pseudo-replicated unit): its verdict is empty and its sentence starts "As
    published (no verdict)". ``sentence`` marks a row whose sentence the caller wrote (an omnibus
    test with no interval): its verdict is empty.
    """
    return {"hypothesis": hypothesis, "test": test, "unit": unit, "estimate": float(estimate), "expect": expect,
            "margin": float(margin), "statistic": float(statistic), "dof": float(dof), "p_val": float(p_val),
            "n": int(n), "note": note, "_est": est, "_sd": float(sd), "_fmt": (scale, units, label),
            "_no_verdict": no_verdict, "_sentence": sentence}


def mean_row(values: np.ndarray, *, hypothesis: str, unit: str, expect: str, margin: float, note: str = "",
             scale: float = 1.0, units: str = "", label: str = "mean", test: str = "mean_t",
             no_verdict: str = "") -> dict:
    """A pending row for the mean of independent units (:func:`mean_estimate`)."""
    est, mean, sd, n = mean_estimate(values)
    notes = [note] if note else []
    if est is None:
        notes.insert(0, f"n = {n}: too few {unit} (or no variation) for an interval")
    return pending_row(hypothesis=hypothesis, test=test, unit=unit, expect=expect, margin=margin, n=n,
                       estimate=mean, est=est, sd=sd, note="; ".join(notes), scale=scale, units=units, label=label,
                       no_verdict=no_verdict)


def correlation_row(x: np.ndarray, y: np.ndarray, covariates: pd.DataFrame | None, *, method: str,
                    hypothesis: str, unit: str, expect: str, margin: float, min_n: int = MIN_CORRELATION_N,
                    note: str = "", clusters: np.ndarray | None = None, cluster_name: str = "cluster",
                    n_boot: int = 2000, seed: int = 0, no_verdict: str = "") -> dict:
    """A pending row for the (partial) rank or linear correlation of ``x`` and ``y`` given covariates.

    The interval is Fisher's z, ``atanh(r) +- q se`` with ``se`` from
    :func:`kdlens.analysis.fisher_se` on ``n - k`` units (``k`` covariate columns), and the p-value
    is that of the same statistic ``atanh(r) / se``. ``clusters`` (one label per row): when rows
    repeat a cluster, ``se`` is multiplied by the square root of the design effect that a cluster
    bootstrap estimates (:func:`kdlens.analysis._bootstrap.cluster_design_effect`), the reference
    becomes t with ``G - 1`` degrees of freedom for ``G`` clusters, ``n`` counts clusters, and at
    least ``min_n`` clusters are needed for a verdict.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if covariates is not None and covariates.shape[1]:
        keep &= covariates.notna().all(axis=1).to_numpy()
    labels = None
    if clusters is not None:
        labels = pd.Series(np.asarray(clusters, dtype=object))
        keep &= labels.notna().to_numpy()
    cov = covariates.loc[keep].reset_index(drop=True) if covariates is not None and covariates.shape[1] else None
    rx, ry, k, n = partial_rank_residuals(x[keep], y[keep], cov, method=method)
    test = ("partial_" if k else "") + method
    label = "partial rho" if k and method == "spearman" else "rho" if method == "spearman" else "r"
    groups = labels[keep].astype(str).to_numpy() if labels is not None else None
    n_clusters = len(set(groups)) if groups is not None else n
    clustered = groups is not None and n_clusters < n
    if clustered:
        test += "_clustered"
        unit = f"{cluster_name} clusters ({n} {unit})"
    base = dict(hypothesis=hypothesis, test=test, unit=unit, expect=expect, margin=margin,
                n=n_clusters if clustered else n, label=label, no_verdict=no_verdict)
    notes = [note] if note else []
    if rx is None:
        return pending_row(estimate=math.nan, note="; ".join([f"n = {n}: too few complete rows for a correlation",
                                                               *notes]), **base)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return pending_row(estimate=math.nan, note="; ".join(
            ["a constant input (after removing the covariates): the correlation is undefined", *notes]), **base)
    r = float(np.corrcoef(rx, ry)[0, 1])
    se = fisher_se(r, n - k, method)
    after = f" after {k} covariate(s)" if k else ""
    if n - k < min_n:
        notes.append(f"n = {n - k}{after} < {min_n}: too few for a correlation interval (Bonett & Wright 2000), "
                     "no verdict")
        return pending_row(estimate=r, note="; ".join(notes), **base)
    if abs(r) >= 1 or not math.isfinite(se):
        notes.append("|r| = 1: the Fisher-z interval is undefined")
        return pending_row(estimate=r, note="; ".join(notes), **base)
    if not clustered:
        return pending_row(estimate=r, est=Estimate(math.atanh(r), se, fisher=True), note="; ".join(notes), **base)
    if n_clusters < min_n:
        notes.append(f"{n_clusters} {cluster_name} clusters < {min_n}: too few for a cluster-adjusted interval, "
                     "no verdict")
        return pending_row(estimate=r, note="; ".join(notes), **base)
    from kdlens.analysis._bootstrap import cluster_design_effect

    deff, dropped = cluster_design_effect(x[keep], y[keep], cov, groups, method=method, n_boot=n_boot, seed=seed)
    notes.append(f"{n} rows in {n_clusters} {cluster_name} clusters: design effect {deff:.2f} (cluster bootstrap, "
                 f"{n_boot} replicates), t reference on {n_clusters - 1} dof")
    if dropped:
        notes.append(f"{dropped} degenerate bootstrap replicate(s) left out")
    if not math.isfinite(deff):
        notes.append("the cluster bootstrap gave no usable replicate: no interval")
        return pending_row(estimate=r, note="; ".join(notes), **base)
    est = Estimate(math.atanh(r), se * math.sqrt(max(deff, 1.0)), float(n_clusters - 1), fisher=True)
    return pending_row(estimate=r, est=est, note="; ".join(notes), **base)


# --------------------------------------------------------------------------- families and sentences


def _compared(row: dict) -> bool:
    """Whether a pending row is a comparison with an interval and a verdict (it counts in the family)."""
    return row["_est"] is not None and not row["_no_verdict"] and not row["_sentence"]


def family_level(level: float, m: int, simultaneous: bool) -> float:
    """The per-interval level of a family of ``m`` comparisons: Bonferroni's ``1 - (1 - level) / m``
    when ``simultaneous``, else ``level``."""
    return 1 - (1 - level) / m if simultaneous and m > 1 else level


def _pct(level: float) -> str:
    return f"{round(100 * level, 2):g}"


def _family_text(m: int, simultaneous: bool, level: float) -> str:
    if m <= 1:
        return ""
    if simultaneous:
        return (f"Bonferroni-simultaneous {_pct(family_level(level, m, True))}% CI in a family of {m}: "
                f"familywise {_pct(level)}%")
    return f"per-comparison {_pct(level)}% CI in a family of {m}; familywise: simultaneous=True"


def p_alpha(level: float, expect: str) -> float:
    """The level the p-value matching ``expect`` is compared with for a two-sided interval at ``level``."""
    value = 1 - level if expect == "two-sided" else (1 - level) / 2
    return float(f"{value:.12g}")  # 0.025, not 0.025000000000000022


def finish_verdicts(rows: list[dict], lead: Sequence[str], padjust: str, *, level: float,
                    simultaneous: bool = False) -> pd.DataFrame:
    """Intervals, p-values, verdicts and sentences of one family of pending rows, ``lead`` columns first.

    The family's ``m`` compared rows get intervals at :func:`family_level` (``level``, or
    Bonferroni's when ``simultaneous``); ``p_adj`` corrects ``p_val`` across every row (NaN ones
    excluded).
    """
    m = sum(map(_compared, rows))
    used = family_level(level, m, simultaneous)
    family = _family_text(m, simultaneous, level)
    done = [_finish_row(row, used, family if _compared(row) else "") for row in rows]
    table = pd.DataFrame(done, columns=[*lead, *VERDICT_COLUMNS])
    if len(table):
        table["p_adj"] = adjust_pvalues(table["p_val"].to_numpy(dtype=float), padjust)
    table["n"] = table["n"].astype("int64")
    return table


def _finish_row(pending: dict, level: float, family: str) -> dict:
    from kdlens.analysis.power import minimal_detectable_effect

    row = {k: v for k, v in pending.items() if not k.startswith("_")}
    est: Estimate | None = pending["_est"]
    row["ci_low"] = row["ci_high"] = math.nan
    if est is not None:
        row["ci_low"], row["ci_high"] = est.interval(level)
        row.update(statistic=est.statistic, dof=est.dof if math.isfinite(est.dof) else math.nan,
                   p_val=est.p_value(row["expect"], row["margin"]))
    row.update(level=level, p_alpha=p_alpha(level, row["expect"]), p_adj=math.nan,
               mde=minimal_detectable_effect(pending["_sd"], row["n"], level=level))
    if pending["_sentence"] or pending["_no_verdict"]:
        row["verdict"] = ""
    else:
        row["verdict"] = decide(row["ci_low"], row["ci_high"], expect=row["expect"], margin=row["margin"])
    scale, units, label = pending["_fmt"]
    row["sentence"] = pending["_sentence"] or _sentence(row, scale=scale, units=units, label=label, family=family,
                                                        no_verdict=pending["_no_verdict"])
    return row


def _num(x: float, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a" if x is None or math.isnan(float(x)) else ("+inf" if x > 0 else "-inf")
    value = float(x) * scale
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else f"{p:.2g}"


#: how a sentence names the p-value that matches each direction
_P_KIND = {"greater": "one-sided p", "less": "one-sided p", "two-sided": "two-sided p", "equivalent": "TOST p"}


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


def _sentence(row: dict, *, scale: float, units: str, label: str, family: str, no_verdict: str) -> str:
    """One sentence: hypothesis, verdict, estimate with CI, n and unit, the p-value against its
    threshold, the reason, the family and the note."""
    verdict = row["verdict"]
    signed = scale != 1.0 or label not in ("rho", "r", "partial rho")
    n_text = f"n = {int(row['n'])} {row['unit']}"
    p_kind = _P_KIND[row["expect"]]
    has_p = math.isfinite(row["p_val"])
    if not math.isfinite(row["ci_low"]) or not math.isfinite(row["ci_high"]):
        why = row["note"] or "no interval could be computed"
        est = "" if not math.isfinite(row["estimate"]) else \
            f"{label} = {_num(row['estimate'], scale, signed=signed)}{units}, "
        p_text = f", {p_kind} = {_p(row['p_val'])}" if has_p else ""
        head = f"As published (no verdict): {row['hypothesis']}" if no_verdict else f"{row['hypothesis']}: {verdict}"
        return f"{head} ({why}; {est}{n_text}{p_text})."
    est = (f"{label} = {_num(row['estimate'], scale, signed=signed)}{units}, {_pct(row['level'])}% CI "
           f"[{_num(row['ci_low'], scale, signed=signed)}, {_num(row['ci_high'], scale, signed=signed)}], {n_text}")
    if has_p:
        est += f", {p_kind} = {_p(row['p_val'])} vs {row['p_alpha']:.3g}"
    if no_verdict:
        tail = "; ".join(filter(None, [no_verdict, row["note"]]))
        return f"As published (no verdict): {row['hypothesis']} ({est}; {tail})."
    m = f"{_num(row['margin'], scale)}{units}"
    why = _why(row["ci_low"], row["ci_high"], row["expect"], row["margin"], verdict, m)
    tail = "; ".join(filter(None, [why, family, row["note"]]))
    return f"{row['hypothesis']}: {verdict} ({est}; {tail})."


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
    Pearson and ``1 + r^2 / 2`` for Spearman (Bonett & Wright 2000; :func:`kdlens.analysis.fisher_se`);
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

    def one(part: pd.DataFrame) -> list[dict]:
        cov = part[covar] if covar else None
        rx, ry, k, n = partial_rank_residuals(_numeric(part, x), _numeric(part, y), cov, method=method)
        test = f"tost_{'partial_' if k else ''}{method}"
        row = {"test": test, **dict.fromkeys(EQUIVALENCE_COLUMNS, math.nan), "low_bound": low_b,
               "high_bound": high_b, "n": n, "equivalent": False, "note": ""}
        if rx is None or n - k <= 3 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
            row["note"] = f"n = {n} with {k} covariate(s): too few units or a constant input"
            return [row]
        r = float(np.corrcoef(rx, ry)[0, 1])
        if abs(r) >= 1:
            row.update(estimate=r, note="|r| = 1: the Fisher-z test is undefined")
            return [row]
        se = fisher_se(r, n - k, method)
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


def require_bootstrap(n_boot: int, seed: int) -> None:
    """Validate a bootstrap's ``n_boot`` and ``seed`` before any work (one-line errors)."""
    if not isinstance(n_boot, int | np.integer) or isinstance(n_boot, bool) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100 (a variance needs replicates), got {n_boot!r}; "
                         "e.g. n_boot=2000")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}; e.g. seed=0")
