"""The generalization-fidelity paradox test for a user's own runs.

Does a student that follows its teacher more closely (higher fidelity or agreement) also gain
more accuracy from distillation? The paradox paper found that it does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from kdlens.analysis import stats
from kdlens.analysis._validate import require_columns, require_level, require_nonempty

__all__ = ["paradox_test"]


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "nan"
    if x == 0:
        return "< 1e-300"  # a p-value that underflowed: "0.00" would read as an exact zero
    return f"{x:.2g}" if abs(x) < 0.01 else f"{x:.2f}"


def _correlation_verdict(row: pd.Series, gain: str, alpha: float, several: bool) -> str:
    name = {"spearman": "Spearman rho", "pearson": "Pearson r", "kendall": "Kendall tau"}[row["test"]]
    if not math.isfinite(row["statistic"]):
        return f"{row['y']} vs {gain}: not testable ({row['note']}, n = {row['n']})"
    p_text = f"p = {_fmt(row['p_val'])}" + (f", p_adj = {_fmt(row['p_adj'])}" if several else "")
    detail = f"({name} = {row['statistic']:.2f}, {p_text}, n = {row['n']})"
    if row["p_adj"] < alpha:
        direction = "goes with" if row["statistic"] > 0 else "goes against"
        return f"{row['y']} {direction} {gain} {detail}"
    return f"{row['y']} does not go with {gain} {detail}"


def paradox_test(
    runs: pd.DataFrame,
    *,
    gain: str = "accuracy_gain",
    fidelity: str | Sequence[str] = ("bleu", "agreement"),
    methods: Sequence[str] = ("spearman", "pearson"),
    alpha: float = 0.05,
    level: float = 0.95,
    padjust: str = "holm",
) -> pd.DataFrame:
    r"""Test whether fidelity or agreement goes with a larger accuracy gain from distillation.

    Parameters
    ----------
    runs : DataFrame
        One row per distilled student run (e.g. per (teacher, student, method, τ) or per
        (teacher, student, method) after taking the best τ). Columns:

        * ``gain`` -- the run's accuracy gain over its baseline, e.g. KD accuracy minus the same
          student's SFT accuracy on the same test set (points or fractions, any consistent unit);
        * each column of ``fidelity`` -- a numeric summary of the run's closeness to its teacher,
          e.g. mean sentence BLEU of its rationales against the teacher's
          (:func:`kdlens.analysis.summarize_fidelity`) or its answer agreement rate
          (:func:`kdlens.analysis.agreement`). Levels or gains over the baseline both work; say
          which in your report.

        Rows with NaN in a column are dropped for the tests using that column.
    gain : str
        Column of accuracy gains.
    fidelity : str or list of str
        Columns tested against ``gain``.
    methods : list of {"spearman", "pearson", "kendall"}
        Correlations computed; the first one decides the verdicts (Spearman by default, as in
        the paper).
    alpha : float
        Significance level of the verdicts (applied to ``p_adj``).
    level : float
        Confidence level of the CIs.
    padjust : str
        Correction across the fidelity columns, within each correlation method.

    Returns
    -------
    DataFrame
        Columns ``test, variable,`` then ``kdlens._schema.STATS_COLUMNS``, ``note`` and ``verdict``.
        The first row is the one-sided one-sample t-test that the mean gain is positive
        (``variable = gain``); then one row per (method, fidelity column) with the correlation
        and its Fisher-z CI (``variable`` = the fidelity column). ``verdict`` is a one-line
        sentence per row for reports; ``attrs["verdict"]`` summarises the whole test, e.g.
        ``"paradox: accuracy_gain is positive but bleu, agreement do not go with it"``.

    Notes
    -----
    The paradox paper's two questions: does KD help (one-sided one-sample t-test of the gain,
    :math:`H_1: \mu_{\mathrm{gain}} > 0`), and does fidelity go with the gain (Spearman's :math:`\rho`
    of the gain with each fidelity measure, Holm-adjusted)?

    References: Ramesh, Sengupta and Chakraborty 2025, Findings of ACL (``ramesh2025generalization``);
    Student 1908 (``student1908probable``); Spearman 1904 (``spearman1904proof``). ``kdlens cite``
    prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    cols = [fidelity] if isinstance(fidelity, str) else list(fidelity)
    if not cols:
        raise ValueError("fidelity must name at least one column, e.g. fidelity=('bleu', 'agreement')")
    methods = list(methods)
    if not methods:
        raise ValueError("methods must name at least one correlation, e.g. ('spearman',)")
    require_columns(runs, [gain, *cols], what="runs")
    require_nonempty(runs, what="runs")
    require_level(level)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")

    t = stats.ttest(runs, dv=gain, alternative="greater", level=level)
    t.insert(1, "variable", gain)
    t_row = t.iloc[0]
    if math.isfinite(t_row["statistic"]):
        positive = t_row["p_val"] < alpha
        word = "is positive" if positive else "is not shown to be positive"
        t_verdict = f"{gain} {word} (t = {t_row['statistic']:.2f}, p = {_fmt(t_row['p_val'])}, n = {t_row['n']})"
    else:
        positive = False
        t_verdict = f"{gain}: not testable ({t_row['note']}, n = {t_row['n']})"
    t["verdict"] = t_verdict

    frames = [t]
    decisive = None
    for method in methods:
        corr = stats.correlation(runs, x=gain, y=cols, method=method, level=level, padjust=padjust)
        corr["verdict"] = [_correlation_verdict(r, gain, alpha, len(cols) > 1) for _, r in corr.iterrows()]
        corr["variable"] = corr["y"]
        corr = corr.drop(columns=["x", "y"])
        frames.append(corr[t.columns])
        if decisive is None:
            decisive = corr
    out = pd.concat(frames, ignore_index=True)
    out["n"] = out["n"].astype("int64")

    follows = [r["variable"] for _, r in decisive.iterrows() if r["p_adj"] < alpha and r["statistic"] > 0]
    others = [c for c in cols if c not in follows]
    if not positive:
        summary = f"no paradox to explain: {t_verdict}"
    elif follows and not others:
        summary = f"no paradox: {gain} is positive and goes with {', '.join(follows)}"
    elif follows:
        summary = (f"partial paradox: {gain} is positive and goes with {', '.join(follows)} "
                   f"but not with {', '.join(others)}")
    else:
        summary = f"paradox: {gain} is positive but {', '.join(cols)} do not go with it ({methods[0]}, alpha = {alpha})"
    out.attrs["verdict"] = summary
    return out
