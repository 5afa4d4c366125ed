"""Generation-based distillation on the tiny model: generated batches, gkd, distillm, minillm, seq_kd."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from kdlens.config import load_config
from kdlens.distill import distill
from kdlens.distill._generation import generate_continuations, prompt_ids, sample_from
from kdlens.distill._replay import ReplayBuffer
from kdlens.distill.distillm import AdaptiveSchedule
from kdlens.distill.minillm import policy_gradient_loss
from kdlens.distill.seq_kd import best_by_bleu

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20]]


@pytest.fixture(scope="module")
def tasks_file(arith_tasks):
    return arith_tasks


def config(tmp_path, tasks_file, name, **kw):
    base = dict(teacher="tiny", student="prune:1", tasks=[tasks_file], steps=3, batch_size=4, lr=1e-2, seed=0,
                device="cpu", output_dir=str(tmp_path / name))
    base.update(kw)
    return load_config(None, base)


def weights(run):
    from safetensors.torch import load_file

    return load_file(str(run.checkpoint_path / "model.safetensors"))


def naive_greedy(model, prompt, max_new_tokens, stops):
    """Reference decoder: one full forward pass per token, no cache, no batching, no padding."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            tok = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            out.append(tok)
            ids.append(tok)
            if tok in stops:
                break
    return out


# ---------------------------------------------------------------- generated batches


def test_greedy_batched_generation_matches_naive_decoding_and_masks_are_right(tiny):
    model, _ = tiny
    free = [naive_greedy(model, p, 6, stops=[]) for p in PROMPTS]
    stop = free[1][2]  # row 1 must stop after 3 tokens (or earlier if it appears before)
    expected = [naive_greedy(model, p, 6, stops=[stop]) for p in PROMPTS]
    assert len({len(e) for e in expected}) > 1, "setup: rows should end at different lengths"
    gen = generate_continuations(model, PROMPTS, max_new_tokens=6, pad_token_id=3, stop_token_ids=[stop], seed=0,
                                 do_sample=False)
    assert gen.continuations() == expected
    assert gen.lengths.tolist() == [len(e) for e in expected]
    assert gen.finished.tolist() == [e[-1] == stop for e in expected]
    width = gen.prompt_width
    assert width == 6 and gen.input_ids.shape == (3, 6 + max(len(e) for e in expected))
    for row, (prompt, cont) in enumerate(zip(PROMPTS, expected, strict=True)):
        pad_left = width - len(prompt)
        n = len(cont)
        mask = gen.attention_mask[row].tolist()
        assert mask == [0] * pad_left + [1] * (len(prompt) + n) + [0] * (gen.input_ids.shape[1] - width - n)
        labels = gen.labels[row].tolist()
        assert labels[:width] == [-100] * width  # the prompt is never a target
        assert labels[width:width + n] == cont  # every generated token, the stop token included
        assert labels[width + n:] == [-100] * (len(labels) - width - n)  # padding after EOS is not a target
        feature = gen.rows()[row]
        assert feature["input_ids"] == prompt + cont
        assert feature["labels"] == [-100] * len(prompt) + cont
        assert prompt_ids(feature) == prompt
    assert gen.n_generated == sum(len(e) for e in expected) and gen.tokens_per_s > 0


def test_generation_through_a_lora_wrapper_uses_the_kv_cache_correctly():
    """PEFT forwards **kwargs: the cache argument must be named as the wrapped model names it."""
    from kdlens.config import LoraConfig
    from kdlens.distill._lora import apply_lora
    from kdlens.models import tiny_model

    model, _ = tiny_model(seed=0)
    expected = [naive_greedy(model, p, 5, stops=[2]) for p in PROMPTS]
    wrapped = apply_lora(model, LoraConfig())  # fresh adapters are zero: the same function
    gen = generate_continuations(wrapped, PROMPTS, max_new_tokens=5, pad_token_id=3, stop_token_ids=[2], seed=0,
                                 do_sample=False, vocab_size=260)
    assert gen.continuations() == expected


