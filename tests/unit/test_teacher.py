"""Teacher signal: noise, top-k signal and its (k+1)-way loss, the on-disk cache."""

from __future__ import annotations

import math

import pytest
import torch

from kdlens.teacher import (
    NoiseKey,
    TeacherCache,
    TopK,
    add_noise,
    dense_teacher_logits,
    kd_token_loss,
    noise_seed,
    response_mask,
    teacher_noise,
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


def test_noise_is_seeded_fresh_per_seed_and_step_and_has_std_sigma():
    logits = torch.zeros(200, 1, 500)
    key = NoiseKey(seed=0, step=1, example_ids=range(200))
    a = add_noise(logits, 2.0, key=key)
    b = add_noise(logits, 2.0, key=NoiseKey(0, 1, list(range(200))))
    c = add_noise(logits, 2.0, key=NoiseKey(0, 2, list(range(200))))
    d = add_noise(logits, 2.0, key=NoiseKey(1, 1, list(range(200))))
    assert torch.equal(a, b)  # same seed, step and examples: the same noise
    assert not torch.equal(a, c) and not torch.equal(a, d)  # another step or seed: fresh noise
    assert abs(float(a.std()) - 2.0) < 0.02  # 1e5 draws: std error ~0.005
    assert abs(float(a.mean())) < 0.03
    assert abs(float(torch.corrcoef(torch.stack([a.flatten(), c.flatten()]))[0, 1])) < 0.02


def test_teacher_noise_is_standard_normal_and_uncorrelated_across_rows_and_entries():
    n = teacher_noise(3, 0, torch.arange(400), torch.zeros(400, dtype=torch.long), 1000).double()
    assert abs(float(n.mean())) < 0.005 and abs(float(n.std()) - 1.0) < 0.005  # 4e5 draws
    # the fourth moment of N(0, 1) is 3; kurtosis is what a bad Box-Muller would get wrong
    assert abs(float((n**4).mean()) - 3.0) < 0.06
    assert abs(float((n[:, 0::2] * n[:, 1::2]).mean())) < 0.005  # the cos and sin halves of a pair
    assert abs(float((n[:-1] * n[1:]).mean())) < 0.005  # neighbouring rows
    # positions: rows of one example at two positions are independent too
    m = teacher_noise(3, 0, torch.zeros(400, dtype=torch.long), torch.arange(400), 1001).double()
    assert abs(float((m[:-1] * m[1:]).mean())) < 0.005


def test_teacher_noise_of_a_row_depends_only_on_its_own_key():
    """Any chunk of rows can be drawn alone (a fused divergence draws its chunks one at a time)."""
    ids, pos = torch.tensor([5, 5, 9, 2, 9]), torch.tensor([0, 1, 7, 3, 8])
    whole = teacher_noise(11, 4, ids, pos, 37)
    for chunk in ([0], [1, 2], [4, 3], [2, 0, 4]):
        assert torch.equal(teacher_noise(11, 4, ids[chunk], pos[chunk], 37), whole[chunk])
    assert torch.equal(teacher_noise(11, 4, ids, pos, 10), whole[:, :10])  # a narrower row is a prefix
    assert not torch.equal(whole[0], whole[1])  # another position of the same example


def _splitmix_reference(seed, step, example, position, vocab):
    """Pure-Python spec of teacher_noise: SplitMix64 keyed by the row, Box-Muller pairs."""
    mask = (1 << 64) - 1

    def fmix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    key = fmix(fmix((example & mask) ^ noise_seed(seed, step)) ^ position)
    out = []
    for j in range((vocab + 1) // 2):
        z = fmix((key + (j + 1) * 0x9E3779B97F4A7C15) & mask)
        u1 = ((z >> 40) + 0.5) / 2**24
        theta = 2 * math.pi * ((z >> 16) & 0xFFFFFF) / 2**24
        r = math.sqrt(-2 * math.log(u1))
        out += [r * math.cos(theta), r * math.sin(theta)]
    return out[:vocab]


def test_teacher_noise_matches_its_pure_python_specification():
    got = teacher_noise(7, 12, [3, 0, 2**40], [0, 255, 17], 9)
    for row, (example, position) in enumerate([(3, 0), (0, 255), (2**40, 17)]):
        want = torch.tensor(_splitmix_reference(7, 12, example, position, 9))
        torch.testing.assert_close(got[row], want.float(), rtol=1e-5, atol=1e-5)


def test_noise_does_not_depend_on_padding_or_batch_mates():
    """An example's noisy teacher is the same alone and padded next to a longer example (issue 12, item 4)."""
    torch.manual_seed(0)
    short, long_ = torch.randn(1, 4, 13), torch.randn(1, 9, 13)
    alone = add_noise(short, 2.0, key=NoiseKey(0, 3, [17]))
    batch = torch.zeros(2, 9, 13)
    batch[0, :4], batch[1] = short[0], long_[0]
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :4] = True
    mask[1] = True
    together = add_noise(batch, 2.0, key=NoiseKey(0, 3, [17, 4]), mask=mask)
    assert torch.equal(together[0, :4], alone[0])
    assert torch.equal(together[0, 4:], batch[0, 4:])  # padding is not drawn at all
    swapped = add_noise(batch.flip(0), 2.0, key=NoiseKey(0, 3, [4, 17]), mask=mask.flip(0))
    assert torch.equal(swapped[1, :4], alone[0])  # nor does the row order


def test_sigma_zero_is_exactly_no_noise_and_bad_sigma_is_an_error():
    logits = torch.randn(3, 7, 11)
    assert torch.equal(add_noise(logits, 0.0, key=None), logits)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            add_noise(logits, bad, key=NoiseKey(0, 0, [0, 1, 2]))
    with pytest.raises(ValueError, match="NoiseKey"):
        add_noise(logits, 1.0, key=None)
    with pytest.raises(ValueError, match="3 rows"):
        add_noise(logits, 1.0, key=NoiseKey(0, 0, [0]))


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
    key = NoiseKey(9, 0, [0])
    ps, pt = topk_pseudo_logits(s, sig)
    want = naive_forward_kl(ps, add_noise(pt, 1.5, key=key), mask=mask)
    got = kd_token_loss(naive_forward_kl, s, sig, mask=mask, sigma=1.5, noise=key, tail="bucket")
    assert torch.allclose(got.double(), want, atol=1e-6)
    # uniform tail: one draw per vocabulary entry of the rebuilt logits, as online
    dense = dense_teacher_logits(sig, 20)
    want = naive_forward_kl(s, add_noise(dense, 1.5, key=key), mask=mask)
    got = kd_token_loss(naive_forward_kl, s, sig, mask=mask, sigma=1.5, noise=key)
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
