"""Property tests over the whole kdlens.losses catalogue (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import per_token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdlens import losses as L

NAMES = sorted(L.LOSSES)
# derandomized: CI sees the same examples on every run (set derandomize=False, more examples, to explore)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def logit_pairs(draw, dtype=torch.float32, scales=(0.1, 1.0, 5.0, 30.0)):
    """Student and teacher logits ``[B, T, V]`` from a seed, scale and shape, plus a bool mask."""
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 7))
    scale = draw(st.sampled_from(scales))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    s = torch.randn(b, t, v, generator=g, dtype=dtype) * scale
    te = torch.randn(b, t, v, generator=g, dtype=dtype) * scale
    mask = torch.rand(b, t, generator=g) < 0.7
    return s, te, mask


@st.composite
def params_for(draw, name):
    """Random valid parameters for ``name`` (ab_divergence limit lines included)."""
    # two decimals: no subnormal parameters, whose 1/(alpha beta) no float format can represent
    unit = st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0).map(lambda x: round(x, 2))
    if name == "jsd":
        return {"beta": draw(unit)}
    if name in ("skew_forward_kl", "skew_reverse_kl"):
        return {"alpha": draw(unit)}
    if name == "ab_divergence":
        alpha = draw(st.sampled_from([0.0, 1.0, -0.5, 0.5]) | st.floats(-1.0, 2.0).map(lambda x: round(x, 2)))
        beta = draw(st.sampled_from([0.0, 1.0, -alpha]) | st.floats(-1.0, 2.0).map(lambda x: round(x, 2)))
        return {"alpha": alpha, "beta": beta}
    return {}


def _fn(name, params):
    return L.get_loss(name, **params)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_matches_reference_nonnegative_and_zero_at_equality(name, data):
    s, t, _ = data.draw(logit_pairs(torch.float64))
    params = data.draw(params_for(name))
    tau = data.draw(st.sampled_from([0.5, 1.0, 2.0]))
    fn = _fn(name, params)
    values = fn(s, t, temperature=tau, reduction="none")
    assert values.shape == s.shape[:-1]
    ref = torch.tensor(per_token(name, s.tolist(), t.tolist(), tau, **params), dtype=torch.float64)
    finite = torch.isfinite(ref)  # negative AB exponents on far-apart logits overflow in both
    assert torch.equal(torch.isfinite(values), finite)
    torch.testing.assert_close(values[finite], ref[finite], rtol=1e-6, atol=1e-9)
    assert (values >= 0).all()
    bound = L.LOSSES[name].upper_bound
    if bound is not None:
        assert (values <= bound + 1e-12).all()
    if L.LOSSES[name].zero_at_equality:
        # equal distributions: same logits up to a per-row shift (softmax is shift invariant). AB with
        # a negative exponent weighs an entry by p^alpha (e^200 for p = e^-200), which turns the
        # 1e-14 rounding of a shifted log-softmax into a large value: there only bitwise-equal
        # logits are a fair test
        negative = any(v < 0 for v in params.values()) or sum(params.values()) < 0
        shifted = s.clone() if negative else s + torch.randn(s.shape[:-1] + (1,), dtype=s.dtype)
        torch.testing.assert_close(fn(s, shifted, temperature=tau, reduction="none"), torch.zeros_like(values), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_float32_equality_and_symmetry(name, data):
    s, t, _ = data.draw(logit_pairs())
    fn = L.LOSSES[name].fn
    if L.LOSSES[name].zero_at_equality:
        assert fn(s, s.clone()).abs().item() <= 1e-5
    if L.LOSSES[name].symmetric:
        torch.testing.assert_close(fn(s, t, reduction="none"), fn(t, s, reduction="none"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_masking_reductions_and_chunking(name, data):
    s, t, mask = data.draw(logit_pairs())
    params = data.draw(params_for(name))
    fn = _fn(name, params)
    per = fn(s, t, reduction="none")
    # masked positions do not matter: scrambling their logits changes nothing
    s2 = torch.where(mask[..., None], s, torch.randn_like(s) * 50)
    for reduction in ("token_mean", "sequence_mean", "sum"):
        torch.testing.assert_close(fn(s, t, mask=mask, reduction=reduction), fn(s2, t, mask=mask, reduction=reduction))
    n = int(mask.sum())
    token_mean = fn(s, t, mask=mask)
    if n == 0:
        assert token_mean.item() == 0.0
    else:
        torch.testing.assert_close(token_mean, per[mask].sum() / n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fn(s, t, mask=mask, reduction="sum"), per[mask].sum(), rtol=1e-5, atol=1e-6)
    chunk = data.draw(st.integers(1, 5))
    eye = torch.eye(s.shape[-1])  # an identity lm head turns hidden states into these very logits
    for reduction in ("none", "token_mean", "sequence_mean", "sum"):
        plain = fn(s, t, mask=mask, reduction=reduction)
        chunked = L.chunked_divergence(name, s, t, chunk_size=chunk, mask=mask, reduction=reduction, **params)
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
        fused = L.fused_divergence(s, eye, t, eye, loss=name, chunk_size=chunk, mask=mask, reduction=reduction, **params)
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_temperature_squared_scaling(name, data):
    s, t, mask = data.draw(logit_pairs())
    tau = data.draw(st.floats(0.25, 8.0))
    fn = L.LOSSES[name].fn
    plain = fn(s, t, mask=mask, temperature=tau)
    scaled = fn(s, t, mask=mask, temperature=tau, scale_by_temperature_squared=True)
    torch.testing.assert_close(scaled, tau * tau * plain, rtol=1e-5, atol=1e-7)


@SETTINGS
@given(data=st.data())
def test_limits_of_jsd_skew_and_ab(data):
    # the next-order term grows like q/p, so the limits are checked on moderate logits
    s, t, _ = data.draw(logit_pairs(torch.float64, scales=(0.1, 1.0)))
    fkl, rkl = L.forward_kl(s, t, reduction="none"), L.reverse_kl(s, t, reduction="none")
    eps = 1e-7  # small enough for the next-order term, large enough for float64 rounding
    torch.testing.assert_close(L.jsd(s, t, beta=eps, reduction="none") / eps, fkl, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(L.jsd(s, t, beta=1 - eps, reduction="none") / eps, rkl, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(L.skew_forward_kl(s, t, alpha=eps, reduction="none"), fkl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(L.skew_reverse_kl(s, t, alpha=eps, reduction="none"), rkl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(L.ab_divergence(s, t, alpha=1.0, beta=0.0, reduction="none"), fkl, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(L.ab_divergence(s, t, alpha=0.0, beta=1.0, reduction="none"), rkl, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(L.ab_divergence(s, t, alpha=1.0, beta=1e-6, reduction="none"), fkl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(L.ab_divergence(s, t, alpha=1e-6, beta=1.0, reduction="none"), rkl, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_gradients_are_finite_in_bf16(name, data):
    s, t, mask = data.draw(logit_pairs())
    params = data.draw(params_for(name))
    s = s.to(torch.bfloat16).requires_grad_()
    value = _fn(name, params)(s, t.to(torch.bfloat16), mask=mask)
    (grad,) = torch.autograd.grad(value, s)
    if torch.isfinite(value):
        assert torch.isfinite(grad.float()).all()
    assert (grad[~mask] == 0).all()


@st.composite
def hostile_logit_pairs(draw, dtype):
    """Logits of magnitude 1e4 with ``-inf`` entries on one side, the other or both (never a whole row)."""
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(3, 7))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    s = (torch.randn(b, t, v, generator=g) * 1e4).to(dtype)
    te = (torch.randn(b, t, v, generator=g) * 1e4).to(dtype)
    s_inf, t_inf = torch.rand(b, t, v, generator=g) < 0.35, torch.rand(b, t, v, generator=g) < 0.35
    s_inf[..., 0] = t_inf[..., 0] = False  # every row keeps a finite entry on both sides
    s_inf[..., 1], t_inf[..., 1] = True, False  # at least one entry the teacher has and the student masks
    s_inf[..., 2], t_inf[..., 2] = False, True  # and one the student has and the teacher masks
    return s.masked_fill(s_inf, float("-inf")), te.masked_fill(t_inf, float("-inf"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_values_and_gradients_are_finite_with_one_sided_masks_and_huge_logits(name, dtype, data):
    """reverse_kl with the teacher at -inf where the student has mass, AB with negative exponents at
    logits 1e4 apart, forward KL with the student at -inf: finite values, finite gradients."""
    s, t = data.draw(hostile_logit_pairs(dtype))
    params = data.draw(params_for(name))
    tau = data.draw(st.sampled_from([0.5, 1.0, 2.0]))
    s.requires_grad_()
    value = _fn(name, params)(s, t, temperature=tau, reduction="none")
    assert torch.isfinite(value).all(), value
    assert (value >= 0).all() or not L.LOSSES[name].zero_at_equality
    (grad,) = torch.autograd.grad(value.sum(), s)
    assert torch.isfinite(grad.float()).all()


def test_one_sided_masked_entries_cost_the_float_floor():
    """The convention behind the finite values: the masked side's probability counts as finfo.tiny."""
    import math

    floor = math.log(torch.finfo(torch.float32).tiny)
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, float("-inf")]])
    # KL(q || p): q = (1/2, 1/2), p = (1, 0): 1/2 (log 1/2 - 0) + 1/2 (log 1/2 - floor)
    want = 0.5 * math.log(0.5) + 0.5 * (math.log(0.5) - floor)
    assert L.reverse_kl(s, t).item() == pytest.approx(want, rel=1e-6)
    assert L.forward_kl(t, s).item() == pytest.approx(want, rel=1e-6)  # the mirror image
    assert L.ab_divergence(s, t, alpha=0.0, beta=1.0).item() == pytest.approx(want, rel=1e-6)  # AB(0, 1) = RKL
    assert L.jsd(s, t, beta=1.0).item() == pytest.approx(want, rel=1e-6)
