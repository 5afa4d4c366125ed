"""kdlens.analysis.regression and paradox_test against direct statsmodels/scipy calls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from kdlens.analysis import MODEL_COLUMNS, fit_gee, fit_logistic, gee, logistic, paradox_test


def example_level(seed: int = 0, n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    task = rng.choice(["gsm8k", "svamp", "addsub"], n)
    bleu = rng.random(n)
    logit = -0.5 + 2.0 * bleu + np.where(task == "svamp", 0.7, 0.0)
    return pd.DataFrame({
        "model_id": rng.choice(["s1", "s2"], n), "task": task, "example_id": [str(i % 40) for i in range(n)],
        "bleu": bleu, "correct": rng.random(n) < 1 / (1 + np.exp(-logit)),
    })


def test_logistic_matches_a_direct_statsmodels_fit_with_task_dummies():
    data = example_level()
    table = logistic(data, predictors=["bleu"])
    assert list(table.columns) == list(MODEL_COLUMNS)
    tidy = table.set_index("term")
    dummies = pd.get_dummies(data["task"], drop_first=True, dtype=float)  # baseline: addsub
    exog = sm.add_constant(pd.concat([data[["bleu"]], dummies], axis=1))
    ref = sm.Logit(data["correct"].astype(float), exog).fit(disp=0)
    assert tidy.loc["bleu", "estimate"] == pytest.approx(ref.params["bleu"], rel=1e-6)
    assert tidy.loc["bleu", "std_err"] == pytest.approx(ref.bse["bleu"], rel=1e-6)
    assert tidy.loc["bleu", "p_val"] == pytest.approx(ref.pvalues["bleu"], rel=1e-6)
    assert tidy.loc["C(task)[T.svamp]", "estimate"] == pytest.approx(ref.params["svamp"], rel=1e-6)
    assert tidy.loc["bleu", "effect_size"] == pytest.approx(math.exp(ref.params["bleu"]))
    assert tidy.loc["bleu", "n"] == len(data)
    assert fit_logistic(data).params["bleu"] == pytest.approx(ref.params["bleu"], rel=1e-6)


def test_gee_clusters_examples_within_task_and_matches_statsmodels():
    data = example_level()
    res = fit_gee(data, groups="example_id", task_effects=False, cov_struct="independence")
    clusters = data["task"] + "\x1f" + data["example_id"]
    ref = sm.GEE(data["correct"].astype(float), sm.add_constant(data[["bleu"]]), groups=clusters,
                 family=sm.families.Binomial(), cov_struct=sm.cov_struct.Independence()).fit()
    assert res.params["bleu"] == pytest.approx(ref.params["bleu"], rel=1e-6)
    assert res.bse["bleu"] == pytest.approx(ref.bse["bleu"], rel=1e-6)
    # independence GEE point estimates equal the plain logistic ones
    assert res.params["bleu"] == pytest.approx(fit_logistic(data, task_effects=False).params["bleu"], rel=1e-5)
    tidy = gee(data, groups="task", task_effects=False)
    assert tidy["model"].iloc[0] == "gee(task)" and tidy["n"].iloc[0] == len(data)


def test_model_inputs_fail_clearly():
    data = example_level()
    with pytest.raises(ValueError, match="constant"):
        logistic(data.assign(correct=True))
    sep = data.assign(correct=data["bleu"] > 0.5)
    with pytest.raises(ValueError, match="perfectly separated"):
        logistic(sep, task_effects=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rouge_l'\]"):
        logistic(data, predictors=["rouge_l"])
    with pytest.raises(ValueError, match="aliases"):
        gee(data, groups="task")
    with pytest.raises(ValueError, match="boolean or 0/1"):
        logistic(data.assign(correct=data["bleu"]))


def runs(seed: int = 0, n: int = 24, follow: float = 0.0) -> pd.DataFrame:
    """KD runs with gains on kdlens' 0-1 scale; bleu follows the gain with slope ``follow``."""
    rng = np.random.default_rng(seed)
    gain = rng.normal(0.05, 0.02, n)
    return pd.DataFrame({"accuracy_gain": gain, "bleu": follow * gain + rng.normal(0, 0.02, n),
                         "agreement": rng.normal(0.5, 0.05, n)})


