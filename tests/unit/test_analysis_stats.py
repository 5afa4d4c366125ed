"""kdlens.analysis.stats against published values and direct scipy/statsmodels calls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdlens._schema import STATS_COLUMNS
from kdlens.analysis import stats

REF = json.loads((Path(__file__).parents[1] / "reference" / "analysis_reference.json").read_text())
PUB, DIRECT, INPUTS = REF["published"], REF["direct"], REF["inputs"]


def _plant() -> pd.DataFrame:
    return pd.DataFrame([(g, w) for g, ws in INPUTS["plant"].items() for w in ws], columns=["group", "weight"])


def _sleep() -> pd.DataFrame:
    return pd.DataFrame(INPUTS["sleep"])


def test_stats_tables_have_the_schema_columns_in_order():
    t = stats.ttest(pd.DataFrame({"x": [1.0, 2.0, 4.0]}), dv="x")
    assert list(t.columns) == ["test", *STATS_COLUMNS, "note"]
    c = stats.correlation(pd.DataFrame({"a": [1, 2, 3, 5.0], "b": [2, 1, 4, 3.0]}), x="a", y="b", by=None)
    assert list(c.columns) == ["test", "x", "y", *STATS_COLUMNS, "note"]


def test_one_sample_t_matches_scipy_and_cohens_d():
    x = np.array(INPUTS["one_sample"])
    row = stats.ttest(pd.DataFrame({"gain": x}), dv="gain", alternative="greater").iloc[0]
    assert row["statistic"] == pytest.approx(DIRECT["ttest_1samp_greater"]["t"], rel=1e-12)
    assert row["p_val"] == pytest.approx(DIRECT["ttest_1samp_greater"]["p"], rel=1e-12)
    assert row["dof"] == len(x) - 1 and row["n"] == len(x)
    assert row["effect_size"] == pytest.approx(x.mean() / x.std(ddof=1))
    # one-sided CI of the mean: lower bound = mean - t_{0.95, n-1} * se, upper = +inf
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert row["ci_low"] == pytest.approx(x.mean() - sps.t.ppf(0.95, len(x) - 1) * se)
    assert math.isinf(row["ci_high"])


def test_ttest_by_group_adjusts_p_with_holm():
    rng = np.random.default_rng(1)
    data = pd.DataFrame({"g": np.repeat(["a", "b", "c"], 8), "y": rng.normal(0.5, 1, 24)})
    out = stats.ttest(data, dv="y", by="g", alternative="two-sided")
    assert list(out["g"]) == ["a", "b", "c"]
    raw = [sps.ttest_1samp(data.loc[data.g == g, "y"], 0).pvalue for g in "abc"]
    np.testing.assert_allclose(out["p_val"], raw, rtol=1e-12)
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(out["p_adj"], multipletests(raw, method="holm")[1], rtol=1e-12)


def test_anova_reproduces_r_plantgrowth():
    row = stats.anova(_plant(), dv="weight", between="group").iloc[0]
    pub = PUB["plantgrowth_anova"]
    assert row["statistic"] == pytest.approx(pub["F"], abs=5e-4)
    assert row["p_val"] == pytest.approx(pub["p"], abs=5e-6)
    assert (row["dof"], row["dof2"]) == (pub["df1"], pub["df2"])
    # eta^2 = SS_between / SS_total: R's table gives 3.766 / (3.766 + 10.492)
    assert row["effect_size"] == pytest.approx(3.76634 / (3.76634 + 10.49209), abs=1e-4)


def test_paired_t_reproduces_r_sleep():
    row = stats.paired_ttest(_sleep(), a="group1", b="group2").iloc[0]
    pub = PUB["sleep_paired_t"]
    assert row["statistic"] == pytest.approx(pub["t"], abs=1e-4)
    assert row["p_val"] == pytest.approx(pub["p"], abs=1e-6)
    assert [row["ci_low"], row["ci_high"]] == pytest.approx(pub["ci"], abs=1e-6)
    d = np.subtract(INPUTS["sleep"]["group1"], INPUTS["sleep"]["group2"])
    assert row["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))


def test_wilcoxon_matches_scipy_and_rank_biserial():
    row = stats.wilcoxon(_sleep(), a="group1", b="group2").iloc[0]
    assert row["statistic"] == DIRECT["sleep_wilcoxon"]["statistic"]
    assert row["p_val"] == pytest.approx(DIRECT["sleep_wilcoxon"]["p"], rel=1e-12)
    # every non-zero difference is negative: W+ = 0, so r = (0 - W-) / W- = -1
    assert row["effect_size"] == -1.0
    assert row["n"] == 10


def test_mcnemar_chi2_reproduces_agresti_and_exact_matches_statsmodels():
    a, b = INPUTS["agresti_table"]
    wide = _table_to_pairs(a[0], a[1], b[0], b[1])
    unc = stats.mcnemar(wide, a="first", b="second", exact=False, correction=False).iloc[0]
    assert unc["test"] == "mcnemar_chi2"
    assert unc["statistic"] == pytest.approx(PUB["agresti_mcnemar"]["chi2_uncorrected"], abs=5e-3)
    auto = stats.mcnemar(wide, a="first", b="second").iloc[0]  # 236 discordant -> chi2 with correction
    assert auto["statistic"] == pytest.approx(DIRECT["agresti_mcnemar_corrected"]["statistic"], rel=1e-12)
    assert auto["effect_size"] == pytest.approx(150 / 86)
    assert (auto["n_a_only"], auto["n_b_only"]) == (150, 86)

    (both, only_a), (only_b, neither) = INPUTS["exact_table"]
    small = stats.mcnemar(_table_to_pairs(both, only_a, only_b, neither), a="first", b="second").iloc[0]
    assert small["test"] == "mcnemar_exact"  # 11 discordant pairs < 25
    assert small["p_val"] == pytest.approx(DIRECT["mcnemar_exact"]["p"], rel=1e-12)
    assert small["effect_size"] == pytest.approx(2 / 9)
    # exact CI: Clopper-Pearson bounds of 2/11 (beta quantiles) mapped to odds p / (1 - p)
    lo, hi = sps.beta.ppf(0.025, 2, 10), sps.beta.ppf(0.975, 3, 9)
    assert (small["ci_low"], small["ci_high"]) == pytest.approx((lo / (1 - lo), hi / (1 - hi)), rel=1e-9)


def _table_to_pairs(both: int, only_a: int, only_b: int, neither: int) -> pd.DataFrame:
    first = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    second = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return pd.DataFrame({"first": first, "second": second})


def test_mcnemar_without_discordant_pairs_is_p_one_with_a_note():
    row = stats.mcnemar(_table_to_pairs(5, 0, 0, 3), a="first", b="second").iloc[0]
    assert row["p_val"] == 1.0 and "discordant" in row["note"]


def test_correlations_match_scipy_and_fisher_ci():
    data = pd.DataFrame({"x": INPUTS["corr_x"], "y": INPUTS["corr_y"]})
    out = stats.correlation(data, x="x", y="y", method=["pearson", "spearman", "kendall"]).set_index("test")
    assert out.loc["pearson", "statistic"] == pytest.approx(DIRECT["pearson"]["r"], rel=1e-12)
    assert out.loc["pearson", "p_val"] == pytest.approx(DIRECT["pearson"]["p"], rel=1e-10)
    # the Pearson Fisher-z CI is scipy's own interval
    assert [out.loc["pearson", "ci_low"], out.loc["pearson", "ci_high"]] == pytest.approx(DIRECT["pearson"]["ci"],
                                                                                         rel=1e-10)
    assert out.loc["spearman", "statistic"] == pytest.approx(DIRECT["spearman"]["rho"], rel=1e-12)
    assert out.loc["spearman", "p_val"] == pytest.approx(DIRECT["spearman"]["p"], rel=1e-10)
    assert out.loc["kendall", "statistic"] == pytest.approx(DIRECT["kendall"]["tau"], rel=1e-12)
    assert out.loc["kendall", "p_val"] == pytest.approx(DIRECT["kendall"]["p"], rel=1e-10)
    n, rho = 12, DIRECT["spearman"]["rho"]
    half = 1.959963984540054 * math.sqrt((1 + rho ** 2 / 2) / (n - 3))  # Bonett & Wright's standard error
    assert out.loc["spearman", "ci_low"] == pytest.approx(math.tanh(math.atanh(rho) - half), rel=1e-9)
    assert out.loc["spearman", "ci_high"] == pytest.approx(math.tanh(math.atanh(rho) + half), rel=1e-9)
    assert out.loc["kendall", "ci_low"] < DIRECT["kendall"]["tau"] < out.loc["kendall", "ci_high"]


def test_fisher_ci_hand_value():
    # r = 0.5, n = 28: z = 0.5493, se = 0.2 -> tanh(0.5493 -/+ 0.392) = (0.1560, 0.7358)
    low, high = stats._fisher_ci(0.5, 28, "pearson", 0.95, "two-sided")
    assert (low, high) == pytest.approx((0.1560, 0.7358), abs=1e-4)


def test_spearman_standard_error_is_bonett_and_wright():
    # Bonett & Wright (2000): var(atanh(rho)) = (1 + rho^2 / 2) / (n - 3). By hand for the paper's
    # agreement rho = -0.51 over n = 11: se = sqrt(1.13005 / 8) = 0.375841, z = -0.562730,
    # z -/+ 1.96 se = (-1.299364, 0.173905) -> tanh = (-0.86156, 0.17217)
    assert stats.fisher_se(-0.51, 11, "spearman") == pytest.approx(0.375841, abs=1e-6)
    low, high = stats._fisher_ci(-0.51, 11, "spearman", 0.95, "two-sided")
    assert (low, high) == pytest.approx((-0.86156, 0.17217), abs=1e-5)
    # Fieller's constant 1.06 gave (-0.85546, 0.14958), the narrower interval the issue quoted
    assert (low, high) != pytest.approx((-0.85546, 0.14958), abs=1e-3)
    # Pearson and Kendall keep their constants (Fisher 1915; Fieller, Hartley & Pearson 1957)
    assert stats.fisher_se(0.9, 28, "pearson") == pytest.approx(0.2)
    assert stats.fisher_se(0.9, 29, "kendall") == pytest.approx(math.sqrt(0.437 / 25))
    assert math.isnan(stats.fisher_se(0.1, 3, "spearman"))


def test_padjust_holm_and_bh_hand_values():
    p = INPUTS["pvalues"]
    np.testing.assert_allclose(stats.adjust_pvalues(p, "holm"), PUB["holm"]["p_adj"], rtol=1e-12)
    np.testing.assert_allclose(stats.adjust_pvalues(p, "bh"), PUB["bh"]["p_adj"], rtol=1e-12)
    out = stats.adjust_pvalues([0.01, np.nan, 0.04], "holm")
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="known"):
        stats.adjust_pvalues(p, "sidak-ish")


@pytest.mark.parametrize(
    ("call", "note"),
    [
        (lambda: stats.ttest(pd.DataFrame({"x": [1.0, 2.0]}), dv="x"), "n = 2 < 3"),
        (lambda: stats.ttest(pd.DataFrame({"x": [1.0, 1.0, 1.0]}), dv="x"), "zero variance"),
        (lambda: stats.correlation(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 3.0]}), x="a", y="b"), "n = 2 < 3"),
        (lambda: stats.correlation(pd.DataFrame({"a": [1.0, 2, 3], "b": [1.0, 1, 1]}), x="a", y="b"), "constant"),
        (lambda: stats.anova(pd.DataFrame({"y": [1.0, 2, 3], "g": ["a"] * 3}), dv="y", between="g"), "need >= 2"),
        (lambda: stats.anova(pd.DataFrame({"y": [1.0, 2, 3], "g": ["a", "a", "b"]}), dv="y", between="g"),
         "have < 2 values"),
        (lambda: stats.paired_ttest(pd.DataFrame({"a": [1.0, 2], "b": [0.0, 1]}), a="a", b="b"), "too few pairs"),
        (lambda: stats.wilcoxon(pd.DataFrame({"a": [1.0, 2, 3], "b": [1.0, 2, 3]}), a="a", b="b"), "non-zero"),
        # 0.56 - 0.50, 0.57 - 0.51, 0.58 - 0.52: all 0.06 up to the 17th digit, not a t of 1.6e15
        (lambda: stats.paired_ttest(pd.DataFrame({"a": [0.56, 0.57, 0.58], "b": [0.50, 0.51, 0.52]}), a="a", b="b"),
         "constant"),
        (lambda: stats.ttest(pd.DataFrame({"x": np.array([0.56, 0.57, 0.58]) - [0.50, 0.51, 0.52]}), dv="x"),
         "zero variance"),
    ],
)
def test_degenerate_input_gives_nan_with_a_reason(call, note):
    row = call().iloc[0]
    assert math.isnan(row["statistic"]) and math.isnan(row["p_val"])
    assert note in row["note"]


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['gain'\]"):
        stats.ttest(pd.DataFrame({"x": [1.0]}), dv="gain")
    with pytest.raises(ValueError, match="unknown correlation"):
        stats.correlation(pd.DataFrame({"a": [1.0], "b": [2.0]}), x="a", y="b", method="distance")


def test_pair_models_pairs_by_example_and_by_task():
    ex = pd.DataFrame({
        "model_id": ["t"] * 4 + ["s"] * 3,
        "task": ["A", "A", "B", "B", "A", "A", "B"],
        "example_id": ["1", "2", "1", "2", "1", "2", "1"],
        "sample": 0,
        "correct": [True, False, True, True, False, False, True],
    })
    wide = stats.pair_models(ex, model_a="s", model_b="t")
    assert len(wide) == 3  # B/2 is missing for the student
    assert wide["s"].tolist() == [0.0, 0.0, 1.0] and wide["t"].tolist() == [1.0, 0.0, 1.0]
    per_task = stats.pair_models(ex, model_a="s", model_b="t", unit="task")
    assert per_task.set_index("task").loc["A"].tolist() == [0.0, 0.5]
    with pytest.raises(ValueError, match="known: \\['s', 't'\\]"):
        stats.pair_models(ex, model_a="nope", model_b="t")


def test_holm_equals_statsmodels_on_random_families():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    for m in (2, 5, 17):
        p = rng.uniform(0, 0.2, m)
        p[0] = p[1]  # a tie
        np.testing.assert_allclose(stats.adjust_pvalues(p, "holm"), multipletests(p, method="holm")[1], rtol=1e-14)
