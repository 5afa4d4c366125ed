"""``collect_tokens`` against a naive per-token loop, masking of prompt and padding, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_eval_doubles import varied_tiny

from kdlens._schema import TOKENS_COLUMNS, TOKENS_DTYPES
from kdlens.data import Record, encode_for_generation
from kdlens.eval import collect_tokens, compare_to_teacher, read_tokens

PAIRS = [("What is 2 + 3?", "2 + 3 = 5."), ("Hi", "Hello!"), ("Count: 1, 2", "3")]


@pytest.fixture(scope="module")
def models():
    return {"teacher": varied_tiny(0), "student": varied_tiny(1)}


def _softmax64(z, tau):
    z = z.astype(np.float64) / tau
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


@torch.no_grad()
def _naive_rows(student, teacher, tokenizer, prompt, response, tau, eos=True):
    """One full unbatched forward per response token; statistics summed in float64 numpy."""
    ids = encode_for_generation(tokenizer, prompt)
    response_ids = tokenizer.encode(response) + ([tokenizer.eos_token_id] if eos else [])
    seq = ids + response_ids
    rows = []
    for k, token in enumerate(response_ids):
        prefix = torch.tensor([seq[: len(ids) + k]])
        zs = student(input_ids=prefix).logits[0, -1].numpy()
        zt = teacher(input_ids=prefix).logits[0, -1].numpy()
        p, q = _softmax64(zt, tau), _softmax64(zs, tau)
        rows.append({
            "position": k, "token_id": token, "teacher_top1": int(zt.argmax()), "student_top1": int(zs.argmax()),
            "forward_kl": float(np.sum(p * (np.log(p) - np.log(q)))),
            "reverse_kl": float(np.sum(q * (np.log(q) - np.log(p)))),
            "teacher_entropy": float(-np.sum(p * np.log(p))), "student_entropy": float(-np.sum(q * np.log(q))),
            "teacher_token_prob": float(p[token]), "student_token_prob": float(q[token]),
        })
    return pd.DataFrame(rows)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_collect_tokens_equals_a_naive_per_token_loop(models, tau):
    (student, tokenizer), (teacher, _) = models["student"], models["teacher"]
    table = collect_tokens(models["student"], models["teacher"], PAIRS, temperature=tau, batch_size=2,
                           student_id="kd", teacher_id="big")
    assert tuple(table.columns) == TOKENS_COLUMNS
    assert {c: str(t) for c, t in table.dtypes.items()} == TOKENS_DTYPES
    assert (table["model_id"] == "kd").all() and (table["teacher_id"] == "big").all()
    assert table["example_id"].unique().tolist() == ["0", "1", "2"]  # input order, not batch order
    for index, (prompt, response) in enumerate(PAIRS):
        got = table[table["example_id"] == str(index)].reset_index(drop=True)
        want = _naive_rows(student, teacher, tokenizer, prompt, response, tau)
        assert got["position"].tolist() == want["position"].tolist()
        assert got["token_id"].tolist() == want["token_id"].tolist()
        assert got["teacher_top1"].tolist() == want["teacher_top1"].tolist()
        assert got["student_top1"].tolist() == want["student_top1"].tolist()
        assert got["top1_agree"].tolist() == (want["teacher_top1"] == want["student_top1"]).tolist()
        for column in ("forward_kl", "reverse_kl", "teacher_entropy", "student_entropy",
                       "teacher_token_prob", "student_token_prob"):
            np.testing.assert_allclose(got[column], want[column], rtol=1e-4, atol=1e-5, err_msg=column)
    assert (table["forward_kl"] > 0).all() and (table["reverse_kl"] > 0).all()


def test_only_response_tokens_get_rows(models):
    _, tokenizer = models["teacher"]
    table = collect_tokens(models["student"], models["teacher"], PAIRS, batch_size=3)
    for index, (_, response) in enumerate(PAIRS):
        rows = table[table["example_id"] == str(index)]
        # the response bytes and the EOS, nothing of the prompt or the padding
        assert rows["token_id"].tolist() == tokenizer.encode(response) + [tokenizer.eos_token_id]
        assert rows["position"].tolist() == list(range(len(response) + 1))


def test_a_model_compared_with_itself_agrees_everywhere(models):
    table = collect_tokens(models["teacher"], models["teacher"], PAIRS[:2])
    assert table["top1_agree"].all()
    np.testing.assert_allclose(table["forward_kl"], 0, atol=1e-6)
    np.testing.assert_allclose(table["reverse_kl"], 0, atol=1e-6)
    np.testing.assert_allclose(table["teacher_token_prob"], table["student_token_prob"], rtol=1e-6)


def test_examples_rows_cut_at_the_budget_get_no_eos_row(models):
    _, tokenizer = models["teacher"]
    examples = pd.DataFrame({"task": ["t", "t"], "example_id": ["a", "b"], "prompt": ["Hi", "Hi there"],
                             "output": ["abc", "xy"], "finish_reason": ["length", "eos"]})
    table = collect_tokens(models["student"], models["teacher"], examples)
    assert table.loc[table["example_id"] == "a", "token_id"].tolist() == tokenizer.encode("abc")
    assert table.loc[table["example_id"] == "b", "token_id"].tolist() == tokenizer.encode("xy") + [tokenizer.eos_token_id]
    assert (table["task"] == "t").all()


def test_records_are_compared_on_their_gold_response(models):
    _, tokenizer = models["teacher"]
    record = Record(id="r1", task="math", split="test", prompt="1 + 1?", answer="2", rationale="\n1 + 1 = 2.")
    table = collect_tokens(models["student"], models["teacher"], [record])
    assert table["example_id"].unique().tolist() == ["r1"] and (table["task"] == "math").all()
    assert table["token_id"].tolist() == tokenizer.encode("1 + 1 = 2.") + [tokenizer.eos_token_id]


def test_batch_size_does_not_change_the_table(models):
    a = collect_tokens(models["student"], models["teacher"], PAIRS, batch_size=1)
    b = collect_tokens(models["student"], models["teacher"], PAIRS, batch_size=3)
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-4)


def test_bad_sequences_are_named(models):
    with pytest.raises(ValueError, match=r"needs columns 'prompt' and 'output'.*missing \['output'\]"):
        collect_tokens(models["student"], models["teacher"], pd.DataFrame({"prompt": ["x"]}))
    twice = pd.DataFrame({"task": ["t", "t"], "example_id": ["a", "a"], "prompt": ["x", "x"], "output": ["1", "2"]})
    with pytest.raises(ValueError, match="holds example 'a' of task 't' twice"):
        collect_tokens(models["student"], models["teacher"], twice)
    with pytest.raises(TypeError, match="sequence 0 is a int"):
        collect_tokens(models["student"], models["teacher"], [3])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        collect_tokens(models["student"], models["teacher"], PAIRS, temperature=0)


def test_a_student_with_another_vocabulary_is_refused(models):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    model, tokenizer = models["student"]
    renamed = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str().replace('"<pad>"', '"<PAD>"'))
    other = PreTrainedTokenizerFast(tokenizer_object=renamed, pad_token="<PAD>", eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="tokenizers differ"):
        collect_tokens((model, other), models["teacher"], PAIRS[:1])


def test_compare_to_teacher_uses_the_teachers_outputs_and_writes_tokens_parquet(models, tmp_path):
    examples = pd.DataFrame({
        "model_id": ["teacher", "teacher", "student"], "task": ["t"] * 3, "example_id": ["a", "b", "a"],
        "sample": [0, 0, 0], "prompt": ["Hi", "2 + 2?", "Hi"], "output": ["yo", "4", "zzzz"],
        "finish_reason": ["eos", "eos", "eos"],
    })
    table = compare_to_teacher(models, examples, output_dir=tmp_path)
    assert (table["model_id"] == "student").all() and (table["teacher_id"] == "teacher").all()
    _, tokenizer = models["teacher"]
    assert table.loc[table["example_id"] == "a", "token_id"].tolist() == tokenizer.encode("yo") + [2]
    pd.testing.assert_frame_equal(read_tokens(tmp_path), table)
    with pytest.raises(ValueError, match=r"teacher id 'boss' is not among the models \['student', 'teacher'\]"):
        compare_to_teacher(models, examples, teacher_id="boss")
