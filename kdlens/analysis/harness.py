"""Accuracies with standard errors in lm-evaluation-harness's convention.

The harness aggregates per-example scores (``acc``, ``acc_norm``, ``exact_match``: 0/1) by their
mean and reports ``<metric>_stderr`` as the sample standard deviation over sqrt(n) (``mean_stderr``
in lm_eval/api/metrics.py: ``sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n)``). For statistics without a
closed form it bootstraps (``bootstrap_stderr``: ``iters // 1000`` chunks, chunk ``i`` drawn with
``random.Random(i)``, ``rnd.choices(xs, k=len(xs))`` per replicate, then the sample standard deviation
of the replicates); :func:`bootstrap_stderr` reproduces that scheme draw for draw.

Use these to compare kdlens numbers with published harness numbers; kdlens's own intervals
(:mod:`kdlens.analysis.stats`, Wilson/bootstrap CIs) remain the tools for inference.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import pandas as pd

from kdlens._schema import HARNESS_COLUMNS

__all__ = ["mean_stderr", "bootstrap_stderr", "harness_accuracy"]


def _sample_std(values: Sequence[float]) -> float:
    mu = sum(values) / len(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (len(values) - 1))


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of a mean as the harness computes it: sample std (ddof = 1) / sqrt(n).

    NaN for fewer than two values (the harness would divide by zero).
    """
    values = [float(v) for v in values]
    if len(values) < 2:
        return float("nan")
    return _sample_std(values) / math.sqrt(len(values))


def bootstrap_stderr(statistic: Callable[[Sequence[float]], float], values: Sequence[float], *,
                     iters: int = 100_000) -> float:
    """The harness's bootstrap standard error of ``statistic(values)`` (same draws, same seeds).

    Parameters
    ----------
    statistic : callable
        E.g. a median, F1 or BLEU over the per-example items.
    values : sequence
        The per-example items.
    iters : int
        Replicates (the harness's ``bootstrap_iters``, default 100000); a multiple of ``min(1000, iters)``
        is used, as the harness does.

    Notes
    -----
    lm_eval/api/metrics.py ``bootstrap_stderr`` / ``_bootstrap_internal``: chunk ``i`` of
    ``min(1000, iters)`` replicates uses ``random.Random(i)``; the result is the sample standard
    deviation of the replicates (biased low by about sqrt((n - 1) / n) for a mean, as the harness notes).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    items = list(values)
    chunk = min(1000, iters)
    replicates = []
    for i in range(iters // chunk):
        rnd = random.Random(i)
        replicates.extend(statistic(rnd.choices(items, k=len(items))) for _ in range(chunk))
    return _sample_std(replicates)


def harness_accuracy(data: pd.DataFrame, *, by: Sequence[str] = ("model_id", "task"), value: str = "correct",
                     metric: str | None = None) -> pd.DataFrame:
    """Mean of a 0/1 column per group with the harness's standard error.

    Parameters
    ----------
    data : DataFrame
        An examples table (``kdlens._schema.EXAMPLES_COLUMNS``) or any table with ``value`` and ``by``.
    by : sequence of str
        Grouping columns (one row each in the result).
    value : str
        The per-example score (``correct`` of :func:`kdlens.eval.evaluate`: acc, acc_norm or an
        exact match, whichever ``scoring`` produced it).
    metric : str, optional
        Name in the ``metric`` column; default ``data.attrs["scoring"]`` when set, else ``value``.

    Returns
    -------
    DataFrame
        ``*by`` then :data:`kdlens._schema.HARNESS_COLUMNS` (``metric, value, stderr, n``); ``value`` in
        [0, 1], ``stderr`` = :func:`mean_stderr`, not rounded.
    """
    missing = [c for c in (*by, value) if c not in data.columns]
    if missing:
        raise ValueError(f"harness_accuracy needs columns {missing}; got {list(data.columns)}")
    name = metric or data.attrs.get("scoring") or value
    rows = []
    for keys, group in data.groupby(list(by), sort=False, dropna=False):
        scores = group[value].astype(float).tolist()
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows.append({**dict(zip(by, keys, strict=True)), "metric": name, "value": sum(scores) / len(scores),
                     "stderr": mean_stderr(scores), "n": len(scores)})
    return pd.DataFrame(rows, columns=[*by, *HARNESS_COLUMNS])