def test_sampling_is_seeded_and_mixing_a_model_with_itself_changes_nothing(tiny):
    model, _ = tiny
    kw = dict(max_new_tokens=8, pad_token_id=3, stop_token_ids=[2], temperature=1.5)
    a = generate_continuations(model, PROMPTS, seed=7, **kw).continuations()
    assert generate_continuations(model, PROMPTS, seed=7, **kw).continuations() == a
    assert generate_continuations(model, PROMPTS, seed=8, **kw).continuations() != a
    # 0.5 * q + 0.5 * q == q: the same draws from the same generator
    assert generate_continuations(model, PROMPTS, seed=7, mix_model=model, mix=0.5, **kw).continuations() == a
    with pytest.raises(ValueError, match="mix_model"):
        generate_continuations(model, PROMPTS, seed=7, mix=0.2, **kw)
    with pytest.raises(ValueError, match="at least one token"):
        generate_continuations(model, [[1], []], seed=7, **kw)


def test_sample_from_is_inverse_transform_sampling_and_never_draws_a_zero_probability_token():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]] * 6)
    u = torch.tensor([0.0, 0.19, 0.21, 0.69, 0.71, 0.9999], dtype=torch.float64)
    assert sample_from(probs, u).tolist() == [0, 0, 2, 2, 3, 3]
    assert sample_from(probs * 7.0, u).tolist() == [0, 0, 2, 2, 3, 3]  # unnormalised weights: the same draws
    g = torch.Generator().manual_seed(0)
    draws = sample_from(probs[:1].expand(20000, 4), torch.rand(20000, generator=g, dtype=torch.float64))
    freq = torch.bincount(draws, minlength=4) / 20000
    assert freq[1] == 0 and torch.allclose(freq, probs[0], atol=0.015)


def test_sampled_continuations_are_the_inverse_transform_of_the_documented_uniform_stream(tiny):
    """Reference: one full forward pass per token and row; row r of step t uses the t-th batch of uniforms."""
    model, _ = tiny
    seed, steps, temperature, stop = 11, 6, 1.3, 2
    gen = generate_continuations(model, PROMPTS, max_new_tokens=steps, pad_token_id=3, stop_token_ids=[stop],
                                 seed=seed, temperature=temperature)
    g = torch.Generator().manual_seed(seed)
    uniforms = [torch.rand(len(PROMPTS), generator=g, dtype=torch.float64) for _ in range(steps)]
    expected = []
    with torch.no_grad():
        for row, prompt in enumerate(PROMPTS):
            ids, out = list(prompt), []
            for t in range(steps):
                probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1] / temperature, -1)
                token = int(sample_from(probs[None], uniforms[t][row:row + 1])[0])
                out.append(token)
                ids.append(token)
                if token == stop:
                    break
            expected.append(out)
    assert gen.continuations() == expected


def test_teacher_mixed_sampling_draws_from_the_mixture():
    """With mix = 1 every token comes from the mix model: here a model that only ever says token 9."""

    class Constant(torch.nn.Module):
        def __init__(self, token, vocab=12):
            super().__init__()
            self.token, self.vocab = token, vocab
            self.w = torch.nn.Linear(1, 1)

        def forward(self, input_ids, cache=None, **kw):
            logits = torch.full((*input_ids.shape, self.vocab), -1e4)
            logits[..., self.token] = 0.0
            return type("Out", (), {"logits": logits, "cache": None, "past_key_values": None})()

    student, teacher = Constant(4), Constant(9)
    kw = dict(max_new_tokens=5, pad_token_id=0, stop_token_ids=[11], seed=0, vocab_size=12)
    assert generate_continuations(student, [[1, 2]], **kw).continuations() == [[4] * 5]
    assert generate_continuations(student, [[1, 2]], mix_model=teacher, mix=0.9999, **kw).continuations() == [[9] * 5]
    both = generate_continuations(student, [[1]] * 64, mix_model=teacher, mix=0.5, **kw).continuations()
    share = sum(t == 9 for row in both for t in row) / (64 * 5)
    assert 0.4 < share < 0.6


