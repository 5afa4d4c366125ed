"""The distillation engine end to end on the tiny model (CPU, fp32, seconds per run)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from kdlens.config import load_config
from kdlens.distill import METHODS, RunDir, distill

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="session")
def tasks_file(tmp_path_factory):
    """16 arithmetic records with short rationales (the tiny tokenizer is byte-level: ~30 target tokens)."""
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rows = []
    for i in range(16):
        a, b = 3 + i, 7 + 2 * i
        rows.append({"instruction": f"What is {a} + {b}?", "input": "",
                     "output": f"{a} plus {b} is {a + b}. The answer is {a + b}", "answer": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_config(tmp_path, tasks_file, name="run", **kw):
    base = dict(teacher="tiny", student="prune:1", tasks=[tasks_file], method="word_kd", loss="forward_kl",
                steps=4, batch_size=8, lr=1e-2, seed=0, device="cpu", output_dir=str(tmp_path / name))
    base.update(kw)
    return load_config(None, {k: v for k, v in base.items()})


def checkpoint_weights(run: RunDir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run.checkpoint_path / "model.safetensors"))


def initial_student() -> dict[str, torch.Tensor]:
    from kdlens.models import prune_layers, tiny_model

    return {k: v.clone() for k, v in prune_layers(tiny_model(seed=0)[0], 1).state_dict().items()}


def losses(run: RunDir, key="loss") -> list[float]:
    return [row[key] for row in run.log()]


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, tasks_file):
    """An uninterrupted 4-step word_kd run (save_every=2), shared by several tests."""
    tmp = tmp_path_factory.mktemp("baseline")
    return distill(run_config(tmp, tasks_file, save_every=2))


def test_four_step_run_is_finite_changes_every_parameter_and_writes_the_run_dir(baseline):
    run = baseline
    assert run.done
    rows = run.log()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("loss", "ce", "kd", "lr", "tokens_per_s"))
        assert row["loss"] == pytest.approx(row["kd"])  # kd_weight = 1: pure KD
        assert row["target_tokens"] > 0
    before, after = initial_student(), checkpoint_weights(run)
    tied = {"lm_head.weight"} - set(after)  # tied to the embeddings: saved once
    assert set(before) - tied == set(after)
    unchanged = [k for k in after if torch.equal(before[k], after[k])]
    assert unchanged == []
    manifest = run.manifest()
    assert manifest["status"] == "done" and manifest["method"] == "word_kd" and manifest["loss"] == "forward_kl"
    assert manifest["sigma"] == 0.0 and manifest["temperature"] == 1.0 and manifest["steps"] == 4
    assert manifest["seed"] == 0 and len(manifest["data_hash"]) == 64 and manifest["teacher"] == "tiny"
    assert manifest["versions"]["torch"] and manifest["versions"]["transformers"]
    assert not run.state_root.exists()  # resumable states are dropped once the run is done
    assert load_config(run.config_path) == run.config()


def test_checkpoint_loads_with_plain_transformers_and_kdlens(baseline):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(baseline.checkpoint_path))
    after = checkpoint_weights(baseline)
    assert torch.equal(model.state_dict()["model.norm.weight"], after["model.norm.weight"])
    loaded, tok = baseline.load_model()
    assert loaded.config.num_hidden_layers == 1 and tok.pad_token_id is not None


def test_rerunning_a_finished_run_is_a_no_op(baseline):
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in baseline.path.rglob("*") if p.is_file()}
    again = distill(baseline.config())
    assert again.path == baseline.path
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in baseline.path.rglob("*") if p.is_file()} == stamps


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, tasks_file, baseline):
    cfg = run_config(tmp_path, tasks_file, save_every=2)

    class Killed(Exception):
        pass

    def kill_after_step_3(step, logs):
        if step == 3:  # step 3 ran but its state was never saved: the resume must redo it
            raise Killed

    with pytest.raises(Killed):
        distill(cfg, callbacks=[kill_after_step_3])
    run = RunDir(cfg.output_dir)
    assert not run.done and run.latest_state().name == "step-00000002"
    assert [r["step"] for r in run.log()] == [1, 2, 3]
    resumed = distill(cfg)
    assert resumed.done
    assert [r["step"] for r in resumed.log()] == [1, 2, 3, 4]  # the lost step 3 is not logged twice
    assert losses(resumed) == pytest.approx(losses(baseline), abs=1e-6)
    want, got = checkpoint_weights(baseline), checkpoint_weights(resumed)
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-7, rtol=0), key


def test_a_different_config_in_an_unfinished_run_dir_is_an_error(tmp_path, tasks_file):
    cfg = run_config(tmp_path, tasks_file, save_every=1)
    with pytest.raises(RuntimeError):
        distill(cfg, callbacks=[lambda step, logs: (_ for _ in ()).throw(RuntimeError("kill"))])
    with pytest.raises(ValueError, match="unfinished run with different settings.*sigma.*overwrite"):
        distill(cfg.replace(sigma=1.0))


def test_gradient_accumulation_2x4_equals_8x1(tmp_path, tasks_file, baseline):
    accumulated = distill(run_config(tmp_path, tasks_file, grad_accum=2))
    assert losses(accumulated) == pytest.approx(losses(baseline), abs=1e-5)
    assert losses(accumulated, "kd") == pytest.approx(losses(baseline, "kd"), abs=1e-5)
    want, got = checkpoint_weights(baseline), checkpoint_weights(accumulated)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-5


def test_teacher_noise_is_decided_by_the_data_not_by_grad_accum(tmp_path, tasks_file):
    """At sigma = 2 a batch of 8 x 1 and 4 x 2 end with the same weights (issue 12, item 4)."""
    whole = distill(run_config(tmp_path, tasks_file, name="8x1", sigma=2.0, steps=3))
    halves = distill(run_config(tmp_path, tasks_file, name="4x2", sigma=2.0, steps=3, grad_accum=2))
    assert losses(halves) == pytest.approx(losses(whole), abs=1e-5)
    want, got = checkpoint_weights(whole), checkpoint_weights(halves)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-5


def test_sigma_zero_is_no_noise_and_sigma_is_seeded_noise(tmp_path, tasks_file, baseline):
    explicit_zero = distill(run_config(tmp_path, tasks_file, name="zero", sigma=0.0))
    assert losses(explicit_zero) == losses(baseline)
    noisy = distill(run_config(tmp_path, tasks_file, name="noisy", sigma=2.0, steps=2))
    noisy_again = distill(run_config(tmp_path, tasks_file, name="noisy2", sigma=2.0, steps=2))
    assert losses(noisy) == losses(noisy_again)  # same seed: same noise
    # noise makes the teacher disagree with the (near-identical) student: KD loss jumps
    assert losses(noisy)[0] > 10 * losses(baseline)[0]
    assert noisy.manifest()["sigma"] == 2.0


def test_teacher_cache_with_k_equal_v_equals_online(tmp_path, tasks_file, baseline):
    cfg = run_config(tmp_path, tasks_file, name="cached", teacher_source="cache", top_k=260,
                     cache_dir=str(tmp_path / "cache"))
    cached = distill(cfg)
    assert losses(cached) == pytest.approx(losses(baseline), abs=1e-5)
    want, got = checkpoint_weights(baseline), checkpoint_weights(cached)
    # float-summation order differs (top-k order vs vocab order); Adam's normalized steps of size
    # lr = 1e-2 turn that into ~1e-5 weight differences, 3 orders below one step
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-4
    (cache_dir,) = list((tmp_path / "cache").iterdir())
    assert (cache_dir / "complete").is_file() and cached.manifest()["teacher_cache"] == str(cache_dir)
    # a sweep over tau reuses the cache: no shard is rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}
    hot = distill(cfg.replace(temperature=2.0, steps=2, output_dir=str(tmp_path / "hot")))
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == stamps
    assert losses(hot)[0] != pytest.approx(losses(cached)[0], rel=1e-3)


def test_small_topk_cache_runs_and_approximates_online(tmp_path, tasks_file, baseline):
    cached = distill(run_config(tmp_path, tasks_file, teacher_source="cache", top_k=8, steps=1,
                                cache_tail="bucket", cache_dir=str(tmp_path / "cache")))
    first_online, first_cached = losses(baseline)[0], losses(cached)[0]
    assert 0 < first_cached <= first_online + 1e-7  # merging the tail cannot raise KL(p || q)
    assert cached.manifest()["top_k"] == 8


@pytest.mark.parametrize("scale", [False, True])
def test_temperature_and_tau_squared_are_wired(tmp_path, tasks_file, baseline, scale):
    """Step-1 losses (same initial weights) against the naive KL of the same logits at tau = 2."""
    from kdlens.data import collate, encode_for_training, load_tasks
    from kdlens.models import prune_layers, tiny_model

    run = distill(run_config(tmp_path, tasks_file, temperature=2.0, scale_by_temperature_squared=scale, steps=1))
    teacher, tok = tiny_model(seed=0)
    student = prune_layers(teacher, 1)
    from kdlens.distill._loop import _epoch_order

    records = load_tasks([tasks_file], split="train", seed=0)
    feats = [encode_for_training(tok, r, max_length=256) for r in records]
    batch = collate([feats[i] for i in _epoch_order(len(feats), 0, 0)[:8]], pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    mask = batch["labels"][:, 1:] != -100
    lp, lq = torch.log_softmax(zt / 2, -1), torch.log_softmax(zs / 2, -1)
    kl = ((lp.exp() * (lp - lq)).sum(-1) * mask).sum() / mask.sum()
    want = float(kl) * (4.0 if scale else 1.0)
    assert run.log()[0]["kd"] == pytest.approx(want, rel=1e-4)


def test_bf16_autocast_as_on_cuda_stays_close_to_fp32(tmp_path, tasks_file, baseline, monkeypatch):
    """The GPU setting (mixed_precision auto -> bf16 autocast), which CPU runs otherwise never take.

    The student's forward runs under accelerate's autocast, the online teacher and the cache build
    under bf16 autocast (bf16 teacher logits); the losses upcast to float32, so the run stays
    within bf16 rounding of the float32 baseline, online and from a k = V cache alike.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import kdlens.distill._loop as loop

    # the accelerator state is a process-wide singleton fixed by the first Accelerator built
    AcceleratorState._reset_state(True)
    monkeypatch.setattr(loop, "_accelerator", lambda cfg: Accelerator(cpu=True, mixed_precision="bf16"))
    try:
        online = distill(run_config(tmp_path, tasks_file, name="online"))
        cached = distill(run_config(tmp_path, tasks_file, name="cached", teacher_source="cache", top_k=260,
                                    cache_dir=str(tmp_path / "cache")))
    finally:
        AcceleratorState._reset_state(True)
    assert online.manifest()["mixed_precision"] == "bf16"
    assert losses(online) != losses(baseline)  # autocast did change the arithmetic
    for run in (online, cached):
        assert losses(run) == pytest.approx(losses(baseline), rel=5e-2, abs=1e-4)


