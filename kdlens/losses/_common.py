"""Validation, masking, temperature and reduction shared by every loss.

Every divergence in :mod:`kdlens.losses` goes through the same three steps, defined here once:

1. :func:`log_probs` checks the two logit tensors, upcasts them to (at least) float32 and returns
   ``log_softmax(z / tau)`` for student and teacher;
2. the divergence turns the two ``[..., V]`` log-probability tensors into per-token values ``[...]``;
3. :func:`reduce` applies the mask, the optional ``tau**2`` factor and the reduction.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "IGNORE_INDEX",
    "REDUCTIONS",
    "as_mask",
    "check_logits",
    "check_temperature",
    "check_unit_interval",
    "check_finite_param",
    "check_reduction",
    "compute_dtype",
    "log_probs",
    "reduce",
]

IGNORE_INDEX = -100
#: accepted ``reduction=`` values of every loss (see :func:`reduce`)
REDUCTIONS = ("none", "token_mean", "sequence_mean", "sum")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses compute in: float32 for half types (bf16, fp16) and float32, float64 kept."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float, or raise ``ValueError`` unless it is finite and > 0."""
    if isinstance(temperature, torch.Tensor):
        temperature = float(temperature)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def check_unit_interval(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name`` unless 0 <= value <= 1."""
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_finite_param(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name`` unless it is a finite real."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` or raise ``ValueError`` listing the known ones."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    return reduction


def check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Raise ``ValueError`` unless both are floating tensors of one shape ``[..., V]`` with finite rows.

    A row may contain ``-inf`` (a masked vocabulary entry) but must hold at least one finite value;
    NaN and ``+inf`` are rejected. The check costs one reduction over ``V`` and one host sync.
    """
    for name, z in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            kind = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} must be a floating-point tensor [..., V], got {kind}")
        if z.ndim < 1 or z.shape[-1] == 0:
            raise ValueError(f"{name} must have shape [..., V] with V >= 1, got {tuple(z.shape)}")
    if student_logits.shape != teacher_logits.shape:
        s, t = tuple(student_logits.shape), tuple(teacher_logits.shape)
        hint = ""
        if s[:-1] == t[:-1]:
            hint = (
                f" (vocabulary sizes differ: student V={s[-1]}, teacher V={t[-1]}; if the tokenizers agree, "
                "truncate both to the common size from kdlens.models.check_compatible, e.g. logits[..., :n])"
            )
        raise ValueError(f"student_logits shape {s} does not match teacher_logits shape {t}{hint}")
    for name, z in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        row_max = z.detach().amax(dim=-1)  # NaN propagates through amax; +inf and all -inf rows show up too
        if not bool(torch.isfinite(row_max).all()):
            if bool(torch.isnan(row_max).any()):
                problem = "contains NaN"
            elif bool(torch.isposinf(row_max).any()):
                problem = "contains +inf"
            else:
                problem = "has a row whose logits are all -inf (an empty distribution)"
            raise ValueError(
                f"{name} {problem}; logits must be finite, or -inf only for masked vocabulary entries"
            )


def as_mask(mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """Turn a user mask into a bool tensor of ``shape`` (the logits' leading dims), or ``None``.

    Parameters
    ----------
    mask : torch.Tensor or None
        bool ``[...]`` (True = position counts) or integer labels ``[...]`` where ``-100`` marks
        positions to ignore. Integer tensors are always read as labels: pass ``attention_mask.bool()``
        for a 0/1 mask. Labels are not shifted here; the caller aligns logits and labels.
    shape : torch.Size
        ``logits.shape[:-1]``.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a bool tensor or integer labels with -100, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the logits' leading shape {tuple(shape)} "
            "(mask is [..., T] for logits [..., T, V])"
        )
    if mask.dtype == torch.bool:
        return mask.to(device)
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(
            f"mask must be bool or integer labels with -100, got dtype {mask.dtype}; use mask.bool() for 0/1 masks"
        )
    return (mask != IGNORE_INDEX).to(device)


def log_probs(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(log q, log p)``: ``log_softmax(z / tau)`` of student and teacher, ``[..., V]``.

    Half-precision inputs are upcast to float32 before dividing by ``tau`` so no probability is
    computed in bf16/fp16; float64 inputs stay float64.
    """
    check_logits(student_logits, teacher_logits)
    tau = check_temperature(temperature)
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    zs, zt = student_logits.to(dtype), teacher_logits.to(dtype)
    if tau != 1.0:
        zs, zt = zs / tau, zt / tau
    return torch.log_softmax(zs, dim=-1), torch.log_softmax(zt, dim=-1)


def reduce(
    values: torch.Tensor,
    mask: torch.Tensor | None,
    reduction: str,
    *,
    scale: float = 1.0,
) -> torch.Tensor:
    """Mask, scale and reduce per-token loss values.

    Parameters
    ----------
    values : torch.Tensor
        ``[...]`` per-token values (e.g. ``[B, T]``).
    mask : torch.Tensor or None
        bool ``[...]`` from ``as_mask``; None means every position counts.
    reduction : {"none", "token_mean", "sequence_mean", "sum"}
        ``"none"``: ``[...]`` with masked positions 0. ``"token_mean"``: sum over counted positions
        divided by their number. ``"sequence_mean"``: the mean over each sequence's counted tokens
        (last dim), then the mean over sequences that have at least one (the paradox paper's
        reduction; a 1-D input is one sequence). ``"sum"``: the sum over counted positions.
    scale : float
        Multiplies every value (``tau**2`` when requested).

    Returns
    -------
    torch.Tensor
        ``[...]`` for ``"none"``, else a scalar. With no counted position the scalar is ``0`` and
        still connected to the graph (its gradient is zero, never NaN).
    """
    check_reduction(reduction)
    if scale != 1.0:
        values = values * scale
    if mask is not None:
        # where, not multiply: a masked value may be inf (student -inf where the teacher has mass)
        values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if reduction == "token_mean":
        count = values.numel() if mask is None else mask.sum()
        return values.sum() / (count.clamp_min(1) if isinstance(count, torch.Tensor) else max(count, 1))
    # sequence_mean
    seq_values = values if values.ndim >= 1 else values.reshape(1)
    seq_mask = (
        torch.ones(seq_values.shape, dtype=torch.bool, device=values.device) if mask is None else mask.reshape(seq_values.shape)
    )
    per_seq_count = seq_mask.sum(dim=-1)
    per_seq_mean = seq_values.sum(dim=-1) / per_seq_count.clamp_min(1)
    has_tokens = per_seq_count > 0
    n_seq = has_tokens.sum().clamp_min(1)
    return torch.where(has_tokens, per_seq_mean, torch.zeros_like(per_seq_mean)).sum() / n_seq
