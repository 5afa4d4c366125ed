"""Three-way verdicts, equivalence tests, partial correlations, units of analysis and power.

Reference values: tests/reference/verdicts_reference.json (make_verdicts_reference.py): R TOSTER's
known results, lme4's sleepstudy fit, G*Power's sample size, and direct computations that take a
different route than kdlens.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdlens._schema import EQUIVALENCE_COLUMNS, POWER_COLUMNS, VERDICT_COLUMNS
from kdlens.analysis import (
    GEE_SMALL_SAMPLE_GROUPS,
    ablation_tests,
    axis_contrasts,
    decide,
    kd_vs_sft,
    minimal_detectable_effect,
    mixed,
    partial_correlation,
    seed_sd,
    seeds_needed,
    teacher_gap_tests,
    tost,
    tost_correlation,
)
from kdlens.analysis.verdicts import Estimate, correlation_row, finish_verdicts, mean_row, pending_row

REF_DIR = Path(__file__).parents[1] / "reference"
REF = json.loads((REF_DIR / "verdicts_reference.json").read_text())
PUB, DIRECT, INPUTS = REF["published"], REF["direct"], REF["inputs"]


def _exact_sample(n: int, mean: float, sd: float, seed: int) -> np.ndarray:
    """n values whose sample mean and sd (ddof=1) are exactly ``mean`` and ``sd``."""
    z = np.random.default_rng(seed).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + sd * z


# --------------------------------------------------------------------------- decide


@pytest.mark.parametrize(("low", "high", "expect", "verdict"), [
    (0.5, 4.0, "greater", "supported"),        # above 0, reaches the SESOI
    (0.1, 1.5, "greater", "contradicted"),     # positive but every value below the 2-point SESOI
    (-3.0, -0.5, "greater", "contradicted"),   # the other way
    (-0.5, 4.0, "greater", "inconclusive"),
    (-4.0, -0.5, "less", "supported"),
    (-1.5, 3.0, "less", "contradicted"),
    (-4.0, 0.5, "less", "inconclusive"),
    (-1.0, 1.0, "equivalent", "supported"),    # inside +-2: no effect of interest
    (2.5, 4.0, "equivalent", "contradicted"),  # every value within +-2 ruled out
    (-4.0, -2.0, "equivalent", "contradicted"),
    (0.5, 4.0, "equivalent", "inconclusive"),  # excludes 0, but 0.5..2 (no effect of interest) remain
    (-3.0, 1.0, "equivalent", "inconclusive"),
    (0.5, 1.5, "equivalent", "supported"),     # non-zero but trivially small
    (0.5, 4.0, "two-sided", "supported"),
    (-1.0, 1.0, "two-sided", "contradicted"),
    (-3.0, 1.0, "two-sided", "inconclusive"),
    (math.nan, math.nan, "greater", "inconclusive"),
])
def test_decide_reads_the_interval_against_the_margin(low, high, expect, verdict):
    assert decide(low, high, expect=expect, margin=2.0) == verdict


def test_no_relation_is_not_contradicted_by_an_interval_that_reaches_into_the_margin():
    # rho in [0.05, 0.35]: significantly non-zero, but every |rho| < 0.3 in it is "no relation of
    # interest", which the hypothesis allows: the data do not contradict it
    assert decide(0.05, 0.35, expect="equivalent", margin=0.3) == "inconclusive"
    assert decide(0.31, 0.60, expect="equivalent", margin=0.3) == "contradicted"

    def row(center: float, half: float) -> pd.Series:  # an interval center +- half at 95%
        est = Estimate(center, half / sps.norm.ppf(0.975))
        return finish_verdicts([pending_row(hypothesis="bleu does not go with the gain", test="spearman",
                                            unit="runs", expect="equivalent", margin=0.3, n=150, estimate=center,
                                            est=est, label="rho")], [], "holm", level=0.95).iloc[0]

    within = row(0.2, 0.15)
    assert [within["ci_low"], within["ci_high"]] == pytest.approx([0.05, 0.35])
    assert within["verdict"] == "inconclusive"
    assert "excludes 0 but reaches both within and beyond ±0.30" in within["sentence"]
    assert "the CI lies outside ±0.30" in row(0.455, 0.145)["sentence"]


def test_decide_refuses_a_reversed_interval():
    with pytest.raises(ValueError, match="ci_low must be <= ci_high"):
        decide(1.0, -1.0, expect="greater", margin=0.02)


def test_decide_refuses_no_effect_without_a_margin():
    with pytest.raises(ValueError, match="needs margin > 0"):
        decide(-0.1, 0.1, expect="equivalent", margin=0)
    with pytest.raises(ValueError, match="expect must be one of"):
        decide(0, 1, expect="bigger", margin=1)


# --------------------------------------------------------------------------- TOST against R TOSTER


def test_tost_one_sample_matches_toster():
    ref = PUB["toster_one_sample_raw"]
    data = pd.DataFrame({"x": _exact_sample(ref["n"], ref["m"], ref["sd"], 0)})
    row = tost(data, dv="x", popmean=ref["mu"], margin=ref["bounds"][1]).iloc[0]
    assert list(tost(data, dv="x", margin=0.1).columns) == ["test", *EQUIVALENCE_COLUMNS]
    assert row["estimate"] == pytest.approx(ref["diff"], abs=1e-12)
    assert row["statistic_low"] == pytest.approx(ref["t1"], abs=1e-5)
    assert row["p_low"] == pytest.approx(ref["p1"], rel=1e-5)
    assert row["statistic_high"] == pytest.approx(ref["t2"], abs=1e-5)
    assert row["p_high"] == pytest.approx(ref["p2"], rel=1e-5)
    assert row["dof"] == ref["df"] and row["p_val"] == pytest.approx(ref["p2"], rel=1e-5)
    assert [row["ci_low"], row["ci_high"]] == pytest.approx(ref["ci_tost"], abs=1e-7)
    assert bool(row["equivalent"])


def test_tost_paired_matches_toster():
    ref = PUB["toster_paired_raw"]
    # a paired TOST depends on the differences only: their mean is m1 - m2 and their sd follows from
    # sd1, sd2 and r12
    sd_diff = math.sqrt(ref["sd1"] ** 2 + ref["sd2"] ** 2 - 2 * ref["r12"] * ref["sd1"] * ref["sd2"])
    b = np.random.default_rng(1).normal(ref["m2"], ref["sd2"], ref["n"])
    a = b + _exact_sample(ref["n"], ref["m1"] - ref["m2"], sd_diff, 2)
    row = tost(pd.DataFrame({"a": a, "b": b}), a="a", b="b", margin=tuple(ref["bounds"])).iloc[0]
    assert row["test"] == "tost_paired"
    assert row["statistic_low"] == pytest.approx(ref["t1"], abs=1e-5)
    assert row["p_low"] == pytest.approx(ref["p1"], rel=1e-5)
    assert row["statistic_high"] == pytest.approx(ref["t2"], abs=1e-5)
    assert row["p_high"] == pytest.approx(ref["p2"], rel=1e-5)
    assert [row["ci_low"], row["ci_high"]] == pytest.approx(ref["ci_tost"], abs=1e-6)


def test_tost_correlation_matches_toster_r():
    ref = PUB["toster_r"]
    n, r = ref["n"], ref["r"]
    rng = np.random.default_rng(3)
    x = rng.normal(size=n)
    e = rng.normal(size=n)
    x, e = x - x.mean(), e - e.mean()
    e = e - (e @ x) / (x @ x) * x  # orthogonal to x: y has Pearson correlation exactly r with x
    y = r * x / np.linalg.norm(x) + math.sqrt(1 - r * r) * e / np.linalg.norm(e)
    row = tost_correlation(pd.DataFrame({"x": x, "y": y}), x="x", y="y", method="pearson",
                           margin=ref["bounds"][1]).iloc[0]
    assert row["estimate"] == pytest.approx(r, abs=1e-12)
    assert row["p_low"] == pytest.approx(ref["p1"], rel=1e-5)
    assert row["p_high"] == pytest.approx(ref["p2"], rel=1e-5)
    assert [row["ci_low"], row["ci_high"]] == pytest.approx(ref["ci_tost"], abs=1e-6)
    assert bool(row["equivalent"])


def test_tost_at_half_the_verdicts_alpha_is_the_verdicts_equivalence():
    # a 95% CI inside +-m is a TOST at 2.5%; TOSTER's default 5% (a 90% CI) says more on the same data
    x = _exact_sample(12, 0.008, 0.02, 7)
    row = finish_verdicts([mean_row(x, hypothesis="h", unit="seeds", expect="equivalent", margin=0.02)], [],
                          "holm", level=0.95).iloc[0]
    assert row["p_alpha"] == pytest.approx(0.025) and row["p_val"] > row["p_alpha"]
    at_025 = tost(pd.DataFrame({"x": x}), dv="x", margin=0.02, alpha=0.025).iloc[0]
    at_05 = tost(pd.DataFrame({"x": x}), dv="x", margin=0.02).iloc[0]
    assert [row["ci_low"], row["ci_high"]] == pytest.approx([at_025["ci_low"], at_025["ci_high"]], abs=1e-12)
    assert row["p_val"] == pytest.approx(at_025["p_val"], rel=1e-12)
    assert row["verdict"] == "inconclusive" and not at_025["equivalent"] and at_05["equivalent"]


def test_tost_inputs_fail_clearly():
    data = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="either dv="):
        tost(data, margin=1.0)
    with pytest.raises(ValueError, match="low < high"):
        tost(data, dv="x", margin=(1.0, -1.0))
    assert tost(pd.DataFrame({"x": [1.0]}), dv="x", margin=1.0).iloc[0]["note"].startswith("n = 1 < 2")
    # differences equal up to rounding (0.06 each) carry no variance: no test, not p = 4e-31
    rounding = tost(pd.DataFrame({"a": [0.56, 0.57, 0.58], "b": [0.50, 0.51, 0.52]}), a="a", b="b", margin=0.1).iloc[0]
    assert rounding["note"] == "zero variance: t is undefined" and not rounding["equivalent"]
    assert math.isnan(rounding["p_val"]) and rounding["estimate"] == pytest.approx(0.06)


# --------------------------------------------------------------------------- partial correlation


def _partial_data() -> pd.DataFrame:
    return pd.DataFrame(INPUTS["partial"])


def test_partial_spearman_matches_the_first_order_formula_and_the_precision_matrix():
    data = _partial_data()
    one = partial_correlation(data, x="x", y="y", covar="z").iloc[0]
    assert one["statistic"] == pytest.approx(DIRECT["partial_spearman_xy_z_first_order"], abs=1e-12)
    assert one["dof"] == len(data) - 3 and one["n"] == len(data)
    two = partial_correlation(data, x="x", y="y", covar=["z", "w"]).iloc[0]
    assert two["statistic"] == pytest.approx(DIRECT["partial_spearman_xy_zw_precision"], abs=1e-12)
    # t test with n - 2 - k dof (ppcor's) and the Fisher-z interval with sqrt((1 + r^2 / 2) / (n - 3 - k))
    r, dof = two["statistic"], len(data) - 4
    assert two["p_val"] == pytest.approx(2 * sps.t.sf(abs(r) * math.sqrt(dof / (1 - r * r)), dof), rel=1e-12)
    se = math.sqrt((1 + r * r / 2) / (len(data) - 3 - 2))
    assert two["ci_low"] == pytest.approx(math.tanh(math.atanh(r) - 1.959963984540054 * se), abs=1e-12)
    # the confounder z carries most of the plain correlation
    assert DIRECT["spearman_xy"] > 0.9 > one["statistic"]


def test_partial_correlation_with_a_categorical_covariate_is_the_within_stratum_correlation():
    rng = np.random.default_rng(5)
    strata = np.repeat(["a", "b", "c"], 12)
    x = rng.normal(size=36) + np.repeat([0.0, 5.0, 10.0], 12)
    y = rng.normal(size=36) + np.repeat([0.0, 5.0, 10.0], 12)  # related only through the stratum
    data = pd.DataFrame({"x": x, "y": y, "s": strata})
    within = partial_correlation(data, x="x", y="y", covar="s").iloc[0]
    ranks = data.assign(rx=sps.rankdata(x), ry=sps.rankdata(y))
    res = ranks.groupby("s")[["rx", "ry"]].transform(lambda c: c - c.mean())
    assert within["statistic"] == pytest.approx(np.corrcoef(res["rx"], res["ry"])[0, 1], abs=1e-12)
    assert within["dof"] == 36 - 2 - 2
    assert sps.spearmanr(x, y).statistic > 0.9 > within["statistic"] + 0.4


# --------------------------------------------------------------------------- KD vs SFT: unit and verdicts


def _results(gain_by_loss: dict, seeds=(0, 1, 2), students=("prune:1",), base=0.40) -> pd.DataFrame:
    """A sweep's results (task 'all'): one SFT run per (student, seed), one KD run per loss."""
    rows = []
    for student in students:
        for seed in seeds:
            sft = base + 0.01 * seed
            rows.append({"run_id": f"sft-{student}-{seed}", "student": student, "seed": seed, "method": "sft",
                         "loss": None, "task": "all", "accuracy": sft})
            for loss, gains in gain_by_loss.items():
                rows.append({"run_id": f"{loss}-{student}-{seed}", "student": student, "seed": seed,
                             "method": "word_kd", "loss": loss, "task": "all", "accuracy": sft + gains[seed]})
    return pd.DataFrame(rows)


