"""The fused KD path (kd_path): the same losses and gradients as the plain path, without [B, T, V] logits.

Each equality test compares the fused computation (final hidden states and lm heads, a chunk of
tokens at a time) with the plain one (full logits through kdlens.teacher.kd_token_loss and the gold
CE), so a wrong noise row, a temperature applied on one side, a lost tau^2, a CE from the wrong
logits or a gradient that misses the head would each show.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kdlens.distill import METHODS, StepContext, distill
from kdlens.losses import LOSSES, get_loss
from kdlens.losses._fused import LMHead
from kdlens.teacher import NoiseKey, fused_kd_token_loss, kd_token_loss

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NAMES = sorted(LOSSES)


def _tensors(seed=0, b=3, t=7, h_s=6, h_t=5, vocab=11, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(b, t, h_s, generator=g, dtype=dtype).requires_grad_()
    ws = (torch.randn(vocab, h_s, generator=g, dtype=dtype) * 0.8).requires_grad_()
    bs = (torch.randn(vocab, generator=g, dtype=dtype) * 0.2).requires_grad_()
    ht = torch.randn(b, t, h_t, generator=g, dtype=dtype)
    wt = torch.randn(vocab, h_t, generator=g, dtype=dtype) * 0.8
    bt = torch.randn(vocab, generator=g, dtype=dtype) * 0.2
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[0, 0] = False
    targets = torch.randint(0, vocab, (b, t), generator=g)
    return hs, ws, bs, ht, wt, bt, mask, targets


def _plain(fn, hs, ws, bs, ht, wt, bt, mask, targets, *, kd_weight, ce_weight, vocab=None, softcap=None, **signal):
    cut = slice(None) if vocab is None else slice(0, vocab)
    zs, zt = hs @ ws[cut].T + bs[cut], ht @ wt[cut].T + bt[cut]
    if softcap is not None:
        zs, zt = torch.tanh(zs / softcap) * softcap, torch.tanh(zt / softcap) * softcap
    kd = kd_token_loss(fn, zs, zt, mask=mask, **signal)
    ce = F.cross_entropy(zs.transpose(1, 2), targets, reduction="none") * mask
    return kd_weight * kd.sum() + ce_weight * ce.sum(), kd, ce


def _grads(value, tensors):
    return torch.autograd.grad(value, tensors)


@pytest.mark.parametrize("name", NAMES)
def test_fused_kd_equals_the_plain_path_with_noise_tau_tau_squared_mask_and_gold_ce(name):
    hs, ws, bs, ht, wt, bt, mask, targets = _tensors(seed=len(name))
    fn = get_loss(name)
    signal = dict(temperature=1.7, scale_by_temperature_squared=True, sigma=0.8, noise=NoiseKey(3, 5, [10, 2, 7]))
    n = int(mask.sum())
    weights = dict(kd_weight=0.6 / n, ce_weight=0.4 / n)
    want, kd, ce = _plain(fn, hs, ws, bs, ht, wt, bt, mask, targets, **weights, **signal)
    got = fused_kd_token_loss(fn, hs, LMHead(ws, bs), ht, LMHead(wt, bt), mask=mask, targets=targets, chunk_size=4,
                              **weights, **signal)
    torch.testing.assert_close(got.loss, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.kd, kd.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.ce, ce.detach(), rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads(got.loss, [hs, ws, bs]), _grads(want, [hs, ws, bs]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_noise_inside_the_chunks_is_the_rows_own_draw():
    """sigma changes the loss, the draw is keyed by (seed, step, example, position), and chunking does not move it."""
    hs, ws, bs, ht, wt, bt, mask, targets = _tensors(seed=1)
    fn = get_loss("forward_kl")
    key = NoiseKey(0, 4, [1, 2, 3])

    def fused(sigma, noise, chunk):
        return fused_kd_token_loss(fn, hs, LMHead(ws, bs), ht, LMHead(wt, bt), mask=mask, sigma=sigma,
                                   noise=noise, chunk_size=chunk).kd

    base = fused(1.5, key, 3)
    assert not torch.allclose(base, fused(0.0, key, 3))
    assert not torch.allclose(base, fused(1.5, NoiseKey(0, 5, [1, 2, 3]), 3))  # another step, another draw
    torch.testing.assert_close(fused(1.5, key, 1), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(fused(1.5, key, 100), base, rtol=1e-12, atol=0)
    # row 1 of the batch is example 2: the same example at row 0 of another batch draws the same noise
    moved = fused_kd_token_loss(fn, hs[1:2], LMHead(ws, bs), ht[1:2], LMHead(wt, bt), mask=mask[1:2], sigma=1.5,
                                noise=NoiseKey(0, 4, [2]), chunk_size=2).kd
    torch.testing.assert_close(moved[0], base[1], rtol=1e-12, atol=0)


def test_vocabulary_padding_rows_are_cut_and_softcapping_is_applied():
    hs, ws, bs, ht, wt, bt, mask, targets = _tensors(seed=2, vocab=13)
    fn = get_loss("jsd", beta=0.3)
    n = int(mask.sum())
    want, kd, _ = _plain(fn, hs, ws, bs, ht, wt, bt, mask, targets.clamp_max(9), kd_weight=1 / n, ce_weight=0.0,
                         vocab=10, softcap=2.5, temperature=2.0)
    got = fused_kd_token_loss(fn, hs, LMHead(ws, bs, vocab=10, softcap=2.5), ht, LMHead(wt, bt, vocab=10, softcap=2.5),
                              mask=mask, temperature=2.0, kd_weight=1 / n, chunk_size=5)
    torch.testing.assert_close(got.loss, want, rtol=1e-10, atol=1e-12)
    g_fused, g_plain = _grads(got.loss, [hs, ws, bs]), _grads(want, [hs, ws, bs])
    for a, b in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert (g_fused[1][10:] == 0).all() and g_fused[1][:10].abs().sum() > 0  # padding rows get no gradient


def test_backward_twice_is_refused_and_no_grad_gives_the_values():
    hs, ws, bs, ht, wt, bt, mask, targets = _tensors(seed=3)
    fn = get_loss("forward_kl")
    got = fused_kd_token_loss(fn, hs, LMHead(ws, bs), ht, LMHead(wt, bt), mask=mask)
    got.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        got.loss.backward()
    with torch.no_grad():
        again = fused_kd_token_loss(fn, hs, LMHead(ws, bs), ht, LMHead(wt, bt), mask=mask)
    torch.testing.assert_close(again.loss, got.loss.detach())
    assert not again.loss.requires_grad


# ---------------------------------------------------------------- the methods, plain vs fused teacher signal


def _models(arch="llama", **overrides):
    from kdlens.models import prune_layers, tiny_model

    teacher, _ = tiny_model(seed=0, arch=arch, num_hidden_layers=3, **overrides)
    teacher.requires_grad_(False)
    student = prune_layers(teacher, 2)
    student.requires_grad_(True)
    return teacher.double(), student.double().eval()  # eval: no dropout, float64: tight comparisons


def _batch(seed=0, b=4, t=24, pad_to=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 260, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :9] = -100
    attention = torch.ones_like(ids)
    for row, length in enumerate([t, t - 5, t - 2, t - 9][:b]):  # right padding of different lengths
        ids[row, length:], labels[row, length:], attention[row, length:] = 0, -100, 0
    if pad_to is not None:  # the same rows with more padding columns
        extra = (0, pad_to - t)
        ids, labels, attention = F.pad(ids, extra), F.pad(labels, extra, value=-100), F.pad(attention, extra)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def _cfg(method, **kw):
    from kdlens.config import DistillConfig

    return DistillConfig.from_dict({"teacher": "tiny", "student": "prune:2", "tasks": ["x"], "method": method, **kw})


def _step(cfg, teacher, student, batch, *, fused, rows=(11, 3, 8, 5), n_tokens=None, source="gold", vocab=260):
    from accelerate import Accelerator

    from kdlens.distill._loop import _make_teacher_fn

    student.zero_grad(set_to_none=True)
    n = int((batch["labels"][:, 1:] != -100).sum()) if n_tokens is None else n_tokens
    ctx = StepContext(student=student, batch=batch, example_indices=list(rows), n_tokens=n, config=cfg,
                      teacher=_make_teacher_fn(teacher, None, vocab, Accelerator(cpu=True), fused=fused),
                      loss_fn=get_loss(cfg.loss, **cfg.loss_params), vocab_size=vocab, step=2, batch_source=source)
    parts = METHODS[cfg.method](ctx)
    parts["loss"].backward()
    grads = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in parts.items()}, grads


def _assert_same(plain, fused, rtol=1e-9, atol=1e-11):
    assert plain[0].keys() == fused[0].keys()
    for key in plain[0]:
        torch.testing.assert_close(fused[0][key], plain[0][key], rtol=rtol, atol=atol, msg=key)
    assert plain[1].keys() == fused[1].keys() and plain[1]
    for key in plain[1]:
        torch.testing.assert_close(fused[1][key], plain[1][key], rtol=rtol, atol=atol, msg=key)


SIGNAL = dict(sigma=0.7, temperature=2.0, scale_by_temperature_squared=True)
METHOD_CASES = {
    "word_kd": (dict(method="word_kd", loss="jsd", loss_params={"beta": 0.3}, kd_weight=0.6), "gold"),
    "gkd_fresh": (dict(method="gkd", loss="reverse_kl"), "fresh"),
    "gkd_gold": (dict(method="gkd", loss="skew_forward_kl", kd_weight=0.3), "gold"),
    "distillm_replay": (dict(method="distillm", loss="skew_reverse_kl"), "replay"),
    "minillm_token": (dict(method="minillm", minillm={"form": "token"}, kd_weight=0.5), "gold"),
    "minillm_pg": (dict(method="minillm"), "fresh"),
}


@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_every_method_with_a_fused_term_gives_the_plain_loss_parts_and_gradients(case):
    kw, source = METHOD_CASES[case]
    cfg = _cfg(**kw, **SIGNAL)
    teacher, student = _models()
    batch = _batch()
    plain = _step(cfg, teacher, student, batch, fused=False, source=source)
    fused = _step(cfg, teacher, student, batch, fused=True, source=source)
    # MiniLLM's policy-gradient terms are computed in float32 (policy_gradient_loss upcasts to float32 only)
    _assert_same(plain, fused, **({"rtol": 1e-5, "atol": 1e-7} if case == "minillm_pg" else {}))
    if source != "gold" or case == "minillm_pg":
        assert "ce" not in fused[0]  # generated rows: the KD term alone
    else:
        assert fused[0]["ce"] > 0


def test_feature_kd_logit_term_is_fused_and_its_feature_terms_unchanged():
    cfg = _cfg("feature_kd", feature_weight=0.5, feature={"hidden": True, "attention": True}, kd_weight=0.7, **SIGNAL)
    teacher, student = _models()
    teacher.set_attn_implementation("eager")
    student.set_attn_implementation("eager")
    batch = _batch(seed=1)
    _assert_same(_step(cfg, teacher, student, batch, fused=False), _step(cfg, teacher, student, batch, fused=True))


@pytest.mark.parametrize("arch,overrides", [("qwen2", {}), ("gemma3", {"final_logit_softcapping": 3.0})])
def test_other_architectures_softcapping_and_a_cut_vocabulary(arch, overrides):
    cfg = _cfg("word_kd", kd_weight=0.5, **SIGNAL)
    teacher, student = _models(arch, **overrides)
    batch = _batch(seed=2)
    batch["labels"] = batch["labels"].clamp_max(249)
    kw = dict(vocab=250)  # the common width of two heads with padding rows
    _assert_same(_step(cfg, teacher, student, batch, fused=False, **kw),
                 _step(cfg, teacher, student, batch, fused=True, **kw))


def test_fused_steps_are_invariant_to_gradient_accumulation_and_padding():
    cfg = _cfg("word_kd", kd_weight=0.8, **SIGNAL)
    teacher, student = _models()
    batch, rows = _batch(seed=3), (11, 3, 8, 5)
    n = int((batch["labels"][:, 1:] != -100).sum())
    whole = _step(cfg, teacher, student, batch, fused=True, rows=rows)
    halves = [_step(cfg, teacher, student, {k: v[i:i + 2] for k, v in batch.items()}, fused=True, rows=rows[i:i + 2],
                    n_tokens=n) for i in (0, 2)]
    for key in ("loss", "kd", "ce"):
        torch.testing.assert_close(halves[0][0][key] + halves[1][0][key], whole[0][key], rtol=1e-10, atol=1e-12)
    for key in whole[1]:
        torch.testing.assert_close(halves[0][1][key] + halves[1][1][key], whole[1][key], rtol=1e-9, atol=1e-12)
    padded = _step(cfg, teacher, student, _batch(seed=3, pad_to=40), fused=True, rows=rows)
    _assert_same(whole, padded)


def test_bf16_autocast_fused_stays_close_to_plain_and_runs_its_head_under_autocast():
    from kdlens.distill._heads import final_hidden

    cfg = _cfg("word_kd", kd_weight=0.5, **SIGNAL)
    teacher, student = _models()
    teacher, student = teacher.float(), student.float()
    batch = _batch(seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, hidden, amp = final_hidden(student, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        plain = _step(cfg, teacher, student, batch, fused=False)
        fused = _step(cfg, teacher, student, batch, fused=True)
    assert amp == ("cpu", torch.bfloat16) and hidden.shape == (4, 24, 64)
    for key in plain[0]:
        torch.testing.assert_close(fused[0][key], plain[0][key], rtol=2e-2, atol=1e-3)
    cos = F.cosine_similarity(torch.cat([g.flatten() for g in fused[1].values()]),
                              torch.cat([g.flatten() for g in plain[1].values()]), dim=0)
    assert cos > 0.99


# ---------------------------------------------------------------- resolving the path


def _resolve(cfg, student, teacher, cross=False):
    from kdlens.distill._heads import resolve_kd_path

    return resolve_kd_path(cfg, METHODS[cfg.method], student=student, teacher=teacher, vocab=260,
                           cross_tokenizer=cross, sample_ids=list(range(5, 37)))


def test_heads_that_are_not_a_plain_linear_of_the_hidden_states_fall_back_named():
    from kdlens.config import LoraConfig
    from kdlens.distill._lora import apply_lora

    teacher, student = _models()
    auto = _cfg("word_kd")
    assert _resolve(auto, student, teacher)["path"] == "fused"
    # a logit scale the head check does not know: the model's logits are 2 x lm_head(h)
    handle = teacher.lm_head.register_forward_hook(lambda module, args, out: out * 2)
    try:
        got = _resolve(auto, student, teacher)
        assert got["path"] == "plain" and "teacher's logits are not its lm head" in got["why"]
        with pytest.raises(ValueError, match="kd_path=fused does not apply: the teacher's logits"):
            _resolve(_cfg("word_kd", kd_path="fused"), student, teacher)
    finally:
        handle.remove()
    lora = apply_lora(student.float(), LoraConfig(targets=["lm_head", "q_proj"]))
    got = _resolve(auto, lora, teacher.float())
    assert got["path"] == "plain" and "student's output layer is a peft" in got["why"]
    plain = _resolve(_cfg("word_kd", kd_path="plain"), student, teacher)
    assert plain == {"requested": "plain", "path": "plain", "why": "kd_path=plain"}
    cross = _resolve(auto, student, teacher, cross=True)
    assert cross["path"] == "plain" and "another tokenizer" in cross["why"]


def test_the_config_refuses_kd_path_fused_where_it_cannot_apply(tmp_path):
    with pytest.raises(ValueError, match="kd_path=fused does not apply: teacher_source=cache"):
        _cfg("word_kd", kd_path="fused", teacher_source="cache")
    with pytest.raises(ValueError, match="kd_path=fused does not apply: method=metadistil"):
        _cfg("metadistil", kd_path="fused")
    with pytest.raises(ValueError, match="method=sft .*kd_path=fused would be ignored"):
        _cfg("sft", student="tiny", kd_path="fused")
    with pytest.raises(ValueError, match="kd_path.*'auto', 'fused', 'plain'"):
        _cfg("word_kd", kd_path="chunked")


def test_a_run_records_its_kd_path_and_fused_and_plain_runs_train_the_same_weights(tmp_path, arith_tasks):
    from safetensors.torch import load_file

    from kdlens.config import load_config

    def run(name, **kw):
        base = dict(teacher="tiny", student="prune:1", tasks=[arith_tasks], method="word_kd", steps=2, batch_size=4,
                    lr=1e-2, seed=0, device="cpu", sigma=0.5, temperature=2.0, kd_weight=0.7,
                    output_dir=str(tmp_path / name))
        return distill(load_config(None, {**base, **kw}))

    auto, plain = run("auto"), run("plain", kd_path="plain")
    record = json.loads((auto.path / "manifest.json").read_text())["kd_path"]
    assert record["path"] == "fused" and record["requested"] == "auto" and record["chunk_rows"] >= 32
    assert plain.manifest()["kd_path"]["path"] == "plain"
    cached = run("cached", teacher_source="cache", top_k=260, cache_dir=str(tmp_path / "cache"))
    assert cached.manifest()["kd_path"]["path"] == "plain"
    assert "teacher_source=cache" in cached.manifest()["kd_path"]["why"]
    for a, b in zip(auto.log(), plain.log(), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["kd"] == pytest.approx(b["kd"], rel=1e-5)
    wa, wp = (load_file(str(r.checkpoint_path / "model.safetensors")) for r in (auto, plain))
    assert max(float((wa[k] - wp[k]).abs().max()) for k in wa) < 1e-5


def test_a_run_recorded_before_kd_path_existed_is_the_same_run_at_the_default(tmp_path, arith_tasks):
    """A finished run's identity without kd_path (recorded by an older kdlens) is not refused at kd_path=auto."""
    from kdlens.config import load_config
    from kdlens.distill import RunIdentity, run_identity

    def identity(**kw):
        base = dict(teacher="tiny", student="prune:1", tasks=[arith_tasks], method="word_kd", steps=2,
                    output_dir=str(tmp_path / "run"))
        return run_identity(load_config(None, {**base, **kw}))

    now = identity()
    assert now.config["kd_path"] == "auto"
    recorded = now.to_dict()
    del recorded["config"]["kd_path"]
    older = RunIdentity.from_dict(recorded)
    assert now.changes(older) == []
    assert identity(kd_path="plain").changes(older) == ["kd_path"]
    assert identity(kd_path="plain").changes(now) == ["kd_path"]


def test_a_lora_student_with_adapters_off_the_head_takes_the_fused_path_with_the_plain_gradients():
    from kdlens.config import LoraConfig
    from kdlens.distill._lora import apply_lora

    teacher, student = _models()
    lora = apply_lora(student, LoraConfig(targets=["q_proj"]))
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so that the gradients reach through them into lora_A
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(0))
    assert _resolve(_cfg("word_kd"), lora, teacher)["path"] == "fused"
    cfg = _cfg("word_kd", kd_weight=0.6, **SIGNAL)
    plain, fused = _step(cfg, teacher, lora, _batch(), fused=False), _step(cfg, teacher, lora, _batch(), fused=True)
    assert sorted(fused[1]) and all("lora_" in k for k in fused[1])  # only the adapters train
    _assert_same(plain, fused)
