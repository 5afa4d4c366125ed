"""Example-level models: does a student's correctness go with the fidelity of its rationale?

Logistic regression of correctness on fidelity with task fixed effects; a GEE variant whose
standard errors allow correlation within a cluster (a run: ``groups="model_id"``, the examples of
one run are not independent of it; a task; or an example shared by several students); and a linear
mixed model (statsmodels ``MixedLM``) with random effects per group, e.g. examples nested in runs.
``fit_*`` return the statsmodels results; the plain names return a tidy table with ``p_adj``.

Few clusters make the usual Wald z anti-conservative (the sandwich and the random-effect variances
are estimated from the groups, not from the observations): :func:`mixed` uses a t reference with
``G - p`` degrees of freedom (``G`` groups, ``p`` fixed effects), and :func:`gee` uses Mancl and
DeRouen's bias-reduced sandwich below :data:`kdlens.analysis.GEE_SMALL_SAMPLE_GROUPS` groups.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from kdlens._schema import MODEL_COLUMNS
from kdlens.analysis._validate import require_columns, require_level, require_nonempty
from kdlens.analysis.stats import adjust_pvalues

__all__ = ["GEE_SMALL_SAMPLE_GROUPS", "fit_logistic", "logistic", "fit_gee", "gee", "fit_mixed", "mixed",
           "MODEL_COLUMNS"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: below this many groups :func:`fit_gee` (``cov_type="auto"``) uses the bias-reduced sandwich of Mancl &
#: DeRouen (2001), whose tests keep their size with 10 to 40 clusters where the plain sandwich's do not
GEE_SMALL_SAMPLE_GROUPS = 40
_GEE_COV_TYPES = ("auto", "robust", "bias_reduced")


def _design(data: pd.DataFrame, outcome: str, predictors: Sequence[str], task_effects: bool,
            extra: Sequence[str] = ()) -> tuple[pd.DataFrame, str]:
    predictors = [predictors] if isinstance(predictors, str) else list(predictors)
    if not predictors:
        raise ValueError("predictors must name at least one column, e.g. predictors=['bleu']")
    for name in [outcome, *predictors]:
        if not _NAME.match(name):
            raise ValueError(f"column name {name!r} must be a Python identifier to be used in a model formula")
    needed = [outcome, *predictors, *(["task"] if task_effects else []), *extra]
    require_columns(data, needed)
    frame = data[list(dict.fromkeys(needed))].dropna().copy()
    require_nonempty(frame, what="data after dropping rows with missing values")
    y = frame[outcome]
    if y.dtype == bool or set(pd.unique(y)) <= {0, 1}:
        frame[outcome] = y.astype(int)
    else:
        raise ValueError(f"outcome {outcome!r} must be boolean or 0/1, got values like {list(pd.unique(y))[:5]}")
    if frame[outcome].nunique() < 2:
        raise ValueError(f"outcome {outcome!r} is constant ({frame[outcome].iloc[0]}): a logistic model is undefined")
    if len(frame) < len(predictors) + 3:
        raise ValueError(f"only {len(frame)} complete rows for {len(predictors)} predictor(s): too few to fit")
    rhs = " + ".join(predictors)
    if task_effects and frame["task"].nunique() > 1:
        rhs += " + C(task)"
    return frame, f"{outcome} ~ {rhs}"


def _fit(fit_fn, label: str):
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        # non-convergence is checked below and reported as an error, not a warning
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", "overflow encountered in exp", RuntimeWarning)
        try:
            result = fit_fn()
        except (PerfectSeparationError, PerfectSeparationWarning) as err:
            raise ValueError(f"{label}: the outcome is perfectly separated by the predictors, so the "
                             f"coefficients are infinite ({err}); drop task effects or add data") from err
        except np.linalg.LinAlgError as err:
            raise ValueError(f"{label}: singular design matrix ({err}); a predictor is constant or collinear") from err
    converged = getattr(result, "mle_retvals", None) or {}
    converged = converged.get("converged", getattr(result, "converged", True))
    if not converged:
        with np.errstate(over="ignore"):
            fitted = np.asarray(result.predict(), dtype=float)
        if np.any((fitted < 1e-6) | (fitted > 1 - 1e-6)):
            raise ValueError(f"{label}: the outcome is (quasi-)perfectly separated by the predictors, so the "
                             "coefficients diverge; drop task effects or add data")
        raise ValueError(f"{label}: the fit did not converge; check the predictors' scale and collinearity")
    return result


def fit_logistic(
    data: pd.DataFrame,
    *,
    outcome: str = "correct",
    predictors: Sequence[str] = ("bleu",),
    task_effects: bool = True,
):
    r"""Fit ``logit P(outcome) ~ predictors + C(task)`` by maximum likelihood (statsmodels Logit).

    Parameters
    ----------
    data : DataFrame
        One row per example (e.g. an examples table merged with :func:`kdlens.analysis.fidelity`
        on ``model_id, task, example_id``); rows with a missing value in a used column are dropped.
    outcome : str
        Boolean or 0/1 column.
    predictors : list of str
        Numeric columns (identifiers).
    task_effects : bool
        Add task fixed effects (ignored when there is a single task).

    Returns
    -------
    statsmodels ``LogitResults``

    Notes
    -----
    :math:`\operatorname{logit} P(y_i = 1) = x_i^\top\beta`, fitted by maximum likelihood; the examples
    are treated as independent (use :func:`fit_gee` when they repeat within groups).
    """
    import statsmodels.formula.api as smf

    frame, formula = _design(data, outcome, predictors, task_effects)
    return _fit(lambda: smf.logit(formula, data=frame).fit(disp=0), "logistic regression")


def fit_gee(
    data: pd.DataFrame,
    *,
    outcome: str = "correct",
    predictors: Sequence[str] = ("bleu",),
    groups: str = "example_id",
    task_effects: bool = True,
    cov_struct: str = "exchangeable",
    cov_type: str = "auto",
):
    r"""Fit a binomial GEE (logit link) of ``outcome`` with clusters given by ``groups``.

    Parameters
    ----------
    data : DataFrame
        One row per (model, example).
    groups : str
        Cluster column: ``"example_id"`` (the same prompt answered by several students; combined
        with ``task`` when present, since example ids are unique only within a task) or ``"task"``.
    task_effects : bool
        Task fixed effects (not allowed with ``groups="task"``, where they would be aliased).
    cov_struct : {"exchangeable", "independence"}
        Working correlation; the robust (sandwich) standard errors are valid under either.
    cov_type : {"auto", "robust", "bias_reduced"}
        Covariance of the estimates: the sandwich (``"robust"``), or Mancl & DeRouen's bias-reduced
        sandwich (``"bias_reduced"``); ``"auto"`` uses the latter below
        :data:`GEE_SMALL_SAMPLE_GROUPS` (40) groups.

    Returns
    -------
    statsmodels ``GEEResults``
        ``result.cov_type`` names the covariance used.

    Warns
    -----
    UserWarning
        When the bias-reduced covariance could not be computed and the plain sandwich was used.

    Notes
    -----
    Generalized estimating equations: :math:`\sum_i D_i^\top V_i^{-1}(y_i - \mu_i) = 0` with
    :math:`\operatorname{logit}\mu_{ij} = x_{ij}^\top\beta` and a working correlation within each group;
    standard errors are the robust (sandwich) ones, valid when the working correlation is wrong. With
    few groups the sandwich underestimates the variance and its Wald tests reject too often; the
    bias-reduced sandwich replaces each group's residuals :math:`r_i` by :math:`(I - H_{ii})^{-1} r_i`,
    :math:`H_{ii}` the group's leverage (statsmodels ``cov_type="bias_reduced"``).

    References: Liang and Zeger 1986, Biometrika 73(1) (``liang1986longitudinal``); Mancl and DeRouen
    2001, Biometrics 57(1) (``mancl2001covariance``). ``kdlens cite`` prints these entries for a run
    that used this function (:mod:`kdlens.citations`).
    """
    result, notes = _fit_gee(data, outcome=outcome, predictors=predictors, groups=groups,
                             task_effects=task_effects, cov_struct=cov_struct, cov_type=cov_type)
    if notes:
        warnings.warn(f"GEE: {'; '.join(notes)}", UserWarning, stacklevel=2)
    return result


def _fit_gee(data: pd.DataFrame, *, outcome: str, predictors: Sequence[str], groups: str, task_effects: bool,
             cov_struct: str, cov_type: str):
    """:func:`fit_gee` without the warning: ``(result, notes)``, the notes in words."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    structures = {"exchangeable": sm.cov_struct.Exchangeable, "independence": sm.cov_struct.Independence}
    if cov_struct not in structures:
        raise ValueError(f"unknown cov_struct {cov_struct!r}; known: {sorted(structures)}")
    if cov_type not in _GEE_COV_TYPES:
        raise ValueError(f"unknown cov_type {cov_type!r}; known: {list(_GEE_COV_TYPES)}")
    if groups == "task" and task_effects:
        raise ValueError("groups='task' with task_effects=True aliases the task effects; set task_effects=False")
    frame, formula = _design(data, outcome, predictors, task_effects,
                             extra=[groups, *(["task"] if groups == "example_id" and "task" in data else [])])
    clusters = frame[groups].astype(str)
    if groups == "example_id" and "task" in frame:
        clusters = frame["task"].astype(str) + "\x1f" + clusters
    n_groups = clusters.nunique()
    if n_groups < 2:
        raise ValueError(f"groups={groups!r} has {n_groups} cluster(s): GEE needs several")
    if cov_type == "auto":
        cov_type = "bias_reduced" if n_groups < GEE_SMALL_SAMPLE_GROUPS else "robust"
    model = smf.gee(formula, groups=clusters, data=frame, family=sm.families.Binomial(),
                    cov_struct=structures[cov_struct]())
    result = _fit(lambda: model.fit(cov_type=cov_type), "GEE")
    notes = []
    if cov_type == "bias_reduced" and result.cov_params_default is None:
        notes.append("the bias-reduced covariance could not be computed (a singular working covariance): "
                     "the plain sandwich is used, and its tests are anti-conservative with few groups")
        result = _fit(lambda: model.fit(cov_type="robust"), "GEE")
    result.n_groups = n_groups  # the tidy table states the number of clusters behind the covariance
    return result, notes


