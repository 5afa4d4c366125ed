"""The embedded SmolLM2-135M-Instruct teacher: conversion, sanity, pruning (marker: integration).

The first run converts the GGUF into the cache (about 30 s); later runs load the cached directory.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdlens._io import read_json
from kdlens.models import check_compatible, prepare_builtin, prune_layers
from kdlens.models._builtin import SMOLLM2_GGUF_SHA256

# one xdist worker loads the teacher for all of these
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


def test_converted_teacher_is_plain_float32_smollm2(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.vocab_size == 49152 == len(tokenizer)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert model.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.pad_token is not None and tokenizer.eos_token == "<|im_end|>"
    directory = prepare_builtin("smollm2-135m-instruct")
    provenance = read_json(directory / "kdlens.json")
    assert provenance["source_sha256"] == SMOLLM2_GGUF_SHA256
    assert sorted(p.name for p in directory.glob("*.safetensors")) == ["model.safetensors"]


def _greedy(model, tokenizer, question: str, max_new_tokens: int = 16) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)


def test_teacher_answers_a_simple_sum(smollm2):
    answer = _greedy(*smollm2, "What is 2+3?")
    assert "5" in answer, answer


def test_cache_directory_loads_with_plain_transformers(smollm2):
    model, tokenizer = smollm2
    directory = prepare_builtin("smollm2-135m-instruct")
    plain = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    plain_tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    assert plain_tokenizer("The capital of France is")["input_ids"] == ids[0].tolist()
    torch.testing.assert_close(plain(ids).logits, model(ids).logits)


def test_pruned_six_layer_student_saves_and_reloads(smollm2, tmp_path):
    teacher, tokenizer = smollm2
    student = prune_layers(teacher, 6)
    assert student.config.kdlens_kept_layers == [0, 6, 12, 17, 23, 29]
    assert teacher.config.num_hidden_layers == 30 and len(teacher.model.layers) == 30
    assert check_compatible(tokenizer, tokenizer, teacher_vocab_size=teacher.config.vocab_size,
                            student_vocab_size=student.config.vocab_size) == 49152
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 6
    ids = torch.tensor([tokenizer("Two plus three")["input_ids"]])
    torch.testing.assert_close(reloaded(ids).logits, student(ids).logits)
