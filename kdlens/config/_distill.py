"""The run config: :class:`DistillConfig`, its YAML load and dump, and where a teacher cache is faithful."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any

from kdlens._io import read_yaml
from kdlens.config._endpoint import REPORT_TO, EndpointConfig
from kdlens.config._overrides import apply_overrides, checked_keys, coerce_fields
from kdlens.config._sections import (
    METHOD_SECTIONS,
    ON_POLICY,
    BlackboxConfig,
    DistiLLMConfig,
    FeatureConfig,
    GKDConfig,
    LoraConfig,
    MetaDistilConfig,
    MiniLLMConfig,
    MPDistilConfig,
    SeqKDConfig,
    _known,
)

__all__ = ["DistillConfig", "load_config", "config_to_yaml", "cache_is_faithful"]

_TEACHER_SOURCES = ("online", "cache", "endpoint")
_SCHEDULERS = ("linear", "cosine", "constant")
_MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("float32", "bfloat16", "float16")
_CACHE_DTYPES = ("float32", "float16")
_CACHE_TAILS = ("uniform", "bucket")


def cache_is_faithful(loss: str, temperature: float, top_k: int | None = None, vocab_size: int | None = None) -> bool:
    """Whether a top-k teacher-logit cache stands in for the online teacher under ``loss`` at ``temperature``.

    Measured on real SmolLM2 batches (``benchmarks/RESULTS.md``, "Top-k teacher cache against the
    online loss"): forward KL at tau = 1 is within 1 % of the online loss from k = 32 (gradient cosine
    >= 0.9999), whatever sigma; reverse KL, or any tau != 1, is 34-65 % off whatever the tail model.
    Other losses were not measured and count as not faithful.

    With ``top_k >= vocab_size`` the cache holds every logit of every response token, so it is
    exact for any loss, tau and sigma (:func:`kdlens.teacher.dense_teacher_logits` rebuilds the
    teacher's logits unchanged): true whenever both are given and ``top_k`` reaches the vocabulary
    (e.g. the lab models' 102 tokens). Without a vocabulary size only the measured case counts.
    """
    if top_k is not None and vocab_size is not None and int(top_k) >= int(vocab_size):
        return True
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
    loss : str or None
        Divergence name in :data:`kdlens.losses.LOSSES`, used by KD methods. None = the method's
        own (``reverse_kl`` for ``minillm``, ``forward_kl`` for the others); methods without a KD
        term on teacher logits (``sft``, ``seq_kd``, ``blackbox``) keep None and refuse a loss.
    loss_params : dict
        Parameters of the divergence (e.g. ``{"beta": 0.9}`` for ``jsd``), checked now.
    kd_weight : float
        ``w`` in ``(1 - w) * CE + w * KD`` on gold batches, in [0, 1]; 1 = pure KD (the paradox
        paper's setting). Generated batches of on-policy methods use the KD term alone.
    feature_weight : float
        Weight of the feature term of ``feature_kd`` (> 0 there, 0 for every other method).
    alpha, beta : float, optional (init only)
        Shorthands for the chosen loss's own parameters, as TRL users write them: ``loss=jsd
        beta=0.9`` is ``loss_params.beta=0.9``, ``loss=skew_forward_kl alpha=0.2`` is
        ``loss_params.alpha=0.2``. For a loss without that parameter they are an error naming
        ``kd_weight`` / ``feature_weight`` (no top-level name shadows a loss parameter).
    feature : FeatureConfig
        Layer map and feature terms of ``feature_kd``.
    sigma : float
        Std of the Gaussian noise added to the teacher's raw logits (before tau), >= 0.
    temperature : float
        Softmax temperature tau applied to both teacher and student in the KD term, > 0.
    scale_by_temperature_squared : bool
        Multiply the KD term by tau^2 (Hinton); recorded in the manifest.

        Every method honours sigma, tau and the tau^2 switch or refuses them here: ``word_kd``,
        ``feature_kd``, ``gkd``, ``distillm`` (its validation loss too) and both forms of ``minillm``
        apply them to the teacher logits they train on; ``sft``, ``seq_kd`` (cross-entropy on the
        teacher's decoded text) and ``blackbox`` (text only) have no KD term and refuse them.
    teacher_source : {"online", "cache", "endpoint"}
        Run the teacher each step, read its top-k logits from a cache built in a first pass, or build
        that cache from a served teacher's top-k log-probabilities (``endpoint``; no local teacher).
    endpoint : EndpointConfig
        The served teacher of ``teacher_source=endpoint`` (``endpoint.url=...``); ``teacher`` is then
        optional and not loaded.
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
        AdamW and its learning-rate schedule (``max_grad_norm`` 0 disables clipping; finite).
    max_length : int
        Maximum tokens per training sequence: the whole prompt is kept and a long response cut at
        its end; an example whose prompt alone fills ``max_length`` is dropped (and counted).
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
    report_to : {"none", "tensorboard", "wandb", "mlflow"}
        Experiment tracker the losses, learning rate, tokens/s and teacher-signal settings also go
        to (through accelerate's trackers; offline, in the run directory); ``train_log.jsonl`` is
        always written.
    seq_kd, gkd, distillm, minillm, blackbox : dataclass
        Settings of the generation-based methods (:class:`SeqKDConfig`, :class:`GKDConfig`,
        :class:`DistiLLMConfig`, :class:`MiniLLMConfig`, :class:`BlackboxConfig`), e.g.
        ``gkd.lambda_=1.0``.
    metadistil, mpdistil : dataclass
        Settings of the meta-distillation methods (:class:`MetaDistilConfig`, :class:`MPDistilConfig`),
        e.g. ``mpdistil.curriculum=uniform``.
    """

    teacher: str | None = None
    student: str | None = None
    tasks: list[str] = field(default_factory=list)
    split: str = "train"
    n_examples: int | None = None
    method: str = "word_kd"
    loss: str | None = None
    loss_params: dict[str, Any] = field(default_factory=dict)
    kd_weight: float = 1.0
    feature_weight: float = 0.0
    feature: FeatureConfig = field(default_factory=FeatureConfig)
    sigma: float = 0.0
    temperature: float = 1.0
    scale_by_temperature_squared: bool = False
    teacher_source: str = "online"
    cache_dir: str | None = None
    top_k: int = 64
    cache_dtype: str = "float32"
    cache_tail: str = "uniform"
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
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
    report_to: str = "none"
    seq_kd: SeqKDConfig = field(default_factory=SeqKDConfig)
    gkd: GKDConfig = field(default_factory=GKDConfig)
    distillm: DistiLLMConfig = field(default_factory=DistiLLMConfig)
    minillm: MiniLLMConfig = field(default_factory=MiniLLMConfig)
    blackbox: BlackboxConfig = field(default_factory=BlackboxConfig)
    metadistil: MetaDistilConfig = field(default_factory=MetaDistilConfig)
    mpdistil: MPDistilConfig = field(default_factory=MPDistilConfig)
    alpha: InitVar[float | None] = None
    beta: InitVar[float | None] = None

    def __post_init__(self, alpha: float | None, beta: float | None) -> None:
        # Accept the shapes YAML and the command line naturally produce.
        if self.tasks is None:  # "tasks=" on the command line
            self.tasks = []
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if not isinstance(self.tasks, (list, tuple)) or not all(isinstance(t, str) for t in self.tasks):
            raise ValueError(f"tasks={self.tasks!r} must be task specs (tasks=chain_sum:200,path/to/data.json)")
        self.tasks = list(self.tasks)
        for key, cls in METHOD_SECTIONS.items():
            if isinstance(getattr(self, key), Mapping):
                setattr(self, key, cls(**coerce_fields(cls, checked_keys(getattr(self, key), cls, key + "."))))
        if isinstance(self.endpoint, Mapping):
            self.endpoint = EndpointConfig(**coerce_fields(EndpointConfig, checked_keys(self.endpoint, EndpointConfig,
                                                                                       "endpoint.")))
        if isinstance(self.feature, Mapping):
            self.feature = FeatureConfig(**coerce_fields(FeatureConfig, checked_keys(self.feature, FeatureConfig, "feature.")))
        if isinstance(self.lora, Mapping):
            self.lora = LoraConfig(**coerce_fields(LoraConfig, checked_keys(self.lora, LoraConfig, "lora.")))
        elif self.lora is True:
            self.lora = LoraConfig()
        elif self.lora is False:
            self.lora = None
        elif self.lora is not None and not isinstance(self.lora, LoraConfig):
            raise ValueError(f"lora={self.lora!r} must be true, false or a section (lora.r=16 lora.alpha=32)")
        if self.loss_params is None:
            self.loss_params = {}
        if not isinstance(self.loss_params, Mapping):
            raise ValueError(f"loss_params={self.loss_params!r} must be a mapping, e.g. loss_params.beta=0.9")
        self.loss_params = dict(self.loss_params)
        self._check_types()
        self._validate()
        self._loss_shorthands(alpha, beta)
        self._validate_teacher_signal()

    def _validate(self) -> None:
        from kdlens.distill._registry import METHODS  # lazy: the method table imports torch

        if self.method not in METHODS:
            hint = difflib.get_close_matches(self.method, list(METHODS), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"unknown method {self.method!r}{extra}; known methods: {sorted(METHODS)}")
        spec = METHODS[self.method]
        if spec.needs_teacher and not self.teacher and self.teacher_source != "endpoint":
            raise ValueError(f"method {self.method!r} distills from a teacher: set teacher=NAME_OR_PATH")
        if self.student is None and not self.teacher:
            raise ValueError("no model to train: set student=NAME_OR_PATH (or teacher=... for method=sft)")
        if self.student is not None and self.student.startswith("prune:"):
            if not self.teacher:
                raise ValueError(f"student={self.student!r} prunes the teacher, but no teacher is set")
            n = self.student.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"student={self.student!r}: expected prune:N with N >= 1 layers to keep")
        if self.loss is None:
            self.loss = spec.default_loss
        if self.loss is not None:
            from kdlens.losses import LOSSES

            if self.loss not in LOSSES:
                hint = difflib.get_close_matches(self.loss, list(LOSSES), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(f"unknown loss {self.loss!r}{extra}; known losses: {sorted(LOSSES)}")
        for name in ("sigma", "temperature", "kd_weight", "feature_weight", "lr", "weight_decay", "max_grad_norm"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)} is not a finite number; give a real value")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0 (std of the teacher-logit noise), got {self.sigma}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1] (loss = (1-kd_weight)*CE + kd_weight*KD), got "
                             f"{self.kd_weight}")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight (weight of the feature terms of feature_kd) must be >= 0, got "
                             f"{self.feature_weight}")
        _known("teacher_source", self.teacher_source, _TEACHER_SOURCES)
        _known("report_to", self.report_to, REPORT_TO)
        self._validate_endpoint()
        _known("scheduler", self.scheduler, _SCHEDULERS)
        _known("mixed_precision", self.mixed_precision, _MIXED_PRECISION)
        _known("device", self.device, _DEVICES)
        _known("dtype", self.dtype, _DTYPES)
        _known("cache_dtype", self.cache_dtype, _CACHE_DTYPES)
        _known("cache_tail", self.cache_tail, _CACHE_TAILS)
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.teacher_source in ("cache", "endpoint") and not self._cache_faithful():
            warnings.warn(f"teacher_source={self.teacher_source} with loss={self.loss} at temperature={self.temperature:g}: "
                          "a top-k "
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
        if spec.needs_hidden_states and self.teacher_source != "online":
            raise ValueError(f"method={self.method} needs the teacher's hidden states, which a logit cache "
                             "does not hold; use teacher_source=online")
        if self.method == "feature_kd" and self.feature_weight == 0:
            raise ValueError("method=feature_kd with feature_weight=0 is word_kd; set feature_weight > 0")
        if self.method != "feature_kd" and self.feature_weight != 0:
            raise ValueError(f"feature_weight={self.feature_weight} weighs the feature terms of method=feature_kd; "
                             f"method={self.method} has none: drop feature_weight (or use method=feature_kd)")
        self._validate_model_kinds(spec)
        if hasattr(spec, "check_config"):  # the method's own cross-field rules (see kdlens.distill.Method)
            spec.check_config(self)

    def _validate_model_kinds(self, spec) -> None:
        from kdlens.models._encoder import is_encoder

        if getattr(spec, "trains_encoders", False):
            return
        for role, name in (("teacher", self.teacher), ("student", self.student)):
            if is_encoder(name):
                raise ValueError(f"{role}={name!r} is an encoder classifier, but method={self.method} distills causal "
                                 "LMs; only method=mpdistil trains encoder classifiers")

    def _cache_faithful(self) -> bool:
        """:func:`cache_is_faithful` for this config; the teacher's vocabulary is read only when it decides."""
        if cache_is_faithful(str(self.loss), self.temperature):
            return True
        if self.teacher_source == "endpoint" or not self.teacher:  # a served teacher sends its own top-k
            return False
        from kdlens.models import model_vocab_size

        return cache_is_faithful(str(self.loss), self.temperature, top_k=self.top_k,
                                 vocab_size=model_vocab_size(self.teacher))

    def _validate_endpoint(self) -> None:
        if self.teacher_source != "endpoint":
            return
        if self.endpoint.url is None:
            raise ValueError("teacher_source=endpoint needs the served teacher: endpoint.url=http://HOST:PORT/v1")
        if self.student is None or self.student.startswith("prune:"):
            raise ValueError("teacher_source=endpoint trains a student whose tokenizer the served teacher shares: set "
                             f"student=NAME_OR_PATH (got student={self.student!r}; prune:N needs the teacher's weights)")
        if self.loss in ("uld", "span_aligned"):
            raise ValueError(f"teacher_source=endpoint reads top-k log-probabilities over the student's vocabulary; "
                             f"loss={self.loss} is for teachers with another tokenizer, which need teacher_source=online")

    def _validate_generation_methods(self) -> None:
        if self.method in ON_POLICY and self.teacher_source != "online":
            raise ValueError(f"method={self.method} scores generated sequences with the teacher, which a logit "
                             "cache cannot hold; use teacher_source=online")
        if self.method == "minillm" and self.loss != "reverse_kl":
            raise ValueError(f"method=minillm minimises reverse KL (its default loss): drop loss={self.loss} or set "
                             "loss=reverse_kl")
        if self.method == "distillm" and self.distillm.replay_capacity < self.batch_size:
            raise ValueError(f"distillm.replay_capacity={self.distillm.replay_capacity} is smaller than one "
                             f"batch (batch_size={self.batch_size}); raise it")
        if self.method == "blackbox":
            if (self.blackbox.teacher is None) == (self.blackbox.url is None):
                raise ValueError("method=blackbox needs exactly one text-only teacher: blackbox.url=http://HOST/v1 "
                                 "or blackbox.teacher=package.module:function")
            if self.student is None:
                raise ValueError("method=blackbox trains a student: set student=NAME_OR_PATH (or prune:N of teacher=)")

    def _check_types(self) -> None:
        """Plain fields hold values of their annotated type (``steps=1.5`` is an error, not a crash later)."""
        kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        hints = {"steps": int, "batch_size": int, "grad_accum": int, "max_length": int, "log_every": int,
                 "save_every": int, "warmup_steps": int, "top_k": int, "seed": int, "n_examples": int,
                 "epochs": float, "lr": float, "weight_decay": float, "max_grad_norm": float, "sigma": float,
                 "temperature": float, "kd_weight": float, "feature_weight": float,
                 "scale_by_temperature_squared": bool, "method": str, "split": str, "teacher_source": str,
                 "scheduler": str, "mixed_precision": str, "device": str, "dtype": str, "cache_dtype": str,
                 "cache_tail": str, "teacher": str, "student": str, "loss": str, "output_dir": str,
                 "cache_dir": str, "system_prompt": str}
        optional = {"steps", "epochs", "n_examples", "teacher", "student", "loss", "output_dir", "cache_dir",
                    "system_prompt"}
        for name, kind in hints.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
                ok = True
            if not ok:
                raise ValueError(f"{name}={value!r} must be {kinds[kind]}")

    def _loss_shorthands(self, alpha: float | None, beta: float | None) -> None:
        """Top-level ``alpha=``/``beta=``: the loss's own parameter, or an error naming the new keys."""
        from kdlens.losses import LOSSES, get_loss

        renamed = {"alpha": "the KD weight of (1-w)*CE + w*KD is kd_weight", "beta": "the weight of the "
                   "feature terms of feature_kd is feature_weight"}
        params = dict(LOSSES[self.loss].params) if self.loss is not None else {}
        for name, value in (("alpha", alpha), ("beta", beta)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}={value!r} must be a number")
            if name not in params:
                new_key = "kd_weight" if name == "alpha" else "feature_weight"
                raise ValueError(f"{name}={value} is not a parameter of loss={self.loss} ({renamed[name]}): for "
                                 f"that set {new_key}={value}; for a loss parameter choose a loss that has one "
                                 f"(jsd: beta; skew_forward_kl, skew_reverse_kl: alpha; ab_divergence: both)")
            if name in self.loss_params and float(self.loss_params[name]) != float(value):
                raise ValueError(f"{name}={value} and loss_params.{name}={self.loss_params[name]} disagree; give one")
            self.loss_params[name] = float(value)
        if self.loss is not None:
            get_loss(self.loss, **self.loss_params)  # unknown or out-of-range loss parameters fail now

    def _validate_teacher_signal(self) -> None:
        """A method honours sigma, tau, tau^2 and the KD settings, or they are refused here (never ignored)."""
        from kdlens.distill._registry import METHODS

        spec = METHODS[self.method]
        if spec.default_loss is None:  # no KD term on teacher logits
            defaults = {"sigma": 0.0, "temperature": 1.0, "scale_by_temperature_squared": False, "kd_weight": 1.0,
                        "loss": None, "loss_params": {}}
            given = [f"{k}={getattr(self, k)}" for k, v in defaults.items() if getattr(self, k) != v]
            if given:
                hint = ("; for a noisier or softer teacher decoding sample it: seq_kd.do_sample=true "
                        "seq_kd.temperature=T") if self.method == "seq_kd" else ""
                raise ValueError(f"method={self.method} {spec.without_kd_term}, so {', '.join(given)} would be "
                                 f"ignored: drop {'it' if len(given) == 1 else 'them'}{hint}")
        if self.kd_weight != 1.0 and (
                (self.method == "minillm" and self.minillm.form == "pg")
                or (self.method == "gkd" and self.gkd.lambda_ == 1.0)):
            raise ValueError(f"kd_weight={self.kd_weight} mixes in a gold cross-entropy, but method={self.method} "
                             "here trains only on generated sequences (the KD term alone): drop kd_weight")

    @property
    def trained_model(self) -> str:
        """The model that is trained: ``student``, or the teacher itself for ``sft`` without student."""
        return self.student if self.student is not None else str(self.teacher)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable dict (nested configs as dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillConfig:
        """Build from a mapping, rejecting unknown keys with close-match suggestions.

        ``alpha`` and ``beta`` are the chosen loss's parameters (see the class docstring).
        """
        data = dict(data)
        shorthands = {}
        for name in ("alpha", "beta"):
            if name in data:
                value = data.pop(name)
                try:
                    shorthands[name] = None if value is None else float(value)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{name}={value!r} is not a number") from err
        return cls(**coerce_fields(cls, checked_keys(data, cls, "")), **shorthands)

    def replace(self, **changes: Any) -> DistillConfig:
        """A validated copy with some fields changed."""
        return DistillConfig.from_dict({**self.to_dict(), **changes})


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
