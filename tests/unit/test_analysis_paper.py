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