def _adjusted(terms: Sequence[str], p_val: np.ndarray, predictors: Sequence[str], padjust: str) -> np.ndarray:
    """``p_adj`` across the terms of the user's predictors (and their levels); the intercept and
    nuisance terms (task fixed effects) are not hypotheses and get NaN."""
    named = np.array([any(t == p or t.startswith(f"{p}[") for p in predictors) for t in terms], dtype=bool)
    p_adj = np.full(len(terms), np.nan)
    if named.any():
        p_adj[named] = adjust_pvalues(p_val[named], padjust)
    return p_adj


def _tidy(result, label: str, level: float, predictors: Sequence[str], padjust: str, note: str = "") -> pd.DataFrame:
    ci = np.asarray(result.conf_int(alpha=1 - level))
    params = result.params
    terms = list(params.index)
    p_val = np.asarray(result.pvalues, dtype=float)
    table = pd.DataFrame({
        "model": label,
        "term": terms,
        "estimate": params.to_numpy(float),
        "std_err": np.asarray(result.bse, dtype=float),
        "statistic": np.asarray(result.tvalues, dtype=float),
        "dof": np.nan,  # Wald z
        "p_val": p_val,
        "p_adj": _adjusted(terms, p_val, predictors, padjust),
        "ci_low": ci[:, 0],
        "ci_high": ci[:, 1],
        "effect_size": np.exp(params.to_numpy(float)),
        "n": int(result.nobs),
        "note": "; ".join(filter(None, ["effect_size = odds ratio per unit of the term", note])),
    })
    return table[list(MODEL_COLUMNS)]


