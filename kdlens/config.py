"""Typed, validated configuration of a distillation run, loaded from YAML with dotted overrides.

A :class:`DistillConfig` is a plain dataclass validated in ``__post_init__`` (ranges, names,
combinations), so a bad value fails before any model is loaded. It is built from an optional
YAML file plus ``key=value`` overrides::

    cfg = load_config("kdlens/configs/word_kd_tiny.yaml", ["sigma=1.0", "lora.r=16"])
    cfg = load_config(None, ["teacher=tiny", "student=prune:1", "tasks=chain_sum:64"])

Override values are parsed with ``yaml.safe_load`` (never ``eval``/``exec``) and then coerced to the
field's type, so ``lr=1e-4`` is a float and ``tasks=a,b`` a list. Unknown keys raise an error
that lists the closest known keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdlens._io import read_yaml

__all__ = [
    "DistillConfig",
    "FeatureConfig",
    "LoraConfig",
    "SeqKDConfig",
    "GKDConfig",
    "DistiLLMConfig",
    "MiniLLMConfig",
    "BlackboxConfig",
    "load_config",
    "apply_overrides",
    "parse_overrides",
    "config_to_yaml",
    "cache_is_faithful",
]

_TEACHER_SOURCES = ("online", "cache")
_SCHEDULERS = ("linear", "cosine", "constant")
_MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("float32", "bfloat16", "float16")
_CACHE_DTYPES = ("float32", "float16")
_CACHE_TAILS = ("uniform", "bucket")
_FEATURE_KINDS = ("l2", "l1", "cosine", "ce", "mmd")
_LAYER_MAP_STRATEGIES = ("uniform", "skip", "last")


def _known(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT) on the student instead of full fine-tuning.

    Parameters
    ----------
    r : int
        Rank of each adapter (> 0).
    alpha : float
        LoRA scaling numerator (the update is scaled by ``alpha / r``).
    dropout : float
        Dropout on the adapter input, in [0, 1).
    targets : list of str
        Module names to adapt (default ``q_proj``, ``v_proj``).
    merge : bool
        Merge the adapters into the base weights when saving ``checkpoint/``, so it loads with
        plain transformers. When False the checkpoint is a PEFT adapter directory.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    merge: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        self.targets = list(self.targets)
        if self.r <= 0:
            raise ValueError(f"lora.r must be > 0, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("lora.targets is empty; name at least one module, e.g. q_proj,v_proj")


@dataclass
class FeatureConfig:
    """Hidden-state and attention matching of ``feature_kd`` (PKD / MiniLM style).

    Parameters
    ----------
    layer_map : str or list of int
        ``"uniform"``, ``"skip"``, ``"last"`` or an explicit list of teacher layer indices, one per
        student layer (passed to :func:`kdlens.losses.layer_map`).
    kind : str
        Similarity of mapped hidden states (see :func:`kdlens.losses.feature_loss`); used when
        ``hidden`` is on.
    hidden : bool
        Match hidden states of mapped layers (PKD).
    attention : bool
        Match attention maps of mapped layers (MiniLM); forces eager attention.
    attention_weight : float
        Weight of the attention term relative to the hidden-state term.
    projection : bool or None
        Learn a linear student->teacher projection of hidden states. ``None`` adds one only when
        the widths differ.
    """

    layer_map: str | list[int] = "uniform"
    kind: str = "l2"
    hidden: bool = True
    attention: bool = False
    attention_weight: float = 1.0
    projection: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer_map, str):
            if "," in self.layer_map:
                self.layer_map = [int(x) for x in self.layer_map.split(",") if x.strip()]
            else:
                _known("feature.layer_map", self.layer_map, _LAYER_MAP_STRATEGIES)
        if isinstance(self.layer_map, (list, tuple)):
            self.layer_map = [int(x) for x in self.layer_map]
            if any(x < 0 for x in self.layer_map):
                raise ValueError(f"feature.layer_map has a negative layer index: {self.layer_map}")
        _known("feature.kind", self.kind, _FEATURE_KINDS)
        if self.attention_weight < 0:
            raise ValueError(f"feature.attention_weight must be >= 0, got {self.attention_weight}")
        if not (self.hidden or self.attention):
            raise ValueError("feature.hidden and feature.attention are both off; turn one on")


def _check_generation(section: str, max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"{section}.max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"{section}.temperature (sampling) must be > 0, got {temperature}")


@dataclass
class SeqKDConfig:
    """Teacher decoding of ``seq_kd`` (Kim & Rush sequence-level KD).

    Parameters
    ----------
    num_beams : int
        Beam width (1 = greedy) when not sampling.
    do_sample : bool
        Sample the teacher's outputs (at ``temperature``) instead of beam search.
    temperature : float
    max_new_tokens : int
    interpolated : bool
        Train on the beam candidate with the highest sentence BLEU against the gold response
        (needs ``num_beams >= 2`` and beam search).
    batch_size : int
        Prompts decoded together.
    """

    num_beams: int = 4
    do_sample: bool = False
    temperature: float = 1.0
    max_new_tokens: int = 128
    interpolated: bool = False
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check_generation("seq_kd", self.max_new_tokens, self.temperature)
        if self.num_beams < 1 or self.batch_size < 1:
            raise ValueError(f"seq_kd.num_beams and seq_kd.batch_size must be >= 1, got {self.num_beams}, "
                             f"{self.batch_size}")
        if self.interpolated and (self.do_sample or self.num_beams < 2):
            raise ValueError("seq_kd.interpolated picks among beam candidates: set seq_kd.num_beams >= 2 and "
                             "seq_kd.do_sample=false")


@dataclass
class GKDConfig:
    """On-policy sampling of ``gkd`` (Agarwal et al. 2024).

    Parameters
    ----------
    lambda_ : float in [0, 1]
        Probability that a step's batch is replaced by generated continuations (0 = ``word_kd``).
    temperature : float
        Sampling temperature of the continuations.
    max_new_tokens : int
    teacher_generates : bool
        The teacher samples the continuations instead of the student.
    """

    lambda_: float = 0.5
    temperature: float = 1.0
    max_new_tokens: int = 64
    teacher_generates: bool = False

    def __post_init__(self) -> None:
        _check_generation("gkd", self.max_new_tokens, self.temperature)
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"gkd.lambda_ (on-policy probability) must be in [0, 1], got {self.lambda_}")


@dataclass
class DistiLLMConfig:
    """Adaptive student-generated outputs of ``distillm`` (Ko et al. 2024).

    Parameters
    ----------
    phi_increment, threshold, phi_max : float
        ``phi += phi_increment`` (at most ``phi_max``) when the validation loss rises by
        ``>= threshold`` over the last recorded value.
    eval_every : int
        Steps between validation-loss measurements.
    val_size : int
        Training examples held out for the validation loss (0 = none: phi stays 0).
    replay_capacity : int
        Sequences kept in the replay buffer (oldest evicted).
    temperature : float
        Sampling temperature of the student outputs.
    max_new_tokens : int
    """

    phi_increment: float = 0.1
    threshold: float = 0.1
    phi_max: float = 1.0
    eval_every: int = 20
    val_size: int = 16
    replay_capacity: int = 1000
    temperature: float = 1.0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        _check_generation("distillm", self.max_new_tokens, self.temperature)
        if not 0.0 <= self.phi_max <= 1.0 or self.phi_increment < 0 or self.threshold < 0:
            raise ValueError(f"distillm: need 0 <= phi_max <= 1, phi_increment >= 0 and threshold >= 0, got "
                             f"{self.phi_max}, {self.phi_increment}, {self.threshold}")
        if self.eval_every < 1 or self.val_size < 0 or self.replay_capacity < 1:
            raise ValueError(f"distillm: need eval_every >= 1, val_size >= 0, replay_capacity >= 1, got "
                             f"{self.eval_every}, {self.val_size}, {self.replay_capacity}")


@dataclass
class MiniLLMConfig:
    """``minillm`` (Gu et al. 2024).

    Parameters
    ----------
    form : {"pg", "token"}
        Policy gradient on teacher-mixed student samples, or token-level reverse KL on gold data.
    mix : float in [0, 1)
        Teacher share of the sampling distribution (``pg``).
    max_new_tokens : int
    """

    form: str = "pg"
    mix: float = 0.2
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        _known("minillm.form", self.form, ("pg", "token"))
        _check_generation("minillm", self.max_new_tokens, 1.0)
        if not 0.0 <= self.mix < 1.0:
            raise ValueError(f"minillm.mix (teacher share of the sampling distribution) must be in [0, 1), "
                             f"got {self.mix}")


@dataclass
class BlackboxConfig:
    """The text-only teacher of ``blackbox``: an importable callable or a chat endpoint.

    Parameters
    ----------
    teacher : str or None
        ``"package.module:function"``, a callable ``list[str] prompts -> list[str] answers``.
    url : str or None
        Base URL of an OpenAI-compatible API (``POST {url}/chat/completions``).
    model : str
        ``model`` field of each request.
    api_key_env : str or None
        Environment variable holding the API key (sent as a Bearer token when set).
    max_tokens, temperature : int, float
        Generation settings sent with each request.
    timeout : float
        Seconds per request.
    retries : int
        Extra attempts on connection errors, timeouts and 408/409/429/5xx answers.
    batch_size : int
        Prompts per teacher call (and per cache write).
    """

    teacher: str | None = None
    url: str | None = None
    model: str = "teacher"
    api_key_env: str | None = "OPENAI_API_KEY"
    max_tokens: int = 256
    temperature: float = 0.0
    timeout: float = 60.0
    retries: int = 2
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.teacher is not None and ":" not in self.teacher:
            raise ValueError(f"blackbox.teacher={self.teacher!r} must be 'package.module:function'")
        if self.timeout <= 0 or self.retries < 0 or self.batch_size < 1 or self.max_tokens < 1:
            raise ValueError("blackbox: need timeout > 0, retries >= 0, batch_size >= 1 and max_tokens >= 1")


#: nested method sections: config key -> dataclass
_METHOD_SECTIONS = {"seq_kd": SeqKDConfig, "gkd": GKDConfig, "distillm": DistiLLMConfig, "minillm": MiniLLMConfig,
                    "blackbox": BlackboxConfig}
#: methods that score generated sequences with the teacher online
_ON_POLICY = ("gkd", "distillm", "minillm")



def cache_is_faithful(loss: str, temperature: float) -> bool:
    """Whether a top-k teacher-logit cache stands in for the online teacher under ``loss`` at ``temperature``.

    Measured on real SmolLM2 batches (``benchmarks/RESULTS.md``, "Top-k teacher cache against the
    online loss"): forward KL at tau = 1 is within 1 % of the online loss from k = 32 (gradient cosine
    >= 0.9999), whatever sigma; reverse KL, or any tau != 1, is 34-65 % off whatever the tail model.
    Other losses were not measured and count as not faithful. (With k = vocabulary size every loss
    is exact.)
    """
    return loss == "forward_kl" and float(temperature) == 1.0

@dataclass
class DistillConfig:
    """Everything that defines a distillation (or fine-tuning) run.

    Parameters
    ----------
    teacher : str or None
        Teacher model: built-in name, hub id, local HF directory, kdlens run directory or ``.gguf``.
        Required by KD methods; optional for ``sft`` (then the trained model is ``student``, or the
        teacher itself when ``student`` is None: this is how a task-aware teacher is made).
    student : str or None
        Student model, or ``"prune:N"`` = the teacher with N evenly spaced layers kept.
    tasks : list of str
        Task specs for :func:`kdlens.data.load_tasks` (a comma-separated string is accepted).
    split : str
        Split of the tasks to train on.
    n_examples : int or None
        Number of examples per task (None = the task's own default).
    method : str
        Name in :data:`kdlens.distill.METHODS`.
    loss : str
        Divergence name in :data:`kdlens.losses.LOSSES`, used by KD methods.
    loss_params : dict
        Extra parameters of the divergence (e.g. ``{"beta": 0.5}`` for ``jsd``).
    alpha : float
        KD weight in ``(1 - alpha) * CE + alpha * KD``; 1 = pure KD (the paradox paper's setting).
    beta : float
        Weight of the feature term in ``feature_kd``.
    feature : FeatureConfig
        Layer map and feature terms of ``feature_kd``.
    sigma : float
        Std of the Gaussian noise added to the teacher's raw logits (before tau), >= 0.
    temperature : float
        Softmax temperature tau applied to both teacher and student in the KD term, > 0.
    scale_by_temperature_squared : bool
        Multiply the KD term by tau^2 (Hinton); recorded in the manifest.
    teacher_source : {"online", "cache"}
        Run the teacher each step, or read its top-k logits from a cache built in a first pass.
    cache_dir : str or None
        Root of teacher caches (None = ``kdlens.models.cache_root() / "teacher"``).
    top_k : int
        Number of teacher logits stored per response token in a cache.
    cache_dtype : {"float32", "float16"}
        Storage dtype of cached logits.
    cache_tail : {"uniform", "bucket"}
        How the loss treats the teacher mass outside the cached top-k (see :mod:`kdlens.teacher`):
        spread evenly over the other tokens (default; exact student side), or one "rest" bucket.
    steps, epochs : int or None, float or None
        Training length; give exactly one (``steps`` defaults to 100 when neither is set).
    batch_size : int
        GLOBAL batch: examples per optimizer step, across gradient accumulation and processes,
        so results do not depend on ``grad_accum`` or the number of processes.
    grad_accum : int
        Micro-batches per optimizer step; must divide ``batch_size`` (times the process count).
    lr, weight_decay, warmup_steps, scheduler, max_grad_norm
        AdamW and its learning-rate schedule (``max_grad_norm`` 0 disables clipping).
    max_length : int
        Maximum tokens per training sequence (prompts are cut from the left).
    lora : LoraConfig or None
        LoRA adapters; None = full fine-tuning. ``lora=true`` or any ``lora.KEY=...`` enables it.
    seed : int
        Seeds data order, initialization, dropout and teacher noise.
    output_dir : str or None
        Run directory (required to run).
    save_every : int
        Write a resumable training state every N optimizer steps (0 = only at the end).
    log_every : int
        Append a line to ``train_log.jsonl`` every N steps.
    dtype : str
        Dtype the models are loaded in (master weights).
    mixed_precision : {"auto", "no", "bf16", "fp16"}
        Autocast; ``auto`` = bf16 on CUDA, none on CPU.
    device : {"auto", "cpu", "cuda"}
    system_prompt : str or None
        System message of the chat template.
    seq_kd, gkd, distillm, minillm, blackbox : dataclass
        Settings of the generation-based methods (:class:`SeqKDConfig`, :class:`GKDConfig`,
        :class:`DistiLLMConfig`, :class:`MiniLLMConfig`, :class:`BlackboxConfig`), e.g.
        ``gkd.lambda_=1.0``.
    """

    teacher: str | None = None
    student: str | None = None
    tasks: list[str] = field(default_factory=list)
    split: str = "train"
    n_examples: int | None = None
    method: str = "word_kd"
    loss: str = "forward_kl"
    loss_params: dict[str, Any] = field(default_factory=dict)
    alpha: float = 1.0
    beta: float = 0.0
    feature: FeatureConfig = field(default_factory=FeatureConfig)
    sigma: float = 0.0
    temperature: float = 1.0
    scale_by_temperature_squared: bool = False
    teacher_source: str = "online"
    cache_dir: str | None = None
    top_k: int = 64
    cache_dtype: str = "float32"
    cache_tail: str = "uniform"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    max_length: int = 256
    lora: LoraConfig | None = None
    seed: int = 0
    output_dir: str | None = None
    save_every: int = 0
    log_every: int = 1
    dtype: str = "float32"
    mixed_precision: str = "auto"
    device: str = "auto"
    system_prompt: str | None = None
    seq_kd: SeqKDConfig = field(default_factory=SeqKDConfig)
    gkd: GKDConfig = field(default_factory=GKDConfig)
    distillm: DistiLLMConfig = field(default_factory=DistiLLMConfig)
    minillm: MiniLLMConfig = field(default_factory=MiniLLMConfig)
    blackbox: BlackboxConfig = field(default_factory=BlackboxConfig)

    def __post_init__(self) -> None:
        # Accept the shapes YAML and the command line naturally produce.
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        self.tasks = list(self.tasks)
        for key, cls in _METHOD_SECTIONS.items():
            if isinstance(getattr(self, key), Mapping):
                setattr(self, key, cls(**_coerce_fields(cls, _checked_keys(getattr(self, key), cls, key + "."))))
        if isinstance(self.feature, Mapping):
            self.feature = FeatureConfig(**_coerce_fields(FeatureConfig, _checked_keys(self.feature, FeatureConfig, "feature.")))
        if isinstance(self.lora, Mapping):
            self.lora = LoraConfig(**_coerce_fields(LoraConfig, _checked_keys(self.lora, LoraConfig, "lora.")))
        elif self.lora is True:
            self.lora = LoraConfig()
        elif self.lora is False:
            self.lora = None
        self.loss_params = dict(self.loss_params or {})
        self._validate()

    def _validate(self) -> None:
        from kdlens.distill._methods import METHODS  # lazy: the method table imports torch

        if self.method not in METHODS:
            hint = difflib.get_close_matches(self.method, list(METHODS), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"unknown method {self.method!r}{extra}; known methods: {sorted(METHODS)}")
        spec = METHODS[self.method]
        if spec.needs_teacher and not self.teacher:
            raise ValueError(f"method {self.method!r} distills from a teacher: set teacher=NAME_OR_PATH")
        if self.student is None and not self.teacher:
            raise ValueError("no model to train: set student=NAME_OR_PATH (or teacher=... for method=sft)")
        if self.student is not None and self.student.startswith("prune:"):
            if not self.teacher:
                raise ValueError(f"student={self.student!r} prunes the teacher, but no teacher is set")
            n = self.student.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"student={self.student!r}: expected prune:N with N >= 1 layers to keep")
        if spec.needs_teacher:
            from kdlens.losses import LOSSES

            if self.loss not in LOSSES:
                hint = difflib.get_close_matches(self.loss, list(LOSSES), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(f"unknown loss {self.loss!r}{extra}; known losses: {sorted(LOSSES)}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0 (std of the teacher-logit noise), got {self.sigma}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (loss = (1-alpha)*CE + alpha*KD), got {self.alpha}")
        if self.beta < 0:
            raise ValueError(f"beta (feature-loss weight) must be >= 0, got {self.beta}")
        _known("teacher_source", self.teacher_source, _TEACHER_SOURCES)
        _known("scheduler", self.scheduler, _SCHEDULERS)
        _known("mixed_precision", self.mixed_precision, _MIXED_PRECISION)
        _known("device", self.device, _DEVICES)
        _known("dtype", self.dtype, _DTYPES)
        _known("cache_dtype", self.cache_dtype, _CACHE_DTYPES)
        _known("cache_tail", self.cache_tail, _CACHE_TAILS)
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.teacher_source == "cache" and not cache_is_faithful(self.loss, self.temperature):
            warnings.warn(f"teacher_source=cache with loss={self.loss} at temperature={self.temperature:g}: a top-k "
                          "teacher cache was measured faithful only for forward_kl at temperature 1 (benchmarks/"
                          "RESULTS.md); use teacher_source=online, or a top_k as large as the vocabulary",
                          stacklevel=4)
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"give steps or epochs, not both (steps={self.steps}, epochs={self.epochs})")
        if self.steps is None and self.epochs is None:
            self.steps = 100
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "grad_accum", "max_length", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} (the global batch) is not divisible by "
                             f"grad_accum={self.grad_accum}")
        for name in ("save_every", "warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.tasks:
            raise ValueError("no training data: set tasks=SPEC[,SPEC...] (e.g. tasks=chain_sum:200)")
        self._validate_generation_methods()
        if spec.needs_hidden_states and self.teacher_source == "cache":
            raise ValueError(f"method={self.method} needs the teacher's hidden states, which a logit cache "
                             "does not hold; use teacher_source=online")
        if self.method == "feature_kd" and self.beta == 0:
            raise ValueError("method=feature_kd with beta=0 is word_kd; set beta > 0 (feature weight)")

    def _validate_generation_methods(self) -> None:
        if self.method in _ON_POLICY and self.teacher_source != "online":
            raise ValueError(f"method={self.method} scores generated sequences with the teacher, which a logit "
                             "cache cannot hold; use teacher_source=online")
        if self.method == "minillm" and self.loss != "reverse_kl":
            raise ValueError(f"method=minillm minimises reverse KL; set loss=reverse_kl (got loss={self.loss})")
        if self.method == "distillm" and self.distillm.replay_capacity < self.batch_size:
            raise ValueError(f"distillm.replay_capacity={self.distillm.replay_capacity} is smaller than one "
                             f"batch (batch_size={self.batch_size}); raise it")
        if self.method == "blackbox":
            if (self.blackbox.teacher is None) == (self.blackbox.url is None):
                raise ValueError("method=blackbox needs exactly one text-only teacher: blackbox.url=http://HOST/v1 "
                                 "or blackbox.teacher=package.module:function")
            if self.student is None:
                raise ValueError("method=blackbox trains a student: set student=NAME_OR_PATH (or prune:N of teacher=)")

    @property
    def trained_model(self) -> str:
        """The model that is trained: ``student``, or the teacher itself for ``sft`` without student."""
        return self.student if self.student is not None else str(self.teacher)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable dict (nested configs as dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillConfig:
        """Build from a mapping, rejecting unknown keys with close-match suggestions."""
        return cls(**_coerce_fields(cls, _checked_keys(data, cls, "")))

    def replace(self, **changes: Any) -> DistillConfig:
        """A validated copy with some fields changed."""
        return DistillConfig.from_dict({**self.to_dict(), **changes})


def _checked_keys(data: Mapping[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3)
            close += [k for k in known if k not in close and (str(key).startswith(k) or k.startswith(str(key)))]
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ValueError(f"unknown config key {prefix + str(key)!r}{hint} (known: {', '.join(known)})")
    return dict(data)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Coerce a YAML-parsed value to a field's annotated type (``"1e-4"`` -> float, ``"a,b"`` -> list)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if isinstance(value, bool) and bool in args:
            return value
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (TypeError, ValueError):
                continue
        return value  # let __post_init__ produce the precise message
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as err:
            raise ValueError(f"{key}={value!r} is not a number") from err
    if hint is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError as err:
            raise ValueError(f"{key}={value!r} is not an integer") from err
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not a boolean (use true/false)")
    if origin is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _coerce_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k], k) for k, v in data.items()}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into a nested dict, values via ``yaml.safe_load``.

    ``lora.r=16`` becomes ``{"lora": {"r": 16}}``. A malformed item raises ValueError naming it.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # a plain string that YAML cannot parse, e.g. "a: b: c"
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is set to a value and used as a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and (isinstance(current, Mapping) or current is None) \
                and key in ("feature", "lora", *_METHOD_SECTIONS):
            merged[key] = _merge(dict(current or {}), value)
        elif isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = _merge(dict(current), value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Merge dotted ``key=value`` overrides (or an already nested mapping) into a config mapping."""
    nested = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    return _merge(dict(data), nested)


def load_config(path: str | os.PathLike | None = None,
                overrides: Iterable[str] | Mapping[str, Any] = ()) -> DistillConfig:
    """Load a :class:`DistillConfig` from a YAML file (optional) plus ``key=value`` overrides.

    Parameters
    ----------
    path : path or None
        A YAML mapping of config keys (nested ``feature:``/``lora:`` sections allowed).
    overrides : iterable of str or mapping
        ``key=value`` items, dotted keys for nested fields (``lora.r=16``); applied after the file.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Malformed YAML, an unknown key (with close matches), or an invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path, what="config file")
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(loaded).__name__}")
        data = dict(loaded)
    data = apply_overrides(data, overrides)
    try:
        return DistillConfig.from_dict(data)
    except TypeError as err:  # e.g. lora: 5
        raise ValueError(f"invalid config{f' in {path}' if path else ''}: {err}") from err


def config_to_yaml(config: DistillConfig) -> str:
    """The resolved config as YAML (round-trips through :func:`load_config`)."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
