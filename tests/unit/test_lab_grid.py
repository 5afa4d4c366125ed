"""The lab grid end to end at micro scale (CI smoke): two seeds through the real spec, published, read back.

The micro grid is ``smoke_spec`` of ``analyses/lab_grid.yaml``: its models, teachers, tasks, cache, splits
and tables, with two optimizer steps, 16 training and 4 evaluation items. It checks the pipeline and the
published schema the notebooks read, not distillation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlens._schema import EXAMPLES_COLUMNS, RUNS_COLUMNS, TOKENS_COLUMNS
from kdlens.analysis import RESULTS_METRICS, axis_contrasts, kd_vs_sft
from kdlens.sweep import (
    grid_status,
    load_sweep_spec,
    on_axis,
    read_results,
    run_sweep,
    smoke_spec,
    teacher_table,
)

GRID = Path(__file__).resolve().parents[2] / "analyses" / "lab_grid.yaml"
AXES = {"teacher_aware": [True, False], "sigma": [0.0, 5.0]}
TOKEN_ROWS = 60


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    spec = smoke_spec(GRID, axes=AXES, seeds=2, steps=2, n_examples=16, eval_n=4)
    root = tmp_path_factory.mktemp("lab")
    lines: list[str] = []
    run_sweep(spec, output_dir=root / "sweep", publish_dir=root / "pub", token_rows_per_run=TOKEN_ROWS,
              progress=lines.append)
    return spec, root, lines


def test_smoke_spec_keeps_the_grid_and_shrinks_its_budgets():
    grid = load_sweep_spec(GRID)
    spec = smoke_spec(GRID, axes=AXES, seeds=2, steps=2, n_examples=16, eval_n=4)
    assert spec["axes"] == AXES and spec["replicate"] == {"seed": [0, 1]} and spec["name"] == "lab_grid_smoke"
    assert spec["base"]["steps"] == 2 and spec["base"]["warmup_steps"] == 0 and spec["base"]["n_examples"] == 16
    for key in ("teacher", "student", "tasks", "method", "loss", "top_k", "device"):
        assert spec["base"][key] == grid.base[key]
    assert spec["aware_teacher"] == grid.aware_teacher and spec["eval"]["split"] == ["test", "gen"]
    assert spec["eval"]["n"] == 4 and spec["eval"]["max_new_tokens"] == grid.eval["max_new_tokens"]
    # an axis left out is held at its reference value: the student axis -> its first student
    held = smoke_spec(GRID, axes=["sigma"])
    assert held["base"]["student"] == "lab-base-l2" and held["base"]["teacher"] == "lab-teacher-aware"
    assert "aware_teacher" not in held and held["axes"] == {"sigma": grid.axes["sigma"]}
    with pytest.raises(ValueError, match=r"\['tau'\] are not axes"):
        smoke_spec(GRID, axes=["tau"])


def test_the_published_results_have_the_schema_the_notebooks_read(micro):
    spec, root, _ = micro
    pub = root / "pub"
    assert sorted(p.name for p in pub.iterdir()) == ["examples.parquet", "manifest.json", "results.parquet",
                                                     "runs.parquet", "spec.yaml", "tokens.parquet"]
    results = read_results(pub)
    metrics = [c for m in RESULTS_METRICS for c in ([m, f"{m}_ci_low", f"{m}_ci_high"]
                                                     if m in ("accuracy", "agreement") else [m])]
    assert list(results.columns) == [
        *RUNS_COLUMNS, "teacher_aware", "sigma", "seed", "method", "task", "n", *metrics, "teacher_id",
        "baseline_run_id", "baseline_accuracy", "accuracy_gain", "baseline_agreement", "agreement_gain",
        "baseline_bleu", "bleu_gain"]
    # 4 cells (reference, task-unaware teacher, sigma 5, SFT) x 2 seeds, each on both splits and pooled
    assert results["run_id"].nunique() == 8 and len(results) == 24
    assert results.groupby("task")["n"].unique().to_dict() == {"all": [8], "lab_chain@gen": [4],
                                                               "lab_chain@test": [4]}
    assert set(results["status"]) == {"published"} and grid_status(pub) == "the whole grid: 8 of 8 runs"
    examples = pd.read_parquet(pub / "examples.parquet")
    assert list(examples.columns) == list(EXAMPLES_COLUMNS)
    assert (examples["task"] == "lab_chain@" + examples["split"]).all()
    for row in results.itertuples():  # every accuracy is the mean of the published examples it summarises
        mine = examples.loc[(examples["model_id"] == row.run_id) & (examples["sample"] == 0)]
        mine = mine if row.task == "all" else mine.loc[mine["task"] == row.task]
        assert len(mine) == row.n and row.accuracy == pytest.approx(mine["correct"].astype(float).mean())
    # the SFT baseline and the task-aware runs are measured against the task-aware teacher, the rest against theirs
    expected = {True: "teacher_sft", False: "teacher"}
    for row in results.itertuples():
        aware = True if row.method == "sft" else bool(row.teacher_aware)
        assert row.teacher_id == expected[aware]
    kd = results.loc[results["method"] != "sft"]
    base = results.loc[results["method"] == "sft"].set_index(["seed", "task"])["accuracy"]
    assert np.allclose(kd["accuracy_gain"], kd["accuracy"].to_numpy() - base.loc[list(zip(kd["seed"], kd["task"],
                                                                                          strict=True))].to_numpy())
    assert kd.loc[kd["teacher_aware"].eq(False), "agreement_gain"].isna().all()  # another teacher: no change
    tokens = pd.read_parquet(pub / "tokens.parquet")
    assert list(tokens.columns) == list(TOKENS_COLUMNS)
    per_run = tokens.groupby("model_id").size()
    assert len(per_run) == 8 and (per_run <= TOKEN_ROWS + 48).all()  # whole examples, up to about the cap
    manifest = json.loads((pub / "manifest.json").read_text())
    assert manifest["n_runs"] == manifest["n_published"] == 8 and manifest["token_rows_per_run"] == TOKEN_ROWS


def test_the_ready_task_aware_teacher_is_used_without_training_one(micro):
    spec, root, lines = micro
    sweep = root / "sweep"
    assert not (sweep / "teachers" / "sft").exists() and (sweep / "teachers" / "aware" / "eval").is_dir()
    assert not any("fine-tuning" in line for line in lines)
    for run in (sweep / "runs").iterdir():
        manifest = json.loads((run / "manifest.json").read_text())
        if manifest["method"] == "sft":
            continue
        assert manifest["teacher"] == ("lab-teacher-aware" if "awareyes" in run.name else "lab-teacher-base")
        assert manifest["teacher_source"] == "cache"


def test_teacher_table_gives_each_teachers_accuracy_and_logit_margin_from_its_caches(micro):
    from kdlens.teacher import TeacherCache

    spec, root, _ = micro
    table = teacher_table(root / "pub")
    assert list(table.columns) == ["teacher_id", "task", "n", "accuracy", "top1_margin_mean", "top1_margin_median",
                                   "top1_margin_p10", "n_tokens", "model"]
    assert set(zip(table["teacher_id"], table["model"], strict=True)) == {("teacher", "lab-teacher-base"),
                                                                          ("teacher_sft", "lab-teacher-aware")}
    examples = pd.read_parquet(root / "pub" / "examples.parquet")
    for row in table.itertuples():
        mine = examples.loc[examples["model_id"] == row.teacher_id]
        mine = mine if row.task == "all" else mine.loc[mine["task"] == row.task]
        assert row.n == len(mine) and row.accuracy == pytest.approx(mine["correct"].astype(float).mean())
    # naive reference: every cache of the teacher, opened with its public reader, top-1 minus top-2
    margins: dict[str, list] = {"lab-teacher-base": [], "lab-teacher-aware": []}
    for path in sorted((root / "sweep" / "teacher_cache").iterdir()):
        cache = TeacherCache.open(path)
        values = cache._values.double()
        margins[cache.index["teacher"]].append((values[:, 0] - values[:, 1]).numpy())
    for model, parts in margins.items():
        both = np.concatenate(parts)
        row = table.loc[(table["model"] == model) & (table["task"] == "all")].iloc[0]
        assert row.n_tokens == both.size and row.top1_margin_mean == pytest.approx(both.mean())
        assert row.top1_margin_median == pytest.approx(np.median(both))
    assert teacher_table(root / "sweep").equals(table)  # the sweep directory gives the same table


def test_the_verdict_functions_read_the_micro_grid_by_split_and_by_axis(micro):
    spec, root, _ = micro
    results = read_results(root / "pub")
    test_rows = on_axis(results, spec, None)
    kd = kd_vs_sft(test_rows, task="lab_chain@test")
    assert kd["n"].tolist() == [2] and kd["unit"].tolist() == ["baselines"]
    sigma = axis_contrasts(on_axis(results, spec, "sigma"), "sigma", task="lab_chain@gen")
    assert sigma["comparison"].tolist() == ["σ = 5 vs σ = 0"] and sigma["n"].tolist() == [2]
    assert sigma["unit"].tolist() == ["seeds"]
