"""chunked_divergence and fused_divergence: equal to the plain path in values and gradients."""

from __future__ import annotations

import pytest
import torch

from kdlens import losses as L

NAMES = sorted(L.LOSSES)


def _heads(seed=0, shape=(2, 7), h_s=8, h_t=6, vocab=13, bias=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(*shape, h_s, generator=g, dtype=dtype).requires_grad_()
    ws = (torch.randn(vocab, h_s, generator=g, dtype=dtype) * 0.7).requires_grad_()
    bs = (torch.randn(vocab, generator=g, dtype=dtype) * 0.1).requires_grad_() if bias else None
    ht = torch.randn(*shape, h_t, generator=g, dtype=dtype)
    wt = torch.randn(vocab, h_t, generator=g, dtype=dtype) * 0.7
    return hs, ws, bs, ht, wt


def _grads(value, tensors):
    return torch.autograd.grad(value, [t for t in tensors if t is not None])


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "sum", "none"])
@pytest.mark.parametrize("name", NAMES)
def test_plain_chunked_and_fused_agree_in_values_and_gradients(name, reduction):
    hs, ws, bs, ht, wt = _heads(seed=len(name))
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100, 1], [2, 2, -100, 9, 1, 1, 0]])
    kw = {"temperature": 1.7, "scale_by_temperature_squared": True, "reduction": reduction}

    def plain_logits():
        return hs @ ws.T + bs, ht @ wt.T

    zs, zt = plain_logits()
    plain = L.LOSSES[name].fn(zs, zt, mask=labels, **kw)
    zs, zt = plain_logits()
    chunked = L.chunked_divergence(name, zs, zt, chunk_size=3, mask=labels, **kw)
    fused = L.fused_divergence(hs, ws, ht, wt, loss=name, mask=labels, chunk_size=3, student_head_bias=bs, **kw)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    weights = torch.linspace(0.5, 1.5, plain.numel()).reshape(plain.shape)  # a non-uniform upstream gradient
    g_plain = _grads((plain * weights).sum(), [hs, ws, bs])
    g_chunked = _grads((chunked * weights).sum(), [hs, ws, bs])
    g_fused = _grads((fused * weights).sum(), [hs, ws, bs])
    for a, b, c in zip(g_plain, g_chunked, g_fused, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)


def test_fused_with_loss_parameters_and_a_callable():
    hs, ws, _, ht, wt = _heads(bias=False)
    plain = L.jsd(hs @ ws.T, ht @ wt.T, beta=0.9)
    torch.testing.assert_close(L.fused_divergence(hs, ws, ht, wt, loss="jsd", beta=0.9, chunk_size=4), plain)
    torch.testing.assert_close(L.fused_divergence(hs, ws, ht, wt, loss=L.get_loss("jsd", beta=0.9), chunk_size=5), plain)
    with pytest.raises(ValueError, match="beta"):
        L.fused_divergence(hs, ws, ht, wt, loss="jsd", beta=2.0)
    with pytest.raises(ValueError, match="known losses: .*forward_kl"):
        L.fused_divergence(hs, ws, ht, wt, loss="kl")


def test_fused_never_keeps_full_logits_for_backward():
    """Every tensor autograd saves in the fused path is smaller than [tokens, V]; the plain path's are not."""
    hs, ws, _, ht, wt = _heads(shape=(4, 16), h_s=4, h_t=4, vocab=64, bias=False)
    tokens_by_vocab = 4 * 16 * 64
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = L.fused_divergence(hs, ws, ht, wt, loss="jsd", chunk_size=8)
    assert max(saved) <= 8 * 64 < tokens_by_vocab
    value.backward()  # backward recomputes each chunk
    assert torch.isfinite(hs.grad).all() and hs.grad.abs().sum() > 0
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        L.jsd(hs @ ws.T, ht @ wt.T)
    assert max(saved) >= tokens_by_vocab


def test_fused_skips_masked_rows_and_handles_all_masked():
    hs, ws, bs, ht, wt = _heads()
    mask = torch.zeros(2, 7, dtype=torch.bool)
    value = L.fused_divergence(hs, ws, ht, wt, mask=mask, student_head_bias=bs)
    assert value.item() == 0.0
    g_hs, g_ws = torch.autograd.grad(value, [hs, ws])
    assert torch.equal(g_hs, torch.zeros_like(g_hs)) and torch.equal(g_ws, torch.zeros_like(g_ws))
    zeros = L.fused_divergence(hs, ws, ht, wt, mask=mask, reduction="none")
    assert zeros.shape == (2, 7) and (zeros == 0).all()


def test_fused_without_grad_and_in_bf16():
    hs, ws, _, ht, wt = _heads(bias=False)
    with torch.no_grad():
        value = L.fused_divergence(hs, ws, ht, wt, chunk_size=4)
        torch.testing.assert_close(value, L.forward_kl(hs @ ws.T, ht @ wt.T))
    bf = [t.detach().to(torch.bfloat16) for t in (hs, ws, ht, wt)]
    bf[0].requires_grad_()
    value = L.fused_divergence(*bf, chunk_size=5)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, L.forward_kl(bf[0] @ bf[1].T, bf[2] @ bf[3].T), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(value, bf[0])
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


def test_fused_bad_input_names_the_problem():
    hs, ws, bs, ht, wt = _heads()
    with pytest.raises(ValueError, match="V=13.*V=12.*check_compatible"):
        L.fused_divergence(hs, ws, ht, wt[:12])
    with pytest.raises(ValueError, match=r"student_head_weight must be \[V, H\] with H = .* 8"):
        L.fused_divergence(hs, ws[:, :5], ht, wt)
    with pytest.raises(ValueError, match="student_head_bias"):
        L.fused_divergence(hs, ws, ht, wt, student_head_bias=bs[:3])
    with pytest.raises(ValueError, match="every dim but the last"):
        L.fused_divergence(hs, ws, ht[:1], wt)
    with pytest.raises(ValueError, match="chunk_size"):
        L.fused_divergence(hs, ws, ht, wt, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        L.chunked_divergence("tvd", hs @ ws.T, ht @ wt.T, chunk_size=2.5)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        L.chunked_divergence("tvd", hs @ ws.T, (ht @ wt.T)[..., :12], chunk_size=2)


def test_overflowing_masked_rows_do_not_poison_gradients():
    # AB(2, -2) of far-apart rows would overflow float32 (exp(2 * 150)); masked, it must not matter
    s = torch.tensor([[[0.0, 1.0, -1.0], [150.0, -150.0, 0.0]]], requires_grad=True)
    t = torch.tensor([[[0.5, 0.0, -0.5], [-150.0, 150.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    for value in (
        L.ab_divergence(s, t, alpha=2.0, beta=-2.0, mask=mask),
        L.chunked_divergence("ab_divergence", s, t, alpha=2.0, beta=-2.0, mask=mask, chunk_size=1),
    ):
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        assert (grad[0, 1] == 0).all() and grad[0, 0].abs().sum() > 0
    # unmasked, the row saturates at the AB floor instead of overflowing: large but finite
    unmasked = L.ab_divergence(s, t, alpha=2.0, beta=-2.0, reduction="none")
    assert torch.isfinite(unmasked).all() and unmasked[0, 1] > 1e20
