"""Training methods: small objects that turn (student, teacher signal, batch) into a batch loss.

Every method satisfies the :class:`Method` protocol and is registered in :data:`METHODS`. The loop
(:mod:`kdlens.distill._loop`) owns optimisation, devices and checkpoints; a method only computes
the loss of one micro-batch, already normalised by the number of target tokens of the whole
global batch (``ctx.n_tokens``), so summing micro-batch losses gives the token mean of the
global batch whatever the gradient accumulation or process count.

Token alignment: logits at position t predict token t + 1, so every per-token term lives on
``logits[:, :-1]`` with mask :func:`kdlens.teacher.response_mask` (``labels[:, 1:] != -100``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from kdlens.teacher import TopK, kd_token_loss, noise_seed, response_mask

__all__ = ["Method", "StepContext", "TeacherOutput", "METHODS", "SFT", "WordKD", "FeatureKD"]


@dataclass
class TeacherOutput:
    """What the teacher signal gives a method for one micro-batch.

    Attributes
    ----------
    logits : Tensor [B, T - 1, V] or TopK
        Raw teacher logits aligned with ``student_logits[:, :-1]`` (online), or top-k cache entries.
    hidden_states : tuple of Tensor [B, T, D_t] or None
        Embeddings then every layer's output (online only, when a method asks for them).
    attentions : tuple of Tensor [B, H, T, T] or None
    """

    logits: torch.Tensor | TopK
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class StepContext:
    """Inputs of one micro-batch loss.

    Attributes
    ----------
    student : nn.Module
        The (possibly DDP/PEFT-wrapped) student in train mode.
    batch : dict of Tensor
        ``input_ids``, ``attention_mask``, ``labels``: long [B, T].
    example_indices : list of int
        Dataset positions of the rows (the teacher cache is indexed by them).
    n_tokens : int
        Target tokens in the whole global batch (all micro-batches and processes).
    teacher : callable or None
        ``teacher(batch, example_indices, *, hidden=False, attentions=False) -> TeacherOutput``.
    config : DistillConfig
    loss_fn : callable or None
        The KD divergence (``kdlens.losses.get_loss(config.loss, **config.loss_params)``).
    vocab_size : int
        Common logit width of teacher and student.
    step, micro, rank : int
        Optimizer step, micro-batch index within it, process rank (seed the teacher noise).
    modules : dict
        Extra trainable modules owned by the run (e.g. ``"projection"`` of feature KD).
    """

    student: torch.nn.Module
    batch: dict[str, torch.Tensor]
    example_indices: Sequence[int]
    n_tokens: int
    config: Any
    teacher: Callable[..., TeacherOutput] | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    vocab_size: int | None = None
    step: int = 0
    micro: int = 0
    rank: int = 0
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)

    @property
    def noise_seed(self) -> int:
        return noise_seed(self.config.seed, self.step, self.micro, self.rank)


class Method(Protocol):
    """A training method: a batch loss plus what it needs from the run."""

    name: str
    needs_teacher: bool
    needs_hidden_states: bool
    description: str

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Loss parts of one micro-batch: ``"loss"`` (to backpropagate) and detached parts to log."""
        ...


def _student_forward(ctx: StepContext, *, hidden: bool = False, attentions: bool = False):
    out = ctx.student(input_ids=ctx.batch["input_ids"], attention_mask=ctx.batch["attention_mask"],
                      output_hidden_states=hidden, output_attentions=attentions)
    logits = out.logits[:, :-1]
    if ctx.vocab_size is not None:
        logits = logits[..., : ctx.vocab_size]
    return out, logits


