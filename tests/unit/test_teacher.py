"""Teacher signal: noise, top-k signal and its (k+1)-way loss, the on-disk cache."""

from __future__ import annotations

import math

import pytest
import torch

from kdlens.teacher import (
    TeacherCache,
    TopK,
    add_noise,
    dense_teacher_logits,
    kd_token_loss,
    noise_seed,
    response_mask,
    topk_pseudo_logits,
    topk_signal,
)


def naive_forward_kl(student_logits, teacher_logits, *, mask=None, temperature=1.0,
                     scale_by_temperature_squared=False, reduction="none"):
    """Independent float64 reference of KL(p || q) per token (masked positions 0)."""
    assert reduction == "none"
    lp = torch.log_softmax(teacher_logits.double() / temperature, -1)
    lq = torch.log_softmax(student_logits.double() / temperature, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    if scale_by_temperature_squared:
        kl = kl * temperature**2
    return kl * mask if mask is not None else kl


def test_noise_is_seeded_fresh_per_seed_and_has_std_sigma():
    logits = torch.zeros(200, 500)
    a = add_noise(logits, 2.0, seed=noise_seed(0, 1, 0, 0))
    b = add_noise(logits, 2.0, seed=noise_seed(0, 1, 0, 0))
    c = add_noise(logits, 2.0, seed=noise_seed(0, 2, 0, 0))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert abs(float(a.std()) - 2.0) < 0.02  # 1e5 draws: std error ~0.005
    assert abs(float(a.mean())) < 0.03


def test_sigma_zero_is_exactly_no_noise_and_negative_sigma_is_an_error():
    logits = torch.randn(3, 7, 11)
    assert torch.equal(add_noise(logits, 0.0, seed=5), logits)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(logits, -0.1, seed=5)


def test_noise_seed_depends_on_every_part():
    seeds = {noise_seed(0, 0, 0, 0), noise_seed(1, 0, 0, 0), noise_seed(0, 1, 0, 0),
             noise_seed(0, 0, 1, 0), noise_seed(0, 0, 0, 1)}
    assert len(seeds) == 5
    assert all(0 <= s < 2**63 for s in seeds)


def test_response_mask_is_labels_shifted_by_one():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 3, 4, -100, -100]])
    assert response_mask(labels).tolist() == [[False, True, True, False], [True, True, False, False]]


def test_topk_residual_is_the_teacher_mass_outside_the_topk():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 50) * 3
    sig = topk_signal(logits, 5)
    p = torch.softmax(logits.double(), -1)
    top_mass = p.gather(-1, sig.indices).sum(-1)
    assert torch.allclose(sig.residual.double().exp(), 1 - top_mass, atol=1e-6)
    assert torch.equal(sig.indices, logits.topk(5, -1).indices)
    full = topk_signal(logits, 50)
    assert torch.isneginf(full.residual).all()


def test_pseudo_logits_give_exact_k_plus_1_way_distributions():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 40), torch.randn(2, 3, 40) * 2
    sig = topk_signal(t, 6)
    ps, pt = topk_pseudo_logits(s, sig)
    qs = torch.softmax(s.double(), -1)
    qt = torch.softmax(t.double(), -1)
    want_t = torch.cat([qt.gather(-1, sig.indices), 1 - qt.gather(-1, sig.indices).sum(-1, keepdim=True)], -1)
    want_s = torch.cat([qs.gather(-1, sig.indices), 1 - qs.gather(-1, sig.indices).sum(-1, keepdim=True)], -1)
    assert torch.allclose(torch.softmax(pt.double(), -1), want_t, atol=1e-6)
    assert torch.allclose(torch.softmax(ps.double(), -1), want_s, atol=1e-6)


@pytest.mark.parametrize("tail", ["uniform", "bucket"])
@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_cache_loss_with_k_equal_v_equals_online_loss(tau, tail):
    torch.manual_seed(2)
    s, t = torch.randn(2, 5, 30), torch.randn(2, 5, 30) * 2
    mask = torch.tensor([[True, True, False, True, True], [False, True, True, True, False]])
    online = kd_token_loss(naive_forward_kl, s, t, mask=mask, temperature=tau)
    cached = kd_token_loss(naive_forward_kl, s, topk_signal(t, 30), mask=mask, temperature=tau, tail=tail)
    assert torch.allclose(cached, online, atol=1e-6)
    assert float(online[0, 2]) == 0.0


