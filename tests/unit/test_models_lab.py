"""The lab models: character tokenizer with a chat template, deterministic micro Llamas that round-trip
through from_pretrained and prune:N, and the lab teachers (recipes, deterministic builds, lookup)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml

import kdlens.models._lab as lab
from kdlens.data import encode_for_generation, encode_for_training, format_prompt, load_task
from kdlens.data._lab import LAB_TASKS
from kdlens.models import BUILTINS, load_model, prune_layers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tokenizer():
    return lab.lab_tokenizer()


def _batch(tokenizer):
    records = load_task("lab_chain:3", split="test", seed=0)
    ids = [encode_for_training(tokenizer, r)["input_ids"] for r in records]
    width = max(map(len, ids))
    return (torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids]),
            torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]))


def test_the_tokenizer_round_trips_every_character_of_every_lab_task(tokenizer):
    texts = [text for name in LAB_TASKS for split in ("train", "test", "gen")
             for r in load_task(f"{name}:100", split=split, seed=1) for text in (r.prompt, r.rationale)]
    chars = set("".join(texts))
    assert chars <= set(lab.LAB_CHARS) and len(tokenizer) == 102
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and tokenizer.unk_token_id not in ids  # one token per character
        assert tokenizer.decode(ids) == text
    # every character, including newline and space, is its own token
    ids = tokenizer("".join(lab.LAB_CHARS), add_special_tokens=False)["input_ids"]
    assert ids == list(range(6, 102))
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_the_chat_template_frames_a_turn_with_three_tokens(tokenizer):
    record = load_task("lab_chain:1", split="test", seed=0)[0]
    assert format_prompt(tokenizer, record.prompt) == f"<|user|>{record.prompt}<|end|><|assistant|>"
    assert format_prompt(tokenizer, "1+2", system="add") == "<|system|>add<|end|><|user|>1+2<|end|><|assistant|>"
    encoded = encode_for_training(tokenizer, record)
    prompt = encode_for_generation(tokenizer, record)
    assert encoded["input_ids"][:len(prompt)] == prompt and len(prompt) == len(record.prompt) + 3
    target = [t for t in encoded["labels"] if t != -100]
    assert tokenizer.decode(target[:-1]) == record.rationale and target[-1] == tokenizer.eos_token_id == 0
    assert (tokenizer.pad_token_id, tokenizer.eos_token) == (4, "<|end|>")
    with pytest.raises(Exception, match="roles system, user and assistant"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("name", sorted(lab.LAB_ARCHS))
def test_parameter_counts_match_the_built_models(name):
    model, _ = lab.lab_model(name)
    assert lab.lab_parameter_count(name) == sum(p.numel() for p in model.parameters())
    layers, width, heads, mlp, _ = lab.LAB_ARCHS[name]
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        layers, width, heads, mlp)
    assert config.tie_word_embeddings and config.vocab_size == 102


def test_the_teacher_has_the_size_of_the_prototype():
    assert 640_000 < lab.lab_parameter_count("lab-teacher") < 660_000
    sizes = [lab.lab_parameter_count(f"lab-student-{d}") for d in (32, 64, 96)]
    assert sizes == sorted(sizes) and sizes[-1] < lab.lab_parameter_count("lab-teacher") / 2


def test_lab_models_load_by_name_through_from_pretrained(cache, tokenizer):
    name = "lab-student-32"
    assert not BUILTINS[name].cached()
    model, loaded_tokenizer = load_model(name)
    assert BUILTINS[name].cached()
    directory = BUILTINS[name].prepare()
    assert directory.parent == cache / "models" / "lab" and (directory / "model.safetensors").is_file()
    reference, _ = lab.lab_model(name)
    for (key, a), (_, b) in zip(reference.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    ids, mask = _batch(tokenizer)
    assert torch.equal(reference(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits)
    assert loaded_tokenizer.chat_template == lab.LAB_CHAT_TEMPLATE
    assert loaded_tokenizer("12+3\n", add_special_tokens=False)["input_ids"] == tokenizer("12+3\n", add_special_tokens=False)["input_ids"]
    # a second use reads the saved directory, it does not write it again
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    load_model(name)
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp
    assert model.generation_config.eos_token_id == 0 and model.generation_config.pad_token_id == 4


def test_a_pruned_lab_teacher_round_trips(tmp_path, tokenizer):
    teacher, _ = lab.lab_model("lab-teacher")
    student = prune_layers(teacher, 2)
    assert student.config.num_hidden_layers == 2 and student.config.kdlens_kept_layers == [0, 2]
    student.save_pretrained(tmp_path / "s")
    tokenizer.save_pretrained(tmp_path / "s")
    reloaded, reloaded_tokenizer = load_model(tmp_path / "s")
    ids, mask = _batch(tokenizer)
    assert torch.equal(student.eval()(input_ids=ids, attention_mask=mask).logits,
                       reloaded(input_ids=ids, attention_mask=mask).logits)
    assert len(reloaded_tokenizer) == 102


def test_every_kdlens_path_runs_on_lab_models(cache, tmp_path):
    from kdlens.distill import distill
    from kdlens.eval import collect_tokens, evaluate

    run = distill({"teacher": "lab-teacher", "student": "lab-student-32", "tasks": ["lab_chain:16"],
                   "method": "word_kd", "steps": 2, "batch_size": 8, "lr": 1e-3, "device": "cpu",
                   "output_dir": str(tmp_path / "run")})
    pruned = distill({"teacher": "lab-teacher", "student": "prune:1", "tasks": ["lab_chain:16"], "method": "sft",
                      "steps": 1, "batch_size": 8, "device": "cpu", "output_dir": str(tmp_path / "pruned")})
    assert load_model(pruned.path)[0].config.num_hidden_layers == 1
    rows = [json.loads(line) for line in (run.path / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["kd"] > 0 for r in rows)
    table = evaluate({"teacher": "lab-teacher", "student": str(run.path)}, ["lab_chain:4"], split="gen", n=4,
                     max_new_tokens=6, batch_size=4)
    assert len(table) == 8 and set(table["split"]) == {"gen"} and table["gold_nll"].notna().all()
    records = load_task("lab_chain:4", split="gen", seed=0)
    tokens = collect_tokens(str(run.path), "lab-teacher", records)
    # one row per response token: a token per rationale character, plus EOS
    assert len(tokens) == sum(len(r.rationale) + 1 for r in records)


# ---- the lab teachers ------------------------------------------------------------------------------

@pytest.fixture()
def micro_recipes(tmp_path, monkeypatch):
    """The real recipes cut to a few steps on a few examples, and no shipped copies."""
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, (recipe, *_) in lab.LAB_TEACHERS.items():
        data = lab.lab_teacher_recipe(name)
        task = data["tasks"][0].split(":")[0]
        data.update(tasks=[f"{task}:32"], steps=3, batch_size=8, log_every=1)
        (configs / recipe).write_text(yaml.safe_dump(data))
    monkeypatch.setattr(lab, "_CONFIGS", configs)
    monkeypatch.setattr(lab, "_SHIPPED", tmp_path / "no-checkout")
    return configs


def _build(cache_dir: Path) -> None:
    from kdlens.config import load_config
    from kdlens.distill import distill

    for command in lab.lab_teacher_commands(cache_dir):
        words = shlex.split(command)
        assert words[:2] == ["kdlens", "finetune"]
        distill(load_config(words[2], words[3:]))


def test_recipes_are_sft_runs_from_the_right_starting_points():
    base, aware = lab.lab_teacher_recipe("lab-teacher-base"), lab.lab_teacher_recipe("lab-teacher-aware")
    assert (base["method"], base["student"], base["tasks"][0].split(":")[0]) == ("sft", "lab-teacher", "lab_add")
    assert (aware["method"], aware["student"], aware["tasks"][0].split(":")[0]) == ("sft", "lab-teacher-base",
                                                                                      "lab_chain")
    assert "output_dir" not in base and "output_dir" not in aware


def test_a_missing_teacher_is_one_line_naming_the_build_commands(cache, micro_recipes):
    assert not BUILTINS["lab-teacher-aware"].cached()
    with pytest.raises(FileNotFoundError) as info:
        load_model("lab-teacher-aware")
    message = str(info.value)
    assert "\n" not in message and message.count("kdlens finetune") == 2
    assert str(lab.lab_teacher_dir("lab-teacher-base", cache)) in message


def test_teachers_build_deterministically_and_are_found_in_the_cache(tmp_path, cache, micro_recipes, monkeypatch):
    _build(cache)
    assert BUILTINS["lab-teacher-base"].cached() and BUILTINS["lab-teacher-aware"].cached()
    aware_dir = lab.find_lab_teacher("lab-teacher-aware", cache)
    assert aware_dir == lab.lab_teacher_dir("lab-teacher-aware", cache)
    teacher, _ = load_model("lab-teacher-aware")
    base, _ = load_model("lab-teacher-base")
    assert any(not torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), base.state_dict().values(),
                                                       strict=True))
    # the same recipe in another cache gives bit-identical weights
    other = tmp_path / "other-cache"
    monkeypatch.setenv("KDLENS_CACHE", str(other))
    _build(other)
    again, _ = load_model("lab-teacher-aware")
    for (key, a), (_, b) in zip(teacher.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    # a finished teacher is not retrained: the build is a no-op
    stamp = (aware_dir / "done").stat().st_mtime_ns
    _build(cache)
    assert (aware_dir / "done").stat().st_mtime_ns == stamp


def test_a_run_built_from_another_recipe_is_not_used(cache, micro_recipes):
    _build(cache)
    built = lab.find_lab_teacher("lab-teacher-base", cache)
    recipe = micro_recipes / lab.LAB_TEACHERS["lab-teacher-base"][0]
    recipe.write_text(recipe.read_text().replace("steps: 3", "steps: 4"))
    # the changed recipe has another cache directory, and the old run does not agree with it either
    assert lab.lab_teacher_dir("lab-teacher-base", cache) != built
    assert not lab._agrees(built, lab.lab_teacher_recipe("lab-teacher-base"))
    assert lab.find_lab_teacher("lab-teacher-base", cache) is None
    # the task-aware teacher starts from the base one, so its identity changes with it
    assert lab.find_lab_teacher("lab-teacher-aware", cache) is None


def test_loading_and_saving_print_no_transformers_progress_bars(cache, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from kdlens.distill._checkpoint import save_checkpoint

    assert hf_logging.is_progress_bar_enabled()
    model, tokenizer = load_model("lab-student-32")
    save_checkpoint(tmp_path / "saved", model, tokenizer)
    load_model(tmp_path / "saved")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is back


@pytest.mark.parametrize("name", sorted(lab.LAB_TEACHERS))
def test_the_shipped_teachers_were_built_from_their_recipes_and_todays_tasks(name):
    from kdlens._io import read_json, sha256_json
    from kdlens.data import load_tasks

    run = REPO / "data" / "lab" / name
    recipe = lab.lab_teacher_recipe(name)
    assert lab._agrees(run, recipe), f"{run} is missing or was built from another recipe; rebuild it (README, Models)"
    assert lab.find_lab_teacher(name, Path("/nonexistent")) == run
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "done" and manifest["steps"] == recipe["steps"]
    # the data hash the engine recorded is that of today's generator: a changed lab task would make the
    # shipped teacher a teacher of other data
    tokenizer = lab.lab_tokenizer()
    records = load_tasks(recipe["tasks"], split="train", seed=recipe["seed"])
    features = [encode_for_training(tokenizer, r, max_length=recipe["max_length"]) for r in records]
    assert sha256_json([[f["input_ids"], f["labels"]] for f in features]) == manifest["data_hash"]


def test_pretrained_students_are_the_base_teacher_cut_down(cache):
    from kdlens.models._lab import LAB_PRUNED

    base, _ = load_model("lab-teacher-base")
    assert not BUILTINS["lab-base-l2"].cached()
    for name, (_, keep, _) in LAB_PRUNED.items():
        student, tokenizer = load_model(name)
        reference = prune_layers(base, keep)
        assert student.config.num_hidden_layers == keep and len(tokenizer) == 102
        assert lab.lab_parameter_count(name) == sum(p.numel() for p in student.parameters())
        for (key, a), (_, b) in zip(reference.state_dict().items(), student.state_dict().items(), strict=True):
            assert torch.equal(a, b), (name, key)
    assert BUILTINS["lab-base-l2"].cached()
    assert load_model("lab-base-l2")[0].config.kdlens_kept_layers == [0, 2]