def _predictors(kwargs: dict) -> list[str]:
    pred = kwargs.get("predictors", ("bleu",))
    return [pred] if isinstance(pred, str) else list(pred)


def logistic(data: pd.DataFrame, *, level: float = 0.95, padjust: str = "holm", **kwargs) -> pd.DataFrame:
    """Tidy table of :func:`fit_logistic`: one row per term (Wald z, CI, odds ratio).

    Returns
    -------
    DataFrame
        :data:`MODEL_COLUMNS`; ``statistic`` is the Wald z, ``effect_size`` the odds ratio
        ``exp(estimate)``; ``p_adj`` corrects across the ``predictors`` terms (``padjust``), NaN
        for the intercept and the task effects.
    """
    require_level(level)
    return _tidy(fit_logistic(data, **kwargs), "logit", level, _predictors(kwargs), padjust)


def gee(data: pd.DataFrame, *, level: float = 0.95, padjust: str = "holm", **kwargs) -> pd.DataFrame:
    """Tidy table of :func:`fit_gee` (robust standard errors), like :func:`logistic`.

    Returns
    -------
    DataFrame
        :data:`MODEL_COLUMNS`; ``statistic`` is the Wald z (``dof`` NaN) with the covariance that
        ``fit_gee``'s ``cov_type`` chose, which ``note`` names with the number of groups (the
        bias-reduced sandwich below :data:`GEE_SMALL_SAMPLE_GROUPS` groups with ``"auto"``);
        ``attrs["cov_type"]`` and ``attrs["n_groups"]`` hold them.

    Warns
    -----
    UserWarning
        As :func:`fit_gee` (the note also says it).

    Notes
    -----
    References: Liang and Zeger 1986, Biometrika 73(1) (``liang1986longitudinal``); Mancl and DeRouen
    2001, Biometrics 57(1) (``mancl2001covariance``). ``kdlens cite`` prints these entries for a run
    that used this function (:mod:`kdlens.citations`).
    """
    require_level(level)
    options = {"outcome": "correct", "predictors": ("bleu",), "groups": "example_id", "task_effects": True,
               "cov_struct": "exchangeable", "cov_type": "auto", **kwargs}
    result, notes = _fit_gee(data, **options)
    if notes:
        warnings.warn(f"GEE: {'; '.join(notes)}", UserWarning, stacklevel=2)
    used = ("Mancl-DeRouen bias-reduced sandwich" if result.cov_type == "bias_reduced" else "sandwich")
    why = (f" (fewer than {GEE_SMALL_SAMPLE_GROUPS} groups)" if result.cov_type == "bias_reduced"
           and options["cov_type"] == "auto" else "")
    note = "; ".join([f"{used} covariance, Wald z, {result.n_groups} {options['groups']} groups{why}", *notes])
    table = _tidy(result, f"gee({options['groups']})", level, _predictors(kwargs), padjust, note=note)
    table.attrs.update(cov_type=result.cov_type, n_groups=int(result.n_groups))
    return table


