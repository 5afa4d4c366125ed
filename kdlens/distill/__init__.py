"""The distillation engine: one readable training loop, methods as small objects, run directories.

``distill(config) -> RunDir`` trains a student (or fine-tunes a teacher with ``method="sft"``) and
writes a resumable, reproducible run directory, identified by its config, data and weights
(:func:`run_identity`); see :mod:`kdlens.distill._loop` for the loop,
:data:`METHODS` for the methods and :class:`RunDir` for the layout on disk. Generation-based
methods (``seq_kd``, ``gkd``, ``distillm``, ``minillm``, ``blackbox``) and ``metadistil`` live in one
module each and plug into the loop through the optional ``Method.begin`` hook; ``mpdistil`` (a
subpackage) runs its own stages through ``Method.drive`` (see :class:`Method`).

Names resolve lazily on first access, so ``from kdlens.distill import RunDir`` (what a report
needs to read a run directory) does not import torch.

The package itself is callable: ``kdlens.distill(config)`` is :func:`distill` whether the name
``kdlens.distill`` resolves to this function or, once any submodule was imported, to this package.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from kdlens._lazy import lazy_exports

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "distill": "kdlens.distill._loop",
    "StepCallback": "kdlens.distill._loop",
    "RunDir": "kdlens.distill._rundir",
    "RunIdentity": "kdlens.distill._identity",
    "run_identity": "kdlens.distill._identity",
    "weights_fingerprint": "kdlens.distill._identity",
    "METHODS": "kdlens.distill._registry",
    "Method": "kdlens.distill._methods",
    "MethodRun": "kdlens.distill._methods",
    "RunContext": "kdlens.distill._methods",
    "StepContext": "kdlens.distill._methods",
    "StepData": "kdlens.distill._methods",
    "TeacherOutput": "kdlens.distill._methods",
    "GeneratedBatch": "kdlens.distill._generation",
    "generate_continuations": "kdlens.distill._generation",
    "ReplayBuffer": "kdlens.distill._replay",
    "OpenAIChatTeacher": "kdlens.distill.blackbox",
    "AdaptiveSchedule": "kdlens.distill.distillm",
    "policy_gradient_loss": "kdlens.distill.minillm",
    "teacher_hypergradient": "kdlens.distill.metadistil",
    "evaluate_classifier": "kdlens.distill.mpdistil",
    "CurriculumPolicy": "kdlens.distill.mpdistil",
    "meta_teacher_loss": "kdlens.distill.mpdistil",
    "curriculum_reward": "kdlens.distill.mpdistil",
    "discounted_returns": "kdlens.distill.mpdistil",
    "reinforce_loss": "kdlens.distill.mpdistil",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


class _CallablePackage(types.ModuleType):
    """``kdlens.distill`` the package, callable as ``kdlens.distill(config)`` (the training function)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.distill(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
