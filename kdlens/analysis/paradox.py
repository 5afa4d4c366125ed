"""The generalization-fidelity paradox test for a user's own runs (or the paper's rows).

The paradox paper claims two things at once: distillation raises accuracy, and a student that
follows its teacher more closely (higher fidelity or agreement) does *not* gain more from it. The
second half is a claim of no relation, so it is tested as one: an equivalence test of the (partial)
rank correlation against ``|rho| < margin``. A correlation whose interval includes both 0 and
relations of interest leaves the paradox ``inconclusive``, whatever its p-value.

Student size drives both fidelity (larger students follow better) and the gain (smaller students
gain more), so the correlation can be taken holding covariates fixed (``controls=``: a partial
rank correlation) and within strata (``by=``: per stratum, and pooled within strata).

Rows are not independent when they share a cluster: several KD runs share one SFT baseline (three
losses per student and seed), or the paper's 11 rows come from 6 students. The gain is then
averaged within each cluster, and each correlation's interval is widened by the design effect a
cluster bootstrap estimates, with the clusters as the unit (``cluster=``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from kdlens.analysis._validate import require_columns, require_nonempty
from kdlens.analysis.verdicts import (
    ACCURACY_MARGIN,
    MIN_CORRELATION_N,
    RHO_MARGIN,
    correlation_row,
    finish_verdicts,
    mean_row,
    require_bootstrap,
    require_expect_level,
)

__all__ = ["paradox_test"]

_LEAD = ("variable", "adjustment", "stratum", "decisive")


def _gain_row(runs: pd.DataFrame, gain: str, cluster: str | None, unit: str, margin: float, scale: float) -> dict:
    part = runs.loc[runs[gain].notna()]
    note = ""
    if cluster is not None:
        values = part.groupby(part[cluster].astype(str), sort=True)[gain].mean().to_numpy(float)
        unit = f"{cluster} clusters"
        if len(values) < len(part):
            note = f"{len(part)} rows share {len(values)} {cluster}(s): gains averaged within each"
    else:
        values = part[gain].to_numpy(float)
    return mean_row(values, hypothesis=f"{gain} is positive (SESOI {margin * scale:g} points)", unit=unit,
                    expect="greater", margin=margin, note=note, scale=scale, units=" points", label="mean gain")


def paradox_test(
    runs: pd.DataFrame,
    *,
    gain: str = "accuracy_gain",
    fidelity: str | Sequence[str] = ("bleu", "agreement"),
    controls: Sequence[str] = (),
    by: str | Sequence[str] | None = None,
    method: str = "spearman",
    cluster: str | None = "auto",
    unit: str = "runs",
    margin: float = RHO_MARGIN,
    gain_margin: float = ACCURACY_MARGIN,
    level: float = 0.95,
    min_n: int = MIN_CORRELATION_N,
    padjust: str = "holm",
    simultaneous: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Is the gain positive, and does fidelity (or agreement) not go with it? Three-way verdicts.

    Parameters
    ----------
    runs : DataFrame
        One row per distilled run (or per (teacher, student) row of the paper): ``gain``, the
        ``fidelity`` columns and any ``controls``/``by`` columns. NaN rows are dropped per test.
    gain : str
        Accuracy gain over the baseline: kdlens' 0-1 scale (then ``gain_margin=0.02`` is 2 points),
        or percentage points (pass ``gain_margin=2.0``; gains beyond +-1 with a margin below 1 are
        refused as a unit mix-up).
    fidelity : str or list of str
        Columns whose relation with ``gain`` is tested (BLEU, agreement, ...).
    controls : list of str
        Covariates held fixed: a partial rank correlation (numeric columns ranked, others dummy
        coded), e.g. ``["student_size"]``.
    by : str or list of str, optional
        Strata (e.g. ``"teacher"``): one row per stratum, and the pooled within-strata correlation
        (the strata as dummy-coded covariates) as the decisive row.
    method : {"spearman", "pearson"}
    cluster : str or None
        Column whose rows are not independent: rows sharing a baseline (``baseline_run_id``) or a
        student. When a value repeats, the gains are averaged within each cluster for the gain test,
        and each correlation's Fisher-z standard error is multiplied by the square root of the
        design effect a cluster bootstrap estimates, with a t reference on ``G - 1`` degrees of
        freedom for ``G`` clusters; ``n`` then counts clusters, and ``min_n`` clusters are needed
        for a verdict. ``"auto"`` (default) uses ``baseline_run_id`` when present; None treats rows
        as independent. A column whose values are all distinct changes nothing.
    unit : str
        What one row is, for the sentences (``"runs"``, ``"rows of the paper (teacher, student)"``).
    margin : float
        Correlation SESOI: ``|rho| < margin`` is "no relation" (default 0.3).
    gain_margin : float
        SESOI of the gain, in its units.
    level : float
        Level of every interval (familywise with ``simultaneous=True``).
    min_n : int
        Fewest rows (minus covariates), and fewest clusters, for a correlation verdict
        (:data:`MIN_CORRELATION_N`).
    padjust : str
        Correction of ``p_val`` across all rows (one family).
    simultaneous : bool
        Bonferroni-simultaneous intervals over the rows with an interval, so that the verdicts
        hold together at ``level`` (:mod:`kdlens.analysis.verdicts`); default per comparison.
    n_boot, seed : int
        Replicates and seed of the cluster bootstrap (used only when clusters repeat).

    Returns
    -------
    DataFrame
        ``variable, adjustment, stratum, decisive`` then :data:`kdlens._schema.VERDICT_COLUMNS`.
        Row 1: ``gain`` is positive (``expect="greater"``). Then for each fidelity column: the
        plain correlation (``adjustment="none"``), and with ``controls``/``by`` the adjusted one
        and one per stratum. Correlation rows test the paradox, "``col`` does not go with the gain"
        (``expect="equivalent"``): ``p_val`` is the TOST p of the Fisher-z statistic the interval
        comes from, ``statistic`` that z (``atanh(r) / se``), ``test`` ends in ``_clustered`` when
        the design effect was applied. ``decisive`` marks the gain row and, per fidelity column, the
        most adjusted pooled row. ``attrs["verdict"]`` is the paradox' verdict (supported only when
        the gain is and every decisive correlation is; contradicted when any of them is),
        ``attrs["sentence"]`` says it in words.

    Notes
    -----
    Partial correlations: :func:`kdlens.analysis.partial_correlation`. Verdicts:
    :func:`kdlens.analysis.decide` on Fisher-z intervals (equivalence = the interval inside
    ``(-margin, margin)``, Lakens 2017) with Bonett & Wright's (2000) standard error for Spearman
    (:func:`kdlens.analysis.fisher_se`). Clustered rows: the design effect (Kish 1965) is the
    variance of ``atanh(r)`` under a cluster bootstrap (whole clusters resampled; Field & Welsh
    2007) over its variance under a row bootstrap with the same seed; with one row per cluster the
    two draw the same resamples and the interval is the plain one.

    References: Ramesh, Sengupta and Chakraborty 2025, Findings of ACL (``ramesh2025generalization``);
    Student 1908 (``student1908probable``, the gain's t interval); Spearman 1904 (``spearman1904proof``);
    Fisher 1915 (``fisher1915frequency``, the z transform); Bonett and Wright 2000 (``bonett2000sample``,
    the Spearman standard error); Lakens 2017 (equivalence testing). ``kdlens cite``
    prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    cols = [fidelity] if isinstance(fidelity, str) else list(fidelity)
    if not cols:
        raise ValueError("fidelity must name at least one column, e.g. fidelity=('bleu', 'agreement')")
    controls = list(controls)
    by_cols = [] if by is None else ([by] if isinstance(by, str) else list(by))
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    require_expect_level("equivalent", margin, level)
    require_expect_level("greater", gain_margin, level)
    require_bootstrap(n_boot, seed)
    if cluster == "auto":
        cluster = "baseline_run_id" if "baseline_run_id" in runs.columns else None
    require_columns(runs, [gain, *cols, *controls, *by_cols, *([cluster] if cluster else [])], what="runs")
    require_nonempty(runs, what="runs")
    runs = runs.reset_index(drop=True)  # strata are located by position (a concatenated table repeats labels)
    gains = pd.to_numeric(runs[gain], errors="coerce")
    if gain_margin < 1 and (gains.abs() > 1).any():
        raise ValueError(f"{gain} has values beyond +-1 (up to {gains.abs().max():g}): it looks like percentage "
                         f"points, but gain_margin={gain_margin} is on the 0-1 scale; pass gain_margin=2.0")
    scale = 1.0 if gain_margin >= 1 else 100.0

    rows = [{"variable": gain, "adjustment": "none", "stratum": "all", "decisive": True,
             **_gain_row(runs, gain, cluster, unit, gain_margin, scale)}]
    label = {"spearman": "rho", "pearson": "r"}[method]
    x = pd.to_numeric(runs[gain], errors="coerce").to_numpy(float)
    labels = runs[cluster].to_numpy(object) if cluster else None
    adjust_text = ", ".join(([f"holding {', '.join(controls)} fixed"] if controls else [])
                            + ([f"within {', '.join(by_cols)}"] if by_cols else []))
    for col in cols:
        y = pd.to_numeric(runs[col], errors="coerce").to_numpy(float)
        hyp = f"{col} does not go with {gain} (|{label}| < {margin:g}: the paradox)"
        common = dict(method=method, unit=unit, expect="equivalent", margin=margin, min_n=min_n,
                      cluster_name=cluster or "cluster", n_boot=n_boot, seed=seed)
        rows.append({"variable": col, "adjustment": "none", "stratum": "all", "decisive": not adjust_text,
                     **correlation_row(x, y, None, hypothesis=hyp, clusters=labels, **common)})
        if not adjust_text:
            continue
        covs = runs[[*controls, *by_cols]].copy()
        for c in by_cols:
            covs[c] = covs[c].astype(str)  # strata are categories, whatever their dtype
        rows.append({"variable": col, "adjustment": adjust_text, "stratum": "all", "decisive": True,
                     **correlation_row(x, y, covs, hypothesis=f"{hyp}, {adjust_text}", clusters=labels,
                                       **common)})
        if by_cols:
            for key, part in runs.groupby(by_cols, sort=True, dropna=False):
                key = key if isinstance(key, tuple) else (key,)
                stratum = ", ".join(f"{c} = {k}" for c, k in zip(by_cols, key, strict=True))
                idx = runs.index.get_indexer(part.index)
                sub = runs.loc[part.index, controls] if controls else None
                rows.append({"variable": col, "adjustment": adjust_text, "stratum": stratum, "decisive": False,
                             **correlation_row(x[idx], y[idx], sub, hypothesis=f"{hyp}, in {stratum}",
                                               clusters=None if labels is None else labels[idx], **common)})
    out = finish_verdicts(rows, _LEAD, padjust, level=level, simultaneous=simultaneous)
    decisive = out.loc[out["decisive"]]
    verdicts = list(decisive["verdict"])
    overall = ("contradicted" if "contradicted" in verdicts else
               "supported" if all(v == "supported" for v in verdicts) else "inconclusive")
    parts = "; ".join(f"{r['variable']}{' (' + r['adjustment'] + ')' if r['adjustment'] != 'none' else ''}: "
                      f"{r['verdict']}" for _, r in decisive.iterrows())
    out.attrs["verdict"] = overall
    out.attrs["sentence"] = (f"The generalization-fidelity paradox ({gain} is positive and none of "
                             f"{', '.join(cols)} goes with it, |{label}| < {margin:g}): {overall} ({parts}).")
    return out
