"""The teacher signal: online logits or a top-k cache, with noise sigma and temperature tau.

Two sources give the KD loss the teacher's next-token distribution on the response tokens:

* **online** — the teacher runs under ``no_grad`` on every batch and returns its last hidden states
  ``[B, T, H]`` and its lm head (the default fused path, ``kd_path``: :func:`fused_kd_token_loss`
  computes the logits of a chunk of tokens at a time, for teacher and student alike), or its full
  logits ``[B, T, V]`` (the plain path, :func:`kd_token_loss`);
* **cache** — a first pass stores, per response token, the teacher's top-k *raw* logits, their
  token ids and the residual log-mass ``rho = log(1 - sum_{v in top-k} p_v)`` (tau = 1, raw
  logits). Later runs (a sigma or tau sweep) read the cache instead of running the teacher.

Controls act on the teacher's RAW logits, before tau: Gaussian noise ``z + sigma * N(0, 1)``, then
``softmax(z / tau)`` inside the divergence. The noise of one token row is a pure function of
``(seed, step, example, position)`` (:func:`teacher_noise`): only the data decide it, not the
gradient accumulation, the process count, the padding or the other rows of the batch, and a resumed
run draws the same.

Top-k approximation (cache)
---------------------------
The cache keeps k of V logits per token plus ``rho``; the loss needs a full distribution. Two
stand-ins, chosen with ``cache_tail`` (both exact at tau = 1 on the top-k tokens and on the total
tail mass, both equal to the online loss when k = V, tested):

* ``"uniform"`` (default): :func:`dense_teacher_logits` rebuilds full logits, each of the
  ``m = V - k`` tail tokens getting ``log(tail mass / m) + logZ``; the student side is its exact
  full distribution and noise is drawn per vocabulary entry, as online.
* ``"bucket"``: :func:`topk_pseudo_logits` compares (k+1)-way distributions, the tail merged into
  one "rest" token on both sides (teacher pseudo-logit ``rho + logZ``, student ``logsumexp`` of its
  logits outside the teacher's top-k). By the data-processing inequality this lower-bounds KL.

What neither can know is how the teacher spreads its tail. Temperature acts on that spread: at
tau > 1 the true tempered tail mass ``sum_v exp(z_v / tau)`` lies between the bucket's (the tail
tempered as one token: too small) and the uniform one's (the largest possible for the stored
mass: too large). Measured on SmolLM2-135M-Instruct -> its untrained 6-layer prune, math_data.json,
2 batches of 4 sequences <= 256 tokens (``benchmarks/bench_kd_step.py --topk-error --n-batches 2``;
relative loss error / cosine of the gradient w.r.t. the student logits, k = 8 / 32 / 128):

* forward KL, tau = 1: uniform -2.7 % / -0.8 % / -0.3 %, cosine >= 0.9998; bucket -5 % / -1.8 % / -0.7 %;
* forward KL, tau = 2: uniform -65 % / -47 % / -38 %, cosine 0.90 / 0.95 / 0.98; bucket within
  10 % in value but cosine 0.83-0.86;
* reverse KL, tau = 1: uniform -48 % / -39 % / -34 %, cosine 0.80; bucket -78 % / -69 % / -64 % and a
  gradient pointing the wrong way (cosine < 0).

So a cache is a good stand-in for forward-KL sweeps at tau = 1 (e.g. sigma sweeps); for reverse KL,
tau != 1 or mode-seeking losses on a student far from its teacher, prefer ``teacher_source=online``
or a large k. Noise on a cache entry perturbs the rebuilt logits (uniform) or the k + 1
pseudo-logits (bucket), not the teacher's true tail.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdlens._io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_stale_temporaries,
    sha256_json,
)
from kdlens.losses._common import compute_dtype
from kdlens.losses._fused import LMHead, fused_head_values

__all__ = [
    "TopK",
    "TeacherCache",
    "NoiseKey",
    "noise_seed",
    "teacher_noise",
    "add_noise",
    "topk_signal",
    "topk_pseudo_logits",
    "dense_teacher_logits",
    "kd_token_loss",
    "FusedKD",
    "fused_kd_token_loss",
    "response_mask",
    "cache_key",
]

#: Pseudo-logit margin for an empty rest bucket: exp(-1e4) == 0 in float32, so the bucket has
#: exactly zero probability while its log stays finite (0 * log 0 would give NaN in the KL sums).
_EMPTY_BUCKET_MARGIN = 1.0e4
#: 2: keyed and checked by the teacher's weights fingerprint (1 was keyed by the teacher's path)
_CACHE_FORMAT = 2


@dataclass
class TopK:
    """Top-k teacher logits per position.

    Attributes
    ----------
    values : Tensor, float [..., k]
        Raw teacher logits of the k most likely tokens (descending).
    indices : Tensor, long [..., k]
        Their token ids.
    residual : Tensor, float [...]
        ``log(1 - sum of their teacher probabilities)`` at tau = 1 (``-inf`` when k = V).
    """

    values: torch.Tensor
    indices: torch.Tensor
    residual: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.values.shape[-1])


def noise_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``(seed, *parts)`` (e.g. step, purpose).

    Deriving instead of carrying one generator makes every draw a pure function of the step, so a
    resumed run reproduces it without saving generator state.
    """
    blob = struct.pack(f">{1 + len(parts)}q", int(seed), *(int(p) for p in parts))
    return int.from_bytes(hashlib.sha256(b"kdlens-teacher-noise" + blob).digest()[:8], "big") >> 1


