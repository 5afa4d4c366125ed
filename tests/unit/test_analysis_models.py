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
    rng = np.random.default_rng(seed)
    gain = rng.normal(3.0, 2.0, n)
    return pd.DataFrame({"accuracy_gain": gain, "bleu": follow * gain + rng.normal(0, 1, n),
                         "agreement": rng.normal(50, 5, n)})


def test_paradox_test_reports_correlations_tests_and_a_verdict():
    data = runs()
    out = paradox_test(data)
    assert out["test"].tolist() == ["ttest_1samp", "spearman", "spearman", "pearson", "pearson"]
    assert out["variable"].tolist() == ["accuracy_gain", "bleu", "agreement", "bleu", "agreement"]
    t = sps.ttest_1samp(data["accuracy_gain"], 0, alternative="greater")
    assert out.loc[0, "statistic"] == pytest.approx(t.statistic) and out.loc[0, "p_val"] == pytest.approx(t.pvalue)
    rho = sps.spearmanr(data["accuracy_gain"], data["bleu"])
    assert out.loc[1, "statistic"] == pytest.approx(rho.statistic) and out.loc[1, "p_val"] == pytest.approx(rho.pvalue)
    r = sps.pearsonr(data["accuracy_gain"], data["agreement"])
    assert out.loc[4, "statistic"] == pytest.approx(r.statistic)
    assert out.loc[1, "verdict"] == (f"bleu does not go with accuracy_gain (Spearman rho = {rho.statistic:.2f}, "
                                     f"p = {rho.pvalue:.2f}, p_adj = {out.loc[1, 'p_adj']:.2f}, n = 24)")
    assert out.attrs["verdict"].startswith("paradox: accuracy_gain is positive")


def test_paradox_test_detects_fidelity_that_follows_the_gain():
    out = paradox_test(runs(follow=2.0), fidelity="bleu", methods=("spearman",))
    assert out.loc[1, "verdict"].startswith("bleu goes with accuracy_gain (Spearman rho = ")
    assert "p_adj" not in out.loc[1, "verdict"]  # a single fidelity column: no correction to report
    assert out.attrs["verdict"].startswith("no paradox")


def test_paradox_test_small_or_bad_input():
    out = paradox_test(runs(n=2), fidelity="bleu")
    assert math.isnan(out.loc[1, "statistic"]) and "not testable" in out.loc[1, "verdict"]
    assert out.attrs["verdict"].startswith("no paradox to explain")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['em'\]"):
        paradox_test(runs(), fidelity=("bleu", "em"))
