"""Naive float64 references for kdlens.losses, written independently of the implementation.

Each function takes one token's student and teacher logits as plain Python sequences and sums over
the vocabulary entry by entry with the ``math`` module, straight from REFERENCE.md sections 1-2.
"""

from __future__ import annotations

import math

INF = float("inf")


def log_softmax(z, tau=1.0):
    zs = [v / tau for v in z]
    m = max(zs)
    lse = m + math.log(sum(math.exp(v - m) for v in zs))  # exp(-inf) == 0.0 handles masked entries
    return [v - lse for v in zs]


def softmax(z, tau=1.0):
    return [math.exp(v) for v in log_softmax(z, tau)]


def _log(x):
    return math.log(x) if x > 0 else -INF


def _kl_log(la, lb):
    """KL from log-probabilities, so that exp(-1e4) underflowing to 0 does not matter."""
    total = 0.0
    for av, bv in zip(la, lb, strict=True):
        if av == -INF:
            continue
        if bv == -INF:
            return INF
        total += math.exp(av) * (av - bv)
    return total


def _kl(a, b):
    return _kl_log([_log(v) for v in a], [_log(v) for v in b])


def forward_kl(zs, zt, tau=1.0):
    return _kl_log(log_softmax(zt, tau), log_softmax(zs, tau))


def reverse_kl(zs, zt, tau=1.0):
    return _kl_log(log_softmax(zs, tau), log_softmax(zt, tau))


def jsd(zs, zt, tau=1.0, beta=0.5):
    if beta == 0.0:
        return forward_kl(zs, zt, tau)
    if beta == 1.0:
        return reverse_kl(zs, zt, tau)
    p, q = softmax(zt, tau), softmax(zs, tau)
    m = [beta * pv + (1 - beta) * qv for pv, qv in zip(p, q, strict=True)]
    return beta * _kl(p, m) + (1 - beta) * _kl(q, m)


def tvd(zs, zt, tau=1.0):
    return 0.5 * sum(abs(pv - qv) for pv, qv in zip(softmax(zt, tau), softmax(zs, tau), strict=True))


def skew_forward_kl(zs, zt, tau=1.0, alpha=0.1):
    p, q = softmax(zt, tau), softmax(zs, tau)
    return _kl(p, [alpha * pv + (1 - alpha) * qv for pv, qv in zip(p, q, strict=True)])


def skew_reverse_kl(zs, zt, tau=1.0, alpha=0.1):
    p, q = softmax(zt, tau), softmax(zs, tau)
    return _kl(q, [(1 - alpha) * pv + alpha * qv for pv, qv in zip(p, q, strict=True)])


def ab_divergence(zs, zt, tau=1.0, alpha=0.2, beta=0.7):
    """Cichocki, Cruces & Amari (2011), eq. (4), entries with p = q = 0 skipped."""
    p, q = softmax(zt, tau), softmax(zs, tau)
    a, b = alpha, beta
    total = 0.0
    for pv, qv in zip(p, q, strict=True):
        if pv == 0.0 and qv == 0.0:
            continue
        if a != 0 and b != 0 and a + b != 0:
            total += -1.0 / (a * b) * (pv**a * qv**b - a / (a + b) * pv ** (a + b) - b / (a + b) * qv ** (a + b))
        elif a != 0 and b == 0:
            total += 1.0 / a**2 * (pv**a * math.log(pv**a / qv**a) - pv**a + qv**a)
        elif a == 0 and b != 0:
            total += 1.0 / b**2 * (qv**b * math.log(qv**b / pv**b) - qv**b + pv**b)
        elif a == -b != 0:
            total += 1.0 / a**2 * (math.log(qv**a / pv**a) + (qv**a / pv**a) ** -1 - 1)
        else:
            total += 0.5 * (math.log(pv) - math.log(qv)) ** 2
    return total


def soft_cross_entropy(zs, zt, tau=1.0):
    lp, lq = log_softmax(zt, tau), log_softmax(zs, tau)
    return -sum(math.exp(a) * b for a, b in zip(lp, lq, strict=True) if a > -INF)


def mse_soft(zs, zt, tau=1.0):
    p, q = softmax(zt, tau), softmax(zs, tau)
    return sum((pv - qv) ** 2 for pv, qv in zip(p, q, strict=True)) / len(p)


def l1_soft(zs, zt, tau=1.0):
    return sum(abs(pv - qv) for pv, qv in zip(softmax(zt, tau), softmax(zs, tau), strict=True))


def l2_soft(zs, zt, tau=1.0):
    return math.sqrt(sum((pv - qv) ** 2 for pv, qv in zip(softmax(zt, tau), softmax(zs, tau), strict=True)))


def sorted_l1(q, p):
    """sum_i |q_(i) - p_(i)| of both vectors sorted in decreasing order, the shorter padded with zeros."""
    q, p = sorted(q, reverse=True), sorted(p, reverse=True)
    width = max(len(q), len(p))
    q, p = q + [0.0] * (width - len(q)), p + [0.0] * (width - len(p))
    return sum(abs(a - b) for a, b in zip(q, p, strict=True))


def uld(zs, zt, tau=1.0):
    """Boizard et al. 2024: L1 between the sorted teacher and student probabilities."""
    return sorted_l1(softmax(zs, tau), softmax(zt, tau))


def span_aligned(zs, zt, tau=1.0, divergence="forward_kl", uld_weight=1.0, student_ids=None, teacher_ids=None):
    """D over the shared tokens plus one bucket for the rest, + uld_weight * ULD of the unshared tokens."""
    if student_ids is None:
        student_ids = teacher_ids = list(range(len(zs)))
    lq, lp = log_softmax(zs, tau), log_softmax(zt, tau)
    q_rest = [math.exp(v) for i, v in enumerate(lq) if i not in student_ids]
    p_rest = [math.exp(v) for i, v in enumerate(lp) if i not in teacher_ids]
    q_bucket = [lq[i] for i in student_ids] + [_log(sum(q_rest))]
    p_bucket = [lp[i] for i in teacher_ids] + [_log(sum(p_rest))]
    return REFS[divergence](q_bucket, p_bucket) + uld_weight * sorted_l1(q_rest, p_rest)


REFS = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "tvd": tvd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "ab_divergence": ab_divergence,
    "soft_cross_entropy": soft_cross_entropy,
    "mse_soft": mse_soft,
    "l1_soft": l1_soft,
    "l2_soft": l2_soft,
    "uld": uld,
    "span_aligned": span_aligned,
}


def per_token(name, zs, zt, tau=1.0, **params):
    """Reference per-token values for nested lists ``[..., V]`` -> nested lists ``[...]``."""
    if zs and isinstance(zs[0], (list, tuple)):
        return [per_token(name, a, b, tau, **params) for a, b in zip(zs, zt, strict=True)]
    return REFS[name](zs, zt, tau, **params)
