"""The one place where report numbers are rounded, and the notes that make a table paste-ready.

Analysis functions return unrounded values; every number a report's tables show goes through
:func:`format_number` (directly or via :func:`format_cell`), so HTML, Markdown and LaTeX show the
same digits. A test table (one with ``p_adj``) gets significance marks from the adjusted p-values
(:func:`significance_mark`, thresholds :data:`SIGNIFICANCE_LEVELS`) and :func:`table_notes` adds
to its caption the test, n and unit of analysis, and what the marks mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DIGITS", "SIGNIFICANCE_LEVELS", "TEST_NAMES", "TEST_UNITS", "format_cell", "format_number",
           "significance_mark", "table_notes"]

#: decimals per cell kind: "pct" a fraction shown in percent, "num" a number, "p" a p-value
DIGITS: dict[str, int] = {"pct": 1, "num": 3, "p": 3}

#: (threshold, mark), strictest first: a p_adj below the threshold gets the mark
SIGNIFICANCE_LEVELS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))

#: ``test`` column value -> the name a caption uses
TEST_NAMES: dict[str, str] = {
    "mcnemar_exact": "McNemar's exact test", "mcnemar_chi2": "McNemar's chi-square test",
    "ttest_1samp": "one-sample t-test", "ttest_paired": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test",
    "spearman": "Spearman correlation", "pearson": "Pearson correlation", "kendall": "Kendall's tau",
    "anova_oneway": "one-way ANOVA", "gee": "GEE", "logistic": "logistic regression", "tost": "TOST equivalence test",
    "friedman": "Friedman test", "mixedlm": "linear mixed model",
    "mean_t": "t interval of the mean", "paired_mean_t": "paired t interval of the mean difference",
    "partial_spearman": "partial Spearman correlation (Fisher-z interval)",
    "partial_pearson": "partial Pearson correlation (Fisher-z interval)",
    "spearman_clustered": "Spearman correlation (Fisher-z interval, cluster design effect)",
    "pearson_clustered": "Pearson correlation (Fisher-z interval, cluster design effect)",
    "partial_spearman_clustered": "partial Spearman correlation (Fisher-z interval, cluster design effect)",
    "partial_pearson_clustered": "partial Pearson correlation (Fisher-z interval, cluster design effect)",
}

#: ``test`` column value -> the unit its n counts, when the table does not state one (Table.unit)
TEST_UNITS: dict[str, str] = {
    "mcnemar_exact": "paired examples", "mcnemar_chi2": "paired examples", "ttest_paired": "pairs",
    "wilcoxon": "pairs", "spearman": "runs", "pearson": "runs", "kendall": "runs", "ttest_1samp": "runs",
}


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def format_number(value: Any, kind: str = "text") -> str:
    """One value as text, rounded the single way reports round.

    Parameters
    ----------
    value : number, str or None
    kind : {"pct", "num", "p", "int", "text"}
        ``"pct"``: a fraction in [0, 1] shown in percent with :data:`DIGITS` decimals; ``"num"`` and
        ``"p"``: fixed decimals (a p-value below 0.001 is ``"<0.001"``); ``"int"``: an integer;
        ``"text"``: as is (a float with 4 significant digits).

    Returns
    -------
    str
        ``"–"`` for a missing value, ``"∞"`` / ``"-∞"`` for infinities.
    """
    if _missing(value):
        return "–"
    if kind in ("pct", "num", "p") and math.isinf(float(value)):
        return "∞" if float(value) > 0 else "-∞"
    if kind == "pct":
        return f"{100 * float(value):.{DIGITS['pct']}f}"
    if kind == "num":
        return f"{float(value):.{DIGITS['num']}f}"
    if kind == "p":
        return "<0.001" if float(value) < 0.001 else f"{float(value):.{DIGITS['p']}f}"
    if kind == "int":
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def format_cell(value: Any, kind: str = "text") -> str:
    """One table cell: ``kind`` as in :func:`format_number`; a ``(value, low, high)`` tuple becomes
    ``"value [low, high]"`` (an estimate with its confidence interval, each rounded alike), or, for a
    kind ending in ``"±"`` (a symmetric interval, e.g. a t interval over seeds), ``"value ± half-width"``."""
    symmetric = kind.endswith("±")
    kind = kind.removesuffix("±")
    if isinstance(value, tuple) and len(value) == 3:
        text = format_number(value[0], kind)
        if not (_missing(value[1]) or _missing(value[2])):
            if symmetric:
                text += f" ± {format_number((float(value[2]) - float(value[1])) / 2, kind)}"
            else:
                text += f" [{format_number(value[1], kind)}, {format_number(value[2], kind)}]"
        return text
    return format_number(value, kind)


def significance_mark(p_adj: Any) -> str:
    """``"***"``, ``"**"``, ``"*"`` or ``""`` for an adjusted p-value (:data:`SIGNIFICANCE_LEVELS`)."""
    if _missing(p_adj):
        return ""
    for threshold, mark in SIGNIFICANCE_LEVELS:
        if float(p_adj) < threshold:
            return mark
    return ""


def marked_column(columns: Sequence[str]) -> str | None:
    """The column of a test table whose cells carry the significance marks: the effect size, else the
    statistic, else ``p_adj`` itself; None for a table without ``p_adj``."""
    if "p_adj" not in columns:
        return None
    return next(c for c in ("effect_size", "statistic", "p_adj") if c in columns)


def _n_text(values: pd.Series) -> str:
    n = pd.to_numeric(values, errors="coerce").dropna()
    if n.empty:
        return ""
    low, high = int(n.min()), int(n.max())
    return f"n = {low}" if low == high else f"n = {low} to {high}"


def table_notes(frame: pd.DataFrame, unit: str = "") -> str:
    """The sentences a test table's caption needs: the test, n with its unit, the marks' meaning.

    Parameters
    ----------
    frame : DataFrame
        The table as built (columns ``test``, ``n`` and ``p_adj`` are read when present).
    unit : str
        What ``n`` counts; default from :data:`TEST_UNITS` by the test.

    Returns
    -------
    str
        Empty for a table that is not a test table (no ``test`` and no ``p_adj`` column).
    """
    parts = []
    tests = [str(t) for t in frame["test"].dropna().unique()] if "test" in frame.columns else []
    if tests:
        parts.append("Test: " + ", ".join(TEST_NAMES.get(t, t.replace("_", " ")) for t in tests) + ".")
    if "n" in frame.columns and (tests or "p_adj" in frame.columns):
        units = {TEST_UNITS[t] for t in tests if t in TEST_UNITS}
        unit = unit or (units.pop() if len(units) == 1 else "")
        n = _n_text(frame["n"])
        if n:
            parts.append(f"{n} {unit} per row." if unit else f"{n} per row.")
    if "p_adj" in frame.columns:
        marks = ", ".join(f"{mark} p_adj < {threshold:g}" for threshold, mark in reversed(SIGNIFICANCE_LEVELS))
        parts.append(f"Marks on {marked_column(list(frame.columns))} from the adjusted p-value: {marks}.")
    return " ".join(parts)
