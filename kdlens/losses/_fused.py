"""Divergences straight from final hidden states and lm-head weights, never holding all logits.

Two pieces:

* :class:`LMHead` — what turns a model's final hidden states into its logits: the head's weight
  (and bias), the common vocabulary width it is cut to, the model's final logit soft-capping
  (Gemma) and the autocast the model ran under;
* ``fused_head_values`` — the engine: per-token values of any function of the two models'
  logits, computed ``chunk`` token rows at a time, with the logits of one chunk alive at once in
  the forward and the backward pass. :func:`fused_divergence` (a divergence, reduced as the plain
  one) and :func:`kdlens.teacher.fused_kd_token_loss` (the training KD term with noise, tau and the
  gold CE) are built on it.

Two ways to get gradients, chosen by whether the caller wants a scalar objective:

``weights`` given (a weighted sum of the per-token values, the weights known in the forward pass)
    The gradient is computed during the forward pass, chunk by chunk: the chunk's gradient with
    respect to its student logits ``dL/dz`` ([chunk, V], from autograd on the chunk alone, so every
    divergence works unchanged) goes straight into ``dL/dh = dL/dz @ W`` ([tokens, H]) and
    ``dL/dW += dL/dz^T @ h`` ([V, H], the size of the head's own gradient), and the backward pass
    only scales them. Four lm-head products per token (teacher forward; student forward, dL/dh,
    dL/dW), as many as a plain step with materialised logits. This is how Liger Kernel's fused
    linear losses work, without a hand-written gradient per loss.
``weights=None`` (per-token values that keep their graph, e.g. ``reduction="none"``)
    Each chunk runs under :func:`torch.utils.checkpoint.checkpoint`; the backward recomputes the
    chunk's logits (two extra lm-head products per token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._chunked import _check_chunk_size
from ._common import as_mask, check_reduction, compute_dtype
from ._registry import resolve

__all__ = ["LMHead", "fused_divergence", "fused_head_values", "auto_chunk_rows"]

#: Elements of one [chunk, V] buffer, and the fewest rows per chunk, by device type. A chunk's
#: divergence holds about ten such float32 buffers (logits, log-probabilities, their products and
#: gradients). On a CPU 2**21 elements (8 MiB per buffer) keeps them far below a step's other memory
#: while each lm-head product still reads the head once per >= 32 rows; a GPU needs a few hundred
#: rows per product to stay compute-bound (bf16 on an H100: ~300 FLOP per byte of the head).
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}
_MIN_CHUNK_ROWS = {"cpu": 32, "cuda": 256}


def auto_chunk_rows(vocab: int, device: torch.device | str) -> int:
    """Token rows per chunk for a vocabulary of ``vocab`` on ``device`` (see ``_CHUNK_ELEMENTS``)."""
    kind = torch.device(device).type
    elements = _CHUNK_ELEMENTS.get(kind, _CHUNK_ELEMENTS["cuda"])
    return max(_MIN_CHUNK_ROWS.get(kind, _MIN_CHUNK_ROWS["cuda"]), elements // max(int(vocab), 1))


@dataclass(frozen=True)
class LMHead:
    """A model's output layer: ``logits = cap * tanh((h @ W[:vocab].T + b[:vocab]) / cap)``.

    Attributes
    ----------
    weight : Tensor [V_head, H]
        The head's weight (a tied input embedding included); gradients flow to it whole.
    bias : Tensor [V_head] or None
    vocab : int or None
        Logit width used, the first ``vocab`` rows (the common size of teacher and student when a
        head has padding rows); None = ``V_head``.
    softcap : float or None
        Final logit soft-capping (Gemma 2/3 ``final_logit_softcapping``); None = none.
    autocast : tuple of (device type, dtype) or None
        The autocast the model's forward ran under; the head's products run under it too, as the
        model's own head would.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    vocab: int | None = None
    softcap: float | None = None
    autocast: tuple[str, torch.dtype] | None = None

    @property
    def width(self) -> int:
        return int(self.weight.shape[0]) if self.vocab is None else int(self.vocab)

    def pre_cap(self, hidden: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """``h @ W[:vocab].T + b[:vocab]`` (``weight``/``bias`` stand in for the head's own, e.g. detached)."""
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        v = self.width
        return F.linear(hidden, w[:v], None if b is None else b[:v])

    def cap(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.softcap is None else torch.tanh(z / self.softcap) * self.softcap

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., vocab]`` logits of ``hidden`` ``[..., H]``, as the model computes them."""
        return self.cap(self.pre_cap(hidden))


def _autocast(head: LMHead):
    import contextlib

    if head.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=head.autocast[0], dtype=head.autocast[1])


#: per_chunk(student_logits [n, V] (with grad), teacher_logits [n, V] or None, rows: slice of the
#: selected rows) -> values [n, k] in float32 (float64 for float64 inputs)
ChunkFn = Callable[[torch.Tensor, torch.Tensor | None, slice], torch.Tensor]


class _GradientInForward(torch.autograd.Function):
    """``sum(values * weights)`` whose gradient the forward pass already computed (module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, run):
        objective, values, grads = run(hidden, weight, bias)
        ctx.grads = grads
        ctx.mark_non_differentiable(values)
        return objective, values

    @staticmethod
    def backward(ctx, grad_objective, grad_values):
        if ctx.grads is None:
            raise RuntimeError("the fused KD loss holds its gradient once: backward through it twice "
                               "(retain_graph=True) is not supported; use kd_path=plain")
        grads, ctx.grads = ctx.grads, None
        if not bool(grad_objective == 1):  # the buffers are ours alone: scale in place, never copy the head's
            grads = [None if g is None else g.mul_(grad_objective.to(g.dtype)) for g in grads]
        return grads[0], grads[1], grads[2], None


def _run_with_gradients(per_chunk: ChunkFn, s_head: LMHead, teacher_rows, t_head: LMHead | None,
                        weights: torch.Tensor, chunk: int, k: int):
    def run(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        n, v = hidden.shape[0], s_head.width
        need = [hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad]
        # the head's gradient sums over chunks: in float32 at least (a bf16 sum would round at every chunk)
        grad_h = torch.zeros_like(hidden) if need[0] else None
        grad_w = torch.zeros_like(weight, dtype=compute_dtype(weight.dtype)) if need[1] else None
        grad_b = torch.zeros_like(bias, dtype=compute_dtype(bias.dtype)) if need[2] else None
        w, b = weight.detach(), None if bias is None else bias.detach()
        values, objective = [], None
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows].detach()
            zt = _teacher_logits(teacher_rows, t_head, rows)
            with torch.enable_grad():
                z = s_head.pre_cap(h, w, b).detach().requires_grad_()
                vals = per_chunk(s_head.cap(z), zt, rows)
                part = (vals * weights[rows].to(vals.dtype)).sum()
                (grad_z,) = torch.autograd.grad(part, z)
            values.append(vals.detach())
            objective = part.detach() if objective is None else objective + part.detach()
            del zt, vals, part, z
            if grad_h is not None:
                grad_h[rows] = (grad_z @ w[:v]).to(grad_h.dtype)
            if grad_w is not None:
                if grad_z.dtype == grad_w.dtype == h.dtype:
                    grad_w[:v].addmm_(grad_z.T, h)
                else:  # bf16 (autocast or weights): the product in bf16, the sum in float32
                    grad_w[:v].add_(grad_z.T @ h)
            if grad_b is not None:
                grad_b[:v].add_(grad_z.sum(0).to(grad_b.dtype))
        dtype = compute_dtype(hidden.dtype)
        values = torch.cat(values) if values else hidden.new_zeros(0, k, dtype=dtype)
        if objective is None:
            objective = hidden.new_zeros((), dtype=dtype)
        grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                 None if grad_b is None else grad_b.to(bias.dtype))
        return objective, values, grads

    return run