# ---------------------------------------------------------------- gkd


def test_gkd_with_lambda_zero_is_word_kd(tmp_path, tasks_file):
    kw = dict(loss="jsd", loss_params={"beta": 0.5})
    word = distill(config(tmp_path, tasks_file, "word", method="word_kd", **kw))
    gkd = distill(config(tmp_path, tasks_file, "gkd0", method="gkd", gkd={"lambda_": 0.0}, **kw))
    a, b = weights(word), weights(gkd)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["batch_source"] for r in gkd.log()] == ["gold"] * 3
    assert [r["loss"] for r in gkd.log()] == [r["loss"] for r in word.log()]


def test_gkd_with_lambda_one_trains_only_on_student_samples(tmp_path, tasks_file):
    run = distill(config(tmp_path, tasks_file, "gkd1", method="gkd", loss="jsd", loss_params={"beta": 0.5},
                         gkd={"lambda_": 1.0, "max_new_tokens": 5}))
    rows = run.log()
    assert [r["batch_source"] for r in rows] == ["fresh"] * 3
    for r in rows:
        # the loss counted exactly the generated tokens (at most 5 per row), none of the gold ones
        assert r["target_tokens"] == r["gen_tokens"] <= 4 * 5
        assert r["gen_tokens_per_s"] > 0 and "ce" not in r and math.isfinite(r["loss"])
        assert 0.0 <= r["gkd_draw"] < 1.0


@pytest.mark.parametrize("teacher_generates", [False, True])
def test_gkd_step_samples_from_the_right_model_with_the_step_seed(tmp_path, tasks_file, tiny, teacher_generates):
    from kdlens.data import encode_for_training, load_task
    from kdlens.distill._methods import RunContext
    from kdlens.distill._onpolicy import step_seed
    from kdlens.distill.gkd import GKD
    from kdlens.models import prune_layers

    teacher, tok = tiny
    student = prune_layers(teacher, 1).train()
    cfg = config(tmp_path, tasks_file, "unused", method="gkd",
                 gkd={"lambda_": 1.0, "max_new_tokens": 4, "teacher_generates": teacher_generates})
    features = [encode_for_training(tok, r) for r in load_task(tasks_file, split="train")[:3]]
    ctx = RunContext(config=cfg, run=None, features=features, records=[], tokenizer=tok, teacher=teacher,
                     vocab_size=260, device=torch.device("cpu"))
    data = GKD().begin(ctx).prepare_step(step=5, total_steps=10, example_indices=[0, 1, 2], features=features,
                                         student=student)
    source_model = teacher if teacher_generates else student
    expected = generate_continuations(source_model, [prompt_ids(f) for f in features], max_new_tokens=4,
                                      pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                                      seed=step_seed(0, 5, "sample"))
    assert data.source == "fresh" and data.features == expected.rows()
    other = generate_continuations(student if teacher_generates else teacher, [prompt_ids(f) for f in features],
                                   max_new_tokens=4, pad_token_id=tok.pad_token_id,
                                   stop_token_ids=[tok.eos_token_id], seed=step_seed(0, 5, "sample"))
    assert other.rows() != data.features  # the two models do sample differently
    assert [prompt_ids(f) for f in data.features] == [prompt_ids(f) for f in features]
    assert student.training and not teacher.training  # decoding restores each model's train/eval mode


