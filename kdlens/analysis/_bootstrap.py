"""Bootstraps over independent units: ratio-of-sums statistics, and the design effect of clustered rows.

Every agreement and fidelity summary kdlens reports is a ratio ``sum(num_i) / sum(den_i)`` over
units ``i`` (examples): a rate is ``num_i`` = event indicator, ``den_i`` = 1 when the example is in
the denominator; a token mean is ``num_i`` = sum over the example's tokens, ``den_i`` = its token
count. Resampling units, not tokens, respects that tokens nest in examples.

A correlation over rows that share a cluster (KD runs sharing one SFT baseline, rows of one
student) is resampled by cluster: :func:`cluster_design_effect`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["cluster_design_effect", "ratio_bootstrap_ci"]

#: bootstrap replicates drawn per block, to bound memory at ``_BLOCK * n_units`` integers
_BLOCK = 256


def ratio_bootstrap_ci(
    num: np.ndarray,
    den: np.ndarray,
    *,
    strata: Sequence | np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap CI of ``sum(num) / sum(den)``.

    Parameters
    ----------
    num, den : ndarray, shape [n_units]
        Per-unit numerator and denominator contributions.
    strata : array-like, shape [n_units], optional
        Units are resampled within each stratum (e.g. the task of each example for an overall
        estimate), which keeps the task mix fixed across replicates.
    n_boot : int
        Number of bootstrap replicates; 0 skips the CI (NaN bounds).
    seed : int
        Seed of the ``numpy.random.Generator``; the same inputs and seed give the same CI.
    level : float
        Two-sided confidence level.

    Returns
    -------
    value, ci_low, ci_high : float
        NaN when the denominator sums to 0. Replicates whose denominator is 0 are dropped.
    """
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"num and den must be 1-D of equal length, got {num.shape} and {den.shape}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    total = den.sum()
    value = float(num.sum() / total) if total > 0 else float("nan")
    if n_boot == 0 or not np.isfinite(value):
        return value, float("nan"), float("nan")
    strata_arr = np.zeros(len(num), dtype=int) if strata is None else np.asarray(strata)
    if strata_arr.shape != num.shape:
        raise ValueError(f"strata must have shape {num.shape}, got {strata_arr.shape}")
    rng = np.random.default_rng(seed)
    boot_num = np.zeros(n_boot)
    boot_den = np.zeros(n_boot)
    # iterate strata in sorted order so the draw sequence does not depend on row order of groups
    for key in sorted(set(strata_arr.tolist()), key=str):
        members = np.flatnonzero(strata_arr == key)
        s_num, s_den = num[members], den[members]
        for start in range(0, n_boot, _BLOCK):
            stop = min(start + _BLOCK, n_boot)
            idx = rng.integers(0, len(members), size=(stop - start, len(members)))
            boot_num[start:stop] += s_num[idx].sum(axis=1)
            boot_den[start:stop] += s_den[idx].sum(axis=1)
    ok = boot_den > 0
    if not ok.any():
        return value, float("nan"), float("nan")
    stats = boot_num[ok] / boot_den[ok]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return value, float(low), float(high)


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average ranks, within each resample, of every row's value (shape [B, n]).

    ``weights[b, i]`` is how often row ``i`` is drawn in resample ``b``; the rank of a value is the
    number of drawn values below it plus the mean position among its ties, exactly what ranking the
    resample with its repeated rows gives (rows drawn 0 times get a rank that is never used).
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    inverse = np.empty(len(values), dtype=np.intp)
    inverse[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1  # distinct value of each row
    per_value = np.add.reduceat(weights[:, order], starts, axis=1)  # [B, U]: draws of each distinct value
    below = np.cumsum(per_value, axis=1) - per_value
    return (below + (per_value + 1.0) / 2.0)[:, inverse]


def _weighted_partial_r(x: np.ndarray, y: np.ndarray, numeric: np.ndarray, dummies: np.ndarray,
                        weights: np.ndarray, method: str) -> np.ndarray:
    """The (partial) correlation of each resample given by ``weights`` (shape [B, n]) -> [B].

    Equal to ranking the resample (Spearman), regressing on the covariates by least squares and
    correlating the residuals, as :func:`kdlens.analysis.stats.partial_rank_residuals` does on the
    resample itself; NaN for a resample where a residual is constant.
    """
    b, n = weights.shape

    def prepared(v: np.ndarray) -> np.ndarray:
        return _weighted_ranks(v, weights) if method == "spearman" else np.broadcast_to(v, (b, n))

    columns = [np.ones((b, n)), *(prepared(c) for c in numeric.T), *(np.broadcast_to(c, (b, n)) for c in dummies.T)]
    design = np.stack(columns, axis=2)  # [B, n, p]
    weighted = design * weights[:, :, None]
    # pinv: a dummy whose level was not drawn is a zero column, and the design may lose rank
    gram_inv = np.linalg.pinv(np.einsum("bnp,bnq->bpq", weighted, design), hermitian=True)

    def residual(v: np.ndarray) -> np.ndarray:
        beta = np.einsum("bpq,bq->bp", gram_inv, np.einsum("bnp,bn->bp", weighted, v))
        return v - np.einsum("bnp,bp->bn", design, beta)

    px, py = prepared(x), prepared(y)
    rx, ry = residual(px), residual(py)
    sxx, syy = (weights * rx * rx).sum(axis=1), (weights * ry * ry).sum(axis=1)
    sxy = (weights * rx * ry).sum(axis=1)
    # a residual that is zero up to rounding (a constant input in this resample) has no correlation
    tiny_x = 1e-12 * np.maximum((weights * px * px).sum(axis=1), 1e-300)
    tiny_y = 1e-12 * np.maximum((weights * py * py).sum(axis=1), 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    r[(sxx <= tiny_x) | (syy <= tiny_y)] = np.nan
    return r


def _fisher_z_draws(x, y, numeric, dummies, codes, n_units, method, n_boot, seed) -> np.ndarray:
    """``atanh`` of the correlation in ``n_boot`` resamples of ``n_units`` units drawn with
    replacement; row ``i`` belongs to unit ``codes[i]``."""
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, _BLOCK):
        stop = min(start + _BLOCK, n_boot)
        draws = rng.integers(0, n_units, size=(stop - start, n_units))
        counts = np.zeros((stop - start, n_units))
        np.add.at(counts, (np.arange(stop - start)[:, None], draws), 1.0)
        r = _weighted_partial_r(x, y, numeric, dummies, counts[:, codes], method)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start:stop] = np.arctanh(r)
    return out