def test_kd_vs_sft_reaches_each_verdict_on_constructed_gains():
    supported = kd_vs_sft(_results({"forward_kl": [0.05, 0.06, 0.07]})).iloc[0]
    assert supported["verdict"] == "supported" and supported["n"] == 3 and supported["unit"] == "baselines"
    assert supported["estimate"] == pytest.approx(0.06)
    half = sps.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert [supported["ci_low"], supported["ci_high"]] == pytest.approx([0.06 - half, 0.06 + half])
    assert "paired within seed, task" in supported["hypothesis"]
    assert supported["sentence"].startswith("KD raises accuracy over sft")
    assert "mean gain = +6.00 points, 95% CI [+3.52, +8.48], n = 3 baselines" in supported["sentence"]
    contradicted = kd_vs_sft(_results({"forward_kl": [0.001, 0.002, 0.0015]})).iloc[0]
    assert contradicted["verdict"] == "contradicted"
    assert "smaller than the smallest effect of interest" in contradicted["sentence"]
    inconclusive = kd_vs_sft(_results({"forward_kl": [-0.05, 0.01, 0.10]})).iloc[0]
    assert inconclusive["verdict"] == "inconclusive"
    assert list(inconclusive.index) == ["family", "comparison", *VERDICT_COLUMNS]


