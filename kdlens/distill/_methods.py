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

from kdlens.losses._common import compute_dtype
from kdlens.teacher import NoiseKey, TopK, kd_token_loss, response_mask

__all__ = ["Method", "MethodRun", "FixedDataRun", "RunContext", "StepData", "StepContext", "TeacherOutput", "SFT",
           "WordKD", "FeatureKD"]


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
    step : int
        Optimizer step (0-based); with the seed and the example indices it keys the teacher noise.
    modules : dict
        Extra trainable modules owned by the run (e.g. ``"projection"`` of feature KD).
    batch_source : {"gold", "fresh", "replay"}
        Where the batch came from (see :class:`StepData`); ``"gold"`` unless a method's
        :meth:`MethodRun.prepare_step` replaced it by generated sequences.
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
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    batch_source: str = "gold"

    @property
    def noise_key(self) -> NoiseKey:
        """The teacher noise of this micro-batch: a function of (seed, step, example, position) only."""
        return NoiseKey(self.config.seed, self.step, list(self.example_indices))


@dataclass
class RunContext:
    """What a method's optional ``begin`` hook gets, once per run, before training starts.

    Attributes
    ----------
    config : DistillConfig
    run : RunDir
        The run directory (methods cache their generated data here, resumably).
    features : list of dict
        Encoded training examples (``input_ids``, ``attention_mask``, ``labels``: lists of int).
    records : list of Record
        The records the features were encoded from, in the same order.
    tokenizer : tokenizer of the student
    teacher : nn.Module or None
        The teacher model (eval mode, no grad), when the method loads one.
    vocab_size : int
        Common logit width of teacher and student.
    device : torch.device
    """

    config: Any
    run: Any
    features: list[dict[str, list[int]]]
    records: list[Any]
    tokenizer: Any
    teacher: torch.nn.Module | None
    vocab_size: int
    device: torch.device


@dataclass
class StepData:
    """The global batch a step trains on, as returned by :meth:`MethodRun.prepare_step`.

    Attributes
    ----------
    features : list of dict
        One encoded sequence per global-batch row (gold, or prompt + generated continuation with
        labels on the generated tokens only).
    source : {"gold", "fresh", "replay"}
        Gold data, sequences generated this step, or sequences drawn from a replay buffer.
    logs : dict
        Extra train-log fields (``batch_source`` is added by the loop), e.g. ``gen_tokens_per_s``.
    """

    features: list[dict[str, list[int]]]
    source: str = "gold"
    logs: dict[str, Any] = field(default_factory=dict)


