"""kdlens.losses divergences: naive references, hand-checked values, limits, numerics, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from _loss_refs import per_token

from kdlens import losses as L

NAMES = sorted(L.LOSSES)
PARAMS = {name: dict(entry.params) for name, entry in L.LOSSES.items()}

# p = softmax(teacher) = [1/2, 1/2], q = softmax(student) = [1/4, 3/4]
T2 = torch.tensor([0.0, 0.0])
S2 = torch.tensor([0.0, math.log(3.0)])

HAND = {
    # 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3)
    ("forward_kl", ()): 0.5 * math.log(4 / 3),
    # 1/4 ln(1/4 / 1/2) + 3/4 ln(3/4 / 1/2)
    ("reverse_kl", ()): 0.25 * math.log(0.5) + 0.75 * math.log(1.5),
    # m = [3/8, 5/8]
    ("jsd", (("beta", 0.5),)): 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625))
    + 0.5 * (0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)),
    # beta = 0.9: m = 0.9 p + 0.1 q = [0.475, 0.525]
    ("jsd", (("beta", 0.9),)): 0.9 * (0.5 * math.log(0.5 / 0.475) + 0.5 * math.log(0.5 / 0.525))
    + 0.1 * (0.25 * math.log(0.25 / 0.475) + 0.75 * math.log(0.75 / 0.525)),
    ("tvd", ()): 0.25,
    # m = 0.1 p + 0.9 q = [0.275, 0.725]
    ("skew_forward_kl", (("alpha", 0.1),)): 0.5 * math.log(0.5 / 0.275) + 0.5 * math.log(0.5 / 0.725),
    # m = 0.9 p + 0.1 q = [0.475, 0.525]
    ("skew_reverse_kl", (("alpha", 0.1),)): 0.25 * math.log(0.25 / 0.475) + 0.75 * math.log(0.75 / 0.525),
    # AB(1, 1) = 1/2 sum (p - q)^2 = 1/2 * 2/16
    ("ab_divergence", (("alpha", 1.0), ("beta", 1.0))): 0.0625,
    # AB(0, 0) = 1/2 sum (ln p - ln q)^2
    ("ab_divergence", (("alpha", 0.0), ("beta", 0.0))): 0.5 * (math.log(2) ** 2 + math.log(2 / 3) ** 2),
    # AB(1, -1) = sum ln(q/p) + p/q - 1
    ("ab_divergence", (("alpha", 1.0), ("beta", -1.0))): math.log(0.5) + 2 - 1 + math.log(1.5) + 2 / 3 - 1,
    # AB(2, 0) = 1/4 sum p^2 ln(p^2/q^2) - p^2 + q^2
    ("ab_divergence", (("alpha", 2.0), ("beta", 0.0))): 0.25
    * (0.25 * math.log(4) + 0.25 * math.log(0.25 / 0.5625) - 0.5 + 0.0625 + 0.5625),
    # -(1/2 ln 1/4 + 1/2 ln 3/4)
    ("soft_cross_entropy", ()): -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)),
    ("mse_soft", ()): 0.0625,
    ("l1_soft", ()): 0.5,
    ("l2_soft", ()): math.sqrt(0.125),
    # sorted p = [1/2, 1/2], sorted q = [3/4, 1/4]: |3/4 - 1/2| + |1/4 - 1/2|
    ("uld", ()): 0.5,
    # one vocabulary: every token shared, the rest buckets empty -> forward KL
    ("span_aligned", ()): 0.5 * math.log(4 / 3),
}


@pytest.mark.parametrize("key", list(HAND), ids=lambda k: k[0] + "".join(f"-{a}={b}" for a, b in k[1]))
def test_hand_checked_values(key):
    name, params = key
    value = L.LOSSES[name].fn(S2, T2, **dict(params))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(HAND[key], rel=1e-5, abs=1e-7)


def test_every_loss_has_a_hand_checked_value():
    assert {name for name, _ in HAND} == set(L.LOSSES)


@pytest.mark.parametrize("tau", [1.0, 0.5, 3.0])
@pytest.mark.parametrize("name", NAMES)
def test_matches_naive_float64_reference(name, tau):
    g = torch.Generator().manual_seed(hash(name) % 1000)
    s, t = torch.randn(2, 3, 7, generator=g, dtype=torch.float64) * 3, torch.randn(2, 3, 7, generator=g, dtype=torch.float64) * 3
    got = L.LOSSES[name].fn(s, t, temperature=tau, reduction="none")
    ref = torch.tensor(per_token(name, s.tolist(), t.tolist(), tau, **PARAMS[name]), dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    got32 = L.LOSSES[name].fn(s.float(), t.float(), temperature=tau, reduction="none")
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "alpha,beta",
    [(0.2, 0.7), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.5, -0.5), (-0.3, 0.8), (1.5, -0.4), (2.0, 0.0), (0.0, -0.6)],
)
def test_ab_divergence_every_case_matches_reference(alpha, beta):
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    got = L.ab_divergence(s, t, alpha=alpha, beta=beta, reduction="none")
    ref = torch.tensor(per_token("ab_divergence", s.tolist(), t.tolist(), alpha=alpha, beta=beta), dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert (got >= 0).all()


def test_ab_named_limits_are_forward_and_reverse_kl():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    torch.testing.assert_close(L.ab_divergence(s, t, alpha=1.0, beta=0.0), L.forward_kl(s, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(L.ab_divergence(s, t, alpha=0.0, beta=1.0), L.reverse_kl(s, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "limit,near",
    [
        ((0.7, 0.0), (0.7, 1e-7)),
        ((0.0, 0.6), (1e-7, 0.6)),
        ((0.8, -0.8), (0.8, -0.8 + 1e-7)),
        # both near 0: 1/(alpha beta) amplifies float64 rounding, so approach less closely
        ((0.0, 0.0), (1e-5, 2e-5)),
        ((1.0, 0.0), (1.0, -1e-7)),
    ],
)
def test_ab_limit_closed_forms_are_the_limits_of_the_general_formula(limit, near):
    g = torch.Generator().manual_seed(11)
    s = torch.randn(3, 8, generator=g, dtype=torch.float64)
    t = torch.randn(3, 8, generator=g, dtype=torch.float64)
    at = L.ab_divergence(s, t, alpha=limit[0], beta=limit[1], reduction="none")
    close = L.ab_divergence(s, t, alpha=near[0], beta=near[1], reduction="none")
    torch.testing.assert_close(close, at, rtol=1e-4, atol=1e-6)


def test_jsd_beta_limits_and_end_points():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 10, generator=g, dtype=torch.float64), torch.randn(4, 10, generator=g, dtype=torch.float64)
    fkl, rkl = L.forward_kl(s, t, reduction="none"), L.reverse_kl(s, t, reduction="none")
    eps = 1e-6
    torch.testing.assert_close(L.jsd(s, t, beta=eps, reduction="none") / eps, fkl, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(L.jsd(s, t, beta=1 - eps, reduction="none") / eps, rkl, rtol=1e-4, atol=1e-8)
    # documented convention at the end points: the normalized limits, exactly
    torch.testing.assert_close(L.jsd(s, t, beta=0.0, reduction="none"), fkl, rtol=0, atol=0)
    torch.testing.assert_close(L.jsd(s, t, beta=1.0, reduction="none"), rkl, rtol=0, atol=0)


def test_jsd_beta_is_on_the_teacher_side():
    # with p = teacher, JSD(beta) of (s, t) equals JSD(1 - beta) of the swapped pair, and differs
    # from JSD(beta) of the swapped pair (the old TRL bug put beta on the student's side)
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(3, 6, generator=g, dtype=torch.float64) * 2, torch.randn(3, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(L.jsd(s, t, beta=0.2), L.jsd(t, s, beta=0.8))
    assert abs(L.jsd(s, t, beta=0.2).item() - L.jsd(t, s, beta=0.2).item()) > 1e-3


def test_skew_alpha_zero_is_plain_kl_and_alpha_one_is_zero():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    torch.testing.assert_close(L.skew_forward_kl(s, t, alpha=0.0), L.forward_kl(s, t))
    torch.testing.assert_close(L.skew_reverse_kl(s, t, alpha=0.0), L.reverse_kl(s, t))
    assert L.skew_forward_kl(s, t, alpha=1.0).item() == 0.0
    assert L.skew_reverse_kl(s, t, alpha=1.0).item() == 0.0


def test_temperature_divides_both_logits_and_tau_squared_is_an_explicit_switch():
    # tau = 2 on doubled logits gives the hand-checked distributions again
    value = L.forward_kl(2 * S2, 2 * T2, temperature=2.0)
    assert value.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    scaled = L.forward_kl(2 * S2, 2 * T2, temperature=2.0, scale_by_temperature_squared=True)
    assert scaled.item() == pytest.approx(4 * 0.5 * math.log(4 / 3), rel=1e-6)


def test_reductions_and_masks():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    per = L.forward_kl(s, t, reduction="none")
    masked = L.forward_kl(s, t, mask=mask, reduction="none")
    assert masked.shape == (3, 4)
    assert (masked[~mask] == 0).all()
    torch.testing.assert_close(masked[mask], per[mask])
    torch.testing.assert_close(L.forward_kl(s, t, mask=mask, reduction="sum"), per[mask].sum())
    torch.testing.assert_close(L.forward_kl(s, t, mask=mask), per[mask].mean())
    # per-sequence means (3 and 1 tokens), then the mean over the 2 sequences that have tokens
    expected_seq = (per[0, :3].mean() + per[1, 0]) / 2
    torch.testing.assert_close(L.forward_kl(s, t, mask=mask, reduction="sequence_mean"), expected_seq)
    # labels with -100 are the same mask
    labels = torch.where(mask, torch.tensor(7), torch.tensor(-100))
    torch.testing.assert_close(L.forward_kl(s, t, mask=labels), L.forward_kl(s, t, mask=mask))
    # 1-D per-token values (logits [T, V]) are one sequence
    torch.testing.assert_close(L.forward_kl(s[0], t[0], reduction="sequence_mean"), per[0].mean())


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "sum"])
@pytest.mark.parametrize("name", NAMES)
def test_all_masked_batch_is_zero_with_a_finite_gradient(name, reduction):
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5)
    value = L.LOSSES[name].fn(s, t, mask=torch.zeros(2, 3, dtype=torch.bool), reduction=reduction)
    assert value.item() == 0.0
    (grad,) = torch.autograd.grad(value, s)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", NAMES)
def test_shared_masked_vocabulary_is_the_same_as_dropping_it(name):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    s_masked, t_masked = s.clone(), t.clone()
    s_masked[..., 5:] = float("-inf")
    t_masked[..., 5:] = float("-inf")
    s_masked.requires_grad_()
    fn = L.LOSSES[name].fn
    value = fn(s_masked, t_masked, reduction="none")
    if name == "mse_soft":  # a mean over all V entries: the masked ones count as (0 - 0)^2
        expected = fn(s[..., :5], t[..., :5], reduction="none") * 5 / 8
    else:
        expected = fn(s[..., :5], t[..., :5], reduction="none")
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), s_masked)
    assert torch.isfinite(grad).all()
    assert (grad[..., 5:] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_huge_logits_stay_finite_and_exact(name):
    s = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, 1e4, 1e4, -1e4]], requires_grad=True)
    t = torch.tensor([[1e4, 0.0, -1e4, 1e4 - 1.0], [1e4, -1e4, 1e4 - 2.0, 0.0]])
    value = L.LOSSES[name].fn(s, t, reduction="none")
    assert torch.isfinite(value).all()
    ref = torch.tensor(per_token(name, s.tolist(), t.tolist(), **PARAMS[name]), dtype=torch.float64)
    torch.testing.assert_close(value.double(), ref, rtol=1e-4, atol=1e-5)
    (grad,) = torch.autograd.grad(value.sum(), s)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_half_inputs_are_computed_in_float32(name, dtype):
    g = torch.Generator().manual_seed(6)
    s, t = (torch.randn(3, 11, generator=g) * 4).to(dtype), (torch.randn(3, 11, generator=g) * 4).to(dtype)
    s.requires_grad_()
    value = L.LOSSES[name].fn(s, t)
    assert value.dtype == torch.float32
    # the same numbers in float32 give the same float32 result: nothing was computed in half precision
    torch.testing.assert_close(value, L.LOSSES[name].fn(s.detach().float(), t.float()), rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(value, s)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


GRADCHECK_CASES = [(name, PARAMS[name]) for name in NAMES] + [
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("ab_divergence", {"alpha": 1.0, "beta": 0.0}),
    ("ab_divergence", {"alpha": 0.0, "beta": 0.5}),
    ("ab_divergence", {"alpha": 0.6, "beta": -0.6}),
    ("ab_divergence", {"alpha": 0.0, "beta": 0.0}),
    ("ab_divergence", {"alpha": -0.4, "beta": 1.1}),
]


@pytest.mark.parametrize("name,params", GRADCHECK_CASES, ids=lambda x: str(x))
def test_gradcheck_float64(name, params):
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False], [True, True]])
    fn = L.LOSSES[name].fn
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, mask=mask, temperature=1.5, **params), (s, t))


# ------------------------------------------------------------------ bad input


def test_shape_and_vocabulary_mismatch_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 3, 6\).*vocabulary") as err:
        L.forward_kl(torch.zeros(2, 3, 5), torch.zeros(2, 3, 6))
    assert "check_compatible" in str(err.value)
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 4, 5\)"):
        L.jsd(torch.zeros(2, 3, 5), torch.zeros(2, 4, 5))


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive(tau):
    with pytest.raises(ValueError, match="temperature"):
        L.tvd(torch.zeros(2, 3), torch.zeros(2, 3), temperature=tau)


@pytest.mark.parametrize(
    "name,params,arg",
    [
        ("jsd", {"beta": -0.1}, "beta"),
        ("jsd", {"beta": 1.5}, "beta"),
        ("skew_forward_kl", {"alpha": 1.2}, "alpha"),
        ("skew_reverse_kl", {"alpha": -0.5}, "alpha"),
        ("ab_divergence", {"alpha": float("inf")}, "alpha"),
        ("ab_divergence", {"beta": float("nan")}, "beta"),
    ],
)
def test_parameters_outside_their_range(name, params, arg):
    with pytest.raises(ValueError, match=arg):
        L.LOSSES[name].fn(torch.zeros(2, 3), torch.zeros(2, 3), **params)
    with pytest.raises(ValueError, match=arg):
        L.get_loss(name, **params)


def test_bad_logits_masks_and_reductions():
    z = torch.zeros(2, 3, 4)
    bad = z.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="student_logits contains NaN"):
        L.forward_kl(bad, z)
    bad[1, 2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"teacher_logits contains \+inf"):
        L.forward_kl(z, bad)
    bad[1, 2] = float("-inf")
    with pytest.raises(ValueError, match="all -inf"):
        L.reverse_kl(bad, z)
    with pytest.raises(ValueError, match="floating-point"):
        L.forward_kl(torch.zeros(2, 3, 4, dtype=torch.long), z)
    with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*\(2, 3\)"):
        L.forward_kl(z, z, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask.bool"):
        L.forward_kl(z, z, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="reduction.*'mean'"):
        L.forward_kl(z, z, reduction="mean")
    with pytest.raises(ValueError, match="scale_by_temperature_squared"):
        L.forward_kl(z, z, scale_by_temperature_squared=1)


def test_student_mass_missing_where_teacher_has_mass_costs_the_float_floor_not_inf():
    s = torch.tensor([[0.0, float("-inf")]])
    t = torch.tensor([[0.0, 0.0]])
    floor = math.log(torch.finfo(torch.float32).tiny)  # the student's 0 counts as finfo.tiny
    assert L.forward_kl(s, t).item() == pytest.approx(0.5 * math.log(0.5) + 0.5 * (math.log(0.5) - floor))
    assert L.reverse_kl(s, t).item() == pytest.approx(math.log(2))
    assert L.skew_forward_kl(s, t, alpha=0.1).item() == pytest.approx(per_token("skew_forward_kl", [0.0, -math.inf], [0.0, 0.0]))
    assert math.isfinite(L.jsd(s, t).item())


# ------------------------------------------------------------------ registry


def test_catalogue_holds_every_divergence_with_the_shared_call_shape():
    assert set(L.LOSSES) == {
        "forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl",
        "ab_divergence", "soft_cross_entropy", "mse_soft", "l1_soft", "l2_soft", "uld", "span_aligned",
    }
    import inspect

    for name, entry in L.LOSSES.items():
        sig = inspect.signature(entry.fn).parameters
        assert list(sig)[:2] == ["student_logits", "teacher_logits"]
        assert sig["temperature"].default == 1.0 and sig["scale_by_temperature_squared"].default is False
        assert sig["reduction"].default == "token_mean" and sig["mask"].default is None
        assert {p: sig[p].default for p in entry.params} == dict(entry.params)
        assert entry.fn is getattr(L, name) and entry.higher_is_better is False


def test_get_loss_configures_and_validates_eagerly():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    loss = L.get_loss("jsd", beta=0.9, temperature=2.0)
    torch.testing.assert_close(loss(s, t), L.jsd(s, t, beta=0.9, temperature=2.0))
    torch.testing.assert_close(loss(s, t, beta=0.1), L.jsd(s, t, beta=0.1, temperature=2.0))
    with pytest.raises(ValueError, match="unknown loss 'kl'; known losses: ab_divergence, forward_kl"):
        L.get_loss("kl")
    with pytest.raises(ValueError, match="forward_kl does not take beta; it accepts mask, temperature"):
        L.get_loss("forward_kl", beta=0.5)
    with pytest.raises(ValueError, match="temperature"):
        L.get_loss("tvd", temperature=0)
    with pytest.raises(ValueError, match="reduction"):
        L.get_loss("tvd", reduction="avg")


def test_public_names_are_lazy_from_kdlens():
    import kdlens

    assert kdlens.get_loss is L.get_loss and kdlens.LOSSES is L.LOSSES
