"""Feature losses: references written with explicit loops, PKD layer maps, MiniLM attention KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlens import losses as L


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _ref_feature(kind, s, t):
    """Per-position reference with explicit sums over the feature dimension."""
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        a, b = s[idx].tolist(), t[idx].tolist()
        if kind == "l2":
            out[idx] = math.sqrt(sum((y - x) ** 2 for x, y in zip(a, b, strict=True)))
        elif kind == "l1":
            out[idx] = sum(abs(y - x) for x, y in zip(a, b, strict=True))
        elif kind == "mse":
            out[idx] = sum((y - x) ** 2 for x, y in zip(a, b, strict=True)) / len(a)
        elif kind == "cosine":
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            out[idx] = 1 - dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        else:  # ce: softmax(teacher) against log_softmax(student)
            zt = sum(math.exp(y) for y in b)
            lzs = math.log(sum(math.exp(x) for x in a))
            out[idx] = -sum(math.exp(y) / zt * (x - lzs) for x, y in zip(a, b, strict=True))
    return torch.from_numpy(out)


@pytest.mark.parametrize("kind", ["l2", "l1", "mse", "cosine", "ce"])
def test_feature_loss_per_position_matches_reference(kind):
    s, t = _rand(2, 3, 5, seed=1), _rand(2, 3, 5, seed=2)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    ref = _ref_feature(kind, s, t)
    torch.testing.assert_close(L.feature_loss(s, t, kind=kind, reduction="none"), ref)
    torch.testing.assert_close(L.feature_loss(s, t, kind=kind, mask=mask), ref[mask].mean())
    s32 = s.float().requires_grad_()
    value = L.feature_loss(s32, t.float(), kind=kind)
    assert value.dtype == torch.float32
    (grad,) = torch.autograd.grad(value, s32)
    assert torch.isfinite(grad).all()


def test_feature_loss_hand_values_and_zero_gradients_at_equality():
    s = torch.tensor([[3.0, 4.0]])
    t = torch.tensor([[0.0, 0.0]])
    assert L.feature_loss(s, t, kind="l2").item() == pytest.approx(5.0)
    assert L.feature_loss(s, t, kind="l1").item() == pytest.approx(7.0)
    assert L.feature_loss(s, t, kind="mse").item() == pytest.approx(12.5)
    assert L.feature_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), kind="cosine").item() == pytest.approx(1.0)
    same = torch.tensor([[1.0, 2.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(L.feature_loss(same, same.detach(), kind="l2"), same)
    assert torch.equal(grad, torch.zeros_like(grad))  # defined as 0, never NaN


def test_projection_for_width_mismatch():
    s, t = _rand(2, 3, 4, dtype=torch.float32), _rand(2, 3, 6, seed=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="FeatureProjection"):
        L.feature_loss(s, t)
    proj = L.FeatureProjection(4, 6)
    value = L.feature_loss(s, t, kind="mse", projection=proj)
    value.backward()
    assert proj.linear.weight.grad is not None and proj.linear.weight.grad.abs().sum() > 0
    torch.testing.assert_close(value, ((proj(s) - t) ** 2).mean())
    identity = L.FeatureProjection(4, 4)
    torch.testing.assert_close(identity(s), s)
    with pytest.raises(ValueError, match="student_dim"):
        L.FeatureProjection(0, 4)


def _ref_mmd(x, y, sigma):
    def k(a, b):
        return math.exp(-sum((u - v) ** 2 for u, v in zip(a, b, strict=True)) / (2 * sigma**2))

    xs, ys = x.tolist(), y.tolist()
    n, m = len(xs), len(ys)
    xx = sum(k(xs[i], xs[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in xs for b in ys) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_unbiased_estimator_and_median_heuristic():
    x, y = _rand(6, 3, seed=4), _rand(5, 3, seed=5) + 0.5
    assert L.mmd_rbf(x, y, bandwidth=1.3).item() == pytest.approx(_ref_mmd(x, y, 1.3), rel=1e-10)
    pooled = torch.cat([x, y]).numpy()
    dists = [np.linalg.norm(pooled[i] - pooled[j]) for i in range(11) for j in range(i + 1, 11)]
    # torch's median of an even count is the lower middle value
    sigma = sorted(dists)[(len(dists) - 1) // 2]
    assert L.mmd_rbf(x, y).item() == pytest.approx(_ref_mmd(x, y, sigma), rel=1e-9)


def test_mmd_separates_distributions_and_is_near_zero_for_one():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    shifted = torch.randn(200, 4, generator=g) + 1.0
    same, different = L.mmd_rbf(a, b).item(), L.mmd_rbf(a, shifted).item()
    assert abs(same) < 0.02 and different > 10 * abs(same)
    # population value for N(0, I_4) vs N(1, I_4), sigma = 3: x - x' ~ N(0, 2I) and x - y ~ N(-1, 2I)
    # give E k = (1 + 2/sigma^2)^(-d/2) [* exp(-|delta|^2 / (2 (sigma^2 + 2)))]
    sigma2 = 9.0
    population = 2 * (1 + 2 / sigma2) ** -2 * (1 - math.exp(-4 / (2 * (sigma2 + 2))))
    # the estimator is unbiased: its mean over 8 draws (sd about 0.024 / sqrt(8)) is the population value
    draws = [L.mmd_rbf(torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 1.0, bandwidth=3.0) for _ in range(8)]
    assert torch.stack(draws).mean().item() == pytest.approx(population, abs=0.03)


def test_feature_loss_mmd_uses_counted_positions():
    s, t = _rand(2, 4, 3, seed=6), _rand(2, 4, 3, seed=7)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    torch.testing.assert_close(L.feature_loss(s, t, kind="mmd", mask=mask, bandwidth=2.0), L.mmd_rbf(s[mask], t[mask], bandwidth=2.0))
    with pytest.raises(ValueError, match="reduction"):
        L.feature_loss(s, t, kind="mmd", reduction="none")
    with pytest.raises(ValueError, match="bandwidth"):
        L.mmd_rbf(s[0], t[0], bandwidth=-1.0)
    with pytest.raises(ValueError, match="n >= 2"):
        L.mmd_rbf(s[0, :1], t[0])
    with pytest.raises(ValueError, match="unknown feature loss kind 'cos'.*cosine"):
        L.feature_loss(s, t, kind="cos")


def test_layer_maps():
    assert [t for _, t in L.layer_map(6, 12, "skip")] == [2, 4, 6, 8, 10]
    assert [t for _, t in L.layer_map(6, 12, "last")] == [7, 8, 9, 10, 11]
    assert L.layer_map(6, 12, "uniform") == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]
    assert L.layer_map(8, 30, "uniform")[-1] == (8, 30)
    assert L.layer_map(2, 4, [1, 3]) == [(1, 1), (2, 3)]
    assert L.layer_map(2, 4, [(0, 0), (2, 4)]) == [(0, 0), (2, 4)]
    with pytest.raises(ValueError, match="unknown layer map strategy 'every'.*uniform"):
        L.layer_map(2, 4, "every")
    with pytest.raises(ValueError, match="n_student <= n_teacher"):
        L.layer_map(5, 4)
    with pytest.raises(ValueError, match="teacher index 7"):
        L.layer_map(2, 4, [1, 7])


def test_pkd_loss_matches_reference():
    student = [_rand(2, 3, 4, seed=10 + i) for i in range(4)]  # embeddings + 3 layers
    teacher = [_rand(2, 3, 4, seed=20 + i) for i in range(7)]  # embeddings + 6 layers
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]]).bool()
    pairs = L.layer_map(3, 6, "skip")  # (1, 2), (2, 4)
    ref = torch.zeros(2, 3, dtype=torch.float64)
    for s_idx, t_idx in pairs:
        for b in range(2):
            for p in range(3):
                a, c = student[s_idx][b, p], teacher[t_idx][b, p]
                ref[b, p] += ((a / a.norm() - c / c.norm()) ** 2).mean() / len(pairs)
    torch.testing.assert_close(L.pkd_loss(student, teacher, layer_map="skip", reduction="none"), ref)
    torch.testing.assert_close(L.pkd_loss(student, teacher, layer_map=pairs, mask=mask), ref[mask].mean())
    # PKD normalizes: scaling a hidden state changes nothing
    scaled = [h * 7.0 for h in student]
    torch.testing.assert_close(L.pkd_loss(scaled, teacher), L.pkd_loss(student, teacher))


def test_pkd_loss_with_projection_and_bad_widths():
    student = [_rand(1, 2, 3, seed=i, dtype=torch.float32) for i in range(3)]
    teacher = [_rand(1, 2, 5, seed=9 + i, dtype=torch.float32) for i in range(5)]
    with pytest.raises(ValueError, match="projection"):
        L.pkd_loss(student, teacher)
    proj = L.FeatureProjection(3, 5)
    value = L.pkd_loss(student, teacher, layer_map="uniform", projection=proj)
    value.backward()
    assert proj.linear.weight.grad.abs().sum() > 0


def _attention(seed, b=2, h=3, t=4):
    scores = _rand(b, h, t, t, seed=seed)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def test_attention_kl_matches_reference_with_causal_zeros():
    a_s, a_t = _attention(1), _attention(2)
    ref = torch.zeros(2, 4, dtype=torch.float64)
    for b, h, q in np.ndindex(2, 3, 4):
        ref[b, q] += sum(
            a_t[b, h, q, k] * math.log(a_t[b, h, q, k] / a_s[b, h, q, k]) for k in range(4) if a_t[b, h, q, k] > 0
        ) / 3
    torch.testing.assert_close(L.attention_kl(a_s, a_t, reduction="none"), ref)
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    torch.testing.assert_close(L.attention_kl(a_s, a_t, mask=mask), ref[mask].mean())
    a_s32 = a_s.float().requires_grad_()
    (grad,) = torch.autograd.grad(L.attention_kl(a_s32, a_t.float()), a_s32)
    assert torch.isfinite(grad).all()
    assert L.attention_kl(a_t, a_t).item() == 0.0
    with pytest.raises(ValueError, match=r"\[B, H, T, T\]"):
        L.attention_kl(a_s[0], a_t[0])
    with pytest.raises(ValueError, match="same heads"):
        L.attention_kl(a_s[:, :2], a_t)
