"""Percentile bootstrap of ratio-of-sums statistics over independent units (examples).

Every agreement and fidelity summary kdlens reports is a ratio ``sum(num_i) / sum(den_i)`` over
units ``i`` (examples): a rate is ``num_i`` = event indicator, ``den_i`` = 1 when the example is in
the denominator; a token mean is ``num_i`` = sum over the example's tokens, ``den_i`` = its token
count. Resampling units, not tokens, respects that tokens nest in examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ratio_bootstrap_ci"]

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
