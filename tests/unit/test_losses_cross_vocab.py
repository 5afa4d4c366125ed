"""Cross-vocabulary losses (uld, span_aligned): naive references with different vocabularies,
hand-checked values, their limits, invariances and bad input. The catalogue-wide properties (zero at
equality, masking, chunking, bf16 gradients) are in test_losses_properties.py."""

from __future__ import annotations

import math

import pytest
import torch
from _loss_refs import sorted_l1 as ref_sorted_l1
from _loss_refs import span_aligned as ref_span_aligned
from _loss_refs import uld as ref_uld

from kdlens import losses as L


def _pair(b=2, t=3, v_s=5, v_t=8, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, v_s, generator=g, dtype=torch.float64) * scale,
            torch.randn(b, t, v_t, generator=g, dtype=torch.float64) * scale)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("v_s,v_t", [(5, 8), (8, 5), (6, 6), (1, 4)])
def test_uld_matches_the_naive_reference_across_vocabulary_sizes(v_s, v_t, tau):
    s, t = _pair(v_s=v_s, v_t=v_t)
    got = L.uld(s, t, temperature=tau, reduction="none")
    ref = [[ref_uld(a, b, tau) for a, b in zip(rs, rt, strict=True)] for rs, rt in zip(s.tolist(), t.tolist(), strict=True)]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_uld_hand_checked_with_different_vocabularies():
    # q = [1/2, 1/4, 1/4] (3 tokens), p = [1/2, 1/2] (2 tokens, padded with a 0):
    # |1/2 - 1/2| + |1/4 - 1/2| + |1/4 - 0| = 1/2
    s = torch.tensor([math.log(2.0), 0.0, 0.0])
    t = torch.tensor([0.0, 0.0])
    assert L.uld(s, t).item() == pytest.approx(0.5, abs=1e-7)
    # a one-hot student against a uniform teacher over 4: |1 - 1/4| + 3 * 1/4 = 3/2
    assert L.uld(torch.tensor([0.0, -1e4]), torch.zeros(4)).item() == pytest.approx(1.5, abs=1e-6)
    # with tau^2 scaling at tau = 2 the value is multiplied by 4
    s2, t2 = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.3, 0.2])
    torch.testing.assert_close(L.uld(s2, t2, temperature=2.0, scale_by_temperature_squared=True),
                               4 * L.uld(s2, t2, temperature=2.0))


def test_uld_ignores_which_token_is_which_and_zero_probability_tokens():
    s, t = _pair(v_s=6, v_t=9, seed=3)
    base = L.uld(s, t, reduction="none")
    perm_s, perm_t = torch.randperm(6), torch.randperm(9)
    torch.testing.assert_close(L.uld(s[..., perm_s], t[..., perm_t], reduction="none"), base)
    # tokens the model never emits (-inf) change nothing: only the mass matters, not the vocabulary size
    padded = torch.cat([t, torch.full((*t.shape[:-1], 5), float("-inf"), dtype=t.dtype)], dim=-1)
    torch.testing.assert_close(L.uld(s, padded, reduction="none"), base)
    # permuted copies of one distribution are at distance 0
    assert L.uld(t[..., perm_t], t).abs().max() < 1e-12


def test_sorted_l1_of_unnormalized_masses_adds_the_longer_tail():
    q = torch.tensor([0.2, 0.1])
    p = torch.tensor([0.05, 0.3, 0.1, 0.05])
    # sorted: q = [0.2, 0.1, 0, 0], p = [0.3, 0.1, 0.05, 0.05]
    assert L.sorted_l1(q, p).item() == pytest.approx(0.1 + 0.0 + 0.05 + 0.05)
    assert L.sorted_l1(q, p).item() == pytest.approx(ref_sorted_l1(q.tolist(), p.tolist()))


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_span_aligned_matches_the_naive_reference_with_a_partial_shared_vocabulary(divergence, tau):
    s, t = _pair(v_s=6, v_t=9, seed=1)
    s_ids, t_ids = [4, 0, 2], [1, 7, 3]  # student token 4 is teacher token 1, ...
    got = L.span_aligned(s, t, student_ids=torch.tensor(s_ids), teacher_ids=torch.tensor(t_ids), temperature=tau,
                         divergence=divergence, uld_weight=0.7, reduction="none")
    ref = [[ref_span_aligned(a, b, tau, divergence=divergence, uld_weight=0.7, student_ids=s_ids, teacher_ids=t_ids)
            for a, b in zip(rs, rt, strict=True)] for rs, rt in zip(s.tolist(), t.tolist(), strict=True)]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_span_aligned_hand_checked_bucket():
    # student q = [1/2, 1/4, 1/4], teacher p = [1/4, 1/2, 1/4]; shared: student 0 <-> teacher 1.
    # buckets: q = [1/2 | 1/2], p = [1/2 | 1/2] -> forward KL 0; unshared: q = {1/4, 1/4}, p = {1/4, 1/4} -> ULD 0
    s = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    t = torch.log(torch.tensor([0.25, 0.5, 0.25]))
    value = L.span_aligned(s, t, student_ids=torch.tensor([0]), teacher_ids=torch.tensor([1]))
    assert value.item() == pytest.approx(0.0, abs=1e-7)
    # shared: student 1 <-> teacher 1: buckets q = [1/4 | 3/4], p = [1/2 | 1/2];
    # unshared sorted: q = [1/2, 1/4], p = [1/4, 1/4]
    value = L.span_aligned(s, t, student_ids=torch.tensor([1]), teacher_ids=torch.tensor([1]), uld_weight=2.0)
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert value.item() == pytest.approx(fkl + 2.0 * (0.25 + 0.0), rel=1e-6)


