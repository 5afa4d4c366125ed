"""Hypothesis tests with tidy outputs: the paper's tests, paired tests, correlations, corrections.

Every function takes a DataFrame and column names and returns a DataFrame with a leading
``test`` column, optional grouping columns (``by=``), then ``kdlens._schema.STATS_COLUMNS``
(``statistic, dof, p_val, p_adj, ci_low, ci_high, effect_size, n, alternative``) and a ``note``
column. Degenerate input (n < 3, zero variance, an empty group) gives a row of NaN with the
reason in ``note`` instead of an exception from deep inside scipy; missing columns raise a
``ValueError`` naming them.

Every test also takes plain columns instead of a table: leave ``data`` out and pass the values
(lists, arrays or pandas Series) where the column names would go, e.g.
``mcnemar(a=student_correct, b=teacher_correct)`` or ``correlation(x=gains, y=bleu)``; the
columns are then named after the arguments (``"a"``, ``"b"``, ``"x"``, ...) in the output
(:func:`kdlens.analysis.columns.as_frame`). scipy and statsmodels compute everything; this module only
validates, assembles rows and documents the choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from kdlens._schema import STATS_COLUMNS
from kdlens.analysis._validate import require_columns, require_level
from kdlens.analysis.columns import as_frame

__all__ = [
    "PADJUST_METHODS",
    "adjust_pvalues",
    "ttest",
    "anova",
    "correlation",
    "partial_correlation",
    "partial_rank_residuals",
    "fisher_se",
    "friedman",
    "mcnemar",
    "paired_ttest",
    "wilcoxon",
    "pair_models",
]

#: accepted ``padjust=`` names -> statsmodels.stats.multitest method
PADJUST_METHODS: dict[str, str | None] = {
    "holm": "holm",
    "bh": "fdr_bh",
    "fdr_bh": "fdr_bh",
    "bonferroni": "bonferroni",
    "none": None,
}

_ALTERNATIVES = ("two-sided", "greater", "less")
_MIN_N = 3


def adjust_pvalues(p_values: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    r"""Adjust p-values for multiple comparisons (Holm, Benjamini-Hochberg, Bonferroni).

    Parameters
    ----------
    p_values : array-like, shape [m]
        Raw p-values; NaN entries are left NaN and excluded from the family.
    method : {"holm", "bh", "fdr_bh", "bonferroni", "none"}
        ``"bh"`` is an alias of statsmodels' ``"fdr_bh"``.

    Returns
    -------
    ndarray, shape [m]
        Adjusted p-values: ``statsmodels.stats.multitest.multipletests`` (Holm is computed in
        numpy with the same formula, see ``_holm``).

    Notes
    -----
    With the :math:`m` finite p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`: Holm,
    :math:`\tilde p_{(i)} = \max_{j \le i} \min\{1, (m - j + 1)\,p_{(j)}\}`; Benjamini-Hochberg,
    :math:`\tilde p_{(i)} = \min_{j \ge i} \min\{1, m\,p_{(j)}/j\}`; Bonferroni, :math:`\tilde p_i =
    \min\{1, m\,p_i\}`. Holm controls the family-wise error rate, Benjamini-Hochberg the false discovery
    rate (under independence or positive dependence).

    References: Holm 1979, Scand. J. Statist. 6 (``holm1979simple``); Benjamini and Hochberg 1995, JRSS
    B (``benjamini1995controlling``). ``kdlens cite`` prints these entries for a run that used this
    function (:mod:`kdlens.citations`).
    """
    if method not in PADJUST_METHODS:
        raise ValueError(f"unknown padjust method {method!r}; known: {sorted(PADJUST_METHODS)}")
    p = np.asarray(p_values, dtype=float)
    out = p.copy()
    sm_method = PADJUST_METHODS[method]
    finite = np.isfinite(p)
    if sm_method is None or not finite.any():
        return out
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    if finite.sum() == 1:
        return out  # a family of one: every correction is the identity
    if sm_method == "holm":
        out[finite] = _holm(p[finite])
        return out
    from statsmodels.stats.multitest import multipletests

    out[finite] = multipletests(p[finite], method=sm_method)[1]
    return out


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjustment, identical to ``multipletests(p, method="holm")[1]``.

    statsmodels' Holm branch calls ``gc.collect()`` on every call, which costs ~0.1 s in a process
    holding pandas/torch objects; analyses call it once per group, so it is done here in numpy.
    """
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(np.maximum.accumulate(p[order] * np.arange(m, 0, -1)), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


# --------------------------------------------------------------------------- row helpers


def _row(test: str, **values) -> dict:
    row = {"test": test, **dict.fromkeys(STATS_COLUMNS, np.nan), "note": ""}
    row.update(values)
    return row


def _nan_row(test: str, n: int, alternative: str, note: str) -> dict:
    return _row(test, n=n, alternative=alternative, note=note)


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")


def _finish(rows: list[dict], group_cols: Sequence[str], padjust: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Assemble rows in the fixed column order and fill ``p_adj`` across the family."""
    columns = ["test", *group_cols, *extra, *STATS_COLUMNS, "note"]
    table = pd.DataFrame(rows, columns=columns)
    table["p_adj"] = adjust_pvalues(table["p_val"].to_numpy(dtype=float), padjust) if len(table) else []
    table["n"] = table["n"].astype("int64")
    return table


def _grouped(data: pd.DataFrame, by: str | Sequence[str] | None, fn: Callable[[pd.DataFrame], list[dict]]):
    """Run ``fn`` on the whole table or on each group, prefixing group keys to each row."""
    if by is None:
        return fn(data), []
    by_cols = [by] if isinstance(by, str) else list(by)
    require_columns(data, by_cols)
    rows = []
    for key, part in data.groupby(by_cols, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for row in fn(part):
            rows.append({**dict(zip(by_cols, key, strict=True)), **row})
    return rows, by_cols


def _numeric(data: pd.DataFrame, column: str) -> np.ndarray:
    try:
        return pd.to_numeric(data[column], errors="raise").to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"column {column!r} must be numeric: {err}") from err


def _no_spread(x: np.ndarray) -> bool:
    """Whether values are equal up to floating-point rounding (sd <= 1e-12 of their scale).

    Differences such as 0.56 - 0.50 and 0.57 - 0.51 are both 0.06 but differ in the 17th digit: an
    exact ``sd == 0`` check lets them through and the t statistic becomes ~1e15 (p ~ 1e-30).
    """
    x = np.asarray(x, dtype=float)
    return float(np.std(x, ddof=1)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def _ci(result, level: float) -> tuple[float, float]:
    ci = result.confidence_interval(confidence_level=level)
    return float(ci.low), float(ci.high)


# --------------------------------------------------------------------------- one sample / ANOVA


def ttest(
    data: pd.DataFrame | None = None,
    *,
    dv: str | Sequence[float],
    popmean: float = 0.0,
    alternative: str = "greater",
    by: str | Sequence[str] | None = None,
    level: float = 0.95,
    padjust: str = "holm",
) -> pd.DataFrame:
    r"""One-sample t-test of ``mean(dv) - popmean`` (the paper's test that KD - SFT > 0).

    Parameters
    ----------
    data : DataFrame, optional
        One row per unit (e.g. per (teacher, student, method)); NaN values of ``dv`` are dropped.
    dv : str
        Column tested (e.g. ``"improvement"``).
    popmean : float
        Mean under the null hypothesis.
    alternative : {"greater", "two-sided", "less"}
        ``"greater"`` is the paper's one-sided test.
    by : str or list of str, optional
        One test per group; ``p_adj`` corrects across the groups.
    level : float
        Confidence level of the CI of the mean (one-sided alternatives give a half-infinite CI).
    padjust : str
        See :func:`adjust_pvalues`.

    Returns
    -------
    DataFrame
        ``test="ttest_1samp"``; ``dof = n - 1``; ``effect_size`` is Cohen's d
        ``(mean - popmean) / sd`` with ``ddof=1``. NaN row with a ``note`` when n < 3 or sd = 0.

    Notes
    -----
    :math:`t = (\bar x - \mu_0)/(s/\sqrt n)` with :math:`n - 1` degrees of freedom, :math:`s` the sample
    standard deviation (ddof 1); Cohen's :math:`d = (\bar x - \mu_0)/s`; the CI is :math:`\bar x \pm
    t_{n-1} s/\sqrt n` (one-sided for a one-sided alternative).

    References: Student 1908, Biometrika 6(1) (``student1908probable``). ``kdlens cite`` prints these
    entries for a run that used this function (:mod:`kdlens.citations`).
    """
    data, _cols = as_frame(data, dv=dv, by=by)
    dv, by = _cols["dv"], _cols["by"]
    require_columns(data, [dv])
    _check_alternative(alternative)
    require_level(level)

    def one(part: pd.DataFrame) -> list[dict]:
        x = _numeric(part, dv)
        x = x[np.isfinite(x)]
        n = len(x)
        if n < _MIN_N:
            return [_nan_row("ttest_1samp", n, alternative, f"n = {n} < {_MIN_N}: too few values")]
        sd = float(np.std(x, ddof=1))
        if _no_spread(x):
            return [_nan_row("ttest_1samp", n, alternative, "zero variance: t is undefined")]
        res = sps.ttest_1samp(x, popmean, alternative=alternative)
        low, high = _ci(res, level)
        return [_row("ttest_1samp", statistic=float(res.statistic), dof=float(res.df), p_val=float(res.pvalue),
                     ci_low=low, ci_high=high, effect_size=(float(np.mean(x)) - popmean) / sd, n=n,
                     alternative=alternative)]

    rows, group_cols = _grouped(data, by, one)
    return _finish(rows, group_cols, padjust)


def anova(
    data: pd.DataFrame | None = None,
    *,
    dv: str | Sequence[float],
    between: str | Sequence[Any],
    by: str | Sequence[str] | None = None,
    padjust: str = "holm",
) -> pd.DataFrame:
    r"""One-way ANOVA of ``dv`` across the levels of ``between`` (the paper's test across methods).

    Parameters
    ----------
    data : DataFrame, optional
        One row per observation; NaN values of ``dv`` are dropped.
    dv, between : str
        Outcome and grouping factor.
    by : str or list of str, optional
        One ANOVA per group of these columns.
    padjust : str
        See :func:`adjust_pvalues`.

    Returns
    -------
    DataFrame
        ``test="anova_oneway"``; ``dof`` = between-groups df (k - 1) and an extra ``dof2`` column =
        within-groups df (n - k); ``effect_size`` is eta squared ``SS_between / SS_total``;
        ``alternative`` is ``"greater"`` (F is one-sided). NaN with a ``note`` when fewer than two
        groups, a group with fewer than 2 values, or zero within-group variance.

    Notes
    -----
    :math:`F = \frac{SS_B/(k-1)}{SS_W/(n-k)}` with :math:`SS_B = \sum_g n_g(\bar x_g - \bar x)^2` and
    :math:`SS_W = \sum_g \sum_{i \in g}(x_i - \bar x_g)^2` over :math:`k` groups of :math:`n` values;
    :math:`\eta^2 = SS_B/(SS_B + SS_W)` (scipy's ``f_oneway``).
    """
    data, _cols = as_frame(data, dv=dv, between=between, by=by)
    dv, between, by = _cols["dv"], _cols["between"], _cols["by"]
    require_columns(data, [dv, between])

    def one(part: pd.DataFrame) -> list[dict]:
        part = part.loc[np.isfinite(_numeric(part, dv))]
        groups = {str(k): _numeric(g, dv) for k, g in part.groupby(between, sort=True)}
        n = int(sum(len(g) for g in groups.values()))
        base = {"test": "anova_oneway", "dof2": np.nan}
        if len(groups) < 2:
            return [{**_nan_row("anova_oneway", n, "greater", f"{len(groups)} group(s) of {between!r}: need >= 2"),
                     **base}]
        small = [k for k, g in groups.items() if len(g) < 2]
        if small:
            return [{**_nan_row("anova_oneway", n, "greater", f"group(s) {small} of {between!r} have < 2 values"),
                     **base}]
        within = sum(float(((g - g.mean()) ** 2).sum()) for g in groups.values())
        if within == 0.0:
            return [{**_nan_row("anova_oneway", n, "greater", "zero within-group variance: F is undefined"), **base}]
        res = sps.f_oneway(*groups.values())
        allx = np.concatenate(list(groups.values()))
        total = float(((allx - allx.mean()) ** 2).sum())
        k = len(groups)
        return [{**_row("anova_oneway", statistic=float(res.statistic), dof=float(k - 1), p_val=float(res.pvalue),
                        effect_size=(total - within) / total, n=n, alternative="greater"),
                 "dof2": float(n - k)}]

    rows, group_cols = _grouped(data, by, one)
    table = _finish(rows, group_cols, padjust, extra=())
    dof2 = pd.DataFrame(rows)["dof2"] if rows else pd.Series(dtype=float)
    table.insert(table.columns.get_loc("dof") + 1, "dof2", dof2.to_numpy(dtype=float))
    return table


# --------------------------------------------------------------------------- correlations

#: fewest units above which each Fisher-z standard error is defined (``n - offset > 0``)
_FISHER_OFFSET = {"pearson": 3, "spearman": 3, "kendall": 4}
_CORR_FN = {"pearson": sps.pearsonr, "spearman": sps.spearmanr, "kendall": sps.kendalltau}


def fisher_se(r: float, n: int, method: str) -> float:
    r"""Standard error of Fisher's ``z = atanh(r)`` for a Pearson, Spearman or Kendall correlation.

    Parameters
    ----------
    r : float
        The (partial) correlation; only Spearman's standard error depends on it.
    n : int
        Number of units, minus the number of covariates partialled out.
    method : {"pearson", "spearman", "kendall"}

    Returns
    -------
    float
        :math:`1/\sqrt{n-3}` (Pearson; Fisher 1915), :math:`\sqrt{(1 + r^2/2)/(n-3)}` (Spearman;
        Bonett & Wright 2000, whose standard error stays accurate where Fieller, Hartley & Pearson's
        constant ``1.06`` understates it at large ``|rho|``), :math:`\sqrt{0.437/(n-4)}` (Kendall's
        tau; Fieller, Hartley & Pearson 1957); NaN when ``n`` is at or below the offset.
    """
    offset = _FISHER_OFFSET[method]
    if n <= offset:
        return math.nan
    if method == "spearman":
        return math.sqrt((1.0 + float(r) ** 2 / 2.0) / (n - offset))
    return math.sqrt((1.0 if method == "pearson" else 0.437) / (n - offset))


def _fisher_ci(r: float, n: int, method: str, level: float, alternative: str) -> tuple[float, float]:
    se = fisher_se(r, n, method)
    if not math.isfinite(se):
        return math.nan, math.nan
    z = math.atanh(float(np.clip(r, -1 + 1e-15, 1 - 1e-15)))
    if alternative == "two-sided":
        q = sps.norm.ppf(1 - (1 - level) / 2)
        return math.tanh(z - q * se), math.tanh(z + q * se)
    q = sps.norm.ppf(level)
    if alternative == "greater":
        return math.tanh(z - q * se), 1.0
    return -1.0, math.tanh(z + q * se)


def _correlate(x: np.ndarray, y: np.ndarray, method: str, alternative: str, level: float) -> dict:
    test = method
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < _MIN_N:
        return _nan_row(test, n, alternative, f"n = {n} < {_MIN_N}: too few pairs")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return _nan_row(test, n, alternative, "a constant input: the correlation is undefined")
    res = _CORR_FN[method](x, y, alternative=alternative)
    r = float(res.statistic)
    low, high = _fisher_ci(r, n, method, level, alternative)
    note = "" if np.isfinite(low) else f"n = {n} too small for a Fisher z CI"
    return _row(test, statistic=r, dof=float(n - 2) if method != "kendall" else np.nan, p_val=float(res.pvalue),
                ci_low=low, ci_high=high, effect_size=r, n=n, alternative=alternative, note=note)


def correlation(
    data: pd.DataFrame | None = None,
    *,
    x: str | Sequence[float],
    y: str | Sequence[str] | Sequence[float],
    method: str | Sequence[str] = "spearman",
    alternative: str = "two-sided",
    by: str | Sequence[str] | None = None,
    level: float = 0.95,
    padjust: str = "holm",
) -> pd.DataFrame:
    r"""Pearson, Spearman or Kendall correlation of ``x`` with each of ``y``, with CIs.

    Parameters
    ----------
    data : DataFrame, optional
        One row per unit; rows with NaN in either column are dropped pairwise.
    x : str
        The column correlated with each ``y``.
    y : str or list of str
        One row per (y, method).
    method : {"pearson", "spearman", "kendall"} or a list of them
    alternative : {"two-sided", "greater", "less"}
    by : str or list of str, optional
        One correlation per group.
    level : float
        Confidence level of the CI.
    padjust : str
        Correction across all rows returned (see :func:`adjust_pvalues`).

    Returns
    -------
    DataFrame
        Columns ``test, [by...], x, y,`` then the stats columns. ``statistic`` and ``effect_size``
        are r / rho / tau-b; p-values from scipy; ``dof = n - 2`` (Pearson, Spearman).

    Notes
    -----
    CIs use the Fisher z transform ``z = atanh(r)`` with standard error ``1/sqrt(n-3)`` for
    Pearson (the same interval as ``scipy.stats.pearsonr(...).confidence_interval()``),
    ``sqrt((1 + rho^2/2)/(n-3))`` for Spearman (Bonett & Wright 2000) and ``sqrt(0.437/(n-4))``
    for Kendall (Fieller, Hartley & Pearson 1957): :func:`fisher_se`. One-sided alternatives give
    one-sided intervals. The p-values are scipy's (the t test of ``r`` for Pearson and Spearman),
    the convention of published tables; the verdict functions (:func:`kdlens.analysis.paradox_test`)
    take their p from the Fisher-z statistic of the interval instead, so that p and CI agree.

    Pearson's :math:`r = \frac{\sum (x_i-\bar x)(y_i-\bar y)}{\sqrt{\sum (x_i-\bar x)^2 \sum (y_i-\bar
    y)^2}}`; Spearman's :math:`\rho` is :math:`r` of the ranks; Kendall's :math:`\tau_b` counts
    concordant minus discordant pairs. The CI is :math:`\tanh(z \pm q_{1-\alpha/2}\,\mathrm{se})` with
    :math:`z = \operatorname{atanh}(r)`.

    References: Spearman 1904, Am. J. Psychol. 15(1) (``spearman1904proof``); Kendall 1938, Biometrika
    30 (``kendall1938new``); Fisher 1915, Biometrika 10, the z transform (``fisher1915frequency``);
    Bonett and Wright 2000, Psychometrika 65(1), the Spearman standard error (``bonett2000sample``).
    ``kdlens cite`` prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    data, _cols = as_frame(data, x=x, y=y, by=by)
    x, y, by = _cols["x"], _cols["y"], _cols["by"]
    ys = [y] if isinstance(y, str) else list(y)
    methods = [method] if isinstance(method, str) else list(method)
    unknown = [m for m in methods if m not in _CORR_FN]
    if unknown:
        raise ValueError(f"unknown correlation method(s) {unknown}; known: {sorted(_CORR_FN)}")
    require_columns(data, [x, *ys])
    _check_alternative(alternative)
    require_level(level)

    def one(part: pd.DataFrame) -> list[dict]:
        xv = _numeric(part, x)
        return [{**_correlate(xv, _numeric(part, col), m, alternative, level), "x": x, "y": col}
                for col in ys for m in methods]

    rows, group_cols = _grouped(data, by, one)
    return _finish(rows, group_cols, padjust, extra=("x", "y"))


def covariate_blocks(covariates: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The covariates as ``(numeric, dummies)``: numeric columns as they are (shape [n, a]; ranked
    for Spearman by the caller) and the others as dummies of all but their first level (shape
    [n, b]; a stratum, a teacher)."""
    numeric, dummies = [], []
    for col in covariates.columns:
        values = covariates[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numeric.append(values.to_numpy(dtype=float)[:, None])
        else:
            coded = pd.get_dummies(values.astype(str), drop_first=True, dtype=float)
            if coded.shape[1]:
                dummies.append(coded.to_numpy())
    n = len(covariates)
    return (np.hstack(numeric) if numeric else np.empty((n, 0)),
            np.hstack(dummies) if dummies else np.empty((n, 0)))


def _covariate_matrix(covariates: pd.DataFrame, method: str) -> np.ndarray:
    """Design columns of the covariates: :func:`covariate_blocks`, numeric ones ranked for Spearman."""
    numeric, dummies = covariate_blocks(covariates)
    if method == "spearman" and numeric.shape[1]:
        numeric = np.column_stack([sps.rankdata(c) for c in numeric.T])
    return np.hstack([numeric, dummies])


def partial_rank_residuals(x: np.ndarray, y: np.ndarray, covariates: pd.DataFrame | None, *,
                           method: str = "spearman") -> tuple[np.ndarray | None, np.ndarray | None, int, int]:
    """Residuals of ``x`` and ``y`` (ranked for Spearman) after least squares on the covariates.

    Returns ``(res_x, res_y, k, n)``: the residual vectors (None when fewer than ``k + 3``
    complete rows), the number ``k`` of covariate design columns, and the number of complete rows.
    Their Pearson correlation is the partial correlation; with no covariates it is the plain
    correlation (Spearman's rho of the ranks).
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"partial correlations support 'spearman' and 'pearson', got {method!r}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if covariates is not None and covariates.shape[1]:
        keep &= covariates.notna().all(axis=1).to_numpy()
    x, y = x[keep], y[keep]
    n = len(x)
    cov = covariates.loc[keep] if covariates is not None and covariates.shape[1] else None
    if method == "spearman":
        x, y = sps.rankdata(x), sps.rankdata(y)
    design = np.ones((n, 1))
    if cov is not None:
        extra = _covariate_matrix(cov.reset_index(drop=True), method)
        # drop covariate columns that are constant here: they carry no information (and no dof)
        extra = extra[:, np.ptp(extra, axis=0) > 0] if extra.shape[1] else extra
        design = np.hstack([design, extra])
    k = design.shape[1] - 1
    if n < k + 3:
        return None, None, k, n
    beta_x, *_ = np.linalg.lstsq(design, x, rcond=None)
    beta_y, *_ = np.linalg.lstsq(design, y, rcond=None)
    return x - design @ beta_x, y - design @ beta_y, k, n


def partial_correlation(
    data: pd.DataFrame,
    *,
    x: str,
    y: str | Sequence[str],
    covar: str | Sequence[str],
    method: str = "spearman",
    alternative: str = "two-sided",
    by: str | Sequence[str] | None = None,
    level: float = 0.95,
    padjust: str = "holm",
) -> pd.DataFrame:
    """Partial (rank) correlation of ``x`` with each ``y``, holding ``covar`` fixed.

    Parameters
    ----------
    data : DataFrame
        One row per unit; rows with NaN in a used column are dropped.
    x : str
        The column correlated with each ``y``.
    y : str or list of str
    covar : str or list of str
        Covariates: numeric columns (ranked for Spearman) or categorical ones (dummy coded: a
        stratified, within-stratum correlation).
    method : {"spearman", "pearson"}
    alternative, by, level, padjust
        As in :func:`correlation`.

    Returns
    -------
    DataFrame
        ``test`` (``"partial_spearman"``/``"partial_pearson"``), ``by`` columns, ``x, y, covar``,
        then the stats columns: ``statistic = effect_size`` = the partial correlation,
        ``dof = n - 2 - k`` for ``k`` covariate design columns.

    Notes
    -----
    Rank ``x``, ``y`` and the numeric covariates (Spearman), regress ``x`` and ``y`` on the
    covariates by least squares, and correlate the residuals (the definition pingouin's
    ``partial_corr`` and R's ``ppcor::pcor.test`` implement). ``t = r sqrt((n-2-k)/(1-r^2))``
    with ``n - 2 - k`` degrees of freedom; the CI is Fisher's z with standard error
    ``sqrt(f / (n - 3 - k))``, ``f`` = 1 (Pearson) or ``1 + r^2/2`` (Spearman; Bonett & Wright
    2000): :func:`fisher_se`.
    """
    ys = [y] if isinstance(y, str) else list(y)
    covs = [covar] if isinstance(covar, str) else list(covar)
    if not covs:
        raise ValueError("covar must name at least one column; use correlation() for a plain correlation")
    require_columns(data, [x, *ys, *covs])
    _check_alternative(alternative)
    require_level(level)
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson' for a partial correlation, got {method!r}")
    test = f"partial_{method}"

    def one_pair(part: pd.DataFrame, col: str) -> dict:
        rx, ry, k, n = partial_rank_residuals(_numeric(part, x), _numeric(part, col), part[covs], method=method)
        if rx is None:
            return _nan_row(test, n, alternative, f"n = {n} with {k} covariate column(s): too few rows")
        if np.ptp(rx) == 0 or np.ptp(ry) == 0:
            return _nan_row(test, n, alternative, "a constant input after removing the covariates")
        r = float(np.corrcoef(rx, ry)[0, 1])
        dof = n - 2 - k
        if abs(r) >= 1:
            return _row(test, statistic=r, dof=float(dof), effect_size=r, n=n, alternative=alternative,
                        note="|r| = 1: the test and the Fisher-z interval are undefined")
        t = r * math.sqrt(dof / (1 - r * r))
        p = {"two-sided": 2 * sps.t.sf(abs(t), dof), "greater": sps.t.sf(t, dof),
             "less": sps.t.cdf(t, dof)}[alternative]
        low, high = _fisher_ci(r, n - k, method, level, alternative)
        note = "" if np.isfinite(low) else f"n = {n} too small for a Fisher z CI"
        return _row(test, statistic=r, dof=float(dof), p_val=float(p), ci_low=low, ci_high=high, effect_size=r,
                    n=n, alternative=alternative, note=note)

    def one(part: pd.DataFrame) -> list[dict]:
        return [{**one_pair(part, col), "x": x, "y": col, "covar": ", ".join(covs)} for col in ys]

    rows, group_cols = _grouped(data, by, one)
    return _finish(rows, group_cols, padjust, extra=("x", "y", "covar"))


def friedman(
    data: pd.DataFrame,
    *,
    dv: str,
    within: str,
    subject: str | Sequence[str],
    by: str | Sequence[str] | None = None,
    padjust: str = "holm",
) -> pd.DataFrame:
    """Friedman test that ``dv`` differs across the levels of ``within``, blocks given by ``subject``.

    Parameters
    ----------
    data : DataFrame
        Long table, one row per (block, level); blocks missing a level are dropped (complete
        blocks only), duplicated (block, level) rows are an error.
    dv : str
        Outcome.
    within : str
        Repeated factor (e.g. ``"method"``).
    subject : str or list of str
        Block columns (e.g. ``["teacher", "student"]``: the methods are paired within a pair).
    by, padjust
        As in :func:`ttest`.

    Returns
    -------
    DataFrame
        ``test="friedman"``: ``statistic`` is the chi-square, ``dof = k - 1``, ``effect_size`` is
        Kendall's ``W = chi2 / (n (k - 1))``, ``n`` the number of complete blocks.

    Notes
    -----
    ``scipy.stats.friedmanchisquare`` (tie-corrected); Friedman (1937), *JASA* 32:675. Kendall's W
    as in Tomczak & Tomczak (2014).
    """
    subjects = [subject] if isinstance(subject, str) else list(subject)
    require_columns(data, [dv, within, *subjects])

    def one(part: pd.DataFrame) -> list[dict]:
        if part.duplicated([*subjects, within]).any():
            raise ValueError(f"several rows per ({', '.join(subjects)}, {within}): aggregate them first")
        wide = part.pivot_table(index=subjects, columns=within, values=dv, aggfunc="first").dropna()
        n, k = wide.shape
        if k < 3 or n < 2:
            return [_nan_row("friedman", n, "greater", f"{k} level(s) of {within!r} and {n} complete block(s): "
                             "need >= 3 levels and >= 2 blocks")]
        if (wide.nunique(axis=1) == 1).all():
            return [_nan_row("friedman", n, "greater", "every block is constant: the statistic is undefined")]
        res = sps.friedmanchisquare(*[wide[c].to_numpy(float) for c in wide.columns])
        return [_row("friedman", statistic=float(res.statistic), dof=float(k - 1), p_val=float(res.pvalue),
                     effect_size=float(res.statistic) / (n * (k - 1)), n=n, alternative="greater")]

    rows, group_cols = _grouped(data, by, one)
    return _finish(rows, group_cols, padjust)


# --------------------------------------------------------------------------- paired tests


def _paired_values(part: pd.DataFrame, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    av, bv = _numeric(part, a), _numeric(part, b)
    keep = np.isfinite(av) & np.isfinite(bv)
    return av[keep], bv[keep]


def mcnemar(
    data: pd.DataFrame | None = None,
    *,
    a: str | Sequence[float],
    b: str | Sequence[float],
    exact: bool | None = None,
    correction: bool = True,
    by: str | Sequence[str] | None = None,
    level: float = 0.95,
    padjust: str = "holm",
) -> pd.DataFrame:
    r"""McNemar's test that two models are equally often right on the same examples.

    Parameters
    ----------
    data : DataFrame, optional
        One row per example with two boolean (0/1) correctness columns, e.g. from
        :func:`pair_models`. Rows with a missing value are dropped.
    a, b : str
        The two correctness columns.
    exact : bool, optional
        Exact binomial test on the discordant pairs. ``None`` (default) uses it when there are
        fewer than 25 discordant pairs, where the chi-square approximation is poor.
    correction : bool
        Continuity correction of the chi-square statistic.
    by, level, padjust
        As in :func:`ttest`.

    Returns
    -------
    DataFrame
        ``test`` is ``"mcnemar_exact"`` or ``"mcnemar_chi2"``; ``statistic`` is statsmodels'
        (min(b, c) for exact, chi-square otherwise); ``effect_size`` is the conditional odds ratio
        ``n(a right, b wrong) / n(a wrong, b right)`` with an exact (Clopper-Pearson) CI; extra
        columns ``n_a_only`` and ``n_b_only`` hold the discordant counts.

    Notes
    -----
    With :math:`b` = examples where ``a`` is right and ``b`` wrong and :math:`c` the reverse, the chi-
    square statistic is :math:`(|b - c| - 1)^2/(b + c)` (without ``correction``: :math:`(b - c)^2/(b +
    c)`) on 1 degree of freedom, and the exact test is the two-sided binomial test of :math:`b`
    successes in :math:`b + c` trials at :math:`1/2`. The effect size is :math:`b/c` with the Clopper-
    Pearson interval of :math:`b/(b+c)` mapped by :math:`\pi \mapsto \pi/(1-\pi)`.

    References: McNemar 1947, Psychometrika 12 (``mcnemar1947note``). ``kdlens cite`` prints these
    entries for a run that used this function (:mod:`kdlens.citations`).
    """
    data, _cols = as_frame(data, a=a, b=b, by=by)
    a, b, by = _cols["a"], _cols["b"], _cols["by"]
    require_columns(data, [a, b])
    require_level(level)
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
    from statsmodels.stats.proportion import proportion_confint

    def one(part: pd.DataFrame) -> list[dict]:
        av, bv = _paired_values(part, a, b)
        if not (np.isin(av, (0, 1)).all() and np.isin(bv, (0, 1)).all()):
            raise ValueError(f"columns {a!r} and {b!r} must be boolean (0/1) correctness for McNemar")
        av, bv = av.astype(bool), bv.astype(bool)
        n = len(av)
        only_a, only_b = int((av & ~bv).sum()), int((~av & bv).sum())
        counts = {"n_a_only": only_a, "n_b_only": only_b}
        discordant = only_a + only_b
        use_exact = discordant < 25 if exact is None else exact
        test = "mcnemar_exact" if use_exact else "mcnemar_chi2"
        if n == 0:
            return [{**_nan_row(test, 0, "two-sided", "no paired examples"), **counts}]
        if discordant == 0:
            return [{**_row(test, p_val=1.0, n=n, alternative="two-sided",
                            note="no discordant pairs: the models agree on every example"), **counts}]
        table = [[int((av & bv).sum()), only_a], [only_b, int((~av & ~bv).sum())]]
        res = sm_mcnemar(table, exact=use_exact, correction=correction)
        lo_p, hi_p = proportion_confint(only_a, discordant, alpha=1 - level, method="beta")
        odds = only_a / only_b if only_b else math.inf
        note = "" if only_b else "odds ratio is infinite: b is never right where a is wrong"
        return [{**_row(test, statistic=float(res.statistic), dof=np.nan if use_exact else 1.0,
                        p_val=float(res.pvalue), ci_low=lo_p / (1 - lo_p) if lo_p < 1 else math.inf,
                        ci_high=hi_p / (1 - hi_p) if hi_p < 1 else math.inf, effect_size=odds, n=n,
                        alternative="two-sided", note=note), **counts}]

    rows, group_cols = _grouped(data, by, one)
    table = _finish(rows, group_cols, padjust)
    frame = pd.DataFrame(rows)
    for col in ("n_a_only", "n_b_only"):
        table[col] = frame[col].astype("int64").to_numpy() if len(frame) else []
    return table


def paired_ttest(
    data: pd.DataFrame | None = None,
    *,
    a: str | Sequence[float],
    b: str | Sequence[float],
    alternative: str = "two-sided",
    by: str | Sequence[str] | None = None,
    level: float = 0.95,
    padjust: str = "holm",
) -> pd.DataFrame:
    r"""Paired t-test of ``a - b`` (e.g. per-task accuracy of KD vs SFT on the same tasks).

    Returns
    -------
    DataFrame
        ``test="ttest_paired"``; ``dof = n - 1``; CI of the mean difference; ``effect_size`` is
        Cohen's d_z ``mean(a - b) / sd(a - b)``. NaN with a ``note`` when n < 3 or the differences
        are constant.

    Notes
    -----
    With :math:`d_i = a_i - b_i`: :math:`t = \bar d/(s_d/\sqrt n)` on :math:`n - 1` degrees of freedom
    and Cohen's :math:`d_z = \bar d/s_d`.

    References: Student 1908, Biometrika 6(1) (``student1908probable``). ``kdlens cite`` prints these
    entries for a run that used this function (:mod:`kdlens.citations`).
    """
    data, _cols = as_frame(data, a=a, b=b, by=by)
    a, b, by = _cols["a"], _cols["b"], _cols["by"]
    require_columns(data, [a, b])
    _check_alternative(alternative)
    require_level(level)

    def one(part: pd.DataFrame) -> list[dict]:
        av, bv = _paired_values(part, a, b)
        n = len(av)
        if n < _MIN_N:
            return [_nan_row("ttest_paired", n, alternative, f"n = {n} < {_MIN_N}: too few pairs")]
        d = av - bv
        sd = float(np.std(d, ddof=1))
        if _no_spread(d):
            return [_nan_row("ttest_paired", n, alternative, "the differences are constant: t is undefined")]
        res = sps.ttest_rel(av, bv, alternative=alternative)
        low, high = _ci(res, level)
        return [_row("ttest_paired", statistic=float(res.statistic), dof=float(res.df), p_val=float(res.pvalue),
                     ci_low=low, ci_high=high, effect_size=float(np.mean(d)) / sd, n=n, alternative=alternative)]

    rows, group_cols = _grouped(data, by, one)
    return _finish(rows, group_cols, padjust)


def wilcoxon(
    data: pd.DataFrame | None = None,
    *,
    a: str | Sequence[float],
    b: str | Sequence[float],
    alternative: str = "two-sided",
    by: str | Sequence[str] | None = None,
    padjust: str = "holm",
) -> pd.DataFrame:
    r"""Wilcoxon signed-rank test of ``a - b`` (scipy, zero differences dropped: ``"wilcox"``).

    Returns
    -------
    DataFrame
        ``test="wilcoxon"``; ``statistic`` is scipy's (min(W+, W-) two-sided, W+ one-sided);
        ``effect_size`` is the matched-pairs rank-biserial correlation ``(W+ - W-) / (W+ + W-)``;
        ``n`` counts the pairs, including zero differences. NaN with a ``note`` when fewer than 3
        non-zero differences.

    Notes
    -----
    With :math:`R_i` the rank of :math:`|d_i|` among the non-zero differences :math:`d_i = a_i - b_i`:
    :math:`W^+ = \sum_{d_i > 0} R_i`, :math:`W^- = \sum_{d_i < 0} R_i`, and the rank-biserial
    correlation :math:`r = (W^+ - W^-)/(W^+ + W^-)`.

    References: Wilcoxon 1945, Biometrics Bulletin 1 (``wilcoxon1945individual``). ``kdlens cite``
    prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    data, _cols = as_frame(data, a=a, b=b, by=by)
    a, b, by = _cols["a"], _cols["b"], _cols["by"]
    require_columns(data, [a, b])
    _check_alternative(alternative)

    def one(part: pd.DataFrame) -> list[dict]:
        av, bv = _paired_values(part, a, b)
        d = av - bv
        nonzero = d[d != 0]
        if len(nonzero) < _MIN_N:
            return [_nan_row("wilcoxon", len(d), alternative,
                             f"{len(nonzero)} non-zero difference(s) < {_MIN_N}: too few to rank")]
        res = sps.wilcoxon(av, bv, alternative=alternative, zero_method="wilcox")
        ranks = sps.rankdata(np.abs(nonzero))
        w_plus, w_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
        return [_row("wilcoxon", statistic=float(res.statistic), p_val=float(res.pvalue),
                     effect_size=(w_plus - w_minus) / (w_plus + w_minus), n=len(d), alternative=alternative)]

    rows, group_cols = _grouped(data, by, one)
    return _finish(rows, group_cols, padjust)


def pair_models(
    examples: pd.DataFrame,
    *,
    model_a: str,
    model_b: str,
    value: str = "correct",
    unit: str = "example",
) -> pd.DataFrame:
    """Put two models' values side by side over the same examples (or tasks) for paired tests.

    Parameters
    ----------
    examples : DataFrame
        An examples table (``kdlens._schema.EXAMPLES_COLUMNS``): ``model_id, task, example_id,
        sample`` and ``value``.
    model_a, model_b : str
        ``model_id`` values to compare.
    value : str
        Column to pair (``"correct"`` for McNemar).
    unit : {"example", "task"}
        ``"example"``: one row per (task, example_id, sample) present for both models.
        ``"task"``: one row per task holding the mean of ``value`` over the examples both models
        answered (per-task scores for the Wilcoxon and paired t-tests).

    Returns
    -------
    DataFrame
        Key columns, then one column named after each model.
    """
    keys = ["task", "example_id", "sample"]
    require_columns(examples, ["model_id", *keys, value], what="examples")
    if unit not in ("example", "task"):
        raise ValueError(f"unit must be 'example' or 'task', got {unit!r}")
    if model_a == model_b:
        raise ValueError("model_a and model_b must differ")
    known = sorted(map(str, examples["model_id"].dropna().unique()))
    parts = []
    for model in (model_a, model_b):
        part = examples.loc[examples["model_id"] == model, [*keys, value]]
        if part.empty:
            raise ValueError(f"model_id {model!r} is not in the examples; known: {known}")
        if part.duplicated(keys).any():
            raise ValueError(f"model_id {model!r} has duplicate (task, example_id, sample) rows")
        parts.append(part.rename(columns={value: model}))
    paired = parts[0].merge(parts[1], on=keys, how="inner")
    if paired.empty:
        raise ValueError(f"{model_a!r} and {model_b!r} share no (task, example_id, sample): nothing to pair")
    for model in (model_a, model_b):
        paired[model] = pd.to_numeric(paired[model].astype("float64"), errors="raise")
    if unit == "task":
        return paired.groupby("task", sort=True)[[model_a, model_b]].mean().reset_index()
    return paired.sort_values(keys).reset_index(drop=True)
