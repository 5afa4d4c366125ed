"""Divergences between the teacher's and the student's output distributions.

Every function has one call shape, student first::

    fn(student_logits, teacher_logits, *, mask=None, temperature=1.0,
       scale_by_temperature_squared=False, reduction="token_mean", **params)

Notation (kdlens REFERENCE.md section 1): ``p = softmax(teacher_logits / tau)`` (teacher),
``q = softmax(student_logits / tau)`` (student), ``KL(a||b) = sum_v a_v (log a_v - log b_v)``.
Everything is computed from ``log_softmax`` in float32 (float64 stays float64), with the conventions
``0 log 0 = 0`` and "a vocabulary entry that is ``-inf`` in both teacher and student does not exist"
(it contributes 0 to every loss), so a shared vocabulary mask never produces NaN.

Values and gradients are finite for every finite or ``-inf`` input, in every dtype:

* an entry that only ONE side masks (``p_v > 0 = q_v``, or the reverse) would make a KL-type term
  (``forward_kl``, ``reverse_kl``, ``soft_cross_entropy``) infinite, with NaN gradients. The masked
  side's log-probability is floored at :data:`log_floor` (``log`` of the smallest normal number of
  the compute dtype, -87.3 in float32): the entry costs what a probability of 1.2e-38 would, a
  large finite penalty whose gradient pushes the other side's mass off it;
* ``ab_divergence`` with a negative exponent weighs an entry by ``p_v^alpha`` (or ``q_v^beta``),
  which overflows for tiny probabilities (``-inf`` entries, or logits 1e4 apart). There every
  log-probability is floored at the level where the largest possible sum still fits the dtype
  (``_ab_floor``); entries above that level are exact, entries below it saturate (their
  gradient is 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._common import (
    as_mask,
    check_finite_param,
    check_reduction,
    check_temperature,
    check_unit_interval,
    log_probs,
    reduce,
)

__all__ = [
    "forward_kl",
    "reverse_kl",
    "jsd",
    "tvd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "ab_divergence",
    "soft_cross_entropy",
    "mse_soft",
    "l1_soft",
    "l2_soft",
]

_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# elementwise building blocks on log-probabilities [..., V]


def log_floor(dtype: torch.dtype) -> float:
    """``log`` of the smallest normal number of ``dtype`` (-87.34 in float32, -708.4 in float64)."""
    return math.log(torch.finfo(dtype).tiny)


def _floor_absent(lb: torch.Tensor) -> torch.Tensor:
    """``lb`` with its ``-inf`` entries replaced by :func:`log_floor` (zero gradient there)."""
    floor = torch.full((), log_floor(lb.dtype), dtype=lb.dtype, device=lb.device)
    return torch.where(torch.isneginf(lb), floor, lb)


def _kl_terms(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """Elementwise ``a_v (log a_v - log b_v)`` with ``0`` wherever ``a_v = 0``, ``[..., V]``.

    The difference is replaced *before* the product so that the backward pass never sees
    ``0 * (-inf - x)`` (the "double where" that keeps gradients finite). Where ``b_v = 0 < a_v`` the
    term would be infinite: ``log b_v`` is floored at :func:`log_floor` (module docstring).
    """
    absent = torch.isneginf(la)
    diff = torch.where(absent, torch.zeros((), dtype=la.dtype, device=la.device), la - _floor_absent(lb))
    return la.exp() * diff


def _log_mix(la: torch.Tensor, lb: torch.Tensor, weight: float) -> torch.Tensor:
    """``log(weight * a + (1 - weight) * b)`` from log-probabilities, exact at ``weight`` 0 and 1."""
    if weight == 0.0:
        return lb
    if weight == 1.0:
        return la
    return torch.logaddexp(la + math.log(weight), lb + math.log1p(-weight))


def _without_shared_masked(
    lq: torch.Tensor, lp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Replace entries that are ``-inf`` in both ``lq`` and ``lp`` by 0 and return where they were.

    Such an entry is a vocabulary item that neither model can emit; it is dropped from every sum.
    Replacing it first keeps ``logaddexp(-inf, -inf)`` and ``0 * inf`` out of the forward and backward
    passes. Returns ``None`` as the mask when nothing is masked (the common case costs no copy).
    """
    if not (bool(torch.isneginf(lq).any()) and bool(torch.isneginf(lp).any())):
        return lq, lp, None
    shared = torch.isneginf(lq) & torch.isneginf(lp)
    zero = torch.zeros((), dtype=lq.dtype, device=lq.device)
    return torch.where(shared, zero, lq), torch.where(shared, zero, lp), shared