def test_span_aligned_limits_are_its_two_ingredients():
    s, t = _pair(v_s=7, v_t=7, seed=2)
    # identical vocabularies: exactly the divergence
    torch.testing.assert_close(L.span_aligned(s, t, reduction="none", divergence="jsd"),
                               L.jsd(s, t, reduction="none"), rtol=1e-10, atol=1e-12)
    # no shared token: ULD (weighted)
    s, t = _pair(v_s=5, v_t=9, seed=2)
    none = torch.zeros(0, dtype=torch.long)
    torch.testing.assert_close(L.span_aligned(s, t, student_ids=none, teacher_ids=none, uld_weight=0.5,
                                              reduction="none"), 0.5 * L.uld(s, t, reduction="none"))
    # uld_weight = 0: only the shared-vocabulary term
    ids = torch.tensor([0, 1])
    no_uld = L.span_aligned(s, t, student_ids=ids, teacher_ids=ids, uld_weight=0.0, reduction="none")
    ref = [[ref_span_aligned(a, b, uld_weight=0.0, student_ids=[0, 1], teacher_ids=[0, 1])
            for a, b in zip(rs, rt, strict=True)] for rs, rt in zip(s.tolist(), t.tolist(), strict=True)]
    torch.testing.assert_close(no_uld, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_cross_vocabulary_masking_and_gradients():
    s, t = _pair(v_s=5, v_t=8, seed=4)
    s = s.float().requires_grad_()
    mask = torch.tensor([[True, False, True], [False, False, True]])
    for fn in (L.uld, lambda a, b, **kw: L.span_aligned(a, b, student_ids=torch.tensor([0, 3]),
                                                       teacher_ids=torch.tensor([6, 2]), **kw)):
        per = fn(s, t.float(), reduction="none")
        value = fn(s, t.float(), mask=mask)
        torch.testing.assert_close(value, per[mask].sum() / mask.sum())
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(grad).all() and (grad[~mask] == 0).all() and grad[mask].abs().sum() > 0
        empty = fn(s, t.float(), mask=torch.zeros(2, 3, dtype=torch.bool))
        assert empty.item() == 0.0


def test_cross_vocabulary_bad_input_names_the_problem():
    s, t = torch.zeros(2, 3, 5), torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match="must pair the same positions"):
        L.uld(torch.zeros(2, 4, 5), t)
    with pytest.raises(ValueError, match="pass the shared vocabulary as student_ids and teacher_ids"):
        L.span_aligned(s, t)
    with pytest.raises(ValueError, match="equal length"):
        L.span_aligned(s, t, student_ids=torch.tensor([0, 1]), teacher_ids=torch.tensor([0]))
    with pytest.raises(ValueError, match="teacher_ids must index the 8-token vocabulary"):
        L.span_aligned(s, t, student_ids=torch.tensor([0]), teacher_ids=torch.tensor([8]))
    with pytest.raises(ValueError, match="repeats a token id"):
        L.span_aligned(s, t, student_ids=torch.tensor([0, 0]), teacher_ids=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="divergence must be a same-vocabulary loss"):
        L.get_loss("span_aligned", divergence="uld")
    with pytest.raises(ValueError, match="uld_weight must be a number >= 0"):
        L.get_loss("span_aligned", uld_weight=-1.0)
    bad = s.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):
        L.uld(bad, t)
    assert L.LOSSES["uld"].cross_vocabulary and not L.LOSSES["forward_kl"].cross_vocabulary
    assert L.CROSS_VOCABULARY_LOSSES == ("uld", "span_aligned")