class MethodRun(Protocol):
    """Per-run state of a method that generates or replaces training data (see ``Method.begin``)."""

    #: training features after the method's preparation (e.g. teacher outputs for ``seq_kd``)
    features: list[dict[str, list[int]]]

    def prepare_step(self, *, step: int, total_steps: int, example_indices: Sequence[int],
                     features: list[dict[str, list[int]]], student: torch.nn.Module) -> StepData:
        """The sequences step ``step`` (0-based) trains on, given its gold global batch.

        Called on every process with the same arguments before the micro-batches are cut; all
        randomness must derive from ``(config.seed, step)`` so that a resumed run draws the same.
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state saved with every resumable training state."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


@dataclass
class FixedDataRun:
    """A :class:`MethodRun` whose training data is fixed once at ``begin`` (e.g. teacher outputs).

    Every step trains on the global batch the loop cut from ``features``; there is no state to save.
    """

    features: list[dict[str, list[int]]]

    def prepare_step(self, *, step: int, total_steps: int, example_indices: Sequence[int],
                     features: list[dict[str, list[int]]], student: torch.nn.Module) -> StepData:
        return StepData(features, "gold")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class Method(Protocol):
    """A training method: a batch loss plus what it needs from the run.

    Notes
    -----
    The hooks a method implements:

    ``__call__(ctx: StepContext)``
        Required: the loss parts of one micro-batch.
    ``begin(ctx: RunContext) -> MethodRun``
        Optional, once per run, after the data are encoded and before the step count is fixed.
        The returned object's ``features`` replace the training data (sequence-level KD trains on
        the teacher's decodings; DistiLLM holds out a validation split), and its ``prepare_step``
        may replace each step's gold batch by generated sequences (on-policy methods). Its
        ``state_dict`` (phi, replay buffer, ...) is saved and restored with the training state.
        ``RunContext.teacher`` is the loop's online teacher itself, so a method may train it
        (``metadistil`` updates it in ``prepare_step``, before the student's step).
    ``check_config(config)``
        Optional, called at the end of :class:`kdlens.config.DistillConfig` validation: raise
        ``ValueError`` for settings the method cannot honour (e.g. a teacher cache for a method
        that trains its teacher), before anything is loaded or written.
    ``drive(config, *, run, callbacks, distill, manifest)``
        Optional: the method runs its own stages instead of the loop (``mpdistil``). The loop has
        checked the run's identity and written ``config.yaml``; ``drive`` trains, writes
        ``checkpoint/``, ``manifest.json`` (with the entries of ``manifest``: the run's identity and
        references, which the loop computes) and ``done`` of ``run`` (a :class:`RunDir`), calls each
        callback after each step of every stage, and may call ``distill`` (this function, passed in
        so that method modules never import the loop) for a stage that is an ordinary run of its own.
    ``trains_encoders``
        Optional attribute, default False: the method accepts encoder classifiers
        (:func:`kdlens.models.is_encoder`) as teacher and student.
    """

    name: str
    needs_teacher: bool
    needs_hidden_states: bool
    description: str
    #: the divergence when the config names none; None = no KD term on teacher logits, so the
    #: config refuses sigma, temperature, the tau^2 switch, loss, loss_params and kd_weight
    default_loss: str | None
    #: why, for a method without a KD term (completes "method=NAME ..., so sigma=2 would be ignored")
    without_kd_term: str

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


def _ce_tokens(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *, weight: float = 1.0) -> torch.Tensor:
    """Per-token cross-entropy [B, T - 1] of the gold next tokens (0 where masked).

    With ``weight == 0`` (pure KD) it is only logged, so no graph is kept for it.
    """
    target = labels[:, 1:].clamp_min(0)
    with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0):
        ce = F.cross_entropy(logits.to(compute_dtype(logits.dtype)).transpose(1, 2), target, reduction="none")
    return ce * mask


def _kd_tokens(ctx: StepContext, student_logits: torch.Tensor, teacher: TeacherOutput,
               mask: torch.Tensor) -> torch.Tensor:
    cfg = ctx.config
    return kd_token_loss(ctx.loss_fn, student_logits, teacher.logits, mask=mask,
                         temperature=cfg.temperature,
                         scale_by_temperature_squared=cfg.scale_by_temperature_squared,
                         sigma=cfg.sigma, noise=ctx.noise_key, tail=cfg.cache_tail)


@dataclass(frozen=True)
class SFT:
    """Supervised fine-tuning: token-mean cross-entropy on the gold response (rationale + EOS)."""

    name: str = "sft"
    needs_teacher: bool = False
    needs_hidden_states: bool = False
    description: str = "supervised fine-tuning on gold responses (teachers, SFT baselines)"
    default_loss: str | None = None
    without_kd_term: str = "trains on gold responses without a teacher signal"

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        mask = response_mask(ctx.batch["labels"])
        _, logits = _student_forward(ctx)
        ce = _ce_tokens(logits, ctx.batch["labels"], mask).sum() / ctx.n_tokens
        return {"loss": ce, "ce": ce.detach()}


@dataclass(frozen=True)
class WordKD:
    """Word-level KD on fixed (gold) sequences: ``(1 - w) * CE + w * D(p_teacher || q_student)``, ``w = kd_weight``.

    Notes
    -----
    Hinton et al. 2015; Kim & Rush 2016 (word-level). ``D`` is any :mod:`kdlens.losses`
    divergence at temperature tau on the (noised) teacher logits; ``kd_weight = 1`` is pure KD.
    """

    name: str = "word_kd"
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    description: str = "teacher-forced token-level KD on gold sequences, (1-kd_weight)*CE + kd_weight*KD"
    default_loss: str | None = "forward_kl"
    without_kd_term: str = ""

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        w = ctx.config.kd_weight
        labels = ctx.batch["labels"]
        mask = response_mask(labels)
        teacher = ctx.teacher(ctx.batch, ctx.example_indices)
        _, logits = _student_forward(ctx)
        kd = _kd_tokens(ctx, logits, teacher, mask).sum() / ctx.n_tokens
        ce = _ce_tokens(logits, labels, mask, weight=1.0 - w).sum() / ctx.n_tokens
        return {"loss": (1.0 - w) * ce + w * kd, "ce": ce.detach(), "kd": kd.detach()}


@dataclass(frozen=True)
class FeatureKD:
    """``word_kd`` plus ``feature_weight`` times hidden-state (PKD) and attention (MiniLM) matching.

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
    description: str = "word_kd + feature_weight * (hidden-state and attention matching over a layer map)"
    default_loss: str | None = "forward_kl"
    without_kd_term: str = ""

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        from kdlens.losses import attention_kl, layer_map, pkd_loss

        cfg = ctx.config
        fcfg = cfg.feature
        labels = ctx.batch["labels"]
        mask = response_mask(labels)
        teacher = ctx.teacher(ctx.batch, ctx.example_indices, hidden=True, attentions=fcfg.attention)
        out, logits = _student_forward(ctx, hidden=True, attentions=fcfg.attention)
        kd = _kd_tokens(ctx, logits, teacher, mask).sum() / ctx.n_tokens
        ce = _ce_tokens(logits, labels, mask, weight=1.0 - cfg.kd_weight).sum() / ctx.n_tokens
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
        loss = (1.0 - cfg.kd_weight) * ce + cfg.kd_weight * kd + cfg.feature_weight * feat
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "feature": feat.detach(), **parts}
