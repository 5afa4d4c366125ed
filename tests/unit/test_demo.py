"""The demo (kdlens.demo.run_demo and ``kdlens demo``): the lab experiment in smoke mode, and its settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from kdlens.cli import main
from kdlens.demo import DEMO_SIGMA, DEMO_TAU, demo_spec, find_shared_data, run_demo, summary_table
from kdlens.report import SECTION_TITLES
from kdlens.sweep import expand_sweep, load_sweep_spec, read_results

# one worker runs the smoke demo once for every test that reads it (make test uses --dist loadgroup)
pytestmark = pytest.mark.xdist_group("demo")

GRID = Path(__file__).resolve().parents[2] / "analyses" / "lab_grid.yaml"
# the five cells: (method, teacher_aware, sigma, temperature); SFT has no teacher and no KD setting
CELLS = {("sft", None, None, None), ("word_kd", True, 0.0, 1.0), ("word_kd", False, 0.0, 1.0),
         ("word_kd", True, DEMO_SIGMA, 1.0), ("word_kd", True, 0.0, DEMO_TAU)}


def _cell(row) -> tuple:
    if row["method"] == "sft":
        return ("sft", None, None, None)
    return (row["method"], bool(row["teacher_aware"]), float(row["sigma"]), float(row["temperature"]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    report = run_demo(out, smoke=True, threads=1, progress=lines.append)
    return out, report, lines


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in sorted((root / "sweep" / "runs").rglob("*")) if p.is_file()
            and "eval" not in p.parts}


def test_the_lab_demo_is_cells_of_the_lab_grid_with_three_seeds():
    spec = demo_spec()
    grid = load_sweep_spec(GRID)
    # the reference recipe of the grid: the demo's runs are the grid's own cells (same run identity)
    assert {k: v for k, v in spec["base"].items() if k != "n_examples"} == \
        {k: v for k, v in grid.base.items() if k not in ("seq_kd", "gkd")}
    assert spec["base"]["n_examples"] == grid.axes["n_examples"][0]
    assert spec["aware_teacher"] == grid.aware_teacher and spec["replicate"] == {"seed": [0, 1, 2]}
    for axis, values in spec["axes"].items():
        assert values[0] == grid.axes[axis][0] and set(values) <= set(grid.axes[axis])
    runs = expand_sweep(spec)
    assert len(runs) == 15 and {_cell(r) for _, r in runs.iterrows()} == CELLS
    assert spec["eval"]["n"] == 300 and spec["eval"]["split"] == "test"


def test_report_has_every_section_and_embeds_figures(demo):
    out, report, _ = demo
    assert report == out / "report.html" and report.is_file()
    html = report.read_text(encoding="utf-8")
    for title in SECTION_TITLES.values():
        assert f">{title}<" in html, f"section {title!r} missing from the demo report"
    assert "smoke" in html  # the title says a smoke run proves nothing
    assert "task-aware teacher raises accuracy against task-unaware teacher" in html  # the verdicts are rendered
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert images and all(len(b) > 1000 for b in images)
    assert 'src="http' not in html and "src='http" not in html  # self-contained


def test_ten_runs_finished_with_their_teachers_and_the_exact_cache(demo):
    out, _, _ = demo
    run_dirs = sorted((out / "sweep" / "runs").iterdir())
    assert len(run_dirs) == 10  # five cells x two seeds in smoke mode
    seen = []
    for run in run_dirs:
        assert (run / "done").is_file() and (run / "checkpoint" / "config.json").is_file()
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["student"] == "lab-base-l2" and manifest["steps"] == 2
        if manifest["method"] == "sft":
            seen.append(("sft", manifest["seed"]))
            continue
        aware = manifest["teacher"] == "lab-teacher-aware"
        assert manifest["teacher"] == ("lab-teacher-aware" if aware else "lab-teacher-base")
        # top_k 102 = the lab vocabulary: every word-level run reads the teacher cache, tau 2 too
        assert manifest["teacher_source"] == "cache"
        seen.append((aware, manifest["sigma"], manifest["temperature"], manifest["seed"]))
    assert sorted(map(str, seen)) == sorted(map(str, [
        *[("sft", s) for s in (0, 1)], *[(True, 0.0, 1.0, s) for s in (0, 1)], *[(False, 0.0, 1.0, s) for s in (0, 1)],
        *[(True, DEMO_SIGMA, 1.0, s) for s in (0, 1)], *[(True, 0.0, DEMO_TAU, s) for s in (0, 1)]]))
    # one teacher pass per (teacher, training set): two teachers x two seeds' training sets
    assert len([p for p in (out / "sweep" / "teacher_cache").iterdir() if p.is_dir()]) == 4


def test_results_table_rows_and_metrics_match_the_examples(demo):
    out, _, _ = demo
    results = read_results(out / "sweep")
    assert len(results) == 20 and sorted(results["task"].unique()) == ["all", "lab_chain"]
    assert (results["n"] == 4).all()
    assert {_cell(r) for _, r in results.iterrows()} == CELLS
    examples = pd.read_parquet(out / "sweep" / "examples.parquet")
    tokens = pd.read_parquet(out / "sweep" / "tokens.parquet")
    for row in results.loc[results["task"] == "all"].itertuples():
        mine = examples.loc[examples["model_id"] == row.run_id].set_index("example_id")
        teacher = examples.loc[examples["model_id"] == row.teacher_id].set_index("example_id")
        assert len(mine) == 4 and row.accuracy == pytest.approx(mine["correct"].astype(float).mean())
        agree = [isinstance(a, str) and isinstance(b, str) and a.strip() == b.strip()
                 for a, b in zip(mine["pred_answer"], teacher.loc[mine.index, "pred_answer"], strict=True)]
        assert row.agreement == pytest.approx(sum(agree) / len(agree))
        kl = tokens.loc[tokens["model_id"] == row.run_id, "forward_kl"]
        assert len(kl) > 0 and row.token_forward_kl == pytest.approx(kl.mean(), rel=1e-6)


def test_summary_and_stage_times(demo):
    out, _, lines = demo
    record = json.loads((out / "demo.json").read_text())
    assert record["smoke"] is True and record["threads"] == 1 and record["setting"] == "lab"
    assert record["workers"] == 1 and len(record["load_average"]) == 3
    stages = record["stages"]
    assert set(stages) == {"teacher_load", "sweep", "report", "total"}
    for clock in ("wall_s", "cpu_s"):
        assert all(v[clock] >= 0 for v in stages.values())
        assert stages["total"][clock] == pytest.approx(sum(v[clock] for k, v in stages.items() if k != "total"))
    summary = pd.DataFrame(record["summary"])
    assert summary["method"].tolist()[:2] == ["sft", "sft"] and len(summary) == 10
    assert sum(re.search(r"\[\d+/10\] training", line) is not None for line in lines) == 10


def test_rerun_resumes_without_retraining_and_the_cli_prints_the_verdicts(demo, capsys):
    out, report, _ = demo
    before = _mtimes(out)
    assert main(["demo", "--smoke", "-o", str(out), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert f"Report: {report.resolve()}" in captured.out
    assert re.search(r"\[\d+/10\] training", captured.err) is None  # every run was finished: none is trained again
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert _mtimes(out) == before
    table, verdicts = captured.out.split("Report:")[0].split("Verdicts")
    assert all(name in table for name in ("sft", "word_kd", "accuracy", "agreement", "bleu", "teacher_aware"))
    assert "- task-aware teacher raises accuracy against task-unaware teacher" in verdicts
    assert f"- σ = {DEMO_SIGMA:g} lowers accuracy against σ = 0" in verdicts


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


def test_the_smollm2_setting_keeps_the_pruned_student_pipeline(tmp_path):
    math = tmp_path / "MultiArith.json"
    math.write_text("[]")
    spec = demo_spec("smollm2", math_test=math)
    assert spec["base"]["teacher"] == "smollm2-135m-instruct" and spec["base"]["student"] == "prune:8"
    assert spec["eval"]["tasks"] == ["chain_sum:16", str(math.resolve())]
    assert spec["axes"] == {"sigma": [0.0, 2.0], "temperature": [1.0, 2.0]} and spec["grid"] == "one_at_a_time"
    assert spec["baseline"] == "sft" and demo_spec("smollm2", smoke=True)["base"]["teacher"] == "tiny"


def test_options_of_the_other_setting_are_refused(tmp_path):
    with pytest.raises(ValueError, match="belong to the smollm2 setting"):
        demo_spec("lab", teacher="tiny")
    with pytest.raises(ValueError, match="seeds belong to the lab setting"):
        demo_spec("smollm2", seeds=3)
    with pytest.raises(ValueError, match="'gpu' is not one of lab, smollm2"):
        demo_spec("gpu")
    with pytest.raises(ValueError, match="shared_data belongs to the smollm2 setting"):
        run_demo(tmp_path / "out", smoke=True, shared_data=tmp_path)
    assert not (tmp_path / "out").exists()


def test_the_cli_picks_the_smollm2_setting_from_its_options(tmp_path, capsys, monkeypatch):
    import kdlens.demo

    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(kdlens.demo, "run_demo", stop)
    assert main(["demo", "--model", "tiny", "-o", str(tmp_path)]) == 1
    assert seen["setting"] == "smollm2" and seen["teacher"] == "tiny"
    assert main(["demo", "-o", str(tmp_path)]) == 1 and seen["setting"] == "lab"
    assert "kdlens demo: error: stop here" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["seeds", "train_n", "eval_n", "steps", "max_new_tokens"])
def test_demo_rejects_non_positive_sizes(key, tmp_path):
    with pytest.raises(ValueError, match=f"demo {key} must be a positive integer, got 0"):
        run_demo(tmp_path, smoke=True, **{key: 0})
    assert not (tmp_path / "sweep").exists()


def test_demo_rejects_zero_threads_and_workers(tmp_path):
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        run_demo(tmp_path / "out", smoke=True, threads=0)
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        run_demo(tmp_path / "out", smoke=True, workers=0)
    assert not (tmp_path / "out").exists()


def test_demo_rejects_a_shared_data_dir_without_the_math_test(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="MultiArith.json does not exist"):
        run_demo(tmp_path / "out", setting="smollm2", smoke=True, shared_data=tmp_path)
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


def test_the_make_target_runs_the_lab_demo():
    makefile = (GRID.parents[1] / "Makefile").read_text()
    assert "\t$(BIN)/kdlens demo\n" in makefile  # no --setting: the lab experiment
