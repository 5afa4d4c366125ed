"""The lab grid spec (analyses/lab_grid.yaml): every cell the lab issue asks for, five seeds each, lab models, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlens.data._lab import LAB_TASKS
from kdlens.models import BUILTINS
from kdlens.sweep import expand_sweep, load_sweep_spec, run_config

GRID = Path(__file__).resolve().parents[2] / "analyses" / "lab_grid.yaml"
SPECS = sorted(GRID.parent.glob("lab_*.yaml"))


@pytest.fixture(scope="module")
def grid():
    spec = load_sweep_spec(GRID)
    return spec, expand_sweep(spec)


def test_the_grid_holds_each_factor_the_issue_asks_for_around_one_reference(grid):
    spec, runs = grid
    assert spec.grid == "one_at_a_time" and spec.baseline == "sft" and spec.replicate == {"seed": [0, 1, 2, 3, 4]}
    axes = spec.axes
    assert len(axes["student"]) >= 3 and len(axes["n_examples"]) >= 4
    assert set(axes["method"]) >= {"word_kd", "seq_kd", "gkd"} and set(axes["loss"]) >= {"forward_kl", "reverse_kl", "jsd"}
    assert axes["sigma"] == [0.0, 0.5, 1.0, 2.0, 5.0] and axes["temperature"] == [1.0, 1.5, 2.0, 3.0, 5.0]
    assert axes["teacher_aware"] == [True, False]
    assert spec.base["teacher"] == "lab-teacher-base" and spec.aware_teacher == "lab-teacher-aware"
    # 19 KD cells (1 reference + 1 + 2 + 3 + 2 + 2 + 4 + 4) and 6 SFT cells (3 students, 4 data sizes), 5 seeds each
    cells = runs.drop(columns=["run_id", "overrides", "run_dir", "status", "seed"]).astype(str)
    counts = cells.value_counts(dropna=False)
    assert len(counts) == 25 and (counts == 5).all() and len(runs) == 125
    sft = runs.loc[runs["method"] == "sft"]
    assert len(sft) == 30 and sft["sigma"].isna().all() and sft["teacher_aware"].isna().all()
    # seq_kd has no KD term but a teacher: it keeps the teacher_aware value of its cell
    assert set(runs.loc[runs["method"] == "seq_kd", "teacher_aware"]) == {True}


def test_every_run_uses_lab_models_and_tasks_on_the_cpu(grid):
    spec, runs = grid
    assert spec.base["device"] == "cpu"
    for overrides in map(json.loads, runs["overrides"]):
        config = {**spec.base, **overrides}
        assert config["student"] in BUILTINS and config["student"].startswith("lab-base-"), config["student"]
        assert all(task.split(":")[0] in LAB_TASKS for task in config["tasks"])
    assert spec.eval["tasks"] == ["lab_chain"] and spec.eval["split"] == ["test", "gen"]


def test_word_level_runs_read_one_exact_teacher_cache_and_the_others_run_it_online(grid):
    """top_k 102 = the lab vocabulary: the cache is exact for every loss, tau and sigma (cache_is_faithful)."""
    spec, runs = grid
    seen = {}
    for overrides in map(json.loads, runs["overrides"]):
        cfg = run_config(spec, overrides, output_dir="o", teacher_dir=spec.aware_teacher, cache_dir="/c")
        seen.setdefault(cfg.method, set()).add((cfg.teacher_source, cfg.teacher))
        if cfg.method == "word_kd":
            assert cfg.top_k == 102
    assert seen["word_kd"] == {("cache", "lab-teacher-aware"), ("cache", "lab-teacher-base")}
    assert seen["gkd"] == {("online", "lab-teacher-aware")} and seen["seq_kd"] == {("online", "lab-teacher-aware")}
    assert {source for source, _ in seen["sft"]} == {"online"}


def test_the_lab_specs_are_the_grid():
    assert SPECS == [GRID]  # one shared grid: its reference cell and baselines run once (benchmarks/RESULTS.md)
