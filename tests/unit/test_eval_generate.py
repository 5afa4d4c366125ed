"""The decoding loop and gold likelihood: references are naive loops, HF generate and scripted models."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from test_eval_doubles import FixedLM, ScriptedLM, scripted_logprob, varied_tiny

from kdlens.eval import Decoding, generate, gold_nll
from kdlens.eval._generate import sample_seed, stop_token_ids

PROMPTS = ["What is 2 + 3?", "Hi", "A much longer prompt, so that the batch needs left padding: 12 * 7 = ?"]


@torch.no_grad()
def _naive_greedy(model, prompt_ids, max_new_tokens, stops):
    """Full forward pass over the growing sequence each step: no cache, no padding, no batching."""
    seq, tokens, logprobs = list(prompt_ids), [], []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1].double()
        token = int(logits.argmax())
        tokens.append(token)
        logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        seq.append(token)
        if token in stops:
            break
    return tokens, logprobs


@pytest.fixture(scope="module")
def varied():
    return varied_tiny(0)


@pytest.fixture(scope="module")
def prompt_ids(varied):
    _, tokenizer = varied
    return [tokenizer.encode(p) for p in PROMPTS]


def test_decoding_validates_its_fields():
    with pytest.raises(ValueError, match="unknown decoding strategy 'beam'; known: greedy, sample"):
        Decoding("beam")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        Decoding("sample", temperature=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        Decoding("sample", top_p=1.5)
    with pytest.raises(ValueError, match="use strategy='sample' for num_samples > 1"):
        Decoding("greedy", num_samples=2)
    with pytest.raises(ValueError, match=r"unknown decoding fields \['topp'\]"):
        Decoding.coerce({"strategy": "sample", "topp": 0.9})
    assert Decoding.coerce({"strategy": "sample", "seed": 3}) == Decoding("sample", seed=3)
    assert Decoding.coerce("greedy") == Decoding()


def test_batched_left_padded_greedy_equals_naive_unbatched_greedy(varied, prompt_ids):
    model, tokenizer = varied
    stops = set(stop_token_ids(model, tokenizer))
    batched = generate(model, tokenizer, prompt_ids, max_new_tokens=12)
    for ids, gen in zip(prompt_ids, batched, strict=True):
        tokens, logprobs = _naive_greedy(model, ids, 12, stops)
        assert gen.token_ids == tokens
        assert gen.logprobs == pytest.approx(logprobs, abs=1e-4)
        assert gen.mean_logprob == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-4)
        assert gen.text == tokenizer.decode(tokens, skip_special_tokens=True)
        alone = generate(model, tokenizer, [ids], max_new_tokens=12)[0]
        assert alone.token_ids == gen.token_ids


def test_greedy_matches_transformers_generate(varied, prompt_ids):
    model, tokenizer = varied
    ids = prompt_ids[0]
    reference = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               do_sample=False, max_new_tokens=10)[0, len(ids):].tolist()
    assert generate(model, tokenizer, [ids], max_new_tokens=10)[0].token_ids == reference


def test_stop_token_ends_a_row_and_counts_while_other_rows_run_to_length(tiny):
    _, tokenizer = tiny  # the tiny tokenizer: EOS id 2, pad id 3
    eos = tokenizer.eos_token_id
    text = [tokenizer.encode(t) for t in ("12", "a b")]
    scripts = {(10, 11): text[0] + [eos], (12,): text[1] * 5}
    model = ScriptedLM(scripts, vocab_size=260)
    short, long_ = generate(model, tokenizer, [[10, 11], [12]], max_new_tokens=6)
    assert short.finish_reason == "eos" and short.token_ids == text[0] + [eos]
    assert short.text == "12"  # the stop token is not part of the text
    assert long_.finish_reason == "length" and len(long_.token_ids) == 6 and long_.text == "a ba b"
    assert short.mean_logprob == pytest.approx(scripted_logprob(10.0, 260), abs=1e-6)
    assert model.prompts_seen == [(10, 11), (12,)]  # padding never reached the model as prompt tokens


def test_stop_at_the_last_allowed_token_is_eos(tiny):
    _, tokenizer = tiny
    model = ScriptedLM({(10,): [20, 21, tokenizer.eos_token_id]}, vocab_size=260)
    gen = generate(model, tokenizer, [[10]], max_new_tokens=3)[0]
    assert gen.finish_reason == "eos" and len(gen.token_ids) == 3


def test_sampling_depends_only_on_each_rows_seed(varied, prompt_ids):
    model, tokenizer = varied
    decoding = Decoding("sample", temperature=1.5, top_p=0.95)
    seeds = [11, 22, 33]
    together = generate(model, tokenizer, prompt_ids, max_new_tokens=10, decoding=decoding, seeds=seeds)
    reversed_ = generate(model, tokenizer, prompt_ids[::-1], max_new_tokens=10, decoding=decoding, seeds=seeds[::-1])
    for i, ids in enumerate(prompt_ids):
        alone = generate(model, tokenizer, [ids], max_new_tokens=10, decoding=decoding, seeds=[seeds[i]])[0]
        assert together[i].token_ids == alone.token_ids == reversed_[2 - i].token_ids
    other = generate(model, tokenizer, prompt_ids, max_new_tokens=10, decoding=decoding, seeds=[1, 2, 3])
    assert [g.token_ids for g in other] != [g.token_ids for g in together]


def test_sampling_needs_one_seed_per_prompt(varied, prompt_ids):
    model, tokenizer = varied
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(model, tokenizer, prompt_ids, max_new_tokens=2, decoding="sample", seeds=[1])


def test_samples_follow_the_tempered_distribution(tiny):
    _, tokenizer = tiny
    logits = torch.full((260,), -30.0)
    logits[[40, 41, 42, 43]] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 3000
    gens = generate(FixedLM(logits), tokenizer, [[5]] * n, max_new_tokens=1,
                    decoding=Decoding("sample", temperature=2.0), seeds=range(n))
    counts = torch.bincount(torch.tensor([g.token_ids[0] for g in gens]), minlength=260)[40:44]
    expected = torch.softmax(logits / 2.0, -1)[40:44].double() * n
    assert int(counts.sum()) == n
    assert stats.chisquare(counts.numpy(), expected.numpy() * n / expected.sum().item()).pvalue > 1e-3
    # mean_logprob is the model's own (temperature-1) likelihood of the drawn token
    lp = torch.log_softmax(logits.double(), -1)
    assert gens[0].logprobs[0] == pytest.approx(float(lp[gens[0].token_ids[0]]), abs=1e-5)


def test_top_p_samples_only_from_the_nucleus(tiny):
    _, tokenizer = tiny
    logits = torch.full((260,), -30.0)
    logits[[40, 41, 42]] = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    gens = generate(FixedLM(logits), tokenizer, [[5]] * 2000, max_new_tokens=1,
                    decoding=Decoding("sample", top_p=0.7), seeds=range(2000))
    tokens = torch.tensor([g.token_ids[0] for g in gens])
    # the nucleus for 0.7 is {40, 41} (0.5 < 0.7 <= 0.8), renormalized to 5/8 and 3/8
    assert set(tokens.tolist()) == {40, 41}
    share = (tokens == 40).double().mean().item()
    assert abs(share - 5 / 8) < 4 * math.sqrt(5 / 8 * 3 / 8 / 2000)


def test_sample_seed_is_stable_and_ignores_nothing_it_is_given():
    base = sample_seed(0, "SVAMP", "SVAMP-3", 1)
    assert base == sample_seed(0, "SVAMP", "SVAMP-3", 1) and 0 <= base < 2**63
    assert len({base, sample_seed(1, "SVAMP", "SVAMP-3", 1), sample_seed(0, "GSM8K", "SVAMP-3", 1),
                sample_seed(0, "SVAMP", "SVAMP-4", 1), sample_seed(0, "SVAMP", "SVAMP-3", 2)}) == 5


def test_generate_rejects_bad_arguments(varied, prompt_ids):
    model, tokenizer = varied
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, tokenizer, prompt_ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, tokenizer, [[]], max_new_tokens=1)
    assert generate(model, tokenizer, [], max_new_tokens=1) == []


@torch.no_grad()
def test_gold_nll_equals_a_naive_prefix_by_prefix_loop(varied):
    from kdlens.data import Record, encode_for_training

    model, tokenizer = varied
    records = [
        Record(id="a", task="t", split="test", prompt="What is 2 + 3?", answer="5", rationale="2 + 3 = 5. The answer is 5."),
        Record(id="b", task="t", split="test", prompt="Hi", answer="1", rationale=None),
        Record(id="c", task="t", split="test", prompt="Count: 1, 2", answer="3", rationale="Next is 3."),
    ]
    got = gold_nll(model, tokenizer, records, batch_size=2)  # a and c share a right-padded batch
    assert math.isnan(got[1])
    for i in (0, 2):
        enc = encode_for_training(tokenizer, records[i], max_length=None)
        ids, labels = enc["input_ids"], enc["labels"]
        nlls = []
        for t in range(1, len(ids)):
            if labels[t] == -100:
                continue
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
            nlls.append(-float(torch.log_softmax(logits, -1)[ids[t]]))
        assert len(nlls) == sum(label != -100 for label in labels) and nlls
        assert got[i] == pytest.approx(sum(nlls) / len(nlls), abs=1e-4)
