"""Divergences evaluated a block of token rows at a time, with bounded intermediate memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ._common import as_mask, check_logits, check_reduction, compute_dtype, reduce
from ._registry import resolve

__all__ = ["chunked_divergence"]


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer (token rows per chunk), got {chunk_size!r}")
    return chunk_size


def chunked_divergence(
    name_or_fn: str | Callable,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    chunk_size: int,
    mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
    **kw,
) -> torch.Tensor:
    """Any divergence computed over ``chunk_size`` token rows at a time; equal to the plain call.

    Parameters
    ----------
    name_or_fn : str or Callable
        A name from :data:`kdlens.losses.LOSSES` or a function with the divergence call shape.
    student_logits, teacher_logits : torch.Tensor
        ``[..., V]`` logits (already materialized; see :func:`fused_divergence` to avoid that).
    chunk_size : int
        Token rows (positions, all leading dims flattened) per chunk.
    mask : torch.Tensor, optional
        bool ``[...]`` or labels with -100, as for the plain divergence.
    reduction : {"token_mean", "sequence_mean", "sum", "none"}
        Applied to the concatenated per-token values, exactly as the plain divergence does.
    **kw
        ``temperature``, ``scale_by_temperature_squared`` and loss parameters (``beta``, ...).

    Returns
    -------
    torch.Tensor
        Scalar, or ``[...]`` for ``reduction="none"``.

    Notes
    -----
    The float32 log-probabilities and every ``[rows, V]`` temporary exist for one chunk at a time.
    When gradients are needed each chunk runs under :func:`torch.utils.checkpoint.checkpoint`, so
    the backward pass recomputes a chunk's temporaries instead of keeping all of them alive; the
    gradient of the input logits (``[..., V]``, the input's dtype) is still allocated in full.
    """
    chunk_size = _check_chunk_size(chunk_size)
    check_reduction(reduction)
    fn = resolve(name_or_fn, kw)
    check_logits(student_logits, teacher_logits)
    lead = student_logits.shape[:-1]
    bool_mask = as_mask(mask, lead, student_logits.device)
    vocab = student_logits.shape[-1]
    s_rows, t_rows = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    m_rows = None if bool_mask is None else bool_mask.reshape(-1)

    def per_token(s: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        # the chunk's mask goes in too: the divergence keeps masked rows' backward finite
        return fn(s, t, mask=m, reduction="none")

    needs_grad = torch.is_grad_enabled() and (student_logits.requires_grad or teacher_logits.requires_grad)
    pieces = []
    for start in range(0, s_rows.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        args = (s_rows[rows], t_rows[rows], None if m_rows is None else m_rows[rows])
        pieces.append(checkpoint(per_token, *args, use_reentrant=False) if needs_grad else per_token(*args))
    if pieces:
        values = torch.cat(pieces).reshape(lead)
    else:  # no token rows at all: an empty, graph-connected result
        values = s_rows.sum(dim=-1).to(compute_dtype(student_logits.dtype)).reshape(lead)
    return reduce(values, bool_mask, reduction)
