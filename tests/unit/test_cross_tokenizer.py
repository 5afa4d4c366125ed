"""Distillation across tokenizers: token bytes, the shared vocabulary, byte-span alignment, the
teacher signal against naive references, and whole runs of tiny-b (Gemma-style) -> tiny (byte-level)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _loss_refs import log_softmax
from _loss_refs import sorted_l1 as ref_sorted_l1
from _loss_refs import span_aligned as ref_span_aligned
from _loss_refs import uld as ref_uld

from kdlens.config import load_config
from kdlens.data import Record, collate, encode_for_training, response_text
from kdlens.distill import distill
from kdlens.distill._cross_tokenizer import (
    CrossTokenizerTeacher,
    align_spans,
    byte_spans,
    shared_vocabulary,
    token_bytes,
    uses_cross_tokenizer,
)
from kdlens.losses import get_loss
from kdlens.models import tiny_b_model, tiny_b_tokenizer, tiny_model, tiny_tokenizer
from kdlens.teacher import NoiseKey, kd_token_loss, response_mask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _records(n=4):
    return [Record(id=str(i), task="arith", split="train", prompt=f"What is {3 + i} + {7 + 2 * i}?", answer=str(10 + 3 * i),
                   rationale=f"{3 + i} plus {7 + 2 * i} is {10 + 3 * i}. The answer is {10 + 3 * i}")
            for i in range(n)]


@pytest.fixture(scope="module")
def toks():
    return tiny_tokenizer(), tiny_b_tokenizer()


# --------------------------------------------------------------------------- token bytes and shared vocabulary


def test_token_bytes_of_a_byte_level_and_a_sentencepiece_vocabulary(toks):
    tiny, tiny_b = toks
    table = token_bytes(tiny)
    assert table[:4] == [None] * 4  # ChatML control tokens cover no text
    assert all(table[4 + b] == bytes([b]) for b in range(256))
    table_b = token_bytes(tiny_b)
    vocab = tiny_b.get_vocab()
    assert table_b[:5] == [None] * 5
    assert table_b[vocab["▁"]] == b" " and table_b[vocab["▁answer"]] == b" answer" and table_b[vocab["12"]] == b"12"
    assert table_b[vocab["<0xC3>"]] == b"\xc3" and table_b[vocab["\n"]] == b"\n"
    # every token spells what the tokenizer decodes it to
    for index in (vocab["▁plus"], vocab["What"], vocab["99"]):
        assert table_b[index] == tiny_b.decode([index]).encode()


def test_shared_vocabulary_pairs_identical_strings_and_the_eos_tokens(toks):
    tiny, tiny_b = toks
    s_ids, t_ids = shared_vocabulary(tiny_b, tiny)
    pairs = dict(zip(s_ids.tolist(), t_ids.tolist(), strict=True))
    vocab_b = tiny_b.get_vocab()
    # tiny has every byte; tiny-b spells each as a character or, failing that, a byte fallback
    assert len(pairs) == 256 + 1
    assert pairs[4 + ord("A")] == vocab_b["A"]
    assert pairs[4 + ord(" ")] == vocab_b["▁"]
    assert pairs[4 + ord("\n")] == vocab_b["\n"]  # the character, not the duplicate <0x0A>
    assert pairs[4 + 0xC3] == vocab_b["<0xC3>"]
    assert pairs[tiny.eos_token_id] == tiny_b.eos_token_id == 4
    assert s_ids.tolist() == sorted(s_ids.tolist())


# --------------------------------------------------------------------------- spans and alignment


def test_byte_spans_and_alignment_hand_checked(toks):
    tiny, tiny_b = toks
    text = "12 plus 10."
    s_ids = tiny(text, add_special_tokens=False)["input_ids"]
    t_ids = tiny_b(text, add_special_tokens=False)["input_ids"]
    assert tiny_b.convert_ids_to_tokens(t_ids) == ["12", "▁plus", "▁", "10", "."]
    s_spans = byte_spans(s_ids, token_bytes(tiny), text.encode())
    t_spans = byte_spans(t_ids, token_bytes(tiny_b), text.encode())
    assert s_spans == [(i, i + 1) for i in range(11)]
    assert t_spans == [(0, 2), (2, 7), (7, 8), (8, 10), (10, 11)]
    groups = align_spans(s_spans, t_spans)
    assert groups == [([0, 1], [0]), ([2, 3, 4, 5, 6], [1]), ([7], [2]), ([8, 9], [3]), ([10], [4])]
    # a truncated side: groups stop at the last common boundary
    assert align_spans(s_spans[:9], t_spans) == groups[:3]


def test_byte_spans_agree_with_the_tokenizers_offsets(toks):
    for tokenizer in toks:
        text = "What is 13 + 27? 13 plus 27 is 40.\nThe answer is 40 théâtre"
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = byte_spans(enc["input_ids"], token_bytes(tokenizer), text.encode())
        for (start, end), (c_start, c_end) in zip(spans, enc["offset_mapping"], strict=True):
            # offsets are characters; a byte token of a two-byte character lies inside the character's bytes
            b_start, b_end = len(text[:c_start].encode()), len(text[:c_end].encode())
            assert b_start <= start < end <= b_end


def test_byte_spans_reject_a_mismatch_and_allow_a_dummy_prefix(toks):
    _, tiny_b = toks
    table = token_bytes(tiny_b)
    vocab = tiny_b.get_vocab()
    assert byte_spans([vocab["▁answer"]], table, b"answer") == [(0, 6)]  # SentencePiece's added space
    assert byte_spans([vocab["▁plus"]], table, b"minus") is None
    assert byte_spans([vocab["12"], 4, vocab["12"]], table, b"1212") == [(0, 2)]  # stops at the control token


# --------------------------------------------------------------------------- the teacher signal


def _encoded(tokenizer, n):
    """Records, their features and collated batch for ``tokenizer``."""
    records = _records(n)
    features = [encode_for_training(tokenizer, r, max_length=256) for r in records]
    return records, features, collate(features, pad_token_id=tokenizer.pad_token_id)


def _shifted_logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]


@pytest.fixture(scope="module")
def signal_setup(toks):
    tiny, tiny_b = toks
    records, features, batch = _encoded(tiny, 3)
    teacher, _ = tiny_b_model(seed=0)
    return tiny, tiny_b, records, features, teacher, batch, _shifted_logits(tiny_model(seed=1)[0], batch)


def _signal(setup, loss, **params):
    tiny, tiny_b, records, features, teacher, batch, _ = setup
    source = CrossTokenizerTeacher(teacher, tiny_b, tiny, features, records, loss=loss, loss_params=params,
                                   max_length=256)
    return source, source(batch, list(range(len(records)))).logits


def test_span_aligned_signal_matches_a_naive_per_group_reference(signal_setup):
    tiny, tiny_b, records, features, teacher, batch, student_logits = signal_setup
    source, signal = _signal(signal_setup, "span_aligned", uld_weight=0.5)
    mask = response_mask(batch["labels"])
    got = kd_token_loss(get_loss("span_aligned", uld_weight=0.5), student_logits, signal, mask=mask, temperature=2.0)
    s_ids, t_ids = source.student_ids.tolist(), source.teacher_ids.tolist()
    expected = torch.zeros_like(got, dtype=torch.float64)
    tz = signal.teacher_logits
    for b, align in enumerate(source.alignments):
        assert align.one_to_one and align.merged  # both kinds of group occur in these examples
        for s, t in align.one_to_one:
            expected[b, s] = ref_span_aligned(student_logits[b, s].tolist(), tz[b, t].tolist(), 2.0, uld_weight=0.5,
                                              student_ids=s_ids, teacher_ids=t_ids)
        for s_pos, t_pos in align.merged:
            def merged(z, positions, tokens):
                chain = sum(log_softmax(z[p].tolist(), 2.0)[tokens[p]] for p in positions[1:])
                return [math.exp(v + chain) for v in log_softmax(z[positions[0]].tolist(), 2.0)]
            q = merged(student_logits[b], s_pos, align.student_tokens)
            p = merged(tz[b], t_pos, align.teacher_tokens)
            expected[b, s_pos[0]] = 0.5 * ref_sorted_l1(q, p)
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=1e-6)
    # every value sits on a student target position
    assert (got[~mask] == 0).all()


def test_uld_signal_pairs_the_ith_tokens_as_the_paper(signal_setup):
    tiny, tiny_b, records, features, teacher, batch, student_logits = signal_setup
    source, signal = _signal(signal_setup, "uld")
    got = kd_token_loss(get_loss("uld"), student_logits, signal, mask=response_mask(batch["labels"]))
    for b, feature in enumerate(source.teacher_features):
        s_targets = [i - 1 for i, label in enumerate(features[b]["labels"]) if label != -100]
        t_targets = [i - 1 for i, label in enumerate(feature["labels"]) if label != -100]
        n = min(len(s_targets), len(t_targets))
        for s, t in zip(s_targets[:n], t_targets[:n], strict=True):
            ref = ref_uld(student_logits[b, s].tolist(), signal.teacher_logits[b, t].tolist())
            assert got[b, s].item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
        assert (got[b, s_targets[n:]] == 0).all()


def test_cross_path_with_one_tokenizer_equals_the_plain_path(toks):
    # forced through the cross-tokenizer signal with the same tokenizer, ULD pairs identical positions
    tiny, _ = toks
    records, features, batch = _encoded(tiny, 2)
    teacher, _ = tiny_model(seed=0)
    zs, zt = _shifted_logits(tiny_model(seed=3)[0], batch), _shifted_logits(teacher, batch)
    mask = response_mask(batch["labels"])
    source = CrossTokenizerTeacher(teacher, tiny, tiny, features, records, loss="uld", max_length=256)
    cross = kd_token_loss(get_loss("uld"), zs, source(batch, [0, 1]).logits, mask=mask, temperature=1.5, sigma=0.5,
                          noise=NoiseKey(11, 0, [0, 1]))
    plain = kd_token_loss(get_loss("uld"), zs, zt, mask=mask, temperature=1.5, sigma=0.5, noise=NoiseKey(11, 0, [0, 1]))
    torch.testing.assert_close(cross, plain, rtol=1e-5, atol=1e-6)
    assert source.summary()["aligned_fraction"] == 1.0 and source.summary()["paired_fraction"] == 1.0


def test_signal_gradients_reach_the_student_and_noise_is_seeded(signal_setup):
    tiny, tiny_b, records, features, teacher, batch, student_logits = signal_setup
    _, signal = _signal(signal_setup, "span_aligned")
    zs = student_logits.clone().requires_grad_()
    mask = response_mask(batch["labels"])
    loss_fn = get_loss("span_aligned")
    value = kd_token_loss(loss_fn, zs, signal, mask=mask).sum()
    (grad,) = torch.autograd.grad(value, zs)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0 and (grad[~mask] == 0).all()
    a = kd_token_loss(loss_fn, student_logits, signal, mask=mask, sigma=1.0, noise=NoiseKey(5, 0, list(range(len(mask)))))
    b = kd_token_loss(loss_fn, student_logits, signal, mask=mask, sigma=1.0, noise=NoiseKey(5, 0, list(range(len(mask)))))
    c = kd_token_loss(loss_fn, student_logits, signal, mask=mask, sigma=1.0, noise=NoiseKey(6, 0, list(range(len(mask)))))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rows = [{"instruction": r.prompt, "input": "", "output": r.rationale, "answer": r.answer} for r in _records(16)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _config(tmp_path, tasks_file, **kw):
    base = dict(teacher="tiny-b", student="tiny", tasks=[tasks_file], method="word_kd", loss="span_aligned",
                kd_weight=0.5, steps=3, batch_size=8, lr=1e-2, seed=0, device="cpu", output_dir=str(tmp_path / "run"))
    return load_config(None, {**base, **kw})


def _one_to_one_by_offsets(tiny, tiny_b, record) -> int:
    """Student target tokens whose exact span is one teacher token too, from return_offsets_mapping (+ EOS)."""
    text = response_text(record)
    s_off = tiny(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    t_off = set(tiny_b(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    return sum(span in t_off for span in s_off) + 1


def test_span_aligned_run_trains_and_records_the_aligned_fraction(tmp_path, tasks_file, toks):
    tiny, tiny_b = toks
    run = distill(_config(tmp_path, tasks_file))
    rows = run.log()
    assert len(rows) == 3 and all(math.isfinite(r["kd"]) and r["kd"] > 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    info = run.manifest()["cross_tokenizer"]
    assert info["loss"] == "span_aligned" and info["shared_vocab"] == 257
    assert (info["student_vocab"], info["teacher_vocab"]) == (260, len(tiny_b))
    total = sum(len(encode_for_training(tiny, r, max_length=256)["input_ids"]) - len(
        tiny(tiny.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                      add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        for r in _records(16))
    assert info["student_target_tokens"] == total
    aligned = sum(_one_to_one_by_offsets(tiny, tiny_b, r) for r in _records(16))
    assert info["aligned_fraction"] == pytest.approx(aligned / total)
    assert info["aligned_fraction"] + info["merged_fraction"] + info["unaligned_fraction"] == pytest.approx(1.0)
    assert info["unaligned_fraction"] == pytest.approx(0.0) and info["examples_without_spans"] == 0


def test_uld_run_across_tokenizers(tmp_path, tasks_file):
    run = distill(_config(tmp_path, tasks_file, loss="uld", steps=2))
    info = run.manifest()["cross_tokenizer"]
    # tiny spends one token per byte, tiny-b far fewer: the paper's pairing covers only the teacher's length
    assert info["loss"] == "uld" and 0 < info["paired_fraction"] < 1
    assert info["paired_fraction"] == pytest.approx(info["teacher_target_tokens"] / info["student_target_tokens"])
    assert all(math.isfinite(r["kd"]) for r in run.log())


def test_cross_tokenizer_configurations_that_cannot_work_say_why(tmp_path, tasks_file, toks):
    tiny, tiny_b = toks
    with pytest.raises(ValueError, match="use loss=span_aligned .* or loss=uld"):
        distill(_config(tmp_path, tasks_file, loss="forward_kl"))
    cfg = _config(tmp_path, tasks_file, method="feature_kd", feature_weight=1.0)
    with pytest.raises(ValueError, match="method=word_kd only, not method=feature_kd"):
        uses_cross_tokenizer(cfg, tiny_b, tiny)
    cfg = _config(tmp_path, tasks_file, teacher_source="cache")
    with pytest.raises(ValueError, match="use teacher_source=online"):
        uses_cross_tokenizer(cfg, tiny_b, tiny)
    assert not uses_cross_tokenizer(_config(tmp_path, tasks_file), tiny, tiny_tokenizer())
    with pytest.warns(UserWarning, match="ULD alone; ULD is defined together with the student's cross-entropy"):
        assert uses_cross_tokenizer(_config(tmp_path, tasks_file, loss="uld", kd_weight=1.0), tiny_b, tiny)