def _sum_over_vocab(
    terms_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lq: torch.Tensor, lp: torch.Tensor
) -> torch.Tensor:
    """``sum_v terms_fn(lq, lp)_v`` over the vocabulary, skipping entries masked in both, ``[...]``."""
    lq, lp, shared = _without_shared_masked(lq, lp)
    terms = terms_fn(lq, lp)
    if shared is not None:
        terms = torch.where(shared, torch.zeros((), dtype=terms.dtype, device=terms.device), terms)
    return terms.sum(dim=-1)


def _check_scale_flag(scale_by_temperature_squared: bool) -> None:
    if not isinstance(scale_by_temperature_squared, bool):
        raise ValueError(
            f"scale_by_temperature_squared must be True or False, got {scale_by_temperature_squared!r}"
        )


def _divergence(
    per_token: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    temperature: float,
    scale_by_temperature_squared: bool,
    reduction: str,
    nonnegative: bool,
) -> torch.Tensor:
    """Shared driver: validate, ``log_softmax(z / tau)``, per-token values, mask, scale, reduce."""
    check_reduction(reduction)
    tau = check_temperature(temperature)
    _check_scale_flag(scale_by_temperature_squared)
    lq, lp = log_probs(student_logits, teacher_logits, tau)
    bool_mask = as_mask(mask, lq.shape[:-1], lq.device)
    if bool_mask is not None:
        # masked rows get the teacher's distribution: their value is 0 and their backward pass stays
        # finite even where the real pair would overflow (AB with negative exponents, say)
        lq = torch.where(bool_mask.unsqueeze(-1), lq, lp.detach())
    # + an empty slice's sum (exact zeros): keeps the result in the student's graph even for a loss
    # that does not depend on it (skew_forward_kl at alpha=1), so loss.backward() always works
    values = per_token(lq, lp) + lq[..., :0].sum(dim=-1)
    if nonnegative:
        # the divergence is >= 0 mathematically; float rounding near equality may give -1e-9
        values = values.clamp_min(0.0)
    return reduce(values, bool_mask, reduction, scale=tau * tau if scale_by_temperature_squared else 1.0)


