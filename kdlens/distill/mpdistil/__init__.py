"""``mpdistil``: MPDistil's four stages (Sengupta, Dixit, Akhtar, Chakraborty, ICLR 2024).

"A Good Learner can Teach Better: Teacher-Student Collaborative Knowledge Distillation":

1. **teacher fine-tuning** on the tasks (cross-entropy; a causal LM through kdlens's ``sft`` run);
2. **student distillation**: ``alpha * tau^2 * MSE(softmax(z_T / tau), softmax(z_S / tau))
   + (1 - alpha) * CE + beta * MSE(normalized hidden states of mapped layers)``, defaults
   ``tau = 5, alpha = 0.5, beta = 100``;
3. **meta-teacher**: a copy of the teacher with its body frozen and its head trained on the quiz
   sets from the hidden states of teacher and student, with the collaborative or the competitive
   loss (:func:`kdlens.distill.meta_teacher_loss`);
4. **curriculum**: a policy (:class:`kdlens.distill.CurriculumPolicy`: a learned summary of the student, one
   linear layer and a softmax over tasks) picks the task whose quiz batch the student trains on
   next; the reward is the number (binary) or the sum (real) of quiz examples where the student's
   true-class probability beats the meta-teacher's; REINFORCE with discount 0.99.

Both causal LMs (the class of a record is its gold answer as tokens) and BERT-family encoder
classifiers (MPDistil's own setting, e.g. ``teacher=all-minilm-l6-v2 student=prune:2`` on tasks
with choice answers) on any multi-task set of kdlens tasks. Settings: the ``mpdistil:`` config
section (:class:`kdlens.config.MPDistilConfig`); the ablations of the paper are its switches
``meta_teacher``, ``curriculum``, ``meta_loss`` and ``reward``. Layout on disk:
:mod:`kdlens.distill.mpdistil._stages`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlens.distill.metadistil import known_size
from kdlens.distill.mpdistil._data import STAGES
from kdlens.distill.mpdistil._evaluate import evaluate_classifier
from kdlens.distill.mpdistil._objectives import (
    CurriculumPolicy,
    curriculum_reward,
    curriculum_student_loss,
    discounted_returns,
    meta_teacher_loss,
    reinforce_loss,
)

__all__ = ["MPDistil", "CurriculumPolicy", "meta_teacher_loss", "curriculum_student_loss", "curriculum_reward",
           "discounted_returns", "reinforce_loss", "evaluate_classifier", "STAGES"]



def _default(config: Any, name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config)}
    return fields[name].default if name in fields else None


@dataclass(frozen=True)
class MPDistil:
    """MPDistil: teacher fine-tuning, student distillation, a meta-teacher and a task curriculum.

    ``kdlens.distill(config)`` hands the run to :meth:`drive`; see :mod:`kdlens.distill.mpdistil`.
    """

    name: str = "mpdistil"
    needs_teacher: bool = True
    needs_hidden_states: bool = True
    default_loss: str | None = "mse_soft"  # MPDistil's soft loss at mpdistil.tau (its own teacher signal)
    trains_encoders: bool = True
    description: str = "MPDistil: teacher fine-tuning, student KD, a meta-teacher and a task curriculum (staged)"

    def check_config(self, config: Any) -> None:
        """Refuse what MPDistil cannot honour, before anything is loaded or written."""
        from kdlens.models._encoder import is_encoder

        m = config.mpdistil
        if config.student is None:
            raise ValueError("method=mpdistil distills a student: set student=prune:N (a prune of the fine-tuned "
                             "teacher) or student=NAME_OR_PATH")
        if config.lora is not None:
            raise ValueError("method=mpdistil fine-tunes every weight; set lora=false")
        if config.grad_accum != 1:
            raise ValueError(f"method=mpdistil takes one batch per step; grad_accum={config.grad_accum} is not "
                             "supported (lower batch_size instead)")
        # the teacher signal is MPDistil's own: a soft MSE at mpdistil.tau, no noise
        for name, hint in (("sigma", "MPDistil's soft loss has no teacher-logit noise"),
                           ("temperature", "set mpdistil.tau"),
                           ("scale_by_temperature_squared", "MPDistil's soft loss is always scaled by tau^2"),
                           ("kd_weight", "set mpdistil.alpha (the soft-loss weight)"),
                           ("feature_weight", "set mpdistil.beta (the hidden-state weight)")):
            if hasattr(config, name) and getattr(config, name) != _default(config, name):
                raise ValueError(f"method=mpdistil does not read {name}={getattr(config, name)!r}: {hint}")
        if config.loss not in (_default(config, "loss"), "mse_soft"):
            raise ValueError(f"method=mpdistil distills with the soft MSE of its paper (loss=mse_soft), not "
                             f"loss={config.loss}")
        teacher_encoder = is_encoder(config.teacher)
        if not config.student.startswith("prune:") and is_encoder(config.student) != teacher_encoder:
            kinds = {True: "an encoder classifier", False: "a causal LM"}
            raise ValueError(f"teacher={config.teacher!r} is {kinds[teacher_encoder]} but student={config.student!r} "
                             f"is {kinds[not teacher_encoder]}; MPDistil needs two models of one kind")
        if teacher_encoder and m.target != "answer":
            raise ValueError("mpdistil.target chooses the class tokens of a causal LM; an encoder classifies "
                             "the prompt into its task's labels: leave mpdistil.target unset")
        directories = [spec for spec in config.tasks if Path(spec).is_dir()]
        if m.curriculum != "none" and len(config.tasks) < 2 and not directories:
            raise ValueError(f"mpdistil.curriculum={m.curriculum} chooses among tasks, but tasks={config.tasks} is one "
                             "task; give at least two tasks or set mpdistil.curriculum=none")
        if m.target_task is not None and m.curriculum == "none":
            raise ValueError("mpdistil.target_task is where stage 4 measures its rewards, but "
                             "mpdistil.curriculum=none skips stage 4; unset one of them")
        for spec in config.tasks:
            size = known_size([spec], config.n_examples)
            if size is not None and m.quiz_size >= size:
                raise ValueError(f"mpdistil.quiz_size={m.quiz_size} holds out all {size} examples of task {spec}; "
                                 "lower mpdistil.quiz_size or add data")

    def drive(self, config: Any, *, run: Any, callbacks: Sequence[Callable[[int, Mapping[str, Any]], None]] = (),
              distill: Callable[..., Any], manifest: Mapping[str, Any] | None = None) -> None:
        """Run the four stages into ``run`` (called by :func:`kdlens.distill.distill`)."""
        from kdlens.distill.mpdistil._stages import drive

        drive(config, run=run, callbacks=callbacks, distill=distill, manifest=manifest)

    def __call__(self, ctx: Any) -> Any:
        raise RuntimeError("mpdistil runs its own stages (MPDistil.drive); it has no per-batch loss in the loop")