def test_kd_runs_sharing_a_baseline_are_averaged_within_it():
    gains = {"forward_kl": [0.02, 0.08, 0.05], "reverse_kl": [0.04, 0.02, 0.09], "jsd": [0.00, 0.05, 0.07]}
    table = kd_vs_sft(_results(gains))
    pooled = table.iloc[0]
    cluster_means = np.mean([gains[k] for k in gains], axis=0)  # one value per seed (baseline)
    assert pooled["comparison"] == "all KD runs vs sft" and pooled["n"] == 3
    assert pooled["estimate"] == pytest.approx(cluster_means.mean())
    assert pooled["statistic"] == pytest.approx(sps.ttest_1samp(cluster_means, 0).statistic)
    assert "9 KD runs share 3 baseline(s)" in pooled["note"]
    # 9 runs treated as independent would give a narrower, wrong interval
    naive = sps.ttest_1samp(np.concatenate(list(gains.values())), 0).confidence_interval()
    assert pooled["ci_high"] - pooled["ci_low"] > naive.high - naive.low
    # one row per loss, each over the 3 baselines; p_adj across the 4 rows (Holm)
    assert table["comparison"].tolist()[1:] == ["loss = forward_kl vs sft", "loss = jsd vs sft",
                                                "loss = reverse_kl vs sft"]
    # each sentence says what it is about: the pooling, or the configuration
    assert pooled["sentence"].startswith("KD (averaged over its 3 configurations of loss) raises accuracy over sft")
    assert table["sentence"].iloc[2].startswith("KD at loss = jsd raises accuracy over sft")
    by_student = kd_vs_sft(_results(gains, students=("prune:1", "prune:2")), by="student")
    assert by_student["sentence"].iloc[4].startswith(
        "KD for student = prune:2 (averaged over its 3 configurations of loss) raises accuracy")
    assert by_student["sentence"].iloc[5].startswith("KD at loss = forward_kl for student = prune:2 raises")
    assert (table["n"] == 3).all()
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(table["p_adj"], multipletests(table["p_val"], method="holm")[1])


def test_one_seed_says_so_instead_of_testing():
    row = kd_vs_sft(_results({"forward_kl": [0.05]}, seeds=(0,))).iloc[0]
    assert row["verdict"] == "inconclusive" and row["n"] == 1
    assert math.isnan(row["ci_low"]) and math.isnan(row["p_val"])
    assert row["note"].startswith("one seed")
    assert "inconclusive (one seed" in row["sentence"]


# --------------------------------------------------------------------------- student against teacher


def _meta_results(gaps: dict, teacher=(0.60, 0.90), seeds=(0, 1, 2)) -> pd.DataFrame:
    """Runs of two curriculum settings on two tasks, one shared teacher: accuracy = teacher + gap[seed]."""
    rows = []
    for curriculum, by_task in gaps.items():
        for seed in seeds:
            for (task, per_seed), t_acc in zip(by_task.items(), teacher, strict=True):
                rows.append({"run_id": f"{curriculum}-{seed}", "mpdistil.curriculum": curriculum, "seed": seed,
                             "method": "mpdistil", "task": task, "accuracy": t_acc + per_seed[seed],
                             "teacher_accuracy": t_acc})
    return pd.DataFrame(rows)


def test_teacher_gap_tests_pair_each_run_with_its_teacher_per_task_and_setting():
    gaps = {"policy": {"lab_chain": [0.05, 0.07, 0.06], "lab_word": [-0.10, -0.20, 0.00]},
            "none": {"lab_chain": [-0.01, 0.00, 0.002], "lab_word": [-0.30, -0.25, -0.35]}}
    results = _meta_results(gaps)
    table = teacher_gap_tests(pd.concat([results, results.iloc[:2]]))  # a run listed twice counts once
    assert table["setting"].tolist() == ["mpdistil.curriculum = policy"] * 2 + ["mpdistil.curriculum = none"] * 2
    assert table["task"].tolist() == ["lab_chain", "lab_word"] * 2
    assert list(table.columns) == ["family", "comparison", "setting", "task", "mpdistil.curriculum", *VERDICT_COLUMNS]
    chain = table.iloc[0]
    # by hand: one-sample t over the three per-seed differences
    ref = sps.ttest_1samp([0.05, 0.07, 0.06], 0.0, alternative="greater")
    assert chain["estimate"] == pytest.approx(0.06) and chain["n"] == 3 and chain["unit"] == "seeds"
    assert chain["statistic"] == pytest.approx(ref.statistic) and chain["p_val"] == pytest.approx(ref.pvalue)
    half = sps.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert [chain["ci_low"], chain["ci_high"]] == pytest.approx([0.06 - half, 0.06 + half])
    assert chain["verdict"] == "supported"
    assert chain["sentence"].startswith("the student at mpdistil.curriculum = policy beats its teacher on lab_chain")
    assert "mean student - teacher = +6.00 points" in chain["sentence"] and "n = 3 seeds" in chain["sentence"]
    assert "one teacher for every run" in chain["note"]
    assert table["verdict"].tolist() == ["supported", "inconclusive", "contradicted", "contradicted"]
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(table["p_adj"], multipletests(table["p_val"], method="holm")[1])