def fit_mixed(
    data: pd.DataFrame,
    *,
    outcome: str,
    predictors: Sequence[str],
    groups: str,
    re_formula: str | None = None,
    reml: bool = True,
):
    """Fit a linear mixed model ``outcome ~ predictors`` with random effects per ``groups`` (MixedLM).

    Parameters
    ----------
    data : DataFrame
        One row per observation, e.g. one per example with ``groups="model_id"``: examples are
        nested in runs, and the run's random intercept absorbs what its examples share.
    outcome : str
        Numeric outcome (a 0/1 correctness gives a linear probability model).
    predictors : list of str
        Fixed-effect terms (identifiers, or ``C(name)`` for a categorical column).
    groups : str
        Column of the grouping factor (run, subject).
    re_formula : str, optional
        Random-effects formula, e.g. ``"~Days"`` for a random intercept and slope; default a
        random intercept.
    reml : bool
        Restricted maximum likelihood (lme4's default; use it for the fixed effects' Wald tests) or
        maximum likelihood (``reml=False``: needed to compare models that differ in their fixed
        effects by likelihood ratio).

    Returns
    -------
    statsmodels ``MixedLMResults``

    Warns
    -----
    UserWarning
        When the fit lies on the boundary (a random-effect variance estimated at 0: lme4's
        "boundary (singular) fit") or statsmodels warned about the chosen fit (a Hessian that is not
        positive definite, a singular random-effects covariance). :func:`mixed` also puts these in
        its ``note`` column and ``attrs["warnings"]``.

    Notes
    -----
    ``y = X beta + Z b + e`` with ``b ~ N(0, G)`` per group and ``e ~ N(0, sigma^2 I)``
    (Laird & Ware 1982); statsmodels' REML estimates match lme4's ``lmer`` (Bates et al. 2015,
    *J. Stat. Softw.* 67(1)), checked on ``sleepstudy`` in the tests. statsmodels' default
    gradient optimizer can stop short of the optimum, or report convergence at an infinite
    likelihood with wrong fixed effects, when a variance is near 0 (common for correctness of
    examples nested in runs), so the model is also fitted with Powell's derivative-free method and
    the converged fit with the highest finite (restricted) likelihood is kept.
    """
    result, notes = _fit_mixed(data, outcome=outcome, predictors=predictors, groups=groups, re_formula=re_formula,
                               reml=reml)
    _warn_fit(notes)
    return result