def _ce_tokens(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [B, T - 1] of the gold next tokens (0 where masked)."""
    target = labels[:, 1:].clamp_min(0)
    ce = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")
    return ce * mask


def _kd_tokens(ctx: StepContext, student_logits: torch.Tensor, teacher: TeacherOutput,
               mask: torch.Tensor) -> torch.Tensor:
    cfg = ctx.config
    return kd_token_loss(ctx.loss_fn, student_logits, teacher.logits, mask=mask,
                         temperature=cfg.temperature,
                         scale_by_temperature_squared=cfg.scale_by_temperature_squared,
                         sigma=cfg.sigma, seed=ctx.noise_seed)


@dataclass(frozen=True)
class SFT:
    """Supervised fine-tuning: token-mean cross-entropy on the gold response (rationale + EOS)."""

    name: str = "sft"
    needs_teacher: bool = False
    needs_hidden_states: bool = False
    description: str = "supervised fine-tuning on gold responses (teachers, SFT baselines)"

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        mask = response_mask(ctx.batch["labels"])
        _, logits = _student_forward(ctx)
        ce = _ce_tokens(logits, ctx.batch["labels"], mask).sum() / ctx.n_tokens
        return {"loss": ce, "ce": ce.detach()}


@dataclass(frozen=True)
class WordKD:
    """Word-level KD on fixed (gold) sequences: ``(1 - alpha) * CE + alpha * D(p_teacher || q_student)``.

    Notes
    -----
    Hinton et al. 2015; Kim & Rush 2016 (word-level). ``D`` is any :mod:`kdlens.losses`
    divergence at temperature tau on the (noised) teacher logits; alpha = 1 is pure KD.
    """

    name: str = "word_kd"
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    description: str = "teacher-forced token-level KD on gold sequences, (1-alpha)*CE + alpha*KD"

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        alpha = ctx.config.alpha
        labels = ctx.batch["labels"]
        mask = response_mask(labels)
        teacher = ctx.teacher(ctx.batch, ctx.example_indices)
        _, logits = _student_forward(ctx)
        kd = _kd_tokens(ctx, logits, teacher, mask).sum() / ctx.n_tokens
        ce = _ce_tokens(logits, labels, mask).sum() / ctx.n_tokens
        return {"loss": (1.0 - alpha) * ce + alpha * kd, "ce": ce.detach(), "kd": kd.detach()}


@dataclass(frozen=True)
class FeatureKD:
    """``word_kd`` plus ``beta`` times hidden-state (PKD) and attention (MiniLM) matching.

    Notes
    -----
    Sun et al. 2019 (PKD), Wang et al. 2020 (MiniLM). Student layer i is matched to teacher layer
    ``layer_map[i]`` (:func:`kdlens.losses.layer_map`); hidden states through an optional learned
    projection when widths differ. The feature term is a token mean over the micro-batch's
    response positions, weighted by the micro-batch's share of the global batch's tokens.
    """

    name: str = "feature_kd"
    needs_teacher: bool = True
    needs_hidden_states: bool = True
    description: str = "word_kd + beta * (hidden-state and attention matching over a layer map)"

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        from kdlens.losses import attention_kl, layer_map, pkd_loss

        cfg = ctx.config
        fcfg = cfg.feature
        labels = ctx.batch["labels"]
        mask = response_mask(labels)
        teacher = ctx.teacher(ctx.batch, ctx.example_indices, hidden=True, attentions=fcfg.attention)
        out, logits = _student_forward(ctx, hidden=True, attentions=fcfg.attention)
        kd = _kd_tokens(ctx, logits, teacher, mask).sum() / ctx.n_tokens
        ce = _ce_tokens(logits, labels, mask).sum() / ctx.n_tokens
        # hidden_states[0] is the embedding output, i = block i; layer_map pairs index into them
        pairs = layer_map(len(out.hidden_states) - 1, len(teacher.hidden_states) - 1, fcfg.layer_map)
        # the feature positions are those that predict a target token, as for the logit terms
        fmask = torch.zeros_like(labels, dtype=torch.bool)
        fmask[:, :-1] = mask
        share = mask.sum() / ctx.n_tokens
        feat = logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        if fcfg.hidden:
            hid = pkd_loss(out.hidden_states, teacher.hidden_states, layer_map=pairs, mask=fmask,
                           projection=ctx.modules.get("projection"))
            parts["hidden"] = (hid * share).detach()
            feat = feat + hid
        if fcfg.attention:
            blocks = [(i, j) for i, j in pairs if i > 0 and j > 0]  # attentions[b - 1] belongs to block b
            if not blocks:
                raise ValueError(f"feature.layer_map={fcfg.layer_map!r} maps no transformer block; "
                                 "attention matching needs at least one")
            att = torch.stack([attention_kl(out.attentions[i - 1], teacher.attentions[j - 1], mask=fmask)
                               for i, j in blocks]).mean()
            parts["attention"] = (att * share).detach()
            feat = feat + fcfg.attention_weight * att
        feat = feat * share
        loss = (1.0 - cfg.alpha) * ce + cfg.alpha * kd + cfg.beta * feat
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "feature": feat.detach(), **parts}


#: method name -> method object (see :class:`Method`)
METHODS: dict[str, Method] = {m.name: m for m in (SFT(), WordKD(), FeatureKD())}
