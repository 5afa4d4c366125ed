"""The nested sections of a :class:`kdlens.config.DistillConfig`: LoRA, feature KD and one per
generation-based method. Each is a dataclass validated in ``__post_init__``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoraConfig", "FeatureConfig", "SeqKDConfig", "GKDConfig", "DistiLLMConfig", "MiniLLMConfig",
           "BlackboxConfig", "METHOD_SECTIONS", "NESTED_SECTIONS", "ON_POLICY"]

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
METHOD_SECTIONS = {"seq_kd": SeqKDConfig, "gkd": GKDConfig, "distillm": DistiLLMConfig, "minillm": MiniLLMConfig,
                    "blackbox": BlackboxConfig}
#: methods that score generated sequences with the teacher online
ON_POLICY = ("gkd", "distillm", "minillm")
#: every nested section of the config (merged key by key by overrides)
NESTED_SECTIONS = ("feature", "lora", "endpoint", *METHOD_SECTIONS)