def test_kd_weight_mixes_ce_and_kd(tmp_path, tasks_file):
    run = distill(run_config(tmp_path, tasks_file, kd_weight=0.3, steps=2))
    for row in run.log():
        assert row["loss"] == pytest.approx(0.7 * row["ce"] + 0.3 * row["kd"], rel=1e-5)
    sft_like = distill(run_config(tmp_path, tasks_file, name="a0", kd_weight=0.0, steps=1))
    assert sft_like.log()[0]["loss"] == pytest.approx(sft_like.log()[0]["ce"], rel=1e-6)


def test_loss_jsd_beta_runs_that_beta_and_the_manifest_records_the_loss_parameters_used(tmp_path, tasks_file):
    """``loss=jsd beta=0.9`` was JSD(0.5) with a feature weight of 0.9 (issue 12, item 5)."""
    asked = distill(run_config(tmp_path, tasks_file, name="b9", loss="jsd", beta=0.9, steps=1))
    explicit = distill(run_config(tmp_path, tasks_file, name="lp9", loss="jsd", loss_params={"beta": 0.9}, steps=1))
    default = distill(run_config(tmp_path, tasks_file, name="b5", loss="jsd", steps=1))
    assert losses(asked) == losses(explicit)
    assert losses(asked)[0] != pytest.approx(losses(default)[0], rel=1e-3)
    assert asked.manifest()["loss_params"] == {"beta": 0.9}
    assert default.manifest()["loss_params"] == {"beta": 0.5}  # the default it ran with, recorded
    assert asked.manifest()["kd_weight"] == 1.0 and asked.manifest()["feature_weight"] == 0.0
    assert "alpha" not in asked.manifest() and "beta" not in asked.manifest()