# ---------------------------------------------------------------------------------------------
# public divergences


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""Forward KL ``KL(p || q)`` of teacher ``p`` to student ``q`` (mode-covering).

    Parameters
    ----------
    student_logits : torch.Tensor
        ``[..., V]`` student logits, any float dtype (computed in float32).
    teacher_logits : torch.Tensor
        ``[..., V]`` teacher logits, same shape.
    mask : torch.Tensor, optional
        bool ``[...]`` (True = counted) or integer labels ``[...]`` with ``-100`` for ignored
        positions. Not shifted: align logits and labels before calling.
    temperature : float
        ``tau > 0``; both distributions are ``softmax(z / tau)``.
    scale_by_temperature_squared : bool
        Multiply by ``tau**2`` (Hinton's gradient-scale correction; TRL and Liger omit it).
    reduction : {"token_mean", "sequence_mean", "sum", "none"}
        See :func:`kdlens.losses.reduce`; ``"none"`` returns ``[...]`` with masked positions 0.

    Returns
    -------
    torch.Tensor
        Scalar, or ``[...]`` for ``reduction="none"``.

    Notes
    -----
    :math:`\mathrm{KL}(p\|q) = \sum_v p_v(\log p_v - \log q_v)` (Hinton et al. 2015; with
    ``scale_by_temperature_squared=True`` this is Hinton's soft-target loss). Finite iff every entry
    with teacher mass has student mass.

    References: Kullback and Leibler 1951, the divergence (``kullback1951information``); Hinton, Vinyals
    and Dean 2015, distillation with it (``hinton2015distilling``). ``kdlens cite`` prints these entries
    for a run that used this function (:mod:`kdlens.citations`).
    """
    return _divergence(
        lambda lq, lp: _sum_over_vocab(lambda q_, p_: _kl_terms(p_, q_), lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=True,
    )


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""Reverse KL ``KL(q || p)`` of student ``q`` to teacher ``p`` (mode-seeking).

    Parameters and returns as :func:`forward_kl`.

    Notes
    -----
    :math:`\mathrm{KL}(q\|p) = \sum_v q_v(\log q_v - \log p_v)`, the token-level form of MiniLLM
    (Gu et al. 2023).

    References: Kullback and Leibler 1951 (``kullback1951information``); Gu et al. 2024, MiniLLM, ICLR
    (``gu2024minillm``). ``kdlens cite`` prints these entries for a run that used this function
    (:mod:`kdlens.citations`).
    """
    return _divergence(
        lambda lq, lp: _sum_over_vocab(_kl_terms, lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=True,
    )


def jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
    beta: float = 0.5,
) -> torch.Tensor:
    r"""Generalized Jensen-Shannon divergence ``JSD(beta)`` (GKD), teacher ``p`` on the ``beta`` side.

    Parameters
    ----------
    beta : float
        In ``[0, 1]``. ``0.5`` is the classic (symmetric) JS divergence.
    Others as :func:`forward_kl`.

    Returns
    -------
    torch.Tensor
        Scalar, or ``[...]`` for ``reduction="none"``; never negative.

    Notes
    -----
    :math:`\mathrm{JSD}_\beta = \beta\,\mathrm{KL}(p\|m) + (1-\beta)\,\mathrm{KL}(q\|m)`,
    :math:`m = \beta p + (1-\beta) q` (Agarwal et al. 2024, GKD; the side of ``beta`` follows the
    paper, not old TRL code, see TRL PR #3043). :math:`\log m` is a ``logaddexp``.

    Limits: :math:`\mathrm{JSD}_\beta/\beta \to \mathrm{KL}(p\|q)` as :math:`\beta\to 0` and
    :math:`\mathrm{JSD}_\beta/(1-\beta) \to \mathrm{KL}(q\|p)` as :math:`\beta\to 1`. The raw value
    is 0 at both ends, which would make the loss vanish; like TRL's ``generalized_jsd_loss``,
    ``beta=0`` returns the forward KL and ``beta=1`` the reverse KL exactly (the normalized limits).
    The function is therefore discontinuous at the two end points by design.

    References: Lin 1991, the Jensen-Shannon divergence (``lin1991divergence``); Agarwal et al. 2024,
    GKD, ICLR, the generalized form (``agarwal2024onpolicy``). ``kdlens cite`` prints these entries for
    a run that used this function (:mod:`kdlens.citations`).
    """
    beta = check_unit_interval("beta", beta)
    if beta == 0.0:
        return forward_kl(
            student_logits, teacher_logits, mask=mask, temperature=temperature,
            scale_by_temperature_squared=scale_by_temperature_squared, reduction=reduction,
        )
    if beta == 1.0:
        return reverse_kl(
            student_logits, teacher_logits, mask=mask, temperature=temperature,
            scale_by_temperature_squared=scale_by_temperature_squared, reduction=reduction,
        )

    def terms(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
        lm = _log_mix(lp, lq, beta)
        return beta * _kl_terms(lp, lm) + (1.0 - beta) * _kl_terms(lq, lm)

    return _divergence(
        lambda lq, lp: _sum_over_vocab(terms, lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=True,
    )


def tvd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""Total variation distance ``0.5 * sum_v |p_v - q_v|``, in ``[0, 1]``.

    Parameters and returns as :func:`forward_kl`.

    Notes
    -----
    :math:`\mathrm{TVD}(p, q) = \tfrac12\sum_v |p_v - q_v|` (used as a KD objective e.g. in
    Wen et al. 2023, f-divergence minimization for sequence-level KD).

    References: Wen et al. 2023, ACL (``wen2023fdivergence``). ``kdlens cite`` prints these entries for
    a run that used this function (:mod:`kdlens.citations`).
    """
    return _divergence(
        lambda lq, lp: 0.5 * _sum_over_vocab(lambda q_, p_: (p_.exp() - q_.exp()).abs(), lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=False,
    )


def skew_forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
    alpha: float = 0.1,
) -> torch.Tensor:
    r"""Skew forward KL ``KL(p || alpha p + (1 - alpha) q)`` (DistiLLM).

    Parameters
    ----------
    alpha : float
        Skew in ``[0, 1]`` (DistiLLM's default 0.1). ``alpha=0`` is exactly :func:`forward_kl`;
        ``alpha=1`` is identically 0.
    Others as :func:`forward_kl`.

    Notes
    -----
    :math:`\mathrm{SKL}_\alpha(p, q) = \mathrm{KL}(p\,\|\,\alpha p + (1-\alpha) q)` (Ko et al. 2024).
    The mixture keeps the value finite (at most :math:`-\log\alpha`) even when the student gives
    an entry zero mass.

    References: Ko et al. 2024, DistiLLM, ICML (``ko2024distillm``). ``kdlens cite`` prints these
    entries for a run that used this function (:mod:`kdlens.citations`).
    """
    alpha = check_unit_interval("alpha", alpha)
    return _divergence(
        lambda lq, lp: _sum_over_vocab(lambda q_, p_: _kl_terms(p_, _log_mix(p_, q_, alpha)), lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=True,
    )


def skew_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
    alpha: float = 0.1,
) -> torch.Tensor:
    r"""Skew reverse KL ``KL(q || (1 - alpha) p + alpha q)`` (DistiLLM).

    Parameters
    ----------
    alpha : float
        Skew in ``[0, 1]`` (default 0.1). ``alpha=0`` is exactly :func:`reverse_kl`; ``alpha=1``
        is identically 0.
    Others as :func:`forward_kl`.

    Notes
    -----
    :math:`\mathrm{SRKL}_\alpha(p, q) = \mathrm{KL}(q\,\|\,(1-\alpha) p + \alpha q)` (Ko et al. 2024).

    References: Ko et al. 2024, DistiLLM, ICML (``ko2024distillm``). ``kdlens cite`` prints these
    entries for a run that used this function (:mod:`kdlens.citations`).
    """
    alpha = check_unit_interval("alpha", alpha)
    return _divergence(
        lambda lq, lp: _sum_over_vocab(lambda q_, p_: _kl_terms(q_, _log_mix(q_, p_, alpha)), lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=True,
    )


def _ab_floor(alpha: float, beta: float, vocab: int, dtype: torch.dtype) -> float:
    """Log-probability floor that keeps every ``AB(alpha, beta)`` term, sum and gradient finite in ``dtype``.

    Without a negative exponent it is :func:`log_floor` (used only for one-sided ``-inf`` entries
    whose limit is infinite). With one, a term is at most ``c * exp(e * |floor|)`` (``e`` the most
    negative exponent's size, ``c`` the largest coefficient such as ``1 / |alpha beta|``); the forward
    sum and the backward pass each add up to ``V`` of them, so the floor leaves ``V^2 * c * max|exponent|``
    (and a margin of e^8) of room below the largest float.
    """
    tiny = log_floor(dtype)
    s = alpha + beta
    negative = max([-e for e in (alpha, beta, s) if e < 0], default=0.0)
    if negative == 0.0:
        return tiny
    if alpha != 0.0 and beta != 0.0 and s != 0.0:
        coeff = max(1.0 / abs(alpha * beta), 1.0 / abs(alpha * s), 1.0 / abs(beta * s))
    else:  # alpha = -beta, or one exponent 0: a 1 / a^2 prefactor
        coeff = 1.0 / (alpha or beta) ** 2
    slope = max(1.0, abs(alpha), abs(beta), abs(s))
    budget = math.log(torch.finfo(dtype).max) - 2.0 * math.log(max(vocab, 1)) - math.log(coeff * slope) - 8.0
    if budget <= 0:
        raise ValueError(f"ab_divergence(alpha={alpha}, beta={beta}) cannot be represented in {dtype} over "
                         f"{vocab} vocabulary entries (its 1/(alpha*beta) factors are too large); use parameters "
                         "further from 0")
    return max(tiny, -budget / negative)


def _ab_terms(lq: torch.Tensor, lp: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Elementwise alpha-beta divergence terms ``[..., V]`` for every case of ``(alpha, beta)``.

    Entries where exactly one of ``p_v``, ``q_v`` is 0 get their limit value directly when it is
    finite (the exponents that touch the zero are positive); where the limit is infinite, or any
    exponent is negative, the regular formula runs on log-probabilities floored at ``_ab_floor``,
    so neither pass ever forms ``inf - inf``, ``0 * inf`` or an overflow.
    """
    inf_limit = None
    p_absent, q_absent = torch.isneginf(lp), torch.isneginf(lq)
    floor = _ab_floor(alpha, beta, lq.shape[-1], lq.dtype)
    if min(alpha, beta, alpha + beta) < 0:  # saturate every tiny probability (zero gradient below the floor)
        lp_s, lq_s = lp.clamp_min(floor), lq.clamp_min(floor)
    else:  # only the absent entries, for the limits that are infinite
        lp_s, lq_s = _floor_absent(lp), _floor_absent(lq)
    s = alpha + beta
    if alpha != 0.0 and beta != 0.0 and s != 0.0:
        cross = torch.exp(alpha * lp_s + beta * lq_s)
        direct = -(cross - (alpha / s) * torch.exp(s * lp_s) - (beta / s) * torch.exp(s * lq_s)) / (alpha * beta)
        # the direct form cancels catastrophically when q_v ~ p_v; factoring out p^s with r = log q - log p
        # gives p^s [expm1(s r) / (alpha s) - expm1(beta r) / (alpha beta)], exact at r = 0 but prone
        # to overflow for large |r|, so it is used only for |r| < 1
        r = lq_s - lp_s
        near = r.abs() < 1.0
        r_near = torch.where(near, r, torch.zeros((), dtype=r.dtype, device=r.device))
        factored = torch.exp(s * lp_s) * (
            torch.expm1(s * r_near) / (alpha * s) - torch.expm1(beta * r_near) / (alpha * beta)
        )
        regular = torch.where(near, factored, direct)
        # p_v = 0: q^s / (alpha s), finite for alpha > 0 and s > 0; q_v = 0: p^s / (beta s) for beta > 0, s > 0
        if_p_absent = torch.exp(s * lq_s) / (alpha * s) if alpha > 0 and s > 0 else inf_limit
        if_q_absent = torch.exp(s * lp_s) / (beta * s) if beta > 0 and s > 0 else inf_limit
    elif alpha == 0.0 and beta == 0.0:
        regular = 0.5 * (lp_s - lq_s) ** 2
        if_p_absent = if_q_absent = inf_limit
    elif s == 0.0:
        # 1/a^2 [a (log q - log p) + (p/q)^a - 1] = (expm1(r) - r) / a^2 with r = a (log p - log q)
        r = alpha * (lp_s - lq_s)
        regular = (torch.expm1(r) - r) / alpha**2
        if_p_absent = if_q_absent = inf_limit
    else:
        # one exponent is 0: 1/a^2 [x^a log(x^a / y^a) - x^a + y^a] with (x, y, a) = (p, q, alpha)
        # when beta == 0 and (q, p, beta) when alpha == 0
        lx, ly, a = (lp_s, lq_s, alpha) if beta == 0.0 else (lq_s, lp_s, beta)
        xa, ya = torch.exp(a * lx), torch.exp(a * ly)
        regular = (xa * (a * (lx - ly)) - xa + ya) / a**2
        # x_v = 0 < y_v: y^a / a^2 for a > 0 (x^a log x^a -> 0); y_v = 0 < x_v: infinite
        if_x_absent = ya / a**2 if a > 0 else inf_limit
        if_p_absent, if_q_absent = (if_x_absent, inf_limit) if beta == 0.0 else (inf_limit, if_x_absent)
    terms = regular
    if if_q_absent is not None:
        terms = torch.where(q_absent, if_q_absent, terms)
    if if_p_absent is not None:
        terms = torch.where(p_absent, if_p_absent, terms)
    return terms


def ab_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
    alpha: float = 0.2,
    beta: float = 0.7,
) -> torch.Tensor:
    r"""Alpha-beta divergence ``AB(alpha, beta)`` of teacher ``p`` and student ``q`` (ABKD).

    Parameters
    ----------
    alpha, beta : float
        Any finite reals (ABKD's defaults 0.2, 0.7). Negative values are allowed: they weigh tiny
        probabilities enormously, so log-probabilities are then floored (``_ab_floor``) to keep
        values and gradients finite.
    Others as :func:`forward_kl`.

    Notes
    -----
    For :math:`\alpha,\beta,\alpha+\beta \ne 0` (Cichocki, Cruces & Amari 2011, Entropy 13;
    Wang et al. 2025, ABKD):

    .. math:: D^{(\alpha,\beta)} = -\frac{1}{\alpha\beta}\sum_v \Big(p_v^\alpha q_v^\beta
              - \frac{\alpha}{\alpha+\beta} p_v^{\alpha+\beta} - \frac{\beta}{\alpha+\beta} q_v^{\alpha+\beta}\Big)

    with :math:`p^\alpha q^\beta = \exp(\alpha\log p + \beta\log q)`. The limit cases are the
    continuous extensions given by Cichocki et al.:

    - :math:`\beta = 0,\ \alpha\ne0`: :math:`\frac{1}{\alpha^2}\sum_v \big(p_v^\alpha \log\frac{p_v^\alpha}{q_v^\alpha} - p_v^\alpha + q_v^\alpha\big)`;
      ``(1, 0)`` is :math:`\mathrm{KL}(p\|q)` (forward KL);
    - :math:`\alpha = 0,\ \beta\ne0`: :math:`\frac{1}{\beta^2}\sum_v \big(q_v^\beta \log\frac{q_v^\beta}{p_v^\beta} - q_v^\beta + p_v^\beta\big)`;
      ``(0, 1)`` is :math:`\mathrm{KL}(q\|p)` (reverse KL);
    - :math:`\alpha = -\beta \ne 0`: :math:`\frac{1}{\alpha^2}\sum_v \big(\log\frac{q_v^\alpha}{p_v^\alpha} + \frac{p_v^\alpha}{q_v^\alpha} - 1\big)`;
    - :math:`\alpha = \beta = 0`: :math:`\frac12\sum_v (\log p_v - \log q_v)^2`.

    Where :math:`|\log q_v - \log p_v| < 1` the general term is evaluated in the factored form
    :math:`p_v^{\alpha+\beta}\big[\frac{\mathrm{expm1}((\alpha+\beta) r)}{\alpha(\alpha+\beta)} -
    \frac{\mathrm{expm1}(\beta r)}{\alpha\beta}\big]`, :math:`r = \log q_v - \log p_v`, which is exact
    at ``p == q``. Near the limit lines the general formula still loses float32 precision, about
    :math:`10^{-7}/\min(|\alpha|, |\beta|, |\alpha+\beta|)` absolute; pass the exact limit values
    (e.g. ``beta=0``) rather than tiny non-zero parameters. Negative exponents weigh an entry by
    :math:`p_v^{\alpha}` (or :math:`q_v^{\beta}`), enormous for tiny probabilities: the divergence is
    then ill-conditioned, and log-probabilities below the floor of ``_ab_floor`` (-38.8 for
    ``alpha = -1.5, beta = 0.7`` over 49,152 float32 entries) saturate there. A limit that is
    infinite (one side 0 where a non-positive exponent touches it) is charged at that floor.

    References: Cichocki, Cruces and Amari 2011, Entropy 13(1) (``cichocki2011generalized``); Wang et
    al. 2025, ABKD, ICML (``wang2025abkd``). ``kdlens cite`` prints these entries for a run that used
    this function (:mod:`kdlens.citations`).
    """
    alpha = check_finite_param("alpha", alpha)
    beta = check_finite_param("beta", beta)
    return _divergence(
        lambda lq, lp: _sum_over_vocab(lambda q_, p_: _ab_terms(q_, p_, alpha, beta), lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=True,
    )


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""Cross-entropy of the student against the teacher's soft targets, ``-sum_v p_v log q_v``.

    Parameters and returns as :func:`forward_kl`.

    Notes
    -----
    :math:`H(p, q) = -\sum_v p_v \log q_v = \mathrm{KL}(p\|q) + H(p)`: same gradient in the
    student as forward KL, but not zero when ``p == q`` (it equals the teacher's entropy).

    References: Hinton, Vinyals and Dean 2015, soft targets (``hinton2015distilling``). ``kdlens cite``
    prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """

    def terms(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
        absent = torch.isneginf(lp)
        safe_lq = torch.where(absent, torch.zeros((), dtype=lq.dtype, device=lq.device), _floor_absent(lq))
        return -lp.exp() * safe_lq

    return _divergence(
        lambda lq, lp: _sum_over_vocab(terms, lq, lp),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=False,
    )


def mse_soft(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""Mean squared error of the softened distributions, ``mean_v (p_v - q_v)**2`` per token.

    Parameters and returns as :func:`forward_kl`.

    Notes
    -----
    MPDistil / MetaDistil's soft loss is :math:`\tau^2\cdot\frac1V\sum_v (p_v - q_v)^2`
    (Sengupta et al. 2024): call ``mse_soft(s, t, temperature=tau, scale_by_temperature_squared=True)``.
    The ``tau**2`` factor is off by default here only so that the switch means the same thing for
    every loss. With ``reduction="token_mean"`` this equals ``F.mse_loss(q, p)`` over all
    ``tokens x V`` entries, which is how MPDistil computes it.

    References: Sengupta et al. 2024, MPDistil, ICLR (``sengupta2024good``). ``kdlens cite`` prints
    these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    return _divergence(
        lambda lq, lp: ((lp.exp() - lq.exp()) ** 2).mean(dim=-1),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=False,
    )


def l1_soft(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""L1 distance ``||p - q||_1`` of the softened distributions per token (``2 * tvd``).

    Parameters and returns as :func:`forward_kl`.

    Notes
    -----
    The lecture's :math:`\|\Phi(y_T/\tau) - \Phi(y_S/\tau)\|_1` with :math:`\Phi` = softmax.

    References: Hinton, Vinyals and Dean 2015, the softened outputs compared (``hinton2015distilling``).
    ``kdlens cite`` prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    return _divergence(
        lambda lq, lp: (lp.exp() - lq.exp()).abs().sum(dim=-1),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=False,
    )


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` whose gradient at ``x = 0`` is 0 instead of ``inf`` (and so never NaN)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def l2_soft(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""Euclidean distance ``||p - q||_2`` of the softened distributions per token.

    Parameters and returns as :func:`forward_kl`.

    Notes
    -----
    The lecture's :math:`\|\Phi(y_T/\tau) - \Phi(y_S/\tau)\|_2` with :math:`\Phi` = softmax (the KD
    term of MPDistil's student objective as written on the slide). The gradient at ``p == q`` is
    defined as 0 (the norm is not differentiable there).

    References: Hinton, Vinyals and Dean 2015, the softened outputs compared (``hinton2015distilling``).
    ``kdlens cite`` prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    return _divergence(
        lambda lq, lp: _safe_sqrt(((lp.exp() - lq.exp()) ** 2).sum(dim=-1)),
        student_logits,
        teacher_logits,
        mask=mask,
        temperature=temperature,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction=reduction,
        nonnegative=False,
    )