def test_gkd_loss_on_sampled_rows_equals_a_per_row_reference(tiny):
    """The on-policy loss counts exactly the sampled tokens, the stop token included and nothing after it.

    Reference: each row alone (no padding, no batch), teacher and student scored on prompt + sample,
    the generalized JSD written out in float64 at the positions that predict the sampled tokens.
    """
    from kdlens.config import DistillConfig
    from kdlens.data import collate
    from kdlens.distill._methods import StepContext, TeacherOutput
    from kdlens.distill._onpolicy import kd_loss
    from kdlens.losses import get_loss
    from kdlens.models import tiny_model

    # float64 models: the loss is then computed in float64 and can be compared tightly
    teacher = copy.deepcopy(tiny[0]).double()
    student = tiny_model(seed=1)[0].double()
    free = generate_continuations(student, PROMPTS, max_new_tokens=8, pad_token_id=3, stop_token_ids=[259], seed=1)
    stop = free.continuations()[1][2]  # row 1 stops after 3 tokens: rows of different lengths, some unfinished
    gen = generate_continuations(student, PROMPTS, max_new_tokens=8, pad_token_id=3, stop_token_ids=[stop], seed=1)
    assert gen.finished.any() and not gen.finished.all() and len(set(gen.lengths.tolist())) > 1
    rows = gen.rows()
    batch = collate(rows, pad_token_id=3, padding_side="right")
    width = batch["input_ids"].shape[1]
    for row, (prompt, cont) in enumerate(zip(PROMPTS, gen.continuations(), strict=True)):
        n = len(prompt) + len(cont)  # right padded, labels on the sample only, as a gold batch
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row].tolist() == [-100] * len(prompt) + cont + [-100] * (width - n)

    def online(b, example_indices, **kw):
        with torch.no_grad():
            return TeacherOutput(logits=teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1])

    cfg = DistillConfig(teacher="tiny", student="prune:1", tasks=["unused"], method="gkd", loss="jsd",
                        loss_params={"beta": 0.3}, output_dir="unused")
    n_tokens = gen.n_generated
    ctx = StepContext(student=student, batch=batch, example_indices=[0, 1, 2], n_tokens=n_tokens, config=cfg,
                      teacher=online, loss_fn=get_loss("jsd", beta=0.3), vocab_size=260, batch_source="fresh")
    parts = kd_loss(ctx)
    assert set(parts) == {"loss", "kd"}  # no cross-entropy on the student's own samples
    beta, total = 0.3, 0.0
    with torch.no_grad():
        for prompt, cont in zip(PROMPTS, gen.continuations(), strict=True):
            ids = torch.tensor([prompt + cont])
            lp = teacher(input_ids=ids).logits[0].log_softmax(-1)
            lq = student(input_ids=ids).logits[0].log_softmax(-1)
            at = slice(len(prompt) - 1, len(prompt) + len(cont) - 1)  # the logits that predict the sample
            p, q = lp[at].exp(), lq[at].exp()
            m = beta * p + (1 - beta) * q
            total += float((beta * p * (p / m).log() + (1 - beta) * q * (q / m).log()).sum())
    assert parts["loss"].item() == pytest.approx(total / n_tokens, rel=1e-9)
    # the default kd_path: the teacher's last hidden states and the two lm heads, the same per-row reference
    import dataclasses

    from accelerate import Accelerator

    from kdlens.distill._loop import _make_teacher_fn

    fused = kd_loss(dataclasses.replace(ctx, teacher=_make_teacher_fn(teacher, None, 260, Accelerator(cpu=True),
                                                                      fused=True)))
    assert set(fused) == {"loss", "kd"}
    assert fused["loss"].item() == pytest.approx(total / n_tokens, rel=1e-9)


# ---------------------------------------------------------------- distillm


def test_phi_follows_a_scripted_validation_loss_sequence():
    s = AdaptiveSchedule()
    losses = [2.0, 2.05, 2.2, 2.3, 2.1, 2.6, 2.69, 3.5]
    # rises >= 0.1 over the LAST value: 2.05->2.2 (+0.15), 2.2->2.3 (+0.1 exactly), 2.1->2.6, 2.69->3.5
    expected = [0.0, 0.0, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4]
    assert [(s.update(v), s.phi)[1] for v in losses] == pytest.approx(expected)
    capped = AdaptiveSchedule(increment=0.6)
    for v in (0.0, 1.0, 2.0, 3.0):
        capped.update(v)
    assert capped.phi == 1.0  # never above phi_max


