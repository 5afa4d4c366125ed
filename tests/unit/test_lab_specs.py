"""The lab sweep specs (analyses/lab_*.yaml): lab models and tasks only, five seeds in every cell, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlens.data._lab import LAB_TASKS
from kdlens.models import BUILTINS
from kdlens.sweep import expand_sweep, load_sweep_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "analyses").glob("lab_*.yaml"))


def test_the_awareness_sweep_makes_the_aware_teacher_with_its_recipe():
    from kdlens.models._lab import lab_teacher_recipe
    from kdlens.sweep import teacher_sft_config

    spec = load_sweep_spec(SPECS[0].with_name("lab_teacher_awareness.yaml"))
    made = teacher_sft_config(spec, output_dir="x").to_dict()
    recipe = lab_teacher_recipe("lab-teacher-aware")
    # the recipe trains student=lab-teacher-base; the sweep trains teacher=lab-teacher-base itself (student None)
    assert recipe.pop("student") == made["teacher"] == spec.base["teacher"] and made["student"] is None
    assert {key: made[key] for key in recipe} == recipe


def test_there_is_a_lab_spec_per_finding():
    assert {p.stem for p in SPECS} >= {"lab_student_size", "lab_data_size", "lab_methods", "lab_losses", "lab_sigma",
                                       "lab_tau", "lab_teacher_awareness"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_a_lab_spec_runs_lab_models_on_lab_tasks_with_five_seeds(path):
    spec = load_sweep_spec(path)
    runs = expand_sweep(spec)
    assert spec.base["device"] == "cpu" and spec.baseline == "sft"
    assert len(spec.axes["seed"]) >= 5
    for overrides in map(json.loads, runs["overrides"]):
        config = {**spec.base, **overrides}
        assert config["student"] in BUILTINS and config["student"].startswith("lab-"), config["student"]
        assert config.get("teacher") in (None, "lab-teacher-aware", "lab-teacher-base")
        assert all(task.split(":")[0] in LAB_TASKS for task in config["tasks"])
    assert all(task.split(":")[0] in LAB_TASKS for task in spec.eval["tasks"])
    # every non-seed setting is measured with every seed
    cells = runs.drop(columns=["run_id", "overrides", "run_dir", "status", "seed"]).astype(str)
    assert (cells.value_counts() == len(spec.axes["seed"])).all()