def test_teacher_gap_tests_take_tasks_settings_and_leave_the_baseline_out():
    results = _meta_results({"policy": {"lab_chain": [0.05, 0.07, 0.06], "lab_word": [0.01, 0.0, 0.02]}})
    sft = results.assign(run_id=results["run_id"] + "-sft", method="sft", accuracy=0.0)
    pooled = results.groupby(["run_id", "seed", "method", "mpdistil.curriculum"], as_index=False)[
        ["accuracy", "teacher_accuracy"]].mean().assign(task="all")
    table = teacher_gap_tests(pd.concat([results, sft, pooled]), tasks=["all"])
    row = table.iloc[0]
    assert row["setting"] == "all runs" and row["task"] == "all" and row["n"] == 3  # the SFT runs are left out
    assert row["estimate"] == pytest.approx(np.mean([(0.05 + 0.01) / 2, 0.07 / 2, (0.06 + 0.02) / 2]))
    one_seed = teacher_gap_tests(results.loc[results["seed"] == 0], expect="two-sided")
    assert one_seed["note"].iloc[0].startswith("one seed") and (one_seed["verdict"] == "inconclusive").all()
    assert one_seed["sentence"].iloc[0].startswith("the student differs from its teacher on lab_chain")
    with pytest.raises(ValueError, match="no rows with task"):
        teacher_gap_tests(results, tasks=["lab_add"])
    with pytest.raises(ValueError, match="teacher_accuracy"):
        teacher_gap_tests(results.drop(columns=["teacher_accuracy"]))


# --------------------------------------------------------------------------- one-at-a-time grids


def _grid(tau_only: bool = False) -> pd.DataFrame:
    """A one-at-a-time sigma/tau grid with 3 seeds and an SFT baseline per seed."""
    rows = []
    for seed in (0, 1, 2):
        rows.append({"run_id": f"sft-{seed}", "seed": seed, "method": "sft", "sigma": np.nan,
                     "temperature": np.nan, "task": "all", "accuracy": 0.30})
        cells = [(0.0, 1.0), (0.0, 2.0), (0.0, 5.0)] if tau_only else \
            [(0.0, 1.0), (2.0, 1.0), (5.0, 1.0), (0.0, 2.0), (0.0, 5.0)]
        for sigma, tau in cells:
            acc = {(0.0, 1.0): 0.50, (2.0, 1.0): 0.44, (5.0, 1.0): 0.10,
                   (0.0, 2.0): 0.53, (0.0, 5.0): 0.05}[(sigma, tau)] + 0.002 * seed * (1 + sigma + tau)
            rows.append({"run_id": f"s{sigma}-t{tau}-{seed}", "seed": seed, "method": "word_kd", "sigma": sigma,
                         "temperature": tau, "task": "all", "accuracy": acc})
    return pd.DataFrame(rows)


def test_sigma_contrasts_use_only_the_tau_1_runs():
    grid = _grid()
    sigma = axis_contrasts(grid, "sigma")
    assert sigma["comparison"].tolist() == ["σ = 2 vs σ = 0 at τ = 1", "σ = 5 vs σ = 0 at τ = 1"]
    # by hand, from the tau = 1 runs only: per seed, acc(sigma=2) - acc(sigma=0)
    diffs = [(0.44 + 0.002 * s * 4) - (0.50 + 0.002 * s * 2) for s in (0, 1, 2)]
    row = sigma.iloc[0]
    assert row["estimate"] == pytest.approx(np.mean(diffs)) and row["n"] == 3 and row["unit"] == "seeds"
    assert row["expect"] == "less" and row["verdict"] == "supported"
    assert sigma.iloc[1]["verdict"] == "supported"
    tau = axis_contrasts(grid, "temperature")
    assert tau["comparison"].tolist() == ["τ = 2 vs τ = 1 at σ = 0", "τ = 5 vs τ = 1 at σ = 0"]
    assert tau["expect"].tolist() == ["greater", "less"]
    tau2 = [(0.53 + 0.002 * s * 3) - (0.50 + 0.002 * s * 2) for s in (0, 1, 2)]
    assert tau.iloc[0]["estimate"] == pytest.approx(np.mean(tau2))


def test_a_grid_where_only_tau_varies_gives_no_sigma_test():
    table = ablation_tests(_grid(tau_only=True))
    assert set(table["family"]) == {"kd_vs_sft", "temperature"}
    assert axis_contrasts(_grid(tau_only=True), "sigma").empty
    # sigma varying only away from tau = 1 gives no sigma test either, and says so
    odd = _grid()
    odd = odd.loc[~((odd["sigma"] > 0) & (odd["temperature"] == 1.0))]
    odd = pd.concat([odd, odd.loc[odd["temperature"] == 2.0].assign(sigma=2.0, run_id=lambda d: d["run_id"] + "x")])
    skipped = ablation_tests(odd)
    assert "sigma" not in set(skipped["family"])
    assert skipped.attrs["skipped"] == ["σ varies, but not among the runs at τ = 1: no σ test"]


def test_an_axis_held_at_one_value_off_the_center_filters_nothing():
    # a sigma sweep run at tau = 2 throughout: tau is not confounded with sigma, so every run enters
    grid = _grid()
    grid = grid.loc[(grid["method"] == "sft") | (grid["temperature"] == 1.0)].assign(
        temperature=lambda d: d["temperature"].where(d["method"] == "sft", 2.0))
    table = ablation_tests(grid)
    sigma = table.loc[table["family"] == "sigma"]
    assert sigma["comparison"].tolist() == ["σ = 2 vs σ = 0 at τ = 2", "σ = 5 vs σ = 0 at τ = 2"]
    diffs = [(0.44 + 0.002 * s * 4) - (0.50 + 0.002 * s * 2) for s in (0, 1, 2)]
    assert sigma.iloc[0]["estimate"] == pytest.approx(np.mean(diffs)) and sigma.iloc[0]["n"] == 3
    assert table.attrs["skipped"] == ["τ: the KD runs hold one level (τ = 2): not testable"]


def test_a_missing_reference_level_is_named():
    grid = _grid()
    grid = grid.loc[~((grid["sigma"] == 0.0) & (grid["temperature"] == 1.0))]
    grid = grid.loc[grid["temperature"] == 1.0]  # sigma 2 and 5 at tau = 1, no sigma = 0 run
    table = axis_contrasts(grid, "sigma")
    assert table.empty
    [why] = table.attrs["skipped"]
    assert why.startswith("σ: no run at the reference level σ = 0 (levels σ = 2, σ = 5)")
    assert ablation_tests(grid).attrs["skipped"][0] == why


def test_a_single_matched_pair_or_a_missing_metric_is_not_called_one_seed():
    grid = _grid()
    lone = grid.loc[~((grid["sigma"] == 2.0) & (grid["seed"] > 0))]  # sigma = 2 matched for seed 0 only
    row = axis_contrasts(lone, "sigma").iloc[0]
    assert row["n"] == 1 and row["verdict"] == "inconclusive"
    assert row["note"] == "one matched pair of runs: a contrast needs two or more to estimate their variance"
    data = _results({"forward_kl": [0.05, 0.06, 0.07]}, seeds=(0, 1))
    data.loc[data["run_id"] == "forward_kl-prune:1-1", "accuracy"] = np.nan  # one KD run failed its eval
    row = kd_vs_sft(data).iloc[0]
    assert row["n"] == 1 and not row["note"].startswith("one seed")
    assert row["note"] == ("one baseline with a gain: a KD-vs-SFT verdict needs two or more to estimate their "
                           "variance; 1 KD run(s) with no accuracy value left out")