@pytest.mark.parametrize(("phi", "r", "step", "full", "source"), [
    (0.0, 0.0, 0, False, "gold"),      # phi = 0: always gold
    (0.5, 0.2, 0, True, "fresh"),      # r < phi * (1 - 0/10)
    (0.5, 0.3, 5, True, "replay"),     # phi * (1 - 5/10) = 0.25 <= r < phi
    (0.5, 0.3, 5, False, "fresh"),     # buffer not full: fresh whenever r < phi
    (0.5, 0.6, 5, True, "gold"),       # r >= phi
    (1.0, 0.15, 9, True, "replay"),    # late in training (fresh share 0.1) most batches are replayed
])
def test_distillm_batch_choice(phi, r, step, full, source):
    s = AdaptiveSchedule(phi=phi)
    assert s.choose(r, step, 10, full) == source


def test_replay_buffer_capacity_and_fifo_eviction():
    buf = ReplayBuffer(capacity=3)
    buf.push([{"input_ids": [i], "labels": [i]} for i in range(5)])
    assert len(buf) == 3 and buf.full and buf.pushed == 5
    assert sorted(x["input_ids"][0] for x in buf.sample(3, torch.Generator().manual_seed(0))) == [2, 3, 4]
    twice = [buf.sample(2, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert twice[0] == twice[1] and twice[0][0] != twice[0][1]  # seeded, without replacement
    copy = ReplayBuffer(capacity=3)
    copy.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    assert copy.state_dict() == buf.state_dict()
    with pytest.raises(ValueError, match="cannot sample 4"):
        buf.sample(4, torch.Generator())
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=0)


def test_distillm_run_follows_the_schedule_and_logs_phi_and_sources(tmp_path, tasks_file, monkeypatch):
    from kdlens.distill import distillm

    scripted = iter([1.0, 1.2, 1.4, 1.4, 1.4, 1.4])  # phi: 0, .5, 1, 1, 1, 1
    monkeypatch.setattr(distillm._DistiLLMRun, "validation_loss", lambda self, student, step: next(scripted))
    run = distill(config(tmp_path, tasks_file, "distillm", method="distillm", loss="skew_forward_kl", steps=6,
                         distillm={"val_size": 4, "eval_every": 1, "phi_increment": 0.5, "replay_capacity": 4,
                                   "max_new_tokens": 5}))
    rows = run.log()
    assert [r["phi"] for r in rows] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert [r["val_loss"] for r in rows] == [1.0, 1.2, 1.4, 1.4, 1.4, 1.4]
    check, full = AdaptiveSchedule(), False
    for step, r in enumerate(rows):
        check.phi = r["phi"]
        assert r["batch_source"] == check.choose(r["distillm_draw"], step, 6, full)
        full = full or r["batch_source"] == "fresh"  # one fresh batch of 4 fills a buffer of 4
        assert r["replay_size"] == (4 if full else 0)
        assert ("gen_tokens_per_s" in r) == (r["batch_source"] == "fresh")
    assert {r["batch_source"] for r in rows} == {"gold", "fresh", "replay"}
    assert run.manifest()["n_examples"] == 12  # 4 of the 16 examples were held out for validation


def test_distillm_killed_run_resumes_to_the_same_weights(tmp_path, tasks_file):
    kw = dict(method="distillm", loss="skew_reverse_kl", steps=4, save_every=2,
              distillm={"val_size": 4, "eval_every": 1, "threshold": 0.0, "phi_increment": 0.5,
                        "replay_capacity": 4, "max_new_tokens": 4})
    full = distill(config(tmp_path, tasks_file, "full", **kw))

    def kill(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    cfg = config(tmp_path, tasks_file, "killed", **kw)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, callbacks=[kill])
    resumed = distill(cfg)
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("phi", "batch_source", "loss", "replay_size")
    assert [[r[k] for k in keys] for r in resumed.log()] == [[r[k] for k in keys] for r in full.log()]


# ---------------------------------------------------------------- minillm


def test_policy_gradient_loss_on_a_hand_built_case():
    ln = math.log
    # one row, two sampled tokens y = (0, 1), vocabulary of 2
    student = torch.tensor([[[0.0, 0.0], [ln(3.0), 0.0]]], requires_grad=True)  # q = (.5, .5), (.75, .25)
    teacher = torch.tensor([[[ln(3.0), 0.0], [0.0, 0.0]]])  # p = (.75, .25), (.5, .5)
    tokens, mask = torch.tensor([[0, 1]]), torch.tensor([[True, True]])
    parts = policy_gradient_loss(student, teacher, tokens, mask, mix=0.0)
    # rewards r_t = log p(y_t) - log q(y_t)
    assert parts["reward"][0].tolist() == pytest.approx([ln(0.75 / 0.5), ln(0.5 / 0.25)])
    # long-term term: -R_{t+1} log q(y_t), R_1 = mean of later rewards = log 2, R_2 = 0
    assert parts["pg"][0].tolist() == pytest.approx([-ln(2.0) * ln(0.5), 0.0])
    # single-step term: full-vocabulary KL(q_t || p_t)
    kl0 = 0.5 * ln(0.5 / 0.75) + 0.5 * ln(0.5 / 0.25)
    kl1 = 0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.5)
    assert parts["single"][0].tolist() == pytest.approx([kl0, kl1])
    assert float(parts["loss"].sum()) == pytest.approx(ln(2.0) ** 2 + kl0 + kl1)
    # sign: later tokens are rewarded (R_1 > 0), so descending the pg term raises q(y_0)
    parts["pg"].sum().backward()
    assert student.grad[0, 0].tolist() == pytest.approx([-ln(2.0) * 0.5, ln(2.0) * 0.5])
    assert student.grad[0, 1].tolist() == [0.0, 0.0]  # the last token has no later reward
    # importance weights of teacher-mixed sampling: q / (0.2 p + 0.8 q)
    mixed = policy_gradient_loss(student, teacher, tokens, mask, mix=0.2)
    assert mixed["weight"][0].tolist() == pytest.approx([0.5 / (0.2 * 0.75 + 0.8 * 0.5),
                                                         0.25 / (0.2 * 0.5 + 0.8 * 0.25)])
    # masked positions contribute nothing, and are not "later tokens" either
    masked = policy_gradient_loss(student, teacher, tokens, torch.tensor([[True, False]]), mix=0.0)
    assert masked["loss"][0].tolist() == pytest.approx([kl0, 0.0])