def test_paradox_test_reaches_each_verdict():
    # no relation and many runs: the interval of rho lies within +-0.3 (equivalence): the paradox holds
    held = paradox_test(runs(n=400))
    assert held["verdict"].tolist() == ["supported", "supported", "supported"] and held.attrs["verdict"] == "supported"
    rho = sps.spearmanr(runs(n=400)["accuracy_gain"], runs(n=400)["bleu"]).statistic
    assert held.loc[1, "estimate"] == pytest.approx(rho, abs=1e-12)
    assert held.loc[1, "sentence"].startswith("bleu does not go with accuracy_gain (|rho| < 0.3: the paradox): supported")
    # fidelity that follows the gain contradicts it
    broken = paradox_test(runs(follow=2.0, n=60), fidelity="bleu")
    assert broken.loc[1, "verdict"] == "contradicted" and broken.attrs["verdict"] == "contradicted"
    # a dozen runs cannot tell no relation from a relation of interest
    few = paradox_test(runs(n=12), fidelity="bleu")
    assert few.loc[1, "verdict"] == "inconclusive" and few.attrs["verdict"] == "inconclusive"
    assert "cannot tell no effect from one of interest" in few.loc[1, "sentence"]


def test_paradox_test_holds_a_confounder_fixed():
    # student size drives both the gain (small students gain more) and fidelity (large ones follow
    # better): the plain correlation is strongly negative, the partial one is not
    rng = np.random.default_rng(4)
    size = np.repeat([0.5, 1.5, 3.0, 7.0], 60)
    data = pd.DataFrame({"size": size, "accuracy_gain": 0.1 / size + rng.normal(0, 0.005, 240),
                         "bleu": np.log(size) + rng.normal(0, 0.05, 240)})
    out = paradox_test(data, fidelity="bleu", controls=["size"])
    plain, adjusted = out.iloc[1], out.iloc[2]
    assert plain["verdict"] == "contradicted" and plain["estimate"] < -0.5 and not plain["decisive"]
    assert adjusted["adjustment"] == "holding size fixed" and adjusted["test"] == "partial_spearman"
    assert adjusted["verdict"] == "supported" and adjusted["decisive"]
    stratified = paradox_test(data, fidelity="bleu", by="size")
    assert stratified["stratum"].tolist() == ["all", "all", "all", "size = 0.5", "size = 1.5", "size = 3.0",
                                              "size = 7.0"]
    # pooled within strata = the strata as dummy-coded covariates
    as_category = paradox_test(data.assign(size=data["size"].astype(str)), fidelity="bleu", controls=["size"])
    assert stratified.loc[2, "estimate"] == pytest.approx(as_category.loc[2, "estimate"], abs=1e-12)
    # the interval holds 3 strata dummies fixed: Fisher's z on n - 3 - k = 240 - 3 - 3 units
    r = stratified.loc[2, "estimate"]
    se = math.sqrt((1 + r * r / 2) / (240 - 3 - 3))
    assert stratified.loc[2, "ci_low"] == pytest.approx(math.tanh(math.atanh(r) - sps.norm.ppf(0.975) * se))
    assert stratified.loc[2, "statistic"] == pytest.approx(math.atanh(r) / se) and math.isnan(stratified.loc[2, "dof"])


def test_paradox_test_strata_of_a_concatenated_table():
    # two teachers' runs concatenated keep their row labels 0..n-1 twice: strata are still found by position
    a, b = runs(seed=1, n=15).assign(teacher="a"), runs(seed=2, n=15).assign(teacher="b")
    out = paradox_test(pd.concat([a, b]), fidelity="bleu", by="teacher")
    fresh = paradox_test(pd.concat([a, b], ignore_index=True), fidelity="bleu", by="teacher")
    pd.testing.assert_frame_equal(out, fresh)
    assert out.loc[3, "estimate"] == pytest.approx(sps.spearmanr(a["accuracy_gain"], a["bleu"]).statistic, abs=1e-12)


def test_paradox_test_small_or_bad_input():
    out = paradox_test(runs(n=1), fidelity="bleu")
    assert out["verdict"].tolist() == ["inconclusive", "inconclusive"]
    assert "n = 1" in out.loc[0, "note"] and "n = 1" in out.loc[1, "note"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['em'\]"):
        paradox_test(runs(), fidelity=("bleu", "em"))
    with pytest.raises(ValueError, match="looks like percentage points"):
        paradox_test(runs().assign(accuracy_gain=lambda d: 100 * d["accuracy_gain"]))
    with pytest.raises(ValueError, match="n_boot must be an integer >= 100"):
        paradox_test(runs(), n_boot=10)


def test_regression_tables_adjust_the_predictors_only():
    rng = np.random.default_rng(2)
    data = pd.DataFrame({"task": np.repeat(["a", "b"], 100), "bleu": rng.uniform(0, 1, 200),
                         "rouge_l": rng.uniform(0, 1, 200)})
    data["correct"] = rng.uniform(0, 1, 200) < 0.3 + 0.4 * data["bleu"]
    table = logistic(data, predictors=["bleu", "rouge_l"])
    assert list(table.columns) == list(MODEL_COLUMNS)
    named = table["term"].isin(["bleu", "rouge_l"])
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(table.loc[named, "p_adj"], multipletests(table.loc[named, "p_val"], method="holm")[1])
    assert table.loc[~named, "p_adj"].isna().all()  # intercept and task effect are not hypotheses