def test_cache_loss_with_small_k_lower_bounds_the_kl_at_tau_1():
    # data-processing inequality: merging the tail into one bucket cannot increase KL(p || q)
    torch.manual_seed(3)
    s, t = torch.randn(3, 4, 64), torch.randn(3, 4, 64) * 2
    mask = torch.ones(3, 4, dtype=torch.bool)
    online = kd_token_loss(naive_forward_kl, s, t, mask=mask)
    for k in (1, 4, 16):
        cached = kd_token_loss(naive_forward_kl, s, topk_signal(t, k), mask=mask, tail="bucket")
        assert (cached <= online + 1e-6).all()
        assert (cached > 0).all()


def test_noise_on_topk_is_applied_to_the_k_plus_1_pseudo_logits():
    torch.manual_seed(4)
    s, t = torch.randn(1, 3, 20), torch.randn(1, 3, 20)
    sig = topk_signal(t, 4)
    mask = torch.ones(1, 3, dtype=torch.bool)
    ps, pt = topk_pseudo_logits(s, sig)
    want = naive_forward_kl(ps, add_noise(pt, 1.5, seed=9), mask=mask)
    got = kd_token_loss(naive_forward_kl, s, sig, mask=mask, sigma=1.5, seed=9, tail="bucket")
    assert torch.allclose(got.double(), want, atol=1e-6)
    # uniform tail: one draw per vocabulary entry of the rebuilt logits, as online
    dense = dense_teacher_logits(sig, 20)
    want = naive_forward_kl(s, add_noise(dense, 1.5, seed=9), mask=mask)
    got = kd_token_loss(naive_forward_kl, s, sig, mask=mask, sigma=1.5, seed=9)
    assert torch.allclose(got.double(), want, atol=1e-6)
    with pytest.raises(ValueError, match="tail"):
        kd_token_loss(naive_forward_kl, s, sig, mask=mask, tail="spread")


def test_dense_teacher_keeps_topk_probabilities_and_spreads_the_tail_evenly():
    torch.manual_seed(5)
    t = torch.randn(3, 4, 50) * 3
    sig = topk_signal(t, 6)
    dense = dense_teacher_logits(sig, 50)
    p_true = torch.softmax(t.double(), -1)
    p_dense = torch.softmax(dense.double(), -1)
    assert torch.allclose(p_dense.gather(-1, sig.indices), p_true.gather(-1, sig.indices), atol=1e-6)
    tail = torch.ones_like(p_dense, dtype=torch.bool).scatter(-1, sig.indices, False)
    tail_probs = p_dense[tail].view(3, 4, 44)
    assert torch.allclose(tail_probs, sig.residual.double().exp().unsqueeze(-1) / 44, atol=1e-7)
    assert torch.allclose(dense_teacher_logits(topk_signal(t, 50), 50).sort(-1).values, t.sort(-1).values)


class _LinearLM(torch.nn.Module):
    """A fake causal LM: logits = embedding(input_ids) @ W; counts its forward calls."""

    def __init__(self, vocab=12, width=8):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(vocab, width, generator=gen))
        self.out = torch.nn.Parameter(torch.randn(width, vocab + 3, generator=gen))  # padded head
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return type("Out", (), {"logits": self.emb[input_ids] @ self.out})()


def _collate(feats):
    t = max(len(f["input_ids"]) for f in feats)
    pad = lambda xs, v: [x + [v] * (t - len(x)) for x in xs]  # noqa: E731
    return {"input_ids": torch.tensor(pad([f["input_ids"] for f in feats], 0)),
            "attention_mask": torch.tensor(pad([f["attention_mask"] for f in feats], 0)),
            "labels": torch.tensor(pad([f["labels"] for f in feats], -100))}


def _features():
    gen = torch.Generator().manual_seed(1)
    feats = []
    for n_prompt, n_resp in [(3, 2), (2, 4), (4, 1), (1, 3), (2, 2)]:
        ids = torch.randint(0, 12, (n_prompt + n_resp,), generator=gen).tolist()
        feats.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                      "labels": [-100] * n_prompt + ids[n_prompt:]})
    return feats