def test_policy_gradient_sign_flips_when_later_tokens_are_penalised():
    student = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    teacher = torch.tensor([[[0.0, 0.0], [-5.0, 5.0]]])  # the teacher hates y_1 = 0
    parts = policy_gradient_loss(student, teacher, torch.tensor([[0, 0]]), torch.ones(1, 2, dtype=torch.bool))
    assert float(parts["reward"][0, 1]) < 0
    parts["pg"].sum().backward()
    assert float(student.grad[0, 0, 0]) > 0  # descending lowers q(y_0) that led to the bad continuation


def test_minillm_pg_and_token_forms_run_and_need_reverse_kl(tmp_path, tasks_file):
    pg = distill(config(tmp_path, tasks_file, "pg", method="minillm", loss="reverse_kl", steps=2,
                        minillm={"max_new_tokens": 4}))
    for r in pg.log():
        assert r["batch_source"] == "fresh" and r["target_tokens"] == r["gen_tokens"]
        assert r["loss"] == pytest.approx(r["pg"] + r["single"], abs=1e-6) and r["single"] >= 0
    token = distill(config(tmp_path, tasks_file, "tok", method="minillm", loss="reverse_kl", steps=2,
                           minillm={"form": "token"}))
    word = distill(config(tmp_path, tasks_file, "wrkl", method="word_kd", loss="reverse_kl", steps=2))
    assert [r["loss"] for r in token.log()] == [r["loss"] for r in word.log()]
    # a method that fixes its loss sets it; another loss is an error naming the right one
    assert config(tmp_path, tasks_file, "default", method="minillm").loss == "reverse_kl"
    with pytest.raises(ValueError, match="loss=reverse_kl"):
        config(tmp_path, tasks_file, "bad", method="minillm", loss="forward_kl")
    with pytest.raises(ValueError, match="teacher_source=online"):
        config(tmp_path, tasks_file, "bad", method="gkd", teacher_source="cache")


