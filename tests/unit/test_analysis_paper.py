"""kdlens.analysis.paper reproduces the paradox paper's published math statistics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdlens._schema import PAPER_COLUMNS
from kdlens.analysis import paper
from kdlens.cli import main

PUB = json.loads((Path(__file__).parents[1] / "reference" / "analysis_reference.json").read_text())["published"]
MATH = PUB["paper_math_average"]


@pytest.fixture(scope="module")
def results(kd_data) -> Path:
    return kd_data / "results"


@pytest.fixture(scope="module")
def math_stats(results) -> pd.DataFrame:
    return paper.reproduce(results, "math")


def _cell(table, test, method="all", task="Average"):
    rows = table[(table.test == test) & (table.method == method) & (table.task == task)]
    assert len(rows) == 1, (test, method, task)
    return rows.iloc[0]


def test_reproduces_published_math_average_numbers(math_stats):
    assert list(math_stats.columns) == list(PAPER_COLUMNS)
    pooled = _cell(math_stats, "ttest_1samp")
    assert round(pooled["statistic"], 2) == MATH["pooled_t"]
    # the exact values the brief pins (the authors' unit and procedure, unchanged)
    assert pooled["statistic"] == pytest.approx(8.4653, abs=5e-5) and pooled["p_val"] == pytest.approx(5.65e-10, rel=5e-3)
    assert _cell(math_stats, "ttest_1samp", "GKD")["statistic"] == pytest.approx(5.1046, abs=5e-5)
    assert _cell(math_stats, "ttest_1samp", "RevKD")["statistic"] == pytest.approx(6.3147, abs=5e-5)
    assert _cell(math_stats, "ttest_1samp", "KD")["statistic"] == pytest.approx(3.7222, abs=5e-5)
    assert _cell(math_stats, "anova_oneway")["statistic"] == pytest.approx(2.2671, abs=5e-5)
    assert _cell(math_stats, "spearman_student_size")["statistic"] == pytest.approx(-0.6562, abs=5e-5)
    assert pooled["p_val"] == pytest.approx(MATH["pooled_p"], rel=0.01)
    assert pooled["n"] == MATH["pooled_n"]
    assert round(_cell(math_stats, "ttest_1samp", "GKD")["statistic"], 2) == MATH["GKD_t"]
    assert round(_cell(math_stats, "ttest_1samp", "RevKD")["statistic"], 2) == MATH["RevKD_t"]
    # the paper's "SeqKD" is the files' "KD" method
    assert round(_cell(math_stats, "ttest_1samp", "KD")["statistic"], 2) == MATH["SeqKD_t"]
    f = _cell(math_stats, "anova_oneway")
    assert round(f["statistic"], 2) == MATH["anova_F"] and round(f["p_val"], 2) == MATH["anova_p"]
    assert round(_cell(math_stats, "spearman_student_size")["statistic"], 2) == MATH["spearman_student_size"]


def test_improvement_table_follows_the_protocol(results):
    imp = paper.improvements(results, "math")
    avg = imp[imp.task == "Average"]
    assert len(avg) == 33 and set(avg.method) == {"KD", "GKD", "RevKD"}
    assert avg.teacher.str.contains("ckpt").sum() == 0
    # hand check: Qwen2.5-3B -> Qwen2.5-0.5B KD on gsm8k: max(27.45, 32.9, 2.2) - SFT 23.5 = 9.4 at tau 2
    row = imp[(imp.teacher == "Qwen2.5-3B") & (imp.student == "Qwen2.5-0.5B") & (imp.method == "KD")
              & (imp.task == "gsm8k")].iloc[0]
    assert row["improvement"] == pytest.approx(32.9 - 23.5) and row["best_tau"] == 2.0
    assert row["teacher_score"] == 59.29 and row["student_size"] == 0.5
    # agreement comes from EM1's KD row of the pair, only on KD-method rows
    assert row["agreement"] == pytest.approx(30.17437452615618, rel=1e-12)
    assert avg.loc[avg.method != "KD", "agreement"].isna().all()
    assert avg.loc[avg.method == "KD", "fidelity"].notna().sum() == 11


def test_pooled_t_is_an_independent_scipy_recomputation(results, math_stats):
    # naive reference straight from the CSV, without kdlens' reshaping
    raw = pd.concat([pd.read_csv(results / "math_results_main.csv"), pd.read_csv(results / "llama_math_results.csv")])
    sft = raw[raw.Method == "SFT"].set_index("Student")["AQuA"]
    kd = raw[raw.Method.str.match(r"student_(KD|GKD|RevKD)_temp")].copy()
    kd["key"] = kd.Teacher.str.split("_ckpt").str[0] + kd.Student + kd.Method.str.split("_temp").str[0]
    gain = kd.groupby("key").apply(lambda d: d["AQuA"].max() - sft[d.Student.iloc[0]], include_groups=False)
    ref = sps.ttest_1samp(gain, 0, alternative="greater")
    got = _cell(math_stats, "ttest_1samp", task="AQuA")
    assert got["statistic"] == pytest.approx(ref.statistic, rel=1e-12) and got["n"] == len(gain) == 33


def test_commonsense_runs_through_the_same_function(results):
    cs = paper.reproduce(results, "commonsense")
    assert set(cs.task) == {*paper.DOMAINS["commonsense"]["tasks"], "Average"}
    assert not cs.test.eq("spearman_fidelity").any()  # no BLEU file for commonsense
    assert _cell(cs, "ttest_1samp")["n"] == 33
    assert _cell(cs, "spearman_agreement", method="KD")["n"] == 11


def test_bad_inputs_are_clear(tmp_path, results):
    with pytest.raises(ValueError, match="unknown domain 'code'"):
        paper.reproduce(results, "code")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        paper.reproduce(tmp_path / "nope", "math")
    shutil.copy(results / "math_results_main.csv", tmp_path / "math_results_main.csv")
    with pytest.raises(FileNotFoundError, match="llama_math_results.csv"):
        paper.reproduce(tmp_path, "math")
    bad = pd.read_csv(results / "llama_math_results.csv").drop(columns=["AQuA"])
    bad.to_csv(tmp_path / "llama_math_results.csv", index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['AQuA'\]"):
        paper.reproduce(tmp_path, "math")


def test_cli_paper_stats_writes_the_table(tmp_path, results, math_stats, capsys):
    out = tmp_path / "sub" / "out.csv"
    assert main(["paper-stats", str(results), "--domain", "math", "-o", str(out)]) == 0
    written = pd.read_csv(out)
    assert list(written.columns) == list(PAPER_COLUMNS) and len(written) == len(math_stats)
    np.testing.assert_allclose(written["statistic"], math_stats["statistic"], rtol=1e-12)
    assert main(["paper-stats", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_reproduce_adjusts_each_hypothesis_family(math_stats):
    from statsmodels.stats.multitest import multipletests

    for _, family in math_stats.groupby("hypothesis"):
        np.testing.assert_allclose(family["p_adj"], multipletests(family["p_val"], method="holm")[1], rtol=1e-12)


@pytest.fixture(scope="module")
def robust(results) -> pd.DataFrame:
    return paper.robustness(results, "math")


def _robust(table, claim, analysis, method="all", test=None):
    rows = table[(table.claim == claim) & (table.analysis == analysis) & (table.method == method)]
    if test is not None:
        rows = rows[rows.test == test]
    assert len(rows) >= 1, (claim, analysis, method, test)
    return rows


def test_the_papers_agreement_verdict_is_inconclusive(results):
    """The issue's case: rho = -0.51 over 11 rows cannot show 'no relation', and the rows come from 6 students."""
    imp = paper.improvements(results, "math")
    kd = imp[(imp.task == "Average") & (imp.method == "KD")]
    from kdlens.analysis import paradox_test

    # rows treated as independent: Fisher's z with Bonett & Wright's standard error
    out = paradox_test(kd, gain="improvement", fidelity=("fidelity", "agreement"), gain_margin=2.0,
                       cluster=None, unit="rows of the paper (teacher, student)")
    agree = out[(out.variable == "agreement") & (out.adjustment == "none")].iloc[0]
    rho = sps.spearmanr(kd["improvement"], kd["agreement"]).statistic
    assert agree["estimate"] == pytest.approx(rho, abs=1e-12) and agree["n"] == 11 and agree["test"] == "spearman"
    assert [round(agree["ci_low"], 2), round(agree["ci_high"], 2)] == [-0.86, 0.17]
    assert agree["verdict"] == "inconclusive" and out.attrs["verdict"] == "inconclusive"
    assert agree["p_val"] > agree["p_alpha"] == pytest.approx(0.025)  # TOST p of the same Fisher-z statistic
    # the 11 rows share 6 students: clustered by student they are 6 units, too few for a verdict
    clustered = paradox_test(kd, gain="improvement", fidelity="agreement", controls=["student_size"],
                             gain_margin=2.0, cluster="student")
    row = clustered[clustered.decisive & (clustered.variable == "agreement")].iloc[0]
    assert row["verdict"] == "inconclusive" and row["n"] == 6 and row["test"] == "partial_spearman_clustered"
    assert "6 student clusters < 10: too few for a cluster-adjusted interval" in row["note"]
    assert "n = 6 student clusters (11 runs)" in row["sentence"]


