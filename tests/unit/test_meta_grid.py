"""The meta-distillation grid (``analyses/meta_*.yaml``, notebook 06): what each spec expands to and runs."""

from __future__ import annotations

import json
from pathlib import Path

from kdlens.sweep import expand_sweep, load_sweep_spec, run_config, smoke_spec, teacher_sft_config

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"
MPDISTIL = ANALYSES / "meta_mpdistil.yaml"
METADISTIL = ANALYSES / "meta_metadistil.yaml"
SWITCHES = ("mpdistil.curriculum", "mpdistil.meta_teacher", "mpdistil.meta_loss")
REFERENCE = ("policy", True, "collaborative")  # MPDistil itself


def test_the_mpdistil_grid_is_five_arms_one_switch_from_mpdistil_each_with_five_seeds():
    spec = load_sweep_spec(MPDISTIL)
    runs = expand_sweep(spec)
    arms = runs.groupby(list(SWITCHES))["seed"].apply(sorted).to_dict()
    assert arms == {key: [0, 1, 2, 3, 4] for key in [
        REFERENCE, ("uniform", True, "collaborative"), ("none", True, "collaborative"),
        ("policy", False, "collaborative"), ("policy", True, "competitive")]}
    assert runs["teacher_aware"].all() and runs["run_id"].is_unique
    # every student faces the one teacher the sweep fine-tunes on the suite (stage 1 shared, not per run)
    configs = [run_config(spec, json.loads(o), output_dir="x", teacher_dir="aware") for o in runs["overrides"]]
    assert {c.teacher for c in configs} == {"aware"} and not any(c.mpdistil.finetune_teacher for c in configs)
    assert {(c.steps, c.batch_size, c.lr, c.mpdistil.curriculum_lr, c.mpdistil.target) for c in configs} == \
        {(400, 32, 1e-3, 2e-5, "response")}
    teacher = teacher_sft_config(spec, output_dir="t")
    assert (teacher.teacher, teacher.method, teacher.steps, teacher.seed) == ("lab-teacher-base", "sft", 500, 0)
    assert teacher.tasks == configs[0].tasks  # MPDistil fine-tunes the teacher on the student's data


def test_the_metadistil_grid_compares_three_methods_on_the_same_seeds_and_teacher():
    spec = load_sweep_spec(METADISTIL)
    runs = expand_sweep(spec)
    assert runs.groupby("method")["seed"].apply(sorted).to_dict() == {
        m: [0, 1, 2, 3, 4] for m in ("sft", "word_kd", "metadistil")}
    configs = {(row.method, row.seed): run_config(spec, json.loads(row.overrides), output_dir="x", teacher_dir=None)
               for row in runs.itertuples()}
    kd, meta = configs[("word_kd", 3)], configs[("metadistil", 3)]
    # MetaDistil and word_kd differ in the method alone: the same online teacher, loss and schedule
    assert (kd.teacher, kd.teacher_source, kd.loss, kd.steps) == (meta.teacher, meta.teacher_source, meta.loss,
                                                                  meta.steps) == ("lab-teacher-aware", "online",
                                                                                  "forward_kl", 300)
    assert configs[("sft", 3)].steps == 300 and configs[("sft", 3)].seed == 3


def test_smoke_spec_shrinks_the_task_aware_teachers_training_too():
    """The sweep's teacher SFT takes teacher_sft's steps over the base's: a smoke spec that kept them would
    fine-tune the meta grid's teacher for its full 500 steps."""
    smoke = smoke_spec(MPDISTIL, seeds=2, steps=3, n_examples=24)
    assert smoke["teacher_sft"] == {"seed": 0, "steps": 3}
    smoke["base"]["mpdistil"]["quiz_size"] = 8  # 100 quiz items of 24: refused when the spec is read
    teacher = teacher_sft_config(load_sweep_spec(smoke), output_dir="t")
    assert teacher.steps == 3 and teacher.warmup_steps == 0
    assert len(expand_sweep(smoke)) == 10  # five arms, two seeds