#: statsmodels' messages about its own optimizer retries: they describe fits that were not kept
_RETRY_CHATTER = ("Retrying MixedLM optimization", "Maximum Likelihood optimization failed to converge",
                  "MixedLM optimization failed, trying a different optimizer", "Gradient optimization failed")


def _warn_fit(notes: Sequence[str]) -> None:
    if notes:
        warnings.warn(f"mixed model: {'; '.join(notes)}", UserWarning, stacklevel=3)


def _fit_mixed(data: pd.DataFrame, *, outcome: str, predictors: Sequence[str], groups: str,
               re_formula: str | None, reml: bool):
    """:func:`fit_mixed` without the warning: ``(result, notes)``, the notes in words."""
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    predictors = [predictors] if isinstance(predictors, str) else list(predictors)
    if not predictors:
        raise ValueError("predictors must name at least one column, e.g. predictors=['bleu']")
    plain = [re.sub(r"^C\((.+)\)$", r"\1", p) for p in predictors]
    for name in [outcome, *plain]:
        if not _NAME.match(name):
            raise ValueError(f"column name {name!r} must be a Python identifier to be used in a model formula")
    require_columns(data, list(dict.fromkeys([outcome, *plain, groups])))
    frame = data[list(dict.fromkeys([outcome, *plain, groups]))].dropna().copy()
    require_nonempty(frame, what="data after dropping rows with missing values")
    n_groups = frame[groups].nunique()
    if n_groups < 2:
        raise ValueError(f"groups={groups!r} has {n_groups} level(s): a mixed model needs several groups")
    if frame[outcome].dtype == bool:
        frame[outcome] = frame[outcome].astype(float)
    if not pd.api.types.is_numeric_dtype(frame[outcome]):
        raise ValueError(f"outcome {outcome!r} must be numeric or boolean, got values like "
                         f"{list(pd.unique(frame[outcome]))[:3]}")
    model = smf.mixedlm(f"{outcome} ~ {' + '.join(predictors)}", frame, groups=frame[groups],
                        re_formula=re_formula)
    fits, errors = [], []
    for method in (None, ["powell"]):  # None: statsmodels' default (BFGS, retried with L-BFGS and CG)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = model.fit(reml=reml, **({} if method is None else {"method": method}))
            except (np.linalg.LinAlgError, ValueError) as err:
                errors.append(str(err))
                continue
        usable = result.converged and np.isfinite(result.llf) and np.isfinite(np.asarray(result.bse_fe)).all()
        if usable:
            said = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)
                    and not str(w.message).startswith(_RETRY_CHATTER)]
            fits.append((float(result.llf), result, list(dict.fromkeys(said))))
    if not fits:
        why = f" ({errors[0]})" if errors else ""
        raise ValueError(f"the mixed model did not converge{why}; simplify re_formula or rescale the predictors")
    _, result, notes = max(fits, key=lambda fit: fit[0])  # ties keep the default optimizer's fit
    variances = np.diag(np.asarray(result.cov_re, dtype=float))
    for name, var in zip(result.cov_re.columns, variances, strict=True):
        if var <= 1e-6 * float(result.scale):
            notes.insert(0, f"singular fit: the variance of the random {name} per {groups} is estimated at 0 "
                            "(on the boundary; lme4's 'boundary (singular) fit'), so the groups share nothing "
                            "beyond the fixed effects here and the Wald tests assume an interior optimum")
    return result, notes


