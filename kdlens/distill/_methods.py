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

from kdlens.distill._heads import final_hidden, output_head
from kdlens.losses._common import compute_dtype
from kdlens.losses._fused import LMHead
from kdlens.teacher import NoiseKey, TopK, fused_kd_token_loss, kd_token_loss, response_mask

__all__ = ["Method", "MethodRun", "FixedDataRun", "RunContext", "StepData", "StepContext", "TeacherOutput", "SFT",
           "WordKD", "FeatureKD"]


@dataclass
class TeacherOutput:
    """What the teacher signal gives a method for one micro-batch.

    One of two forms: ``logits`` (the plain path: online logits or top-k cache entries), or
    ``last_hidden`` with ``head`` (the fused path, ``kd_path``: the teacher kept only its final
    hidden states, and the KD term runs over the two lm heads without materialising logits).

    Attributes
    ----------
    logits : Tensor [B, T - 1, V] or TopK or None
        Raw teacher logits aligned with ``student_logits[:, :-1]`` (online), or top-k cache entries;
        None on the fused path.
    hidden_states : tuple of Tensor [B, T, D_t] or None
        Embeddings then every layer's output (online only, when a method asks for them).
    attentions : tuple of Tensor [B, H, T, T] or None
    last_hidden : Tensor [B, T - 1, D_t] or None
        Fused path: the teacher's final hidden states (after its final norm), same alignment.
    head : LMHead or None
        Fused path: the teacher's output layer, cut to the common vocabulary.
    """

    logits: torch.Tensor | TopK | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    last_hidden: torch.Tensor | None = None
    head: LMHead | None = None

    @property
    def fused(self) -> bool:
        return self.last_hidden is not None


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
    kd_path : {"fused", "plain"} or None
        The run's KD path (``kdlens.distill._heads.resolve_kd_path``), for a method's own teacher
        scoring (DistiLLM's validation loss).
    """

    config: Any
    run: Any
    features: list[dict[str, list[int]]]
    records: list[Any]
    tokenizer: Any
    teacher: torch.nn.Module | None
    vocab_size: int
    device: torch.device
    kd_path: str | None = None


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
    ``fused_kd_problem(config) -> str | None``
        Optional: None when every KD term the method computes under ``config`` can take the fused
        path (the teacher signal is then :class:`TeacherOutput` with ``last_hidden``; the method
        passes it to ``_logit_terms``), else why not (recorded; ``kd_path=fused`` is refused). A
        method without it always gets teacher logits (the plain path).
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


@dataclass
class _Terms:
    """The logit terms of one micro-batch: ``loss = ce_weight * ce + kd_weight * kd`` (parts detached)."""

    out: Any  # the student's forward output (hidden states, attentions)
    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor | None


def _logit_terms(ctx: StepContext, teacher: TeacherOutput, mask: torch.Tensor, *, gold: bool = True,
                 hidden: bool = False, attentions: bool = False) -> _Terms:
    """``(1 - kd_weight) * CE + kd_weight * KD`` of a micro-batch (the KD term alone when not ``gold``).

    Both normalised by the global batch's token count. On the fused path (the teacher gave its last
    hidden states) the student's forward stops before its lm head and both terms come from the same
    chunks of logits (:func:`kdlens.teacher.fused_kd_token_loss`); otherwise from full logits. The
    CE is logged on gold batches even at ``kd_weight = 1`` (without a graph).
    """
    cfg, labels = ctx.config, ctx.batch["labels"]
    w = cfg.kd_weight if gold else 1.0
    if teacher.fused:
        out, last, amp = final_hidden(ctx.student, input_ids=ctx.batch["input_ids"],
                                      attention_mask=ctx.batch["attention_mask"], output_hidden_states=hidden,
                                      output_attentions=attentions)
        got = fused_kd_token_loss(ctx.loss_fn, last[:, :-1], output_head(ctx.student, ctx.vocab_size, amp),
                                  teacher.last_hidden, teacher.head, mask=mask, temperature=cfg.temperature,
                                  scale_by_temperature_squared=cfg.scale_by_temperature_squared, sigma=cfg.sigma,
                                  noise=ctx.noise_key, targets=labels[:, 1:].clamp_min(0) if gold else None,
                                  kd_weight=w / ctx.n_tokens, ce_weight=(1.0 - w) / ctx.n_tokens)
        ce = None if got.ce is None else got.ce.sum() / ctx.n_tokens
        return _Terms(out, got.loss, got.kd.sum() / ctx.n_tokens, ce)
    out, logits = _student_forward(ctx, hidden=hidden, attentions=attentions)
    kd = _kd_tokens(ctx, logits, teacher, mask).sum() / ctx.n_tokens
    if not gold:
        return _Terms(out, kd, kd.detach(), None)
    ce = _ce_tokens(logits, labels, mask, weight=1.0 - w).sum() / ctx.n_tokens
    return _Terms(out, (1.0 - w) * ce + w * kd, kd.detach(), ce.detach())


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
        mask = response_mask(ctx.batch["labels"])
        terms = _logit_terms(ctx, ctx.teacher(ctx.batch, ctx.example_indices), mask)
        return {"loss": terms.loss, "ce": terms.ce, "kd": terms.kd}

    def fused_kd_problem(self, cfg: Any) -> str | None:
        return None  # every KD term of the method can run on the fused path


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
        terms = _logit_terms(ctx, teacher, mask, hidden=True, attentions=fcfg.attention)
        out = terms.out
        # hidden_states[0] is the embedding output, i = block i; layer_map pairs index into them
        pairs = layer_map(len(out.hidden_states) - 1, len(teacher.hidden_states) - 1, fcfg.layer_map)
        # the feature positions are those that predict a target token, as for the logit terms
        fmask = torch.zeros_like(labels, dtype=torch.bool)
        fmask[:, :-1] = mask
        share = mask.sum() / ctx.n_tokens
        feat = terms.loss.new_zeros((), dtype=torch.float32)
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
        loss = terms.loss + cfg.feature_weight * feat
        return {"loss": loss, "ce": terms.ce, "kd": terms.kd, "feature": feat.detach(), **parts}

    def fused_kd_problem(self, cfg: Any) -> str | None:
        return None  # every KD term of the method can run on the fused path