def test_sft_trains_without_teacher_and_matches_kd_weight_zero(tmp_path, tasks_file):
    sft = distill(run_config(tmp_path, tasks_file, name="sft", method="sft", teacher=None, student="tiny",
                             loss=None, steps=2))
    assert sft.manifest()["loss"] is None and sft.manifest()["teacher"] is None
    assert set(sft.log()[0]) >= {"loss", "ce"} and "kd" not in sft.log()[0]
    # sft on a 2-layer tiny student == word_kd with kd_weight = 0 on the same student
    kd0 = distill(run_config(tmp_path, tasks_file, name="kd0", student="tiny", kd_weight=0.0, steps=2))
    assert losses(sft) == pytest.approx(losses(kd0), abs=1e-6)


def test_feature_kd_adds_feature_weight_times_the_feature_terms(tmp_path, tasks_file):
    run = distill(run_config(tmp_path, tasks_file, method="feature_kd", kd_weight=0.5, feature_weight=2.0, steps=2,
                             feature={"attention": True, "projection": True}))
    for row in run.log():
        assert row["feature"] > 0 and row["hidden"] > 0 and row["attention"] > 0
        assert row["feature"] == pytest.approx(row["hidden"] + row["attention"], rel=1e-5)
        assert row["loss"] == pytest.approx(0.5 * row["ce"] + 0.5 * row["kd"] + 2.0 * row["feature"], rel=1e-5)
    assert (run.path / "feature_projection.safetensors").is_file()