def mixed(data: pd.DataFrame, *, level: float = 0.95, padjust: str = "holm", **kwargs) -> pd.DataFrame:
    r"""Tidy table of :func:`fit_mixed`: one row per fixed effect (t on ``G - p`` dof, CI, ``p_adj``).

    Returns
    -------
    DataFrame
        :data:`MODEL_COLUMNS`, fixed effects only; ``statistic`` is ``estimate / std_err``, referred
        to a t distribution with ``dof = G - p`` degrees of freedom (``G`` groups, ``p`` fixed
        effects) for ``p_val`` and the CI, as ``note`` says; ``effect_size`` is the coefficient
        itself; ``n`` counts observations. ``attrs["random_effects"]`` holds the random-effect
        covariance matrix and ``attrs["scale"]`` the residual variance, ``attrs["n_groups"]`` the
        groups, ``attrs["dof"]`` the t reference's degrees of freedom.

    Notes
    -----
    statsmodels refers the Wald statistic to a normal distribution, which is anti-conservative
    when the groups are few: the fixed effects' standard errors come from variance components
    estimated from ``G`` groups. :math:`\nu = G - p` is the residual degrees of freedom of an
    analysis of the ``G`` group means with ``p`` parameters: a simple, conservative stand-in for
    Satterthwaite's or Kenward & Roger's approximations (``lmerTest`` in R); on ``sleepstudy`` (18
    subjects, random intercept and slope) it gives 16 dof for ``Days`` where Satterthwaite gives 17.
    With ``G <= p`` there is no t reference and the rows have NaN p and CI.
    """
    require_level(level)
    result, notes = _fit_mixed(data, **{"re_formula": None, "reml": True, **kwargs})
    _warn_fit(notes)
    k = len(result.fe_params)
    terms = list(result.fe_params.index)
    estimate = result.fe_params.to_numpy(float)
    std_err = np.asarray(result.bse_fe, dtype=float)
    statistic = estimate / std_err
    n_groups = int(len(result.random_effects))
    dof = n_groups - k
    if dof >= 1:
        p_val = 2 * sps.t.sf(np.abs(statistic), dof)
        half = sps.t.ppf(0.5 + level / 2, dof) * std_err
        reference = f"t reference on G - p = {dof} dof ({n_groups} groups - {k} fixed effects)"
    else:
        p_val = half = np.full(k, np.nan)
        reference = f"{n_groups} groups for {k} fixed effects: no t reference (G - p < 1), no p-value"
    p_adj = _adjusted(terms, p_val, kwargs["predictors"] if not isinstance(kwargs["predictors"], str)
                      else [kwargs["predictors"]], padjust)
    table = pd.DataFrame({
        "model": f"mixedlm({kwargs['groups']})", "term": terms, "estimate": estimate, "std_err": std_err,
        "statistic": statistic, "dof": float(dof) if dof >= 1 else np.nan, "p_val": p_val, "p_adj": p_adj,
        "ci_low": estimate - half, "ci_high": estimate + half, "effect_size": estimate, "n": int(result.nobs),
        "note": "; ".join(["effect_size = the coefficient; random effects in attrs", reference, *notes]),
    })[list(MODEL_COLUMNS)]
    table.attrs.update(random_effects=result.cov_re, scale=float(result.scale), n_groups=n_groups,
                       dof=dof, warnings=notes)
    return table