def test_ablation_tests_with_one_seed_are_inconclusive_and_say_why():
    one = _grid().query("seed == 0")
    table = ablation_tests(one)
    assert (table["verdict"] == "inconclusive").all()
    assert table["note"].str.startswith("one seed").all()
    assert set(table["family"]) == {"kd_vs_sft", "sigma", "temperature"}


def test_teacher_awareness_contrast():
    rows = []
    for seed, (unaware, aware) in enumerate([(0.10, 0.40), (0.12, 0.45), (0.08, 0.38)]):
        rows += [{"run_id": f"u{seed}", "seed": seed, "method": "word_kd", "teacher_aware": False, "task": "all",
                  "accuracy": unaware},
                 {"run_id": f"a{seed}", "seed": seed, "method": "word_kd", "teacher_aware": True, "task": "all",
                  "accuracy": aware}]
    row = ablation_tests(pd.DataFrame(rows)).iloc[0]
    assert row["family"] == "teacher_aware" and row["verdict"] == "supported"
    assert row["estimate"] == pytest.approx(np.mean([0.30, 0.33, 0.30]))
    assert row["sentence"].startswith("task-aware teacher raises accuracy against task-unaware teacher")


# --------------------------------------------------------------------------- power


def test_seeds_needed_matches_ttestpower_and_the_published_sample_size():
    out = seeds_needed([0.5, 0.2], sd=1.0)
    assert list(out.columns) == list(POWER_COLUMNS)
    assert out["seeds_exact"].tolist() == pytest.approx([DIRECT["ttest_power_n_d05"], DIRECT["ttest_power_n_d02"]],
                                                        rel=1e-6)
    assert int(out["seeds"].iloc[0]) == PUB["one_sample_power_d05"]["n"]  # G*Power: 34
    # Guenther (1981): ((z_.975 + z_.8) / d)^2 + z_.975^2 / 2
    z_a, z_b = sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    assert out["seeds_exact"].iloc[0] == pytest.approx(((z_a + z_b) / 0.5) ** 2 + z_a ** 2 / 2, abs=0.1)
    assert minimal_detectable_effect(2.0, 5) == pytest.approx(2.0 * DIRECT["ttest_power_d_n5"], rel=1e-6)


