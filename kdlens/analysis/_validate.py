"""Input checks shared by the analyses: fail early, name the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

__all__ = ["require_columns", "require_nonempty", "require_level"]


def require_columns(data: pd.DataFrame, columns: Iterable[str], *, what: str = "data") -> None:
    """Raise ``ValueError`` listing every column of ``columns`` missing from ``data``.

    Parameters
    ----------
    data : DataFrame
        The table to check.
    columns : iterable of str
        Column names the caller needs.
    what : str
        How the error message names the table (e.g. ``"examples"``).
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(data).__name__}")
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ValueError(
            f"{what} is missing column(s) {missing}; it has {list(map(str, data.columns))}. "
            "Rename or add them (see kdlens._schema for the expected tables)."
        )


def require_nonempty(data: pd.DataFrame, *, what: str = "data") -> None:
    """Raise ``ValueError`` when ``data`` has no rows."""
    if len(data) == 0:
        raise ValueError(f"{what} is empty: there is nothing to analyse")


def require_level(level: float) -> None:
    """Raise ``ValueError`` unless ``0 < level < 1`` (a confidence level)."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}; e.g. level=0.95")
