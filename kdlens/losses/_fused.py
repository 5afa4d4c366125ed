"""Divergences straight from final hidden states and lm-head weights, never holding all logits."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ._chunked import _check_chunk_size
from ._common import as_mask, check_reduction, compute_dtype, reduce
from ._registry import resolve

__all__ = ["fused_divergence"]


def _check_head(name: str, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.ndim < 1:
        raise ValueError(f"{name}_hidden must be a floating-point tensor [..., H]")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(
            f"{name}_head_weight must be [V, H] with H = {name}_hidden.shape[-1] = {hidden.shape[-1]}, got {got}"
        )
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{name}_head_bias must be [V] = ({weight.shape[0]},), got {got}")


def fused_divergence(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head_weight: torch.Tensor,
    *,
    loss: str = "forward_kl",
    mask: torch.Tensor | None = None,
    chunk_size: int = 256,
    student_head_bias: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
    reduction: str = "token_mean",
    **kw,
) -> torch.Tensor:
    """A divergence computed from hidden states and lm heads, ``chunk_size`` tokens at a time.

    Equal (to float rounding) to ``fn(student_hidden @ W_s.T + b_s, teacher_hidden @ W_t.T + b_t)``
    but the ``[tokens, V]`` logits exist for one chunk at a time, in the forward and the backward
    pass.

    Parameters
    ----------
    student_hidden : torch.Tensor
        ``[..., H_s]`` final hidden states of the student (after its final norm).
    student_head_weight : torch.Tensor
        ``[V, H_s]`` student lm-head weight (``model.lm_head.weight``).
    teacher_hidden : torch.Tensor
        ``[..., H_t]`` teacher hidden states, same leading shape. Treated as constants (detached).
    teacher_head_weight : torch.Tensor
        ``[V, H_t]`` teacher lm-head weight; same ``V`` (slice both heads to the common size from
        :func:`kdlens.models.check_compatible` first, e.g. ``weight[:n]``).
    loss : str or Callable
        A name from :data:`kdlens.losses.LOSSES` or a function with the divergence call shape.
    mask : torch.Tensor, optional
        bool ``[...]`` or labels with -100. Masked positions are not computed at all.
    chunk_size : int
        Token rows per chunk; peak extra memory is a few ``chunk_size x V`` float32 buffers.
    student_head_bias, teacher_head_bias : torch.Tensor, optional
        ``[V]`` biases, if the heads have them.
    reduction : {"token_mean", "sequence_mean", "sum", "none"}
        As for the plain divergence.
    **kw
        ``temperature``, ``scale_by_temperature_squared`` and loss parameters.

    Returns
    -------
    torch.Tensor
        Scalar, or ``[...]`` for ``reduction="none"``. Gradients flow to ``student_hidden``,
        ``student_head_weight`` and ``student_head_bias``.

    Notes
    -----
    Each chunk runs under :func:`torch.utils.checkpoint.checkpoint`: the forward keeps only the
    chunk's per-token values, and the backward recomputes that chunk's logits (student and teacher)
    to get its gradients, trading one extra pair of matmuls for memory. (Liger Kernel's fused
    linear losses chunk the same way but compute the gradients during the forward pass, which needs
    a hand-written gradient per loss; recomputation works for every divergence in the catalogue.)
    The logits are computed in the hidden states' dtype, as the model's own lm head would, and the
    divergence upcasts them to float32.
    """
    chunk_size = _check_chunk_size(chunk_size)
    check_reduction(reduction)
    fn = resolve(loss, kw)
    _check_head("student", student_hidden, student_head_weight, student_head_bias)
    _check_head("teacher", teacher_hidden, teacher_head_weight, teacher_head_bias)
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student_hidden shape {tuple(student_hidden.shape)} and teacher_hidden shape "
            f"{tuple(teacher_hidden.shape)} must agree in every dim but the last"
        )
    if student_head_weight.shape[0] != teacher_head_weight.shape[0]:
        vs, vt = student_head_weight.shape[0], teacher_head_weight.shape[0]
        raise ValueError(
            f"vocabulary sizes differ: student head V={vs}, teacher head V={vt}; if the tokenizers agree, slice "
            "both heads to the common size from kdlens.models.check_compatible (weight[:n], bias[:n])"
        )
    lead = student_hidden.shape[:-1]
    bool_mask = as_mask(mask, lead, student_hidden.device)
    hs_rows = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht_rows = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    w_t = teacher_head_weight.detach()
    b_t = None if teacher_head_bias is None else teacher_head_bias.detach()
    rows = None if bool_mask is None else bool_mask.reshape(-1).nonzero().squeeze(-1)
    if rows is not None:  # masked positions contribute 0: skip their matmuls entirely
        hs_rows, ht_rows = hs_rows.index_select(0, rows), ht_rows.index_select(0, rows)

    def per_token(
        hs: torch.Tensor, w_s: torch.Tensor, b_s: torch.Tensor | None, ht: torch.Tensor
    ) -> torch.Tensor:
        zs = torch.nn.functional.linear(hs, w_s, b_s)
        with torch.no_grad():
            zt = torch.nn.functional.linear(ht, w_t, b_t)
        return fn(zs, zt, reduction="none")

    needs_grad = torch.is_grad_enabled() and (
        hs_rows.requires_grad
        or student_head_weight.requires_grad
        or (student_head_bias is not None and student_head_bias.requires_grad)
    )
    pieces = []
    for start in range(0, hs_rows.shape[0], chunk_size):
        args = (hs_rows[start : start + chunk_size], student_head_weight, student_head_bias,
                ht_rows[start : start + chunk_size])
        pieces.append(checkpoint(per_token, *args, use_reentrant=False) if needs_grad else per_token(*args))
    dtype = compute_dtype(torch.promote_types(student_hidden.dtype, student_head_weight.dtype))
    # an empty slice's sum is an exact 0 that keeps the graph connected when no row is computed
    anchor = hs_rows[:0].sum().to(dtype) + student_head_weight[:0].sum().to(dtype)
    computed = torch.cat(pieces) if pieces else hs_rows.new_zeros(0, dtype=dtype)
    if rows is None:
        values = computed.reshape(lead) + anchor
    else:
        values = torch.zeros(lead.numel(), dtype=dtype, device=student_hidden.device) + anchor
        values = values.index_put((rows,), computed.to(dtype)).reshape(lead)
    return reduce(values, bool_mask, reduction)