def test_teacher_cache_roundtrip_matches_direct_topk(tmp_path):
    model, feats = _LinearLM(), _features()
    cache = TeacherCache.build(tmp_path / "c", teacher=model, features=feats, collate=_collate, top_k=3,
                               vocab_size=12, teacher_weights="fake", data_hash="h", max_length=16,
                               batch_size=2, shard_size=2)
    assert (tmp_path / "c" / "complete").is_file()
    assert len(cache.index["shards"]) == 3 and cache.top_k == 3 and cache.n_examples == 5
    rows = [3, 1]
    batch = _collate([feats[i] for i in rows])
    mask = response_mask(batch["labels"])
    got = cache.batch(rows, mask)
    with torch.no_grad():
        want = topk_signal(model(batch["input_ids"]).logits[:, :-1, :12], 3)
    assert torch.equal(got.indices[mask], want.indices[mask])
    assert torch.allclose(got.values[mask], want.values[mask])
    assert torch.allclose(got.residual[mask], want.residual[mask])
    assert torch.isfinite(got.values).all() and torch.isfinite(got.residual).all()
    # a complete cache is reused without running the teacher again
    calls = model.calls
    again = TeacherCache.build(tmp_path / "c", teacher=model, features=feats, collate=_collate, top_k=3,
                               vocab_size=12, teacher_weights="fake", data_hash="h", max_length=16)
    assert model.calls == calls and again.n_examples == 5


def test_teacher_cache_rejects_a_stale_or_foreign_cache(tmp_path):
    model, feats = _LinearLM(), _features()
    TeacherCache.build(tmp_path / "c", teacher=model, features=feats, collate=_collate, top_k=3,
                       vocab_size=12, teacher_weights="fake", data_hash="h", max_length=16)
    with pytest.raises(ValueError, match="data_hash"):
        TeacherCache.open(tmp_path / "c", teacher_weights="fake", data_hash="other")
    with pytest.raises(ValueError, match="teacher_weights"):  # the same path, retrained: other weights
        TeacherCache.open(tmp_path / "c", teacher_weights="retrained", data_hash="h")
    cache = TeacherCache.open(tmp_path / "c")
    wrong = _collate([feats[1]])  # 4 response tokens, example 0 has 2
    with pytest.raises(ValueError, match="stale"):
        cache.batch([0], response_mask(wrong["labels"]))
    with pytest.raises(FileNotFoundError, match="complete"):
        TeacherCache.open(tmp_path / "missing")


def test_interrupted_cache_build_keeps_finished_shards(tmp_path):
    model, feats = _LinearLM(), _features()
    path = tmp_path / "c"
    TeacherCache.build(path, teacher=model, features=feats, collate=_collate, top_k=3, vocab_size=12,
                       teacher_weights="fake", data_hash="h", max_length=16, batch_size=2, shard_size=2)
    first = (path / "shard-00000.safetensors").read_bytes()
    (path / "complete").unlink()
    (path / "shard-00002.safetensors").unlink()  # as if killed while writing the last shard
    calls = model.calls
    cache = TeacherCache.build(path, teacher=model, features=feats, collate=_collate, top_k=3, vocab_size=12,
                               teacher_weights="fake", data_hash="h", max_length=16, batch_size=2, shard_size=2)
    assert model.calls == calls + 1  # only the missing shard (1 example, 1 batch) was recomputed
    assert (path / "shard-00000.safetensors").read_bytes() == first
    assert cache.n_examples == 5


def test_topk_dataclass_k():
    assert TopK(torch.zeros(2, 7), torch.zeros(2, 7, dtype=torch.long), torch.zeros(2)).k == 7
    assert math.isfinite(noise_seed(3))


def test_cache_key_separates_compute_precisions():
    from kdlens.teacher import cache_key

    common = {"teacher_weights": "t", "data_hash": "d", "max_length": 64, "top_k": 8, "dtype": "float32", "vocab_size": 260}
    assert cache_key(**common) == cache_key(**common, precision="float32")
    # a cache built under bf16 autocast (GPU) is not read by an fp32 run, nor the other way round
    assert cache_key(**common, precision="bfloat16") != cache_key(**common)


def test_cache_key_is_the_teachers_weights_not_its_name():
    from kdlens.teacher import cache_key

    common = {"data_hash": "d", "max_length": 64, "top_k": 8, "dtype": "float32", "vocab_size": 260}
    assert cache_key(teacher_weights="a" * 64, **common) != cache_key(teacher_weights="b" * 64, **common)
    with pytest.raises(TypeError):
        cache_key(teacher_id="teachers/sft", **common)  # a path can no longer key a cache