def test_lora_trains_adapters_only_and_merges_into_a_plain_checkpoint(tmp_path, tasks_file):
    run = distill(run_config(tmp_path, tasks_file, lora={"r": 4, "targets": ["q_proj", "v_proj"]}, steps=2))
    before, after = initial_student(), checkpoint_weights(run)
    assert not any("lora" in k for k in after)  # merged: loads with plain transformers
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"}
    assert run.manifest()["lora"] is True
    # r * (d_in + d_out) per adapted Linear: q_proj 64 -> 64, v_proj 64 -> 32 (2 KV heads x 16)
    assert run.manifest()["trainable_parameters"] == 4 * (64 + 64) + 4 * (64 + 32)


def test_lora_unknown_target_is_a_clear_error(tmp_path, tasks_file):
    with pytest.raises(ValueError, match="match no module"):
        distill(run_config(tmp_path, tasks_file, lora={"targets": ["query"]}, steps=1))


def test_methods_table_lists_the_issue_methods():
    assert {"sft", "word_kd", "feature_kd"} <= set(METHODS)
    assert not METHODS["sft"].needs_teacher and METHODS["word_kd"].needs_teacher


def test_cli_distill_and_finetune(tmp_path, tasks_file, capsys):
    from kdlens.cli import main

    out = tmp_path / "cli"
    assert main(["distill", "teacher=tiny", "student=prune:1", f"tasks={tasks_file}", "method=word_kd",
                 "loss=reverse_kl", "steps=2", "batch_size=8", "device=cpu", f"output_dir={out}"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert RunDir(out).done and RunDir(out).manifest()["loss"] == "reverse_kl"
    assert main(["finetune", "student=tiny", f"tasks={tasks_file}", "method=word_kd", "teacher=tiny",
                 f"output_dir={tmp_path / 'ft'}"]) == 1
    assert "method=sft" in capsys.readouterr().err
    assert main(["distill", "teacher=tiny", f"tasks={tasks_file}", "sigma=-1"]) == 1
    assert "sigma must be >= 0" in capsys.readouterr().err


def test_batch_larger_than_the_data_is_an_error(tmp_path, tasks_file):
    with pytest.raises(ValueError, match="only 16 training examples"):
        distill(run_config(tmp_path, tasks_file, batch_size=32))
    assert not os.path.exists(tmp_path / "run")  # checked before anything was written


def test_max_length_keeps_whole_prompts_and_counts_and_says_what_it_drops(tmp_path, caplog):
    """max_length once cut prompts from the left and reported 0 dropped examples (issue 12, item 7)."""
    from kdlens.data import encode_for_training, load_task
    from kdlens.models import tiny_model

    path = tmp_path / "mixed.jsonl"
    rows = [{"instruction": f"What is {i} + 1?", "input": "", "output": f"{i} plus 1 is {i + 1}. The answer is {i + 1}",
             "answer": str(i + 1)} for i in range(4)]
    rows += [{"instruction": "Please read this long preamble carefully before you answer. " * 3 + f"What is {i} + 2?",
              "input": "", "output": f"The answer is {i + 2}", "answer": str(i + 2)} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, tok = tiny_model(seed=0)
    full = [encode_for_training(tok, r, max_length=None) for r in load_task(str(path), split="train")]
    prompt_len = [f["labels"].index(next(x for x in f["labels"] if x != -100)) for f in full]
    short, long_ = max(prompt_len[:4]), min(prompt_len[4:])
    assert short + 5 < long_ and all(len(f["input_ids"]) > short + 5 for f in full[:4])
    with caplog.at_level("WARNING", logger="kdlens.distill"):
        run = distill(run_config(tmp_path, str(path), name="cut", max_length=short + 5, batch_size=4, steps=1))
    manifest = run.manifest()
    assert manifest["n_examples"] == 4 and manifest["n_dropped_examples"] == 4
    assert manifest["dropped_examples"] == {"prompt_too_long": 4} and manifest["n_truncated_responses"] == 4
    assert "4 dropped (the prompt alone fills max_length)" in caplog.text
    assert "4 kept with the response cut at its end" in caplog.text

    from kdlens.distill._examples import encode_examples

    kept = encode_examples(tok, load_task(str(path), split="train"), max_length=short + 5)
    for feat, whole in zip(kept.features, full[:4], strict=True):
        p = whole["labels"].index(next(x for x in whole["labels"] if x != -100))
        assert feat["input_ids"][:p] == whole["input_ids"][:p]  # the whole prompt, from its first token
        assert len(feat["input_ids"]) == short + 5 and sum(x != -100 for x in feat["labels"]) >= 5


def test_a_max_length_no_prompt_fits_in_is_one_line_naming_max_length(tmp_path, tasks_file):
    with pytest.raises(ValueError, match=r"all 16 training examples were dropped at max_length=5: .*raise max_length") \
            as err:
        distill(run_config(tmp_path, tasks_file, name="five", max_length=5))
    assert "\n" not in str(err.value)