# ---------------------------------------------------------------- seq_kd


def test_best_by_bleu_picks_the_candidate_closest_to_the_gold_answer():
    best, scores = best_by_bleu(["the cat sat", "3 plus 4 is 7 . The answer is 7", "7"], "3 plus 4 is 7. The answer is 7")
    assert best == 1 and scores[1] == max(scores) and scores[1] > 50
    assert best_by_bleu(["a b c", "a b c"], "x y z")[0] == 0  # ties go to the higher-ranked beam


def test_seq_kd_trains_on_cached_greedy_teacher_outputs_and_resumes_from_the_cache(tmp_path, tasks_file, tiny,
                                                                                   monkeypatch):
    from kdlens.distill import seq_kd

    run = distill(config(tmp_path, tasks_file, "seq", method="seq_kd", steps=2,
                         seq_kd={"num_beams": 1, "max_new_tokens": 6}))
    lines = [json.loads(x) for x in (run.path / seq_kd.CACHE_NAME).read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(16))
    teacher, tok = tiny  # the run's teacher is the tiny model with seed 0
    from kdlens.data import encode_for_training, load_task

    records = load_task(tasks_file, split="train")
    for line, record in zip(lines[:4], records, strict=False):
        prompt = prompt_ids(encode_for_training(tok, record))
        assert line["tokens"] == naive_greedy(teacher, prompt, 6, stops=[tok.eos_token_id])
    # a second start reads the cache instead of decoding again
    monkeypatch.setattr(seq_kd, "_decode_batch", lambda *a, **k: pytest.fail("decoded again"))
    cfg = config(tmp_path, tasks_file, "seq", method="seq_kd", steps=2, seq_kd={"num_beams": 1, "max_new_tokens": 6})
    from kdlens.distill._methods import RunContext

    ctx = RunContext(config=cfg, run=run, features=[encode_for_training(tok, r) for r in records], records=records,
                     tokenizer=tok, teacher=teacher, vocab_size=260, device=torch.device("cpu"))
    features = seq_kd.decode_training_set(ctx)
    assert [f["labels"][-len(x["tokens"]):] for f, x in zip(features, lines, strict=True)] == \
        [x["tokens"] for x in lines]


def test_seq_kd_interpolated_trains_on_the_best_bleu_beam(tmp_path, tasks_file):
    from kdlens.distill import seq_kd

    run = distill(config(tmp_path, tasks_file, "inter", method="seq_kd", steps=1,
                         seq_kd={"num_beams": 3, "interpolated": True, "max_new_tokens": 6}))
    for line in map(json.loads, (run.path / seq_kd.CACHE_NAME).read_text().splitlines()):
        assert len(line["bleu"]) == 3 and line["bleu"][line["chosen"]] == max(line["bleu"])
    with pytest.raises(ValueError, match="num_beams >= 2"):
        config(tmp_path, tasks_file, "bad", method="seq_kd", seq_kd={"interpolated": True, "num_beams": 1})


def test_distillm_default_validation_split_fits_small_data():
    """The default held out 16 examples, so 8 examples failed (issue 12): now min(16, n // 5), at most n - batch."""
    from kdlens.distill.distillm import _holdout

    assert [len(_holdout(n, None, 0, 4)[1]) for n in (8, 40, 100, 1000)] == [1, 8, 16, 16]
    train, val = _holdout(8, None, 0, 4)
    assert sorted(train + val) == list(range(8)) and len(train) >= 4
    with pytest.raises(ValueError, match="leave none: .*distillm.val_size=0"):
        _holdout(8, None, 0, 8)
    assert _holdout(8, 0, 0, 8) == (list(range(8)), [])