def _teacher_logits(teacher_rows: torch.Tensor | None, t_head: LMHead | None, rows: slice) -> torch.Tensor | None:
    if teacher_rows is None or t_head is None:
        return None
    with torch.no_grad():
        return t_head.logits(teacher_rows[rows].detach())


def fused_head_values(per_chunk: ChunkFn, student_rows: torch.Tensor, student_head: LMHead,
                      teacher_rows: torch.Tensor | None = None, teacher_head: LMHead | None = None, *,
                      width: int = 1, weights: torch.Tensor | None = None,
                      chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token values of a function of student and teacher logits, ``chunk_size`` rows at a time.

    Parameters
    ----------
    per_chunk : callable
        ``per_chunk(z_s, z_t, rows) -> [n, width]`` for one chunk: ``z_s`` the student's logits
        ``[n, V]`` (differentiable), ``z_t`` the teacher's (no grad; None without a teacher) and
        ``rows`` the chunk's slice of the rows (to index per-row data such as targets or noise keys).
        It must depend on its rows only (the chunks are independent) and be deterministic (the
        ``weights=None`` backward runs it again).
    student_rows : Tensor [N, H_s]
        Final hidden states of the rows that count (after the final norm).
    student_head, teacher_head : LMHead
    teacher_rows : Tensor [N, H_t] or None
        The teacher's, treated as constants.
    width : int
        Columns of ``per_chunk``'s values.
    weights : Tensor [N, width] or None
        Given: also return ``objective = sum(values * weights)``, differentiable, its gradient
        computed in the forward pass. None: ``values`` keep their graph (checkpointed chunks).
    chunk_size : int or None
        Rows per chunk; None = ``auto_chunk_rows``.

    Returns
    -------
    values : Tensor [N, width]
        Detached when ``weights`` is given.
    objective : Tensor (scalar) or None
    """
    chunk = auto_chunk_rows(student_head.width, student_rows.device) if chunk_size is None else chunk_size
    chunk = _check_chunk_size(chunk)
    w, b = student_head.weight, student_head.bias
    needs_grad = torch.is_grad_enabled() and (student_rows.requires_grad or w.requires_grad
                                              or (b is not None and b.requires_grad))
    with _autocast(student_head):
        if weights is not None and needs_grad:
            run = _run_with_gradients(per_chunk, student_head, teacher_rows, teacher_head, weights, chunk, width)
            objective, values = _GradientInForward.apply(student_rows, w, b, run)
            return values, objective

        def one(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int) -> torch.Tensor:
            rows = slice(start, start + h.shape[0])
            z = student_head.cap(student_head.pre_cap(h, weight, bias))
            return per_chunk(z, _teacher_logits(teacher_rows, teacher_head, rows), rows)

        pieces = []
        for start in range(0, student_rows.shape[0], chunk):
            args = (student_rows[start:start + chunk], w, b, start)
            pieces.append(checkpoint(one, *args, use_reentrant=False) if needs_grad else one(*args))
    dtype = compute_dtype(torch.promote_types(student_rows.dtype, w.dtype))
    if pieces:
        values = torch.cat(pieces)
    else:  # no row: an exact 0 that keeps the graph connected
        anchor = student_rows.sum() * 0 + w[:0].sum() * 0
        values = anchor.to(dtype).expand(0, width)
    objective = None if weights is None else (values * weights.to(values.dtype)).sum()
    return values, objective


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


def _reduction_weights(bool_mask: torch.Tensor | None, lead: torch.Size, rows: torch.Tensor | None,
                       reduction: str, device: torch.device) -> torch.Tensor:
    """Weight of each computed row in the scalar reduction (as :func:`kdlens.losses.reduce` reduces)."""
    mask = torch.ones(lead, dtype=torch.bool, device=device) if bool_mask is None else bool_mask
    if reduction == "sum":
        per = torch.ones(lead, dtype=torch.float64, device=device)
    elif reduction == "token_mean":
        per = torch.full(lead, 1.0 / max(int(mask.sum()), 1), dtype=torch.float64, device=device)
    else:  # sequence_mean: the mean over each sequence's tokens, then over sequences that have one
        seq = mask.reshape(-1, lead[-1]) if len(lead) else mask.reshape(1, 1)
        count = seq.sum(-1, keepdim=True).double()
        n_seq = max(int((count > 0).sum()), 1)
        per = (1.0 / (count.clamp_min(1) * n_seq)).expand(seq.shape).reshape(lead)
    flat = per.reshape(-1)
    return (flat if rows is None else flat[rows])[:, None]


def fused_divergence(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head_weight: torch.Tensor,
    *,
    loss: str = "forward_kl",
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    student_head_bias: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
    student_logit_softcap: float | None = None,
    teacher_logit_softcap: float | None = None,
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
    chunk_size : int or None
        Token rows per chunk; None picks them from the vocabulary and the device
        (``auto_chunk_rows``). Peak extra memory is about ten ``chunk_size x V`` float32 buffers.
    student_head_bias, teacher_head_bias : torch.Tensor, optional
        ``[V]`` biases, if the heads have them.
    student_logit_softcap, teacher_logit_softcap : float, optional
        Final logit soft-capping ``cap * tanh(z / cap)`` of the model (Gemma 2/3), applied to the
        chunk's logits before the divergence.
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
    A scalar reduction is a weighted sum of per-token values with weights known in advance, so its
    gradient is computed during the forward pass (``fused_head_values``, as Liger Kernel's
    fused linear losses do) and the head's products are those of a plain step; the backward only
    scales it (calling backward twice through it is refused). ``reduction="none"`` checkpoints each
    chunk instead and recomputes its logits in the backward pass. The logits are computed in the
    hidden states' dtype, as the model's own lm head would, and the divergence upcasts them to
    float32.
    """
    chunk_size = None if chunk_size is None else _check_chunk_size(chunk_size)
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
    rows = None if bool_mask is None else bool_mask.reshape(-1).nonzero().squeeze(-1)
    if rows is not None:  # masked positions contribute 0: skip their matmuls entirely
        hs_rows, ht_rows = hs_rows.index_select(0, rows), ht_rows.index_select(0, rows)
    s_head = LMHead(student_head_weight, student_head_bias, softcap=student_logit_softcap)
    t_head = LMHead(teacher_head_weight.detach(), None if teacher_head_bias is None else teacher_head_bias.detach(),
                    softcap=teacher_logit_softcap)

    def per_chunk(zs: torch.Tensor, zt: torch.Tensor | None, _rows: slice) -> torch.Tensor:
        return fn(zs, zt, reduction="none")[:, None]

    dtype = compute_dtype(torch.promote_types(student_hidden.dtype, student_head_weight.dtype))
    if reduction != "none":
        weights = _reduction_weights(bool_mask, lead, rows, reduction, student_hidden.device).to(dtype)
        _, objective = fused_head_values(per_chunk, hs_rows, s_head, ht_rows, t_head, weights=weights,
                                         chunk_size=chunk_size)
        return objective
    values, _ = fused_head_values(per_chunk, hs_rows, s_head, ht_rows, t_head, chunk_size=chunk_size)
    values = values[:, 0].to(dtype)
    if rows is None:
        return values.reshape(lead)
    out = torch.zeros(lead.numel(), dtype=dtype, device=student_hidden.device)
    return out.index_put((rows,), values).reshape(lead)