def test_robustness_uses_defensible_units(results, robust):
    imp = paper.improvements(results, "math")
    avg = imp[imp.task == "Average"]
    # H1: the 33 rows share 6 students' SFT baselines; the robust unit is the student
    per_student = avg.groupby("student")["improvement"].mean()
    h1 = _robust(robust, "H1", "robust").iloc[0]
    assert h1["n"] == 6 == len(per_student) and h1["unit"] == "students (mean over their rows)"
    assert h1["statistic"] == pytest.approx(sps.ttest_1samp(per_student, 0).statistic, rel=1e-12)
    assert _robust(robust, "H1", "as published").iloc[0]["statistic"] == pytest.approx(8.4653, abs=5e-5)
    # H2: Friedman across methods within (teacher, student) blocks, as scipy computes it directly
    wide = avg.pivot_table(index=["teacher", "student"], columns="method", values="improvement")
    fried = _robust(robust, "H2", "robust", test="friedman").iloc[0]
    ref = sps.friedmanchisquare(*[wide[c] for c in wide.columns])
    assert fried["statistic"] == pytest.approx(ref.statistic, rel=1e-12) and fried["n"] == 11
    assert fried["verdict"] == "" and "no verdict" in fried["sentence"]
    # H3: Spearman over the 5 distinct sizes, exact permutation p, too few for a verdict
    size = _robust(robust, "H3", "robust").iloc[0]
    by_size = avg.groupby("student_size")["improvement"].mean()
    assert size["n"] == 5 and size["estimate"] == pytest.approx(sps.spearmanr(by_size.index, by_size).statistic)
    assert size["verdict"] == "inconclusive" and "exact permutation" in size["note"]
    # p_adj within each (claim, analysis): the authors' rows and the robust rows are separate families
    from statsmodels.stats.multitest import multipletests

    for _, family in robust.groupby(["claim", "analysis"]):
        finite = family["p_val"].notna()
        np.testing.assert_allclose(family.loc[finite, "p_adj"],
                                   multipletests(family.loc[finite, "p_val"], method="holm")[1], rtol=1e-12)
    # one family for both would have adjusted the robust H1 rows by 5 p-values, not 4
    h1 = robust[robust.claim == "H1"]
    assert not np.allclose(h1["p_adj"], multipletests(h1["p_val"], method="holm")[1], rtol=1e-6, atol=0)


