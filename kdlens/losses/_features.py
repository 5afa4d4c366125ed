"""Similarity losses on features: hidden states, attention maps, any ``[..., D]`` representation.

REFERENCE.md section 2 (the lecture's table "Similarity Function L_F"): L2, L1, cosine,
cross-entropy and MMD between ``Phi_T`` and ``Phi_S``; the PKD patient loss; MiniLM's attention KL;
and a learned projection for students narrower than their teacher.

Layer indices follow Hugging Face's ``output_hidden_states=True`` tuple: ``hidden_states[0]`` is
the embedding output and ``hidden_states[i]`` the output of block ``i`` (1-based), so a model with
``n`` layers has ``n + 1`` entries. :func:`layer_map` returns indices into those tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._common import as_mask, check_reduction, check_temperature, compute_dtype, reduce

__all__ = [
    "FEATURE_KINDS",
    "LAYER_MAP_STRATEGIES",
    "feature_loss",
    "mmd_rbf",
    "layer_map",
    "pkd_loss",
    "attention_kl",
    "FeatureProjection",
]

#: similarity functions of :func:`feature_loss` (``kind=``)
FEATURE_KINDS = ("l2", "l1", "mse", "cosine", "ce", "mmd")
#: named student-to-teacher layer maps of :func:`layer_map`
LAYER_MAP_STRATEGIES = ("uniform", "skip", "last")


class FeatureProjection(nn.Module):
    """Learned linear map from student width to teacher width, ``[..., D_s] -> [..., D_t]``.

    Parameters
    ----------
    student_dim, teacher_dim : int
        Feature widths.
    bias : bool
        Whether the map has a bias.

    Notes
    -----
    Used when a narrower student is matched to teacher features (TinyBERT's ``W_h``; PKD with
    different widths). When the widths are equal the weight starts as the identity, so the loss
    starts as the unprojected one; otherwise PyTorch's default ``nn.Linear`` initialization.
    Train it together with the student (include its parameters in the optimizer).
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        for name, dim in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"{name} must be a positive integer, got {dim!r}")
        self.linear = nn.Linear(student_dim, teacher_dim, bias=bias)
        if student_dim == teacher_dim:
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(teacher_dim))
                if bias:
                    self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``[..., D_s]`` student features to ``[..., D_t]``."""
        return self.linear(features)


def _pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||^2`` as ``[n, m]``; clamped at 0 (the expansion can round slightly below)."""
    return ((x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2.0 * x @ y.T).clamp_min(0.0)


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, *, bandwidth: float | None = None) -> torch.Tensor:
    r"""Unbiased squared maximum mean discrepancy with a Gaussian (RBF) kernel.

    Parameters
    ----------
    x : torch.Tensor
        ``[n, d]`` samples (e.g. student features), ``n >= 2``.
    y : torch.Tensor
        ``[m, d]`` samples (e.g. teacher features), ``m >= 2``.
    bandwidth : float, optional
        Kernel width :math:`\sigma > 0`. Default: the median heuristic, the median Euclidean
        distance between distinct points of the pooled sample (computed without gradient; 1.0 if
        that median is 0).

    Returns
    -------
    torch.Tensor
        Scalar :math:`\widehat{\mathrm{MMD}}^2_u`; unbiased, so it can be slightly negative when the
        two samples come from the same distribution.

    Notes
    -----
    Gretton et al. 2012 (JMLR), eq. 3, with :math:`k(a, b) = \exp(-\|a-b\|^2 / (2\sigma^2))`:

    .. math:: \frac{1}{n(n-1)}\sum_{i\ne j}k(x_i,x_j) + \frac{1}{m(m-1)}\sum_{i\ne j}k(y_i,y_j)
              - \frac{2}{nm}\sum_{i,j}k(x_i,y_j)

    References: Gretton et al. 2012, JMLR 13 (``gretton2012kernel``). ``kdlens cite`` prints these
    entries for a run that used this function (:mod:`kdlens.citations`).
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] < 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a [n, d] tensor with n >= 2 samples, got {got}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature width, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    dtype = compute_dtype(torch.promote_types(x.dtype, y.dtype))
    x, y = x.to(dtype), y.to(dtype)
    n, m = x.shape[0], y.shape[0]
    if bandwidth is None:
        with torch.no_grad():
            pooled = torch.cat([x, y])
            d2 = _pairwise_sq_dists(pooled, pooled)
            upper = torch.triu_indices(len(pooled), len(pooled), offset=1, device=pooled.device)
            median = d2[upper[0], upper[1]].sqrt().median()
            sigma = float(median) if float(median) > 0 else 1.0
    else:
        if not isinstance(bandwidth, (int, float)) or not bandwidth > 0 or bandwidth == float("inf"):
            raise ValueError(f"bandwidth must be a finite number > 0 (or None for the median heuristic), got {bandwidth!r}")
        sigma = float(bandwidth)
    gamma = 1.0 / (2.0 * sigma * sigma)
    k_xx = torch.exp(-gamma * _pairwise_sq_dists(x, x))
    k_yy = torch.exp(-gamma * _pairwise_sq_dists(y, y))
    k_xy = torch.exp(-gamma * _pairwise_sq_dists(x, y))
    # the diagonal of k_xx is exactly exp(0) = 1 (the clamp makes d2_ii >= 0 and near 0); drop it as n
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2.0 * k_xy.mean()


def _safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm along ``dim`` with gradient 0 (not NaN) at the zero vector."""
    sq = (x * x).sum(dim)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def _normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along the last dim (PKD's normalization; the zero vector stays 0)."""
    return x / _safe_norm(x).clamp_min(eps).unsqueeze(-1)


def feature_loss(
    student_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    *,
    kind: str = "l2",
    mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
    projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 1.0,
    bandwidth: float | None = None,
) -> torch.Tensor:
    r"""Distance between student and teacher features at each position, ``[..., D] -> loss``.

    Parameters
    ----------
    student_feats : torch.Tensor
        ``[..., D_s]`` student features (``Phi_S``), e.g. hidden states ``[B, T, D_s]``.
    teacher_feats : torch.Tensor
        ``[..., D_t]`` teacher features (``Phi_T``), same leading shape. Not detached here.
    kind : {"l2", "l1", "mse", "cosine", "ce", "mmd"}
        Per position: ``"l2"`` :math:`\|t - s\|_2`; ``"l1"`` :math:`\|t - s\|_1`; ``"mse"``
        :math:`\frac1D\|t - s\|_2^2`; ``"cosine"`` :math:`1 - \cos(s, t)`; ``"ce"``
        :math:`-\sum_d \mathrm{softmax}(t/\tau)_d \log\mathrm{softmax}(s/\tau)_d` (features read as
        scores over ``D``). ``"mmd"`` compares the *sets* of counted positions with
        :func:`mmd_rbf` (student = x, teacher = y) and returns a scalar.
    mask : torch.Tensor, optional
        bool ``[...]`` or labels with -100; masked positions are excluded.
    reduction : {"token_mean", "sequence_mean", "sum", "none"}
        For the per-position kinds; ``"mmd"`` accepts only ``"token_mean"`` (its value is one number).
    projection : Callable, optional
        Applied to ``student_feats`` first, e.g. :class:`FeatureProjection` when ``D_s != D_t``.
    temperature : float
        Only for ``"ce"``.
    bandwidth : float, optional
        Only for ``"mmd"`` (default: median heuristic).

    Returns
    -------
    torch.Tensor
        Scalar, or ``[...]`` for ``reduction="none"``.

    Notes
    -----
    With :math:`h_S` the (projected) student features and :math:`h_T` the teacher's, per position:
    ``"l2"`` :math:`\|h_T - h_S\|_2`, ``"l1"`` :math:`\|h_T - h_S\|_1`, ``"mse"`` :math:`\frac1D\|h_T -
    h_S\|_2^2`, ``"cosine"`` :math:`1 - \cos(h_T, h_S)`, ``"ce"`` :math:`-\sum_d
    \mathrm{softmax}(h_T/\tau)_d \log \mathrm{softmax}(h_S/\tau)_d`; ``"mmd"`` compares the two sets of
    positions with :func:`mmd_rbf`. Matching intermediate features through a learned regressor is
    FitNets' hint training.

    References: Romero et al. 2015, FitNets, ICLR (``romero2015fitnets``); Gretton et al. 2012, JMLR 13,
    for MMD (``gretton2012kernel``). ``kdlens cite`` prints these entries for a run that used this
    function (:mod:`kdlens.citations`).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature loss kind {kind!r}; known kinds: {', '.join(FEATURE_KINDS)}")
    check_reduction(reduction)
    tau = check_temperature(temperature)
    if projection is not None:
        student_feats = projection(student_feats)
    if student_feats.shape != teacher_feats.shape:
        raise ValueError(
            f"student_feats shape {tuple(student_feats.shape)} does not match teacher_feats shape "
            f"{tuple(teacher_feats.shape)}; for different widths pass projection=FeatureProjection(d_s, d_t)"
        )
    dtype = compute_dtype(torch.promote_types(student_feats.dtype, teacher_feats.dtype))
    s, t = student_feats.to(dtype), teacher_feats.to(dtype)
    bool_mask = as_mask(mask, s.shape[:-1], s.device)
    if kind == "mmd":
        if reduction != "token_mean":
            raise ValueError(f"kind='mmd' compares two sets of positions and returns one value; reduction {reduction!r} is not supported")
        flat_s, flat_t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        if bool_mask is not None:
            keep = bool_mask.reshape(-1)
            flat_s, flat_t = flat_s[keep], flat_t[keep]
        return mmd_rbf(flat_s, flat_t, bandwidth=bandwidth)
    diff = t - s
    if kind == "l2":
        values = _safe_norm(diff)
    elif kind == "l1":
        values = diff.abs().sum(-1)
    elif kind == "mse":
        values = (diff * diff).mean(-1)
    elif kind == "cosine":
        values = 1.0 - (_normalize(s) * _normalize(t)).sum(-1)
    else:  # ce
        values = -(torch.softmax(t / tau, dim=-1) * torch.log_softmax(s / tau, dim=-1)).sum(-1)
    return reduce(values, bool_mask, reduction)


def layer_map(
    n_student: int, n_teacher: int, strategy: str | Sequence[int] | Sequence[tuple[int, int]] = "uniform"
) -> list[tuple[int, int]]:
    """Which teacher layer each student layer is matched to, as ``(student_index, teacher_index)``.

    Indices point into ``output_hidden_states`` tuples (0 = embeddings, ``i`` = block ``i``).

    Parameters
    ----------
    n_student, n_teacher : int
        Number of transformer blocks, ``1 <= n_student <= n_teacher``.
    strategy : {"uniform", "skip", "last"} or sequence
        - ``"uniform"``: student block ``i`` -> teacher block ``floor(i * n_teacher / n_student)``
          for ``i = 1..n_student`` (the last blocks are matched; 12 -> 6 gives 2, 4, ..., 12).
        - ``"skip"``: PKD-Skip (Sun et al. 2019): the same for ``i = 1..n_student-1`` only, the
          top being left to the output loss (12 -> 6 gives 2, 4, 6, 8, 10).
        - ``"last"``: PKD-Last: the teacher blocks just below its top, ``n_teacher - n_student + i``
          for ``i = 1..n_student-1`` (12 -> 6 gives 7, 8, 9, 10, 11).
        - a sequence of ints: teacher indices for student blocks ``1, 2, ...`` in order;
        - a sequence of ``(student_index, teacher_index)`` pairs, used as given (may include 0).

    Returns
    -------
    list of tuple of int

    Notes
    -----
    PKD-Skip and PKD-Last are the two strategies of Patient KD. References: Sun et al. 2019, EMNLP-
    IJCNLP (``sun2019patient``). ``kdlens cite`` prints these entries for a run that used this function
    (:mod:`kdlens.citations`).
    """
    for name, n in (("n_student", n_student), ("n_teacher", n_teacher)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer (number of layers), got {n!r}")
    if isinstance(strategy, str):
        if strategy not in LAYER_MAP_STRATEGIES:
            raise ValueError(
                f"unknown layer map strategy {strategy!r}; use one of {', '.join(LAYER_MAP_STRATEGIES)} "
                "or an explicit list of teacher indices or (student, teacher) pairs"
            )
        if n_student > n_teacher:
            raise ValueError(f"strategy {strategy!r} needs n_student <= n_teacher, got {n_student} > {n_teacher}")
        if strategy == "uniform":
            return [(i, i * n_teacher // n_student) for i in range(1, n_student + 1)]
        if strategy == "skip":
            return [(i, i * n_teacher // n_student) for i in range(1, n_student)]
        return [(i, n_teacher - n_student + i) for i in range(1, n_student)]
    items = list(strategy)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        pairs = [(i + 1, t) for i, t in enumerate(items)]
    elif all(isinstance(x, (tuple, list)) and len(x) == 2 for x in items):
        pairs = [(int(s), int(t)) for s, t in items]
    else:
        raise ValueError("an explicit layer map is a list of teacher indices or of (student, teacher) pairs")
    for s_idx, t_idx in pairs:
        if not 0 <= s_idx <= n_student:
            raise ValueError(f"student index {s_idx} is outside 0..{n_student} (0 = embeddings)")
        if not 0 <= t_idx <= n_teacher:
            raise ValueError(f"teacher index {t_idx} is outside 0..{n_teacher} (0 = embeddings)")
    return pairs


# pkd_loss's keyword ``layer_map`` shadows the function inside it
_resolve_layer_map = layer_map


def pkd_loss(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    *,
    layer_map: str | Sequence[int] | Sequence[tuple[int, int]] = "skip",
    mask: torch.Tensor | None = None,
    projection: Callable | Sequence[Callable] | None = None,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""PKD patient loss: MSE between L2-normalized hidden states of mapped layers.

    Parameters
    ----------
    student_hidden_states, teacher_hidden_states : sequence of torch.Tensor
        ``output_hidden_states`` tuples, each entry ``[B, T, D]`` (``n_layers + 1`` entries).
    layer_map : str or sequence
        A strategy or explicit map for :func:`layer_map` (default ``"skip"``, PKD-Skip), or the
        pairs it returned.
    mask : torch.Tensor, optional
        bool ``[B, T]`` or labels with -100.
    projection : Callable or sequence of Callable, optional
        Student-to-teacher width map(s) (:class:`FeatureProjection`): one shared, or one per pair.
    reduction : {"token_mean", "sequence_mean", "sum", "none"}
        Over positions, after averaging over mapped layers.

    Returns
    -------
    torch.Tensor
        Scalar, or ``[B, T]`` for ``reduction="none"``.

    Notes
    -----
    Sun et al. 2019 (PKD), with every counted position instead of only ``[CLS]``:

    .. math:: \frac{1}{|M|}\sum_{(i,j)\in M} \frac{1}{D}
              \Big\| \frac{h^S_i}{\|h^S_i\|_2} - \frac{h^T_j}{\|h^T_j\|_2} \Big\|_2^2

    per position (MPDistil's ``beta`` term uses the same normalized MSE). PKD's paper sums over
    layers and dims: multiply by ``|M| * D`` to get that scale.

    References: Sun et al. 2019, EMNLP-IJCNLP (``sun2019patient``). ``kdlens cite`` prints these entries
    for a run that used this function (:mod:`kdlens.citations`).
    """
    n_s, n_t = len(student_hidden_states) - 1, len(teacher_hidden_states) - 1
    if n_s < 1 or n_t < 1:
        raise ValueError("hidden_states must hold the embeddings plus at least one layer (output_hidden_states=True)")
    pairs = _resolve_layer_map(n_s, n_t, layer_map)
    if not pairs:
        raise ValueError(f"the layer map for {n_s} student and {n_t} teacher layers is empty")
    projections = list(projection) if isinstance(projection, (list, tuple, nn.ModuleList)) else [projection] * len(pairs)
    if len(projections) != len(pairs):
        raise ValueError(f"got {len(projections)} projections for {len(pairs)} mapped layers")
    per_layer = []
    for (s_idx, t_idx), proj in zip(pairs, projections, strict=True):
        hs = student_hidden_states[s_idx]
        if proj is not None:
            hs = proj(hs)
        ht = teacher_hidden_states[t_idx]
        if hs.shape != ht.shape:
            raise ValueError(
                f"student layer {s_idx} {tuple(hs.shape)} and teacher layer {t_idx} {tuple(ht.shape)} differ in "
                "shape; pass projection=FeatureProjection(d_student, d_teacher) for different widths"
            )
        dtype = compute_dtype(torch.promote_types(hs.dtype, ht.dtype))
        diff = _normalize(hs.to(dtype)) - _normalize(ht.to(dtype))
        per_layer.append((diff * diff).mean(-1))
    values = torch.stack(per_layer).mean(0)
    return reduce(values, as_mask(mask, values.shape, values.device), reduction)


def attention_kl(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
) -> torch.Tensor:
    r"""MiniLM's attention transfer: KL of teacher to student attention distributions.

    Parameters
    ----------
    student_attn, teacher_attn : torch.Tensor
        ``[B, H, T, T]`` attention *probabilities* (rows sum to 1 over the key axis), e.g. one
        entry of ``output_attentions``; same number of heads.
    mask : torch.Tensor, optional
        bool ``[B, T]`` or labels with -100, over query positions.
    reduction : {"token_mean", "sequence_mean", "sum", "none"}
        Over query positions, after averaging over heads.

    Returns
    -------
    torch.Tensor
        Scalar, or ``[B, T]`` for ``reduction="none"``.

    Notes
    -----
    Wang et al. 2020 (MiniLM):
    :math:`\frac{1}{H}\sum_h \sum_k a^T_{h,q,k} (\log a^T_{h,q,k} - \log a^S_{h,q,k})` per query
    ``q``; keys the teacher gives 0 weight (causal or padding) contribute 0.

    References: Wang et al. 2020, MiniLM, NeurIPS (``wang2020minilm``). ``kdlens cite`` prints these
    entries for a run that used this function (:mod:`kdlens.citations`).
    """
    check_reduction(reduction)
    for name, a in (("student_attn", student_attn), ("teacher_attn", teacher_attn)):
        if not isinstance(a, torch.Tensor) or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"{name} must be attention probabilities [B, H, T, T], got {got}")
    if student_attn.shape != teacher_attn.shape:
        raise ValueError(
            f"student_attn shape {tuple(student_attn.shape)} does not match teacher_attn shape "
            f"{tuple(teacher_attn.shape)} (MiniLM needs the same heads and length)"
        )
    dtype = compute_dtype(torch.promote_types(student_attn.dtype, teacher_attn.dtype))
    a_s, a_t = student_attn.to(dtype), teacher_attn.to(dtype)
    present = a_t > 0
    one = torch.ones((), dtype=dtype, device=a_s.device)
    # where-before-log keeps log(0) out of both passes where the teacher weight is 0
    log_ratio = torch.log(torch.where(present, a_t, one)) - torch.log(torch.where(present, a_s, one))
    terms = torch.where(present, a_t * log_ratio, torch.zeros((), dtype=dtype, device=a_s.device))
    values = terms.sum(-1).mean(1)  # [B, T]
    return reduce(values, as_mask(mask, values.shape, values.device), reduction)