def test_seed_sd_pools_the_variance_within_configurations():
    data = _results({"forward_kl": [0.02, 0.06, 0.07], "reverse_kl": [0.00, 0.01, 0.05]})
    from kdlens.analysis import add_gain

    gained = add_gain(data, metrics=("accuracy",))
    sd, dof, groups = seed_sd(gained, metric="accuracy_gain")
    a, b = np.array([0.02, 0.06, 0.07]), np.array([0.00, 0.01, 0.05])
    expected = math.sqrt((((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / 4)
    assert (sd, dof, groups) == (pytest.approx(expected), 4, 2)
    needed = seeds_needed(0.02, data=gained)
    assert needed["sd"].iloc[0] == pytest.approx(expected)
    none = seeds_needed(0.02, data=gained.query("seed == 0"))
    assert math.isnan(none["seeds_exact"].iloc[0]) and "seed variance is unknown" in none["note"].iloc[0]
    flat = seeds_needed(0.02, data=gained.assign(accuracy_gain=0.01))  # every seed the same: no spread
    assert math.isnan(flat["seeds_exact"].iloc[0]) and "does not vary across seeds (sd 0)" in flat["note"].iloc[0]


# --------------------------------------------------------------------------- mixed model against lme4


def test_mixed_model_reproduces_lme4_sleepstudy():
    sleep = pd.read_csv(REF_DIR / "sleepstudy.csv")
    ref = PUB["lme4_sleepstudy"]
    table = mixed(sleep, outcome="Reaction", predictors=["Days"], groups="Subject", re_formula="~Days")
    fixed = table.set_index("term")
    for term in ("Intercept", "Days"):
        assert round(fixed.loc[term, "estimate"], 3) == ref["fixed"][term]
        assert round(fixed.loc[term, "std_err"], 3) == ref["std_err"][term]
    assert math.isnan(fixed.loc["Intercept", "p_adj"]) and fixed.loc["Days", "p_adj"] == fixed.loc["Days", "p_val"]
    cov = table.attrs["random_effects"]
    assert round(cov.iloc[0, 0], 1) == pytest.approx(ref["var_intercept"], abs=0.05)
    assert round(cov.iloc[1, 1], 2) == ref["var_days"]
    assert round(table.attrs["scale"], 2) == ref["residual_var"]
    with pytest.raises(ValueError, match="needs several groups"):
        mixed(sleep.query("Subject == 308"), outcome="Reaction", predictors=["Days"], groups="Subject")


def _reml_random_intercept(y: np.ndarray, x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, float, float]:
    """REML of ``y = X b + u_g + e`` by direct maximization of the profiled restricted likelihood.

    With ``gamma = var(u) / var(e)``, ``H = I + gamma Z Z'`` is block diagonal with
    ``H_g^-1 = I - gamma / (1 + gamma m_g) J``; ``-2 l_R(gamma) = log|H| + log|X' H^-1 X| +
    (n - p) log(r' H^-1 r)`` up to a constant (Harville 1977). Returns ``(b, var(u), var(e))``.
    """
    from scipy import optimize

    _, inv = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inv)
    n, p = x.shape

    def parts(gamma):
        w = gamma / (1 + gamma * sizes)

        def h_inv(a):
            sums = np.zeros((len(sizes), *a.shape[1:]))
            np.add.at(sums, inv, a)
            return a - w[inv].reshape((-1,) + (1,) * (a.ndim - 1)) * sums[inv]

        xhx = x.T @ h_inv(x)
        beta = np.linalg.solve(xhx, x.T @ h_inv(y))
        r = y - x @ beta
        q = float(r @ h_inv(r))
        return beta, q, np.log1p(gamma * sizes).sum() + np.linalg.slogdet(xhx)[1] + (n - p) * math.log(q)

    best = optimize.minimize_scalar(lambda g: parts(g)[2], bounds=(0, 10), method="bounded",
                                    options={"xatol": 1e-12}).x
    gamma = best if parts(best)[2] < parts(0.0)[2] else 0.0
    beta, q, _ = parts(gamma)
    return beta, gamma * q / (n - p), q / (n - p)


def _correctness(runs: int, examples: int, seed: int) -> pd.DataFrame:
    """0/1 correctness of examples nested in runs, with a small run effect."""
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({"run": np.repeat(np.arange(runs), examples), "bleu": rng.uniform(size=runs * examples)})
    run_effect = np.repeat(rng.normal(0, 0.03, runs), examples)
    data["correct"] = rng.uniform(size=len(data)) < 0.3 + 0.3 * data["bleu"] + run_effect
    return data


@pytest.mark.parametrize(("runs", "examples", "seed"), [(20, 50, 2), (20, 50, 3), (10, 50, 0)])
def test_mixed_model_reaches_the_reml_optimum_where_the_default_optimizer_stops_short(runs, examples, seed):
    # statsmodels' default fit reports convergence on (20, 50, 2) at an infinite likelihood with an
    # intercept of 0.07 instead of 0.30, and on (20, 50, 3) at a run variance of 0.0055 instead of
    # 0.0033; (10, 50, 0) is a case where it is right
    data = _correctness(runs, examples, seed)
    beta, var_run, var_e = _reml_random_intercept(data["correct"].to_numpy(float),
                                                  np.column_stack([np.ones(len(data)), data["bleu"]]),
                                                  data["run"].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the boundary case warns; checked below
        table = mixed(data, outcome="correct", predictors=["bleu"], groups="run")
    np.testing.assert_allclose(table["estimate"], beta, atol=2e-5)
    assert float(table.attrs["random_effects"].iloc[0, 0]) == pytest.approx(var_run, abs=2e-6)
    assert table.attrs["scale"] == pytest.approx(var_e, rel=1e-5)


def test_mixed_model_says_when_the_fit_is_singular():
    data = _correctness(20, 50, 2)  # the REML run variance is 0
    with pytest.warns(UserWarning, match=r"mixed model: singular fit: the variance of the random Group per run"):
        table = mixed(data, outcome="correct", predictors=["bleu"], groups="run")
    assert table.attrs["warnings"][0].startswith("singular fit")
    assert (table["note"].str.contains("singular fit")).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an interior fit warns nothing
        clean = mixed(pd.read_csv(REF_DIR / "sleepstudy.csv"), outcome="Reaction", predictors=["Days"],
                      groups="Subject")
    assert clean.attrs["warnings"] == []
    with pytest.raises(ValueError, match="outcome 'run_name' must be numeric"):
        mixed(data.assign(run_name=data["run"].astype(str)), outcome="run_name", predictors=["bleu"], groups="run")


def test_seeds_needed_from_a_level_uses_the_sd_of_a_difference_of_two_runs():
    data = _results({"forward_kl": [0.02, 0.06, 0.07]})
    sd_level, _, _ = seed_sd(data, metric="accuracy")  # the spread of one run's accuracy across seeds
    assert sd_level > 0
    out = seeds_needed(0.02, data=data, metric="accuracy").iloc[0]
    assert out["sd"] == pytest.approx(math.sqrt(2) * sd_level)
    assert out["seeds_exact"] == pytest.approx(seeds_needed(0.02, sd=math.sqrt(2) * sd_level)["seeds_exact"].iloc[0])
    assert "is a level" in out["note"]
    # a gain is already a difference: used as it is
    from kdlens.analysis import add_gain

    gain = seeds_needed(0.02, data=add_gain(data, metrics=("accuracy",)), metric="accuracy_gain").iloc[0]
    assert "is a level" not in gain["note"]
    assert gain["sd"] == pytest.approx(seed_sd(add_gain(data, metrics=("accuracy",)))[0])


# --------------------------------------------------------------------------- the p that matches the decision


def test_the_p_value_shown_is_compared_with_its_own_threshold():
    # six seeds whose gains give a one-sided p of exactly 0.028: above 0.025, so the 95% CI includes 0
    t = sps.t.isf(0.028, 5)
    gains = _exact_sample(6, t * 0.02 / math.sqrt(6), 0.02, 3)
    row = kd_vs_sft(_results({"forward_kl": list(gains)}, seeds=tuple(range(6)))).iloc[0]
    assert row["p_val"] == pytest.approx(0.028, rel=1e-9) and row["p_alpha"] == pytest.approx(0.025)
    assert row["verdict"] == "inconclusive" and row["ci_low"] < 0
    assert "n = 6 baselines, one-sided p = 0.028 vs 0.025; the CI includes 0" in row["sentence"]
    # a claim without a direction is two-sided: its p is compared with 1 - level
    grid = _grid()
    grid.loc[grid["temperature"] == 5.0, "temperature"] = 3.0  # tau = 3: no stated direction
    tau3 = axis_contrasts(grid, "temperature").iloc[1]
    assert tau3["expect"] == "two-sided" and tau3["p_alpha"] == pytest.approx(0.05)
    assert f"two-sided p = {tau3['p_val']:.2g} vs 0.05" in tau3["sentence"]


def _decided_by_p(table: pd.DataFrame) -> None:
    """p_val < p_alpha exactly when the interval excludes 0 in the claim's direction (inside +-m for TOST)."""
    rows = table.loc[table["ci_low"].notna()]
    assert len(rows)
    for _, r in rows.iterrows():
        excludes = {"greater": r["ci_low"] > 0, "less": r["ci_high"] < 0,
                    "two-sided": r["ci_low"] > 0 or r["ci_high"] < 0,
                    "equivalent": -r["margin"] < r["ci_low"] and r["ci_high"] < r["margin"]}[r["expect"]]
        assert (r["p_val"] < r["p_alpha"]) == excludes, r["sentence"]


def test_every_verdict_table_decides_p_and_ci_alike():
    from kdlens.analysis import paradox_test

    rng = np.random.default_rng(8)
    runs = pd.DataFrame({"accuracy_gain": rng.normal(0.03, 0.02, 14), "bleu": rng.normal(0.5, 0.1, 14),
                         "size": np.repeat([1.0, 2.0], 7)})
    runs["agreement"] = 0.5 + 2 * runs["accuracy_gain"] + rng.normal(0, 0.02, 14)
    for table in (ablation_tests(_grid()), ablation_tests(_grid(), simultaneous=True),
                  paradox_test(runs, controls=["size"]), paradox_test(runs, by="size", min_n=5),
                  kd_vs_sft(_results({"a": [0.01, 0.05, 0.02], "b": [0.0, 0.03, 0.01]}))):
        assert list(table.columns[-len(VERDICT_COLUMNS):]) == list(VERDICT_COLUMNS)
        _decided_by_p(table)


def test_a_correlations_p_comes_from_the_fisher_z_of_its_interval():
    # the review's case: rho = 0.58 over 12 units. The t test of rho says one-sided p = 0.024, yet the
    # Fisher-z interval includes 0; the verdict's p is that of the interval's own statistic
    x = np.arange(1.0, 13.0)
    y = x.copy()
    for i, j in ((1, 6), (7, 12), (2, 5), (3, 4)):  # sum of squared rank differences 2 * (25 + 25 + 9 + 1)
        y[[i - 1, j - 1]] = y[[j - 1, i - 1]]
    rho = 1 - 6 * 120 / (12 * 143)
    assert sps.spearmanr(x, y).statistic == pytest.approx(rho)
    t_p = sps.t.sf(rho * math.sqrt(10 / (1 - rho ** 2)), 10)
    assert t_p < 0.025  # what the table used to show next to an interval that includes 0
    row = finish_verdicts([correlation_row(x, y, None, method="spearman", hypothesis="h", unit="runs",
                                           expect="greater", margin=0.3)], [], "holm", level=0.95).iloc[0]
    se = math.sqrt((1 + rho ** 2 / 2) / 9)
    assert row["statistic"] == pytest.approx(math.atanh(rho) / se)
    assert row["p_val"] == pytest.approx(sps.norm.sf(math.atanh(rho) / se)) and row["p_val"] > 0.025
    assert row["ci_low"] == pytest.approx(math.tanh(math.atanh(rho) - sps.norm.ppf(0.975) * se))
    assert row["ci_low"] < 0
    assert row["verdict"] == "inconclusive" and f"one-sided p = {row['p_val']:.3g} vs 0.025" in row["sentence"]
    # the equivalence p is TOSTER's TOSTr on the same z and standard error
    eq = finish_verdicts([correlation_row(x, y, None, method="spearman", hypothesis="h", unit="runs",
                                          expect="equivalent", margin=0.3)], [], "holm", level=0.95).iloc[0]
    bound = math.atanh(0.3)
    assert eq["p_val"] == pytest.approx(max(sps.norm.sf((math.atanh(rho) + bound) / se),
                                            sps.norm.cdf((math.atanh(rho) - bound) / se)))


# --------------------------------------------------------------------------- clustered correlations


def _corr(x, y, covariates=None, **kwargs) -> pd.Series:
    return finish_verdicts([correlation_row(x, y, covariates, method="spearman", hypothesis="h", unit="runs",
                                            expect="equivalent", margin=0.3, **kwargs)], [], "holm",
                           level=0.95).iloc[0]


def test_the_resample_weights_give_the_correlation_of_the_resample_itself():
    from kdlens.analysis._bootstrap import _weighted_partial_r
    from kdlens.analysis.stats import covariate_blocks, partial_rank_residuals

    rng = np.random.default_rng(0)
    n = 30
    x = np.round(rng.normal(size=n), 1)  # ties, as ranks of real metrics have
    y = x + rng.normal(size=n)
    cov = pd.DataFrame({"z": np.round(rng.normal(size=n), 1), "s": rng.choice(["a", "b", "c"], n)})
    draws = rng.integers(0, n, size=(6, n))
    weights = np.zeros((6, n))
    np.add.at(weights, (np.arange(6)[:, None], draws), 1.0)
    numeric, dummies = covariate_blocks(cov)
    for method in ("spearman", "pearson"):
        got = _weighted_partial_r(x, y, numeric, dummies, weights, method)
        for b in range(6):
            rx, ry, _, _ = partial_rank_residuals(x[draws[b]], y[draws[b]], cov.iloc[draws[b]].reset_index(drop=True),
                                                  method=method)
            assert got[b] == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-10)


def test_one_row_per_cluster_is_the_plain_interval():
    from kdlens.analysis._bootstrap import cluster_design_effect

    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 0.3 * x + rng.normal(size=40)
    # the cluster and the row bootstrap draw the same resamples: a design effect of exactly 1
    assert cluster_design_effect(x, y, None, np.arange(40), seed=5) == (1.0, 0)
    plain, singletons = _corr(x, y), _corr(x, y, clusters=np.arange(40))
    assert singletons["test"] == "spearman" and singletons["n"] == 40
    assert [singletons["ci_low"], singletons["ci_high"]] == [plain["ci_low"], plain["ci_high"]]


def test_clustered_rows_widen_the_interval_to_what_the_clusters_carry():
    # every run repeated 3 times (3 losses sharing one baseline that carries the whole effect): the
    # 120 rows hold the information of 40, and the interval is the 40 runs' one, within Monte Carlo error
    rng = np.random.default_rng(11)
    x0 = rng.normal(size=40)
    y0 = 0.3 * x0 + rng.normal(size=40)
    x, y, ids = np.repeat(x0, 3), np.repeat(y0, 3), np.repeat(np.arange(40), 3)
    naive, clustered, original = _corr(x, y), _corr(x, y, clusters=ids, cluster_name="baseline"), _corr(x0, y0)
    assert clustered["test"] == "spearman_clustered" and clustered["n"] == 40 and clustered["dof"] == 39
    assert clustered["estimate"] == pytest.approx(naive["estimate"])
    assert [clustered["ci_low"], clustered["ci_high"]] == pytest.approx([original["ci_low"], original["ci_high"]],
                                                                        abs=0.015)
    assert clustered["ci_high"] - clustered["ci_low"] > 1.5 * (naive["ci_high"] - naive["ci_low"])
    assert "n = 40 baseline clusters (120 runs)" in clustered["sentence"]
    assert "120 rows in 40 baseline clusters: design effect 3." in clustered["note"]
    # seeded: the same seed gives the same interval
    again = _corr(x, y, clusters=ids, cluster_name="baseline")
    assert again["ci_low"] == clustered["ci_low"]


def test_paradox_test_clusters_runs_that_share_a_baseline_by_default():
    from kdlens.analysis import paradox_test

    # 12 baselines x 3 losses: the baseline's noise is in its 3 runs' gains, and bleu follows it
    rng = np.random.default_rng(2)
    base = np.repeat(rng.normal(0, 0.02, 12), 3)
    runs = pd.DataFrame({"baseline_run_id": np.repeat([f"sft-{i}" for i in range(12)], 3),
                         "accuracy_gain": 0.04 + base + rng.normal(0, 0.005, 36)})
    runs["bleu"] = 0.4 + 3 * base + rng.normal(0, 0.01, 36)
    auto, independent = paradox_test(runs, fidelity="bleu"), paradox_test(runs, fidelity="bleu", cluster=None)
    row, naive = auto.iloc[1], independent.iloc[1]
    assert row["test"] == "spearman_clustered" and row["n"] == 12 and naive["n"] == 36
    assert row["ci_high"] - row["ci_low"] > naive["ci_high"] - naive["ci_low"]
    assert "n = 12 baseline_run_id clusters (36 runs)" in row["sentence"]
    assert auto.iloc[0]["n"] == 12  # the gain row: cluster means


# --------------------------------------------------------------------------- families


def test_simultaneous_intervals_are_bonferroni_over_the_family():
    gains = {"forward_kl": [0.02, 0.08, 0.05, 0.04], "reverse_kl": [0.04, 0.02, 0.09, 0.03],
             "jsd": [0.00, 0.05, 0.07, 0.02]}
    data = _results(gains, seeds=(0, 1, 2, 3))
    per, fam = kd_vs_sft(data), kd_vs_sft(data, simultaneous=True)
    assert len(fam) == 4 and (per["level"] == 0.95).all()
    assert fam["level"].tolist() == pytest.approx([1 - 0.05 / 4] * 4)
    assert fam["p_alpha"].tolist() == pytest.approx([0.05 / 8] * 4)
    # by hand: the jsd row, t interval at 98.75% over its 4 baselines
    jsd = np.array(gains["jsd"])
    half = sps.t.ppf(1 - 0.05 / 8, 3) * jsd.std(ddof=1) / 2
    row = fam.loc[fam["comparison"] == "loss = jsd vs sft"].iloc[0]
    assert [row["ci_low"], row["ci_high"]] == pytest.approx([jsd.mean() - half, jsd.mean() + half])
    assert (fam["p_val"] == per["p_val"]).all() and (fam["p_adj"] == per["p_adj"]).all()
    assert "98.75% CI" in row["sentence"] and "Bonferroni-simultaneous 98.75% CI in a family of 4: familywise 95%" \
        in row["sentence"]
    assert per["sentence"].str.contains("per-comparison 95% CI in a family of 4; familywise: simultaneous=True").all()
    # a verdict that holds per comparison but not familywise
    assert (per["verdict"] == "supported").sum() > (fam["verdict"] == "supported").sum()
    # a family of one says nothing about families
    single = kd_vs_sft(_results({"forward_kl": [0.05, 0.06, 0.07]}))
    assert "family" not in single["sentence"].iloc[0]


def test_ablation_tests_is_one_family():
    # KD vs SFT pooled and per (sigma, tau) cell (6 rows), 2 sigma and 2 tau contrasts: one family of 10
    table = ablation_tests(_grid(), simultaneous=True)
    assert len(table) == 10 and table["level"].tolist() == pytest.approx([1 - 0.05 / 10] * 10)
    assert table["sentence"].str.contains("Bonferroni-simultaneous 99.5% CI in a family of 10").all()
    per = ablation_tests(_grid())
    assert per["sentence"].str.contains("per-comparison 95% CI in a family of 10").all()


# --------------------------------------------------------------------------- few groups


def test_mixed_model_refers_its_wald_statistic_to_t_on_groups_minus_fixed_effects():
    sleep = pd.read_csv(REF_DIR / "sleepstudy.csv")
    table = mixed(sleep, outcome="Reaction", predictors=["Days"], groups="Subject", re_formula="~Days")
    days = table.set_index("term").loc["Days"]
    assert days["dof"] == 18 - 2 and table.attrs["dof"] == 16
    t = days["estimate"] / days["std_err"]
    assert days["statistic"] == pytest.approx(t)
    assert days["p_val"] == pytest.approx(2 * sps.t.sf(abs(t), 16), rel=1e-10)
    assert days["p_val"] > 2 * sps.norm.sf(abs(t))  # the Wald z's p is smaller
    assert days["ci_high"] - days["estimate"] == pytest.approx(sps.t.ppf(0.975, 16) * days["std_err"])
    assert "t reference on G - p = 16 dof (18 groups - 2 fixed effects)" in days["note"]


def _clustered_correctness(groups: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({"task": "t", "example_id": np.repeat([str(i) for i in range(groups)], 20),
                         "bleu": rng.uniform(size=groups * 20)})
    effect = np.repeat(rng.normal(0, 0.8, groups), 20)
    data["correct"] = rng.uniform(size=len(data)) < 1 / (1 + np.exp(-(-0.3 + 1.5 * data["bleu"] + effect)))
    return data


def test_gee_uses_the_bias_reduced_sandwich_with_few_groups():
    import statsmodels.api as sm

    from kdlens.analysis import fit_gee, gee

    few = _clustered_correctness(12)
    table = gee(few, task_effects=False)
    assert table.attrs["cov_type"] == "bias_reduced" and table.attrs["n_groups"] == 12 < GEE_SMALL_SAMPLE_GROUPS
    assert table["note"].iloc[0].startswith("effect_size = odds ratio per unit of the term; Mancl-DeRouen "
                                            "bias-reduced sandwich covariance, Wald z, 12 example_id groups "
                                            "(fewer than 40 groups)")
    ref = sm.GEE(few["correct"].astype(float), sm.add_constant(few[["bleu"]]), groups=few["example_id"],
                 family=sm.families.Binomial(), cov_struct=sm.cov_struct.Exchangeable())
    bc, robust = ref.fit(cov_type="bias_reduced"), ref.fit(cov_type="robust")
    bleu = table.set_index("term").loc["bleu"]
    assert bleu["std_err"] == pytest.approx(bc.bse["bleu"], rel=1e-6)
    assert bleu["std_err"] > robust.bse["bleu"] and bleu["p_val"] > robust.pvalues["bleu"]
    assert fit_gee(few, task_effects=False, cov_type="robust").bse["bleu"] == pytest.approx(robust.bse["bleu"])
    many = gee(_clustered_correctness(GEE_SMALL_SAMPLE_GROUPS), task_effects=False)
    assert many.attrs["cov_type"] == "robust" and "sandwich covariance, Wald z, 40 example_id groups" in \
        many["note"].iloc[0]
    with pytest.raises(ValueError, match="unknown cov_type 'hc3'"):
        gee(few, task_effects=False, cov_type="hc3")


# --------------------------------------------------------------------------- power at an upper bound of the sd


def test_seeds_needed_at_the_upper_confidence_bound_of_the_seed_sd():
    from kdlens.analysis import add_gain

    gained = add_gain(_results({"forward_kl": [0.02, 0.06, 0.07], "reverse_kl": [0.00, 0.01, 0.05]}),
                      metrics=("accuracy",))
    out = seeds_needed([0.02, 0.05], data=gained)
    sd, dof = out["sd"].iloc[0], out["sd_dof"].iloc[0]
    # chi-square bound: k s^2 / sigma^2 ~ chi2_k, so P(sigma < s sqrt(k / chi2_{0.2}(k))) = 0.8
    assert dof == 4 and out["sd_upper"].iloc[0] == pytest.approx(sd * math.sqrt(4 / sps.chi2.ppf(0.2, 4)))
    at_bound = seeds_needed([0.02, 0.05], sd=out["sd_upper"].iloc[0])
    assert out["seeds_upper"].tolist() == at_bound["seeds"].tolist()
    assert (out["seeds_upper"] > out["seeds"]).all()
    assert "seeds_upper: at the 0.8 upper confidence bound of the sd (4 dof)" in out["note"].iloc[0]
    assert "one seed is one paired KD - SFT difference" in out["note"].iloc[0]
    # with a pilot's sd, its degrees of freedom give the bound; without them there is none
    pilot = seeds_needed(0.5, sd=1.0, sd_dof=9, sd_confidence=0.9)
    assert pilot["sd_upper"].iloc[0] == pytest.approx(math.sqrt(9 / sps.chi2.ppf(0.1, 9)))
    assert math.isnan(seeds_needed(0.5, sd=1.0)["sd_upper"].iloc[0])
    # several students: the unit is the (student, seed) pair that kd_vs_sft pools
    two = add_gain(_results({"forward_kl": [0.02, 0.06, 0.07]}, students=("prune:1", "prune:2")),
                   metrics=("accuracy",))
    assert "(student, seed) pairs when the 2 students are pooled" in seeds_needed(0.02, data=two)["note"].iloc[0]