def test_as_published_rows_carry_no_verdict(robust):
    published = robust[robust.analysis == "as published"]
    assert len(published) == 5 and (published["verdict"] == "").all()
    assert published["sentence"].str.startswith("As published (no verdict): ").all()
    h1 = published[published.claim == "H1"].iloc[0]
    assert "the authors' unit: 33 rows share 6 students' SFT baselines, so they are not independent" in h1["sentence"]
    # still the authors' numbers: t = 8.47 on 33 rows, one-sided p = 5.7e-10 against 0.025
    assert h1["statistic"] == pytest.approx(8.4653, abs=5e-5) and "one-sided p = 5.7e-10 vs 0.025" in h1["sentence"]
    # every robust row with an interval has a verdict; omnibus rows have none
    tested = robust[(robust.analysis == "robust") & robust["ci_low"].notna()]
    assert set(tested["verdict"]) <= {"supported", "contradicted", "inconclusive"} and len(tested) == 7
    # the robust paradox rows take the students as clusters: 6, too few for a verdict
    para = robust[(robust.claim == "H3 paradox") & (robust.analysis == "robust")]
    assert (para["n"] == 6).all() and (para["verdict"] == "inconclusive").all()
    assert para["note"].str.contains("6 student clusters < 10").all()


def test_cli_paper_stats_writes_the_robustness_table(tmp_path, results, robust):
    out = tmp_path / "robust.csv"
    assert main(["paper-stats", str(results), "--robustness", "-o", str(out)]) == 0
    written = pd.read_csv(out, keep_default_na=False)
    assert written["sentence"].tolist() == robust["sentence"].tolist()
    assert written["verdict"].tolist() == robust["verdict"].tolist()