def cluster_design_effect(
    x: np.ndarray,
    y: np.ndarray,
    covariates: pd.DataFrame | None,
    clusters: np.ndarray,
    *,
    method: str = "spearman",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, int]:
    r"""Design effect of clustered rows on Fisher's ``z = atanh(r)`` of a (partial) correlation.

    Parameters
    ----------
    x, y : ndarray, shape [n]
        Complete rows (no NaN).
    covariates : DataFrame, optional
        Covariates partialled out (:func:`kdlens.analysis.partial_correlation`), aligned with ``x``.
    clusters : array-like, shape [n]
        Cluster label of each row (e.g. the SFT baseline a KD run shares, or the student).
    method : {"spearman", "pearson"}
    n_boot : int
        Replicates of each bootstrap.
    seed : int
        Seed of both bootstraps (the same seed for both: with one row per cluster they draw the same
        resamples and the design effect is exactly 1).

    Returns
    -------
    deff, dropped : float, int
        ``var*(z | clusters resampled) / var*(z | rows resampled)`` and the number of replicates
        left out of either variance (a constant residual, ``|r| = 1``).

    Notes
    -----
    The cluster bootstrap resamples whole clusters with replacement (Davison & Hinkley 1997,
    section 3.8; Field & Welsh 2007), so its variance of ``z`` includes the correlation of rows
    within a cluster; the row bootstrap treats rows as independent. Their ratio is the design
    effect (Kish 1965): Fisher's standard error times :math:`\sqrt{\max(1, \mathrm{deff})}`
    accounts for the clustering while keeping the formula's small-sample calibration. Each
    resample is a weight vector (how often each row is drawn), so the ranks, the least squares on
    the covariates and the correlation are computed for all replicates at once.
    """
    from kdlens.analysis.stats import covariate_blocks

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if covariates is not None and covariates.shape[1]:
        numeric, dummies = covariate_blocks(covariates.reset_index(drop=True))
    else:
        numeric = dummies = np.empty((len(x), 0))
    codes, uniques = pd.factorize(pd.Series(np.asarray(clusters, dtype=object)).astype(str), sort=False)
    by_cluster = _fisher_z_draws(x, y, numeric, dummies, codes, len(uniques), method, n_boot, seed)
    by_row = _fisher_z_draws(x, y, numeric, dummies, np.arange(len(x)), len(x), method, n_boot, seed)
    ok_c, ok_r = np.isfinite(by_cluster), np.isfinite(by_row)
    dropped = int((~ok_c).sum() + (~ok_r).sum())
    if ok_c.sum() < 2 or ok_r.sum() < 2:
        return math.nan, dropped
    return float(np.var(by_cluster[ok_c], ddof=1) / np.var(by_row[ok_r], ddof=1)), dropped
