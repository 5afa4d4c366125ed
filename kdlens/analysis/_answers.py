"""When two extracted answers are the same answer: the rule agreement and the column adapters share."""

from __future__ import annotations

import pandas as pd

__all__ = ["NUMERIC_TOLERANCE", "same_answer"]

#: two numeric answers agree when they differ by at most this (the math scoring tolerance)
NUMERIC_TOLERANCE = 1e-3


def same_answer(a: pd.Series, b: pd.Series) -> pd.Series:
    """Answers agree when both are numbers within ``NUMERIC_TOLERANCE`` or equal as stripped strings.

    Parameters
    ----------
    a, b : Series of str (pandas ``string`` dtype, stripped)
        A missing answer (NA) never agrees, not even with another missing one.
    """
    same_text = (a == b).fillna(False).astype(bool)
    # numeric answers: "7", "7.0" and "7,000" vs "7000" are the same answer, as in math scoring
    na = pd.to_numeric(a.str.replace(",", "", regex=False), errors="coerce").astype("float64")
    nb = pd.to_numeric(b.str.replace(",", "", regex=False), errors="coerce").astype("float64")
    same_number = ((na - nb).abs() <= NUMERIC_TOLERANCE).fillna(False).astype(bool)
    return same_text | same_number
