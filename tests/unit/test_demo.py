"""The demo (kdlens.demo.run_demo and ``kdlens demo``) in smoke mode on the built-in tiny model."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from kdlens.cli import main
from kdlens.demo import demo_spec, find_shared_data, run_demo, summary_table
from kdlens.report import SECTION_TITLES
from kdlens.sweep import read_results

# one worker runs the smoke demo once for every test that reads it (make test uses --dist loadgroup)
pytestmark = pytest.mark.xdist_group("demo")

# the four student runs: (method, sigma, temperature); SFT ignores the teacher, so it has neither
EXPECTED_RUNS = {("sft", None, None), ("word_kd", 0.0, 1.0), ("word_kd", 2.0, 1.0), ("word_kd", 0.0, 2.0)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    report = run_demo(out, smoke=True, threads=1, progress=lines.append)
    return out, report, lines


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in sorted((root / "sweep" / "runs").rglob("*")) if p.is_file()
            and "eval" not in p.parts}


def test_report_has_every_section_and_embeds_figures(demo):
    out, report, _ = demo
    assert report == out / "report.html" and report.is_file()
    html = report.read_text(encoding="utf-8")
    for title in SECTION_TITLES.values():
        assert f">{title}<" in html, f"section {title!r} missing from the demo report"
    assert "smoke" in html  # the title says a smoke run proves nothing
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert images and all(len(b) > 1000 for b in images)
    assert 'src="http' not in html and "src='http" not in html  # self-contained


def test_four_runs_finished_with_their_settings(demo):
    out, _, _ = demo
    run_dirs = sorted((out / "sweep" / "runs").iterdir())
    assert len(run_dirs) == 4
    seen = set()
    for run in run_dirs:
        assert (run / "done").is_file() and (run / "checkpoint" / "config.json").is_file()
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["teacher"] == "tiny" and manifest["student"] == "prune:1" and manifest["steps"] == 4
        kd = manifest["method"] != "sft"
        seen.add((manifest["method"], manifest["sigma"] if kd else None, manifest["temperature"] if kd else None))
        if kd:  # the tau = 1 KD runs read one teacher-logit cache (the teacher ran once for them);
            # at tau = 2 a top-k cache is not faithful (kdlens.config.cache_is_faithful): online teacher
            assert manifest["teacher_source"] == ("cache" if manifest["temperature"] == 1.0 else "online")
    assert seen == EXPECTED_RUNS
    assert len(list((out / "sweep" / "teacher_cache").iterdir())) == 1


def test_results_table_rows_and_metrics_match_the_examples(demo):
    out, _, _ = demo
    results = read_results(out / "sweep")
    # one row per run and task: chain_sum and the pooled "all"
    assert len(results) == 8
    assert sorted(results["task"].unique()) == ["all", "chain_sum"]
    assert set(results.groupby("run_id").size()) == {2}
    assert (results["n"] == 8).all()
    assert {(m, None if pd.isna(s) else s, None if pd.isna(t) else t)
            for m, s, t in results[["method", "sigma", "temperature"]].itertuples(index=False)} == EXPECTED_RUNS
    # naive references from the raw tables the metrics were computed from
    examples = pd.read_parquet(out / "sweep" / "examples.parquet")
    tokens = pd.read_parquet(out / "sweep" / "tokens.parquet")
    teacher = examples.loc[examples["model_id"] == "teacher"].set_index("example_id")
    for row in results.loc[results["task"] == "all"].itertuples():
        mine = examples.loc[examples["model_id"] == row.run_id].set_index("example_id")
        assert len(mine) == 8
        assert row.accuracy == pytest.approx(mine["correct"].astype(float).mean())
        agree = [isinstance(a, str) and isinstance(b, str) and a.strip() == b.strip()
                 for a, b in zip(mine["pred_answer"], teacher.loc[mine.index, "pred_answer"], strict=True)]
        assert row.agreement == pytest.approx(sum(agree) / len(agree))
        kl = tokens.loc[tokens["model_id"] == row.run_id, "forward_kl"]
        assert len(kl) > 0 and row.token_forward_kl == pytest.approx(kl.mean(), rel=1e-6)
        assert row.token_forward_kl > 0  # a 1-layer student does not match its 2-layer teacher


def test_summary_and_stage_times(demo):
    out, _, lines = demo
    record = json.loads((out / "demo.json").read_text())
    assert record["smoke"] is True and record["threads"] == 1
    stages = record["stages"]
    assert set(stages) == {"teacher_load", "train", "evaluate", "report", "total"}
    for clock in ("wall_s", "cpu_s"):
        assert all(v[clock] >= 0 for v in stages.values())
        assert stages["total"][clock] == pytest.approx(sum(v[clock] for k, v in stages.items() if k != "total"))
    assert stages["train"]["cpu_s"] > 0 and stages["evaluate"]["cpu_s"] > 0
    summary = pd.DataFrame(record["summary"])
    assert summary["method"].tolist()[0] == "sft" and len(summary) == 4
    # progress: one line per run trained and evaluated
    assert sum("training sigma" in line or "training sft" in line for line in lines) == 4
    assert sum(re.search(r"\[\d/4\] evaluating", line) is not None for line in lines) == 4


def test_rerun_resumes_without_retraining_and_cli_prints_the_report(demo, capsys):
    out, report, _ = demo
    before = _mtimes(out)
    assert main(["demo", "--smoke", "-o", str(out), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert f"Report: {report.resolve()}" in captured.out
    assert re.search(r"\[\d/4\] training", captured.err) is None  # every run was finished: none is trained again
    assert _mtimes(out) == before
    table = captured.out.split("Report:")[0]
    assert all(name in table for name in ("sft", "word_kd", "accuracy", "agreement", "bleu"))


def test_rerun_with_other_settings_is_refused(demo):
    out, _, _ = demo
    before = _mtimes(out)
    with pytest.raises(ValueError, match="holds a demo with other settings"):
        run_demo(out, smoke=True, steps=5, threads=1)
    assert _mtimes(out) == before


def test_summary_table_orders_sft_first_and_keeps_pooled_rows():
    results = pd.DataFrame({
        "run_id": ["kd-b", "kd-b", "sft-a", "sft-a"], "task": ["x", "all", "x", "all"],
        "method": ["word_kd", "word_kd", "sft", "sft"], "accuracy": [0.1, 0.2, 0.3, 0.4],
    })
    table = summary_table(results)
    assert table["run_id"].tolist() == ["sft-a", "kd-b"] and table["accuracy"].tolist() == [0.4, 0.2]


def test_demo_spec_full_mode_uses_smollm2_and_the_math_slice(tmp_path):
    math = tmp_path / "MultiArith.json"
    math.write_text("[]")
    spec = demo_spec(math_test=math)
    assert spec["base"]["teacher"] == "smollm2-135m-instruct" and spec["base"]["student"] == "prune:8"
    assert spec["eval"]["tasks"] == ["chain_sum:16", str(math.resolve())]
    assert spec["axes"] == {"sigma": [0.0, 2.0], "temperature": [1.0, 2.0]} and spec["grid"] == "one_at_a_time"
    assert spec["baseline"] == "sft"


@pytest.mark.parametrize("key", ["student_layers", "train_n", "eval_n", "steps", "max_new_tokens"])
def test_demo_rejects_non_positive_sizes(key, tmp_path):
    with pytest.raises(ValueError, match=f"demo {key} must be a positive integer, got 0"):
        run_demo(tmp_path, smoke=True, **{key: 0})
    assert not (tmp_path / "sweep").exists()


def test_demo_rejects_zero_threads(tmp_path):
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        run_demo(tmp_path / "out", smoke=True, threads=0)
    assert not (tmp_path / "out").exists()


def test_demo_rejects_a_shared_data_dir_without_the_math_test(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="MultiArith.json does not exist"):
        run_demo(tmp_path / "out", smoke=True, shared_data=tmp_path)
    assert main(["demo", "--smoke", "-o", str(tmp_path / "out"), "--shared-data", str(tmp_path)]) == 1
    assert "kdlens demo: error:" in capsys.readouterr().err


def test_find_shared_data(kd_data, monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_SHARED_DATA", str(kd_data.parent))
    assert find_shared_data() == kd_data
    monkeypatch.setenv("KDLENS_SHARED_DATA", str(kd_data))
    assert find_shared_data() == kd_data
    import kdlens.demo

    monkeypatch.setenv("KDLENS_SHARED_DATA", str(tmp_path))
    monkeypatch.setattr(kdlens.demo, "__file__", str(tmp_path / "a" / "kdlens" / "demo.py"))
    assert find_shared_data() is None
