"""The nested sections of a :class:`kdlens.config.DistillConfig`: LoRA, feature KD and one per
generation-based method. Each is a dataclass validated in ``__post_init__``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoraConfig", "FeatureConfig", "SeqKDConfig", "GKDConfig", "DistiLLMConfig", "MiniLLMConfig",
           "BlackboxConfig", "MetaDistilConfig", "MPDistilConfig", "METHOD_SECTIONS", "NESTED_SECTIONS", "ON_POLICY"]

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
    val_size : int or None
        Training examples held out for the validation loss (0 = none: phi stays 0). None (default)
        holds out ``min(16, n // 5)`` of the ``n`` examples, and never so many that fewer than one
        global batch is left to train on.
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
    val_size: int | None = None
    replay_capacity: int = 1000
    temperature: float = 1.0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        _check_generation("distillm", self.max_new_tokens, self.temperature)
        if not 0.0 <= self.phi_max <= 1.0 or self.phi_increment < 0 or self.threshold < 0:
            raise ValueError(f"distillm: need 0 <= phi_max <= 1, phi_increment >= 0 and threshold >= 0, got "
                             f"{self.phi_max}, {self.phi_increment}, {self.threshold}")
        if self.eval_every < 1 or (self.val_size is not None and self.val_size < 0) or self.replay_capacity < 1:
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


def _positive(section: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{section}.{name} must be a finite number > 0, got {value}")


def _at_least_one(section: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{section}.{name} must be >= 1, got {value}")


@dataclass
class MetaDistilConfig:
    """``metadistil`` (Zhou et al., ACL 2022): the teacher learns from a look-ahead student.

    Each teacher update takes a pilot copy of the student one SGD step of ``pilot_lr`` along the
    run's KD loss (``word_kd``'s ``(1 - alpha) * CE + alpha * D`` with the run's ``loss``, ``sigma``
    and ``temperature``), and moves the teacher against the pilot's cross-entropy on a quiz batch
    (a second-order gradient through the pilot step); then the real student step is taken on the KD
    loss from the updated teacher.

    Parameters
    ----------
    quiz_size : int
        Training examples held out (seeded) as the quiz set; the student never trains on them.
    quiz_batch_size : int or None
        Quiz examples per teacher update (None = the run's ``batch_size``).
    teacher_lr : float
        AdamW learning rate of the teacher (MetaDistil's default 1e-5).
    pilot_lr : float or None
        Step size of the pilot (look-ahead) SGD step (None = the run's ``lr``, as in the paper).
    update_every : int
        Update the teacher every N student steps (1 = every step).
    """

    quiz_size: int = 16
    quiz_batch_size: int | None = None
    teacher_lr: float = 1e-5
    pilot_lr: float | None = None
    update_every: int = 1

    def __post_init__(self) -> None:
        _at_least_one("metadistil", quiz_size=self.quiz_size, quiz_batch_size=self.quiz_batch_size,
                      update_every=self.update_every)
        _positive("metadistil", teacher_lr=self.teacher_lr, pilot_lr=self.pilot_lr)
        if self.quiz_batch_size is not None and self.quiz_batch_size > self.quiz_size:
            raise ValueError(f"metadistil.quiz_batch_size={self.quiz_batch_size} is larger than the quiz set "
                             f"(metadistil.quiz_size={self.quiz_size}); lower it or raise quiz_size")


_META_LOSSES = ("collaborative", "competitive")
_CURRICULA = ("policy", "uniform", "none")
_REWARDS = ("binary", "real")
_CLASS_TARGETS = ("answer", "response")


@dataclass
class MPDistilConfig:
    """``mpdistil`` (Sengupta et al., ICLR 2024): four resumable stages in ``<output_dir>/stages/``.

    1. teacher fine-tuning on the tasks (cross-entropy); 2. student distillation with
    ``alpha * tau^2 * MSE(softmax(z_T / tau), softmax(z_S / tau)) + (1 - alpha) * CE
    + beta * MSE(normalized hidden states of mapped layers)``; 3. a meta-teacher (the teacher with
    its body frozen and its head trained) on the quiz sets, from the hidden states of teacher and
    student; 4. a curriculum: a policy picks the task whose quiz batch the student trains on next,
    rewarded by the quiz examples where the student's true-class probability beats the
    meta-teacher's (REINFORCE). Stages 1-2 use the run's ``steps``/``epochs``, ``batch_size``,
    ``lr`` and schedule.

    Parameters
    ----------
    tau, alpha, beta : float
        Stage 2's temperature, soft-loss weight (in [0, 1]) and hidden-state weight (MPDistil's
        defaults 5, 0.5, 100).
    layer_map : str or list of int
        Student-to-teacher layers of the hidden-state term (:func:`kdlens.losses.layer_map`).
    finetune_teacher : bool
        Run stage 1; False takes ``teacher`` as already fine-tuned on the tasks (its classifier
        head too, for an encoder).
    teacher_steps : int or None
        Stage 1 length (None = the run's ``steps``/``epochs``).
    teacher_lr : float or None
        Stage 1 learning rate (None = the run's ``lr``).
    target : {"answer", "response"}
        Causal LMs: the class tokens whose probability is the true-class probability of stages
        3-4, the gold answer alone after the prompt (``"answer"``) or the whole gold response
        (rationale and answer, ``"response"``). Encoders classify the prompt into the task's labels.
    quiz_size : int
        Examples held out of each task (seeded) as its quiz set: stages 1-2 never train on them.
    quiz_batch_size : int
        Quiz examples per step of stages 3 and 4 (and per reward).
    meta_teacher : bool
        Run stage 3; False (ablation) lets the student compete with the stage-1 teacher itself.
    meta_loss : {"collaborative", "competitive"}
        ``1/2 CE(T'(h_T), y) + 1/2 CE(T'(h_S), y)`` or
        ``CE(T'(h_T), y) - mean p_T'(y | h_T) + mean p_T'(y | h_S)``.
    meta_steps : int
        Optimizer steps of stage 3.
    meta_lr : float
        AdamW learning rate of the meta-teacher's head.
    curriculum : {"policy", "uniform", "none"}
        Stage 4 with the learned policy, with tasks drawn uniformly (ablation: the same quiz
        training without a learned curriculum), or not at all (ablation: the stage-2 student is final).
    reward : {"binary", "real"}
        Per reward batch, the number of examples where ``p_S(y|x) > p_T'(y|x)``, or the sum of
        ``p_S(y|x) - p_T'(y|x)``.
    episodes, episode_steps : int
        Stage 4 runs ``episodes x episode_steps`` student steps; the policy is updated after each episode.
    gamma : float in (0, 1]
        Discount of the episode's rewards (0.99).
    policy_lr : float
        Adam learning rate of the policy (and of its summary of the student).
    curriculum_lr : float or None
        Stage 4 student learning rate (None = the run's ``lr``).
    target_task : str or None
        Rewards are measured on this task's quiz set (MPDistil's main task); None pools every
        task's quiz set.
    max_labels : int
        Encoders: the most distinct answers a task may have to be read as a label set.
    """

    tau: float = 5.0
    alpha: float = 0.5
    beta: float = 100.0
    layer_map: str | list[int] = "uniform"
    finetune_teacher: bool = True
    teacher_steps: int | None = None
    teacher_lr: float | None = None
    target: str = "answer"
    quiz_size: int = 16
    quiz_batch_size: int = 8
    meta_teacher: bool = True
    meta_loss: str = "collaborative"
    meta_steps: int = 100
    meta_lr: float = 1e-3
    curriculum: str = "policy"
    reward: str = "binary"
    episodes: int = 20
    episode_steps: int = 8
    gamma: float = 0.99
    policy_lr: float = 1e-2
    curriculum_lr: float | None = None
    target_task: str | None = None
    max_labels: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.layer_map, str) and "," in self.layer_map:
            self.layer_map = [int(x) for x in self.layer_map.split(",") if x.strip()]
        if isinstance(self.layer_map, str):
            _known("mpdistil.layer_map", self.layer_map, _LAYER_MAP_STRATEGIES)
        else:
            self.layer_map = [int(x) for x in self.layer_map]
            if not self.layer_map or any(x < 0 for x in self.layer_map):
                raise ValueError(f"mpdistil.layer_map needs teacher layer indices >= 0, got {self.layer_map}")
        _known("mpdistil.target", self.target, _CLASS_TARGETS)
        _known("mpdistil.meta_loss", self.meta_loss, _META_LOSSES)
        _known("mpdistil.curriculum", self.curriculum, _CURRICULA)
        _known("mpdistil.reward", self.reward, _REWARDS)
        _positive("mpdistil", tau=self.tau, teacher_lr=self.teacher_lr, meta_lr=self.meta_lr,
                  policy_lr=self.policy_lr, curriculum_lr=self.curriculum_lr)
        _at_least_one("mpdistil", teacher_steps=self.teacher_steps, quiz_size=self.quiz_size,
                      quiz_batch_size=self.quiz_batch_size, meta_steps=self.meta_steps, episodes=self.episodes,
                      episode_steps=self.episode_steps)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"mpdistil.alpha (soft-loss weight) must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"mpdistil.beta (hidden-state weight) must be a finite number >= 0, got {self.beta}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"mpdistil.gamma (reward discount) must be in (0, 1], got {self.gamma}")
        if self.max_labels < 2:
            raise ValueError(f"mpdistil.max_labels must be >= 2 (a label set), got {self.max_labels}")
        if self.quiz_batch_size > self.quiz_size:
            raise ValueError(f"mpdistil.quiz_batch_size={self.quiz_batch_size} is larger than each task's quiz set "
                             f"(mpdistil.quiz_size={self.quiz_size}); lower it or raise quiz_size")


METHOD_SECTIONS.update(metadistil=MetaDistilConfig, mpdistil=MPDistilConfig)
NESTED_SECTIONS = ("feature", "lora", "endpoint", *METHOD_SECTIONS)