def _int64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits (torch has no uint64 math)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# SplitMix64 (Steele, Lea & Flood 2014): the Weyl increment and the two multipliers of its finalizer
_GOLDEN = _int64(0x9E3779B97F4A7C15)
_MIX1 = _int64(0xBF58476D1CE4E5B9)
_MIX2 = _int64(0x94D049BB133111EB)
#: entries of the noise computed at once: bounds the int64 temporaries (8 MiB on a CPU, where small
#: blocks stay in cache, measured ~20 % faster than 32 MiB ones; 512 MiB on a GPU: fewer launches)
_NOISE_BLOCK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` copies the sign bit)."""
    return (x >> k).bitwise_and_((1 << (64 - k)) - 1)


def _fmix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer, a bijection of 64-bit words, IN PLACE on ``z`` (int64 products wrap mod 2**64)."""
    z.bitwise_xor_(_srl(z, 30)).mul_(_MIX1)
    z.bitwise_xor_(_srl(z, 27)).mul_(_MIX2)
    return z.bitwise_xor_(_srl(z, 31))


def _row_keys(seed: int, step: int, example_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    base = noise_seed(seed, step)
    return _fmix64(_fmix64(example_ids.long() ^ base) ^ positions.long())


def _normals_into(out: torch.Tensor, keys: torch.Tensor) -> None:
    """Standard normals into ``out`` [len(keys), V] (float32): a SplitMix64 stream per key, Box-Muller pairs."""
    vocab = out.shape[-1]
    pairs = (vocab + 1) // 2
    counter = torch.arange(1, pairs + 1, dtype=torch.long, device=keys.device) * _GOLDEN
    z = _fmix64(keys[:, None] + counter)  # output number j of SplitMix64 started at the row's key
    # 24-bit uniforms: u1 in (0, 1) from the top bits, the angle from the next 24
    radius = _srl(z, 40).float().add_(0.5).mul_(2.0**-24).log_().mul_(-2.0).sqrt_()
    angle = z.bitwise_right_shift_(16).bitwise_and_(0xFFFFFF).float().mul_(2.0 * math.pi * 2.0**-24)
    if vocab % 2 == 0:  # entry 2j is the cosine of pair j, entry 2j + 1 its sine
        view = out.view(len(keys), pairs, 2)
        torch.mul(radius, torch.cos(angle), out=view[..., 0])
        torch.mul(radius, angle.sin_(), out=view[..., 1])
    else:
        both = torch.stack([radius * torch.cos(angle), radius * angle.sin_()], dim=-1)
        out.copy_(both.reshape(len(keys), -1)[:, :vocab])


@dataclass(frozen=True)
class NoiseKey:
    """What the teacher noise of a batch is a function of.

    Attributes
    ----------
    seed : int
        The run seed.
    step : int
        The optimizer step (0-based).
    example_ids : sequence of int
        One id per batch row: the row's dataset index (unique within a step). Token position ``t``
        of row ``i`` (the logit predicting token ``t + 1``, counted from the sequence start, as in
        right-padded training batches) draws :func:`teacher_noise` ``(seed, step, example_ids[i], t)``.
    """

    seed: int
    step: int
    example_ids: Sequence[int]


def teacher_noise(seed: int, step: int, example_ids: torch.Tensor | Sequence[int],
                  positions: torch.Tensor | Sequence[int], vocab: int, *,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise for token rows: row ``i`` is a pure function of ``(seed, step, example_ids[i],
    positions[i])``.

    Parameters
    ----------
    seed, step : int
        Run seed and optimizer step.
    example_ids, positions : Tensor [N] or sequence of int
        The example (dataset index) and the token position of each row.
    vocab : int
        Entries per row.
    device : device, optional
        Where to compute (default: the ids' device). Integer hashing gives the same bits on every
        device; the float transform (log, sqrt, cos) may differ by a rounding unit.

    Returns
    -------
    Tensor, float32 [N, vocab]
        Entry ``v`` of a row never depends on which other rows are generated with it, nor on ``vocab``
        beyond ``v``: any chunk of rows (a fused, chunked divergence) can be drawn on its own.

    Notes
    -----
    A counter-based generator: the row key ``fmix64(fmix64(example ^ S) ^ position)``, with ``S`` a
    SHA-256 of ``(seed, step)`` (:func:`noise_seed`), starts a SplitMix64 stream (Steele et al.
    2014); its output ``j`` gives two 24-bit uniforms and, by Box-Muller, entries ``2j`` (cos) and
    ``2j + 1`` (sin). The uniforms are offset by half a unit, so draws stay below 5.9 sigma.
    """
    ids = torch.as_tensor(example_ids, dtype=torch.long, device=device)
    pos = torch.as_tensor(positions, dtype=torch.long, device=ids.device)
    if ids.shape != pos.shape or ids.ndim != 1:
        raise ValueError(f"example_ids and positions must be 1-D of one length, got {tuple(ids.shape)} and "
                         f"{tuple(pos.shape)}")
    if vocab < 1:
        raise ValueError(f"vocab must be >= 1, got {vocab}")
    keys = _row_keys(seed, step, ids, pos)
    out = torch.empty(len(keys), vocab, dtype=torch.float32, device=ids.device)
    block = max(1, _NOISE_BLOCK_ELEMENTS.get(ids.device.type, 1 << 20) // vocab)
    for start in range(0, len(keys), block):
        _normals_into(out[start:start + block], keys[start:start + block])
    return out


def add_noise(logits: torch.Tensor, sigma: float, *, key: NoiseKey | None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``logits + sigma * teacher_noise(...)`` (float32) at the rows that count.

    Parameters
    ----------
    logits : Tensor, float [B, T, V]
        Raw teacher logits (before temperature), aligned so that row ``b``, position ``t`` belongs
        to example ``key.example_ids[b]`` at position ``t``.
    sigma : float
        Noise standard deviation, >= 0; 0 returns the logits unchanged (as float32, or float64).
    key : NoiseKey
        Seed, step and example ids; required when ``sigma > 0``.
    mask : Tensor, bool [B, T], optional
        Positions that count: only they are drawn (the others are returned unchanged, as the loss
        ignores them). None draws every position.
    """
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    logits = logits.to(compute_dtype(logits.dtype))
    if sigma == 0:
        return logits
    if key is None:
        raise ValueError("sigma > 0 needs a NoiseKey (seed, step, example ids) to draw the teacher noise from")
    b, t = logits.shape[:2]
    if len(key.example_ids) != b:
        raise ValueError(f"NoiseKey has {len(key.example_ids)} example ids for a batch of {b} rows")
    where = torch.ones(b, t, dtype=torch.bool, device=logits.device) if mask is None else mask.to(logits.device)
    rows, positions = where.nonzero(as_tuple=True)
    ids = torch.as_tensor(list(key.example_ids), dtype=torch.long, device=logits.device)[rows]
    noise = teacher_noise(key.seed, key.step, ids, positions, logits.shape[-1], device=logits.device)
    return logits.index_put((rows, positions), noise.mul_(sigma).to(logits.dtype), accumulate=True)


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose NEXT token is a target: ``labels[:, 1:] != -100``.

    Parameters
    ----------
    labels : Tensor, long [B, T]

    Returns
    -------
    Tensor, bool [B, T - 1]
        Aligned with ``logits[:, :-1]`` (logits at t predict token t + 1).
    """
    return labels[:, 1:] != -100


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for x <= 0, stable on both sides of -log 2 (Maechler 2012)."""
    x = x.clamp_max(0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_signal(logits: torch.Tensor, k: int) -> TopK:
    """The top-k raw logits, their ids and the residual log-mass of ``logits``.

    Parameters
    ----------
    logits : Tensor, float [..., V]
        Raw teacher logits.
    k : int
        Number of tokens to keep (clipped to V).
    """
    logits = logits.float()
    k = min(int(k), logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    lse_all = logits.logsumexp(-1)
    if k == logits.shape[-1]:
        residual = torch.full_like(lse_all, -math.inf)
    else:
        rest = logits.scatter(-1, indices, -math.inf)
        residual = rest.logsumexp(-1) - lse_all
    return TopK(values=values, indices=indices, residual=residual)


def topk_pseudo_logits(student_logits: torch.Tensor, topk: TopK) -> tuple[torch.Tensor, torch.Tensor]:
    """(k+1)-way logits of student and teacher: the teacher's top-k tokens plus a rest bucket.

    Parameters
    ----------
    student_logits : Tensor, float [..., V]
    topk : TopK
        With ``values``/``indices`` [..., k] and ``residual`` [...].

    Returns
    -------
    student, teacher : Tensor, float32 [..., k + 1]
        ``softmax(teacher)`` is the teacher's exact (k+1)-way distribution at tau = 1;
        ``softmax(student)`` is the student's probability of each top-k token and of the rest.
    """
    s = student_logits.float()
    t_vals = topk.values.float()
    s_top = s.gather(-1, topk.indices)
    if topk.k == s.shape[-1]:
        s_rest = torch.full_like(s_top[..., 0], -math.inf)
    else:
        s_rest = s.scatter(-1, topk.indices, -math.inf).logsumexp(-1)
    # teacher log-normalizer from the top-k logits and rho: sum_k exp(z_k - logZ) = 1 - exp(rho)
    log_z = t_vals.logsumexp(-1) - _log1mexp(topk.residual.float())
    t_rest = topk.residual.float() + log_z
    t_rest = torch.maximum(t_rest, t_vals.amax(-1) - _EMPTY_BUCKET_MARGIN)
    s_rest = torch.maximum(s_rest, s_top.amax(-1) - _EMPTY_BUCKET_MARGIN)
    return torch.cat([s_top, s_rest.unsqueeze(-1)], -1), torch.cat([t_vals, t_rest.unsqueeze(-1)], -1)


def dense_teacher_logits(topk: TopK, vocab_size: int) -> torch.Tensor:
    """Full-vocabulary teacher logits rebuilt from a top-k entry, the tail spread uniformly.

    The k cached tokens keep their raw logits; each of the ``m = V - k`` other tokens gets
    ``log(sum of the tail's exp-logits / m)``, so the tail keeps exactly its cached mass at tau = 1
    and the distribution equals the teacher's when k = V.

    Parameters
    ----------
    topk : TopK
        Fields [..., k] / [...].
    vocab_size : int
        V, the width of the student logits it will be compared with.

    Returns
    -------
    Tensor, float32 [..., V]
    """
    values = topk.values.float()
    m = vocab_size - topk.k
    if m < 0:
        raise ValueError(f"top-k entry has k={topk.k} > vocab_size={vocab_size}")
    if m == 0:
        fill = torch.zeros_like(values[..., 0])
    else:
        log_z = values.logsumexp(-1) - _log1mexp(topk.residual.float())
        fill = topk.residual.float() + log_z - math.log(m)
        fill = torch.maximum(fill, values.amax(-1) - _EMPTY_BUCKET_MARGIN)
    dense = fill.unsqueeze(-1).expand(*values.shape[:-1], vocab_size).clone()
    return dense.scatter_(-1, topk.indices, values)


def kd_token_loss(loss_fn: Callable[..., torch.Tensor], student_logits: torch.Tensor,
                  teacher: torch.Tensor | TopK, *, mask: torch.Tensor, temperature: float = 1.0,
                  scale_by_temperature_squared: bool = False, sigma: float = 0.0,
                  noise: NoiseKey | None = None, tail: str = "uniform") -> torch.Tensor:
    """Per-token KD loss from full teacher logits or a top-k signal, noise applied first.

    Parameters
    ----------
    loss_fn : callable
        A divergence with the :mod:`kdlens.losses` call shape (student first).
    student_logits : Tensor, float [B, T, V]
    teacher : Tensor [B, T, V] or TopK with [B, T, k] fields
        Raw teacher logits (online) or their top-k cache entry.
    mask : Tensor, bool [B, T]
        Positions that count.
    temperature, scale_by_temperature_squared
        Passed to ``loss_fn``.
    sigma : float
        Noise std added to the raw teacher (pseudo-)logits before tau.
    noise : NoiseKey or None
        Seed, step and example ids the noise is drawn from (:func:`add_noise`); needed when sigma > 0.
    tail : {"uniform", "bucket"}
        How a top-k entry stands in for the full teacher: ``"uniform"`` rebuilds full logits with
        the tail spread evenly (:func:`dense_teacher_logits`; the student side is exact), ``"bucket"``
        compares (k+1)-way distributions (:func:`topk_pseudo_logits`; the noise of the k + 1
        pseudo-logits is the first k + 1 entries of the row's draw). Ignored for full logits.

    Returns
    -------
    Tensor, float32 [B, T]
        Per-token loss, 0 at masked positions.
    """
    if hasattr(teacher, "kd_token_loss"):  # a teacher on its own tokenization (kdlens.distill._cross_tokenizer)
        return teacher.kd_token_loss(loss_fn, student_logits, mask=mask, temperature=temperature,
                                     scale_by_temperature_squared=scale_by_temperature_squared, sigma=sigma, noise=noise)
    if isinstance(teacher, TopK) and tail == "uniform":
        student, teacher_logits = student_logits, dense_teacher_logits(teacher, student_logits.shape[-1])
    elif isinstance(teacher, TopK) and tail == "bucket":
        student, teacher_logits = topk_pseudo_logits(student_logits, teacher)
    elif isinstance(teacher, TopK):
        raise ValueError(f"tail={tail!r} is not one of ['uniform', 'bucket']")
    else:
        student, teacher_logits = student_logits, teacher.to(compute_dtype(teacher.dtype))
    teacher_logits = add_noise(teacher_logits, sigma, key=noise, mask=mask)
    return loss_fn(student, teacher_logits, mask=mask, temperature=temperature,
                   scale_by_temperature_squared=scale_by_temperature_squared, reduction="none")


@dataclass
class FusedKD:
    """What :func:`fused_kd_token_loss` returns.

    Attributes
    ----------
    loss : Tensor, scalar
        ``kd_weight * sum(kd) + ce_weight * sum(ce)``, differentiable with respect to the student.
    kd : Tensor, float32 [B, T]
        Per-token KD loss, 0 at masked positions (detached).
    ce : Tensor, float32 [B, T] or None
        Per-token cross-entropy of the targets at temperature 1, 0 at masked positions (detached);
        None without targets.
    """

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor | None


def fused_kd_token_loss(loss_fn: Callable[..., torch.Tensor], student_hidden: torch.Tensor, student_head: LMHead,
                        teacher_hidden: torch.Tensor, teacher_head: LMHead, *, mask: torch.Tensor,
                        temperature: float = 1.0, scale_by_temperature_squared: bool = False, sigma: float = 0.0,
                        noise: NoiseKey | None = None, targets: torch.Tensor | None = None, kd_weight: float = 1.0,
                        ce_weight: float = 0.0, chunk_size: int | None = None) -> FusedKD:
    """:func:`kd_token_loss` (and the gold CE) from final hidden states and lm heads, a chunk of tokens at a time.

    The same numbers as the plain path, which materialises ``student_logits`` and the teacher's
    ``[B, T, V]`` logits: for each chunk of response tokens the two heads give the chunk's logits,
    the teacher's get ``sigma * teacher_noise(seed, step, example, position)`` (the very draw
    :func:`add_noise` adds to that row), and ``loss_fn`` compares them at ``temperature`` (with the
    tau^2 factor when asked); the cross-entropy of ``targets`` comes from the same chunk of student
    logits. No ``[B, T, V]`` tensor exists, in the forward or the backward pass.

    Parameters
    ----------
    loss_fn : callable
        A divergence with the :mod:`kdlens.losses` call shape (student first).
    student_hidden : Tensor [B, T, H_s]
        The student's final hidden states (after its final norm), aligned with the logits that
        predict the next token (``hidden[:, :-1]`` of the forward pass).
    student_head, teacher_head : LMHead
        The two output layers, cut to the common vocabulary.
    teacher_hidden : Tensor [B, T, H_t]
        The teacher's, same alignment (no gradient).
    mask : Tensor, bool [B, T]
        Positions that count; the others are not computed.
    temperature, scale_by_temperature_squared, sigma, noise
        As :func:`kd_token_loss`.
    targets : Tensor, long [B, T] or None
        Gold next tokens (``labels[:, 1:]``): also return their per-token cross-entropy.
    kd_weight, ce_weight : float
        Weights of the two sums in ``loss`` (e.g. ``w / n_tokens`` and ``(1 - w) / n_tokens``); a
        zero ``ce_weight`` computes the cross-entropy without a graph (logged only).
    chunk_size : int or None
        Token rows per chunk (None: ``kdlens.losses._fused.auto_chunk_rows``).

    Returns
    -------
    FusedKD

    Notes
    -----
    The gradient is computed during the forward pass, chunk by chunk
    (``kdlens.losses._fused.fused_head_values``), so the lm-head products are as many as in a
    plain step; backward through ``loss`` twice is refused.
    """
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if sigma > 0 and noise is None:
        raise ValueError("sigma > 0 needs a NoiseKey (seed, step, example ids) to draw the teacher noise from")
    b, t = mask.shape
    if noise is not None and sigma > 0 and len(noise.example_ids) != b:
        raise ValueError(f"NoiseKey has {len(noise.example_ids)} example ids for a batch of {b} rows")
    device = student_hidden.device
    flat = mask.to(device).reshape(-1).nonzero().squeeze(-1)
    hs_rows = student_hidden.reshape(b * t, -1).index_select(0, flat)
    ht_rows = teacher_hidden.detach().reshape(b * t, -1).index_select(0, flat)
    target_rows = None if targets is None else targets.to(device).reshape(-1)[flat]
    if sigma > 0:
        ids = torch.as_tensor(list(noise.example_ids), dtype=torch.long, device=device)[flat // t]
        positions = flat % t

    def per_chunk(zs: torch.Tensor, zt: torch.Tensor, rows: slice) -> torch.Tensor:
        zt = zt.to(compute_dtype(zt.dtype))
        if sigma > 0:  # the rows' own draws: the same numbers add_noise gives the full tensor
            zt = zt + teacher_noise(noise.seed, noise.step, ids[rows], positions[rows], zt.shape[-1],
                                    device=device).mul_(sigma).to(zt.dtype)
        columns = [loss_fn(zs, zt, temperature=temperature, scale_by_temperature_squared=scale_by_temperature_squared,
                           reduction="none")]
        if target_rows is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and ce_weight != 0):
                columns.append(torch.nn.functional.cross_entropy(zs.to(compute_dtype(zs.dtype)), target_rows[rows],
                                                                 reduction="none").to(columns[0].dtype))
        return torch.stack(columns, -1)

    width = 1 if targets is None else 2
    weights = torch.tensor([kd_weight, ce_weight][:width], dtype=torch.float64, device=device).expand(len(flat), width)
    values, loss = fused_head_values(per_chunk, hs_rows, student_head, ht_rows, teacher_head, width=width,
                                     weights=weights, chunk_size=chunk_size)

    def spread(column: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(b * t, dtype=column.dtype, device=device)
        return out.index_put_((flat,), column.detach()).reshape(b, t)

    return FusedKD(loss=loss, kd=spread(values[:, 0]), ce=None if targets is None else spread(values[:, 1]))


def cache_key(*, teacher_weights: str, data_hash: str, max_length: int, top_k: int, dtype: str,
              vocab_size: int, precision: str = "float32") -> str:
    """Directory name of a teacher cache: a hash of what determines its content.

    ``teacher_weights`` is the teacher's weights fingerprint (:func:`kdlens.distill.weights_fingerprint`),
    not its name or path: a teacher retrained in place gets a cache of its own. ``precision`` is
    the teacher's compute precision (``"bfloat16"`` under bf16 autocast): a cache built in one
    precision is not read by a run in another.
    """
    return sha256_json({"teacher_weights": teacher_weights, "data_hash": data_hash, "max_length": max_length,
                        "top_k": top_k, "dtype": dtype, "vocab_size": vocab_size, "precision": precision,
                        "format": _CACHE_FORMAT})[:20]


class TeacherCache:
    """Top-k teacher logits of every response token of a dataset, in safetensors shards.

    Layout of ``<root>/<cache_key>/``: ``shard-NNNNN.safetensors`` (each written atomically;
    tensors ``values`` [N, k], ``indices`` [N, k] int32, ``residual`` [N] float32 and
    ``lengths`` [n_examples] int64 for the examples it holds, in dataset order), ``index.json``
    (teacher weights fingerprint and name, data hash, max_length, k, dtype, shard list) and a
    ``complete`` marker written last. A cache without the marker is rebuilt (finished shards are kept).

    Use :meth:`build` (runs the teacher) or :meth:`open` (reads an existing cache), then
    :meth:`batch` to fetch the entries of a collated batch.
    """

    def __init__(self, path: Path, index: Mapping[str, Any], values: torch.Tensor,
                 indices: torch.Tensor, residual: torch.Tensor, offsets: torch.Tensor) -> None:
        self.path = path
        self.index = dict(index)
        self._values = values
        self._indices = indices
        self._residual = residual
        self._offsets = offsets  # [n_examples + 1]: example i owns rows offsets[i]:offsets[i+1]

    @property
    def top_k(self) -> int:
        return int(self.index["top_k"])

    @property
    def n_examples(self) -> int:
        return int(self.index["n_examples"])

    @staticmethod
    def is_complete(path: str | os.PathLike) -> bool:
        return (Path(path) / "complete").is_file()

    @classmethod
    def open(cls, path: str | os.PathLike, *, teacher_weights: str | None = None,
             data_hash: str | None = None) -> TeacherCache:
        """Load a complete cache, checking that it belongs to this teacher (its weights fingerprint) and data."""
        from safetensors.torch import load_file

        path = Path(path)
        if not cls.is_complete(path):
            raise FileNotFoundError(f"{path} is not a complete teacher cache (no 'complete' marker); "
                                    "run with teacher_source=cache to build it")
        index = read_json(path / "index.json")
        if index.get("format") != _CACHE_FORMAT:
            raise ValueError(f"teacher cache {path} has format {index.get('format')!r}, not {_CACHE_FORMAT}; "
                             "delete it (it is rebuilt on the next run)")
        for name, want in (("teacher_weights", teacher_weights), ("data_hash", data_hash)):
            if want is not None and index.get(name) != want:
                raise ValueError(f"teacher cache {path} was built for {name}={index.get(name)!r}, "
                                 f"not {want!r}; delete it or point cache_dir elsewhere")
        parts = [load_file(str(path / shard["file"])) for shard in index["shards"]]
        values = torch.cat([p["values"] for p in parts]) if parts else torch.zeros(0, index["top_k"])
        indices = torch.cat([p["indices"] for p in parts]).long() if parts else torch.zeros(0, index["top_k"], dtype=torch.long)
        residual = torch.cat([p["residual"] for p in parts]) if parts else torch.zeros(0)
        lengths = torch.cat([p["lengths"] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
        if lengths.numel() != index["n_examples"] or int(lengths.sum()) != values.shape[0]:
            raise ValueError(f"teacher cache {path} is inconsistent with its index.json; delete it")
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        return cls(path, index, values, indices, residual, offsets)

    @classmethod
    def build(cls, path: str | os.PathLike, *, teacher: torch.nn.Module, features: Sequence[Mapping[str, Any]],
              collate: Callable[[Sequence[Mapping[str, Any]]], Mapping[str, torch.Tensor]], top_k: int,
              vocab_size: int, teacher_weights: str, data_hash: str, max_length: int, dtype: str = "float32",
              batch_size: int = 8, shard_size: int = 256, device: torch.device | str = "cpu",
              autocast_dtype: torch.dtype | None = None, progress: bool = False,
              teacher_name: str | None = None) -> TeacherCache:
        """Run the teacher over ``features`` (in order) and store its top-k logits per response token.

        Parameters
        ----------
        path : path
            Cache directory (usually ``root / cache_key(...)``).
        teacher : nn.Module
            Causal LM returning ``.logits`` [B, T, V_teacher].
        features : sequence of dict
            Encoded examples with ``input_ids``, ``attention_mask``, ``labels``.
        collate : callable
            Pads a list of features into tensors (``kdlens.data.collate`` with a pad id).
        top_k : int
            Logits kept per token (clipped to ``vocab_size``).
        vocab_size : int
            Common logit width of teacher and student; logits are truncated to it first.
        teacher_weights : str
            The teacher's weights fingerprint (:func:`kdlens.distill.weights_fingerprint`), checked by
            :meth:`open`; ``teacher_name`` is recorded for people only.
        """
        k = min(int(top_k), int(vocab_size))
        teacher.eval()

        def signal(chunk: Sequence[Mapping[str, Any]]) -> tuple[TopK, torch.Tensor]:
            batch = {key: value.to(device) for key, value in collate(chunk).items()}
            with torch.no_grad(), torch.autocast(device_type=torch.device(device).type,
                                                 dtype=autocast_dtype or torch.float32,
                                                 enabled=autocast_dtype is not None):
                logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            mask = response_mask(batch["labels"])
            return topk_signal(logits[:, :-1, :vocab_size].float()[mask], k), mask.sum(-1)

        return cls.build_from_signal(path, signal=signal, features=features, top_k=k, vocab_size=vocab_size,
                                     teacher_weights=teacher_weights, teacher_name=teacher_name, data_hash=data_hash,
                                     max_length=max_length, dtype=dtype, batch_size=batch_size,
                                     shard_size=shard_size, progress=progress)

    @classmethod
    def build_from_signal(cls, path: str | os.PathLike, *,
                          signal: Callable[[Sequence[Mapping[str, Any]]], tuple[TopK, torch.Tensor]],
                          features: Sequence[Mapping[str, Any]], top_k: int, vocab_size: int, teacher_weights: str,
                          data_hash: str, max_length: int, dtype: str = "float32", batch_size: int = 8,
                          shard_size: int = 256, progress: bool = False,
                          teacher_name: str | None = None) -> TeacherCache:
        """Store the top-k signal of any teacher source (a local model, an HTTP endpoint) as a cache.

        Parameters
        ----------
        signal : callable
            ``signal(features) -> (topk, lengths)`` for up to ``batch_size`` examples: ``topk`` with
            fields ``[N, top_k]`` / ``[N]``, one row per response token (examples in order, tokens in
            order), and ``lengths`` [n] the number of response tokens of each example.
        top_k : int
            k of every row.
        Other parameters as :meth:`build`.
        """
        from safetensors.torch import save

        path = Path(path)
        if cls.is_complete(path):
            return cls.open(path, teacher_weights=teacher_weights, data_hash=data_hash)
        path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)  # shards a killed build was writing (a live builder's are kept)
        store_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
        shards = []
        starts = range(0, len(features), shard_size)
        iterator = starts
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(starts, desc="teacher cache", unit="shard")
        for shard_no, start in enumerate(iterator):
            chunk = features[start:start + shard_size]
            name = f"shard-{shard_no:05d}.safetensors"
            shards.append({"file": name, "first_example": start, "n_examples": len(chunk)})
            if (path / name).is_file():
                continue  # finished by an earlier, interrupted build of the same key
            vals, ids, res, lengths = [], [], [], []
            for b in range(0, len(chunk), batch_size):
                topk, counts = signal(chunk[b:b + batch_size])
                if topk.k != top_k or topk.values.shape[0] != int(counts.sum()):
                    raise ValueError(f"the teacher signal gave {topk.values.shape[0]} rows of k={topk.k} for "
                                     f"{int(counts.sum())} response tokens; expected k={top_k}")
                vals.append(topk.values.to(store_dtype).cpu())
                ids.append(topk.indices.to(torch.int32).cpu())
                res.append(topk.residual.float().cpu())
                lengths.append(counts.cpu())
            tensors = {"values": torch.cat(vals).contiguous(), "indices": torch.cat(ids).contiguous(),
                       "residual": torch.cat(res).contiguous(), "lengths": torch.cat(lengths).long()}
            atomic_write_bytes(path / name, save(tensors))
        index = {"format": _CACHE_FORMAT, "teacher_weights": teacher_weights, "teacher": teacher_name,
                 "data_hash": data_hash, "max_length": max_length, "top_k": top_k, "dtype": dtype, "vocab_size": int(vocab_size),
                 "n_examples": len(features), "shards": shards}
        atomic_write_json(path / "index.json", index)
        atomic_write_text(path / "complete", "")
        return cls.open(path, teacher_weights=teacher_weights, data_hash=data_hash)

    def batch(self, example_indices: Sequence[int], mask: torch.Tensor) -> TopK:
        """Cache entries of a batch, laid out on its response mask.

        Parameters
        ----------
        example_indices : sequence of int
            Dataset positions of the batch rows.
        mask : Tensor, bool [B, T - 1]
            :func:`response_mask` of the collated batch; row i must have as many True entries as
            example ``example_indices[i]`` has cached tokens.

        Returns
        -------
        TopK
            Fields [B, T - 1, k] / [B, T - 1], on ``mask.device``. Masked-out positions hold
            harmless finite filler (distinct ids, zero logits, log-mass log(1/2)).
        """
        b, t = mask.shape
        k = self.top_k
        rows = []
        for row, idx in enumerate(example_indices):
            lo, hi = int(self._offsets[idx]), int(self._offsets[idx + 1])
            n = int(mask[row].sum())
            if n != hi - lo:
                raise ValueError(f"example {idx} has {n} response tokens in this batch but {hi - lo} in the "
                                 f"teacher cache {self.path}; the cache is stale (different data, "
                                 "tokenizer or max_length): delete it")
            rows.append(torch.arange(lo, hi))
        flat = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        mask_cpu = mask.cpu()
        values = torch.zeros(b, t, k, dtype=torch.float32)
        indices = torch.arange(k).expand(b, t, k).clone()
        residual = torch.full((b, t), -math.log(2.0))
        values[mask_cpu] = self._values[flat].float()
        indices[mask_cpu] = self._indices[flat]
        residual[mask_cpu] = self._residual[flat].float()
        device = mask.device
        return TopK(values=values.to(device), indices=indices.to(device), residual=residual.to(device))
