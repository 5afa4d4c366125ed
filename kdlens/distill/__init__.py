"""The distillation engine: one readable training loop, methods as small objects, run directories.

``distill(config) -> RunDir`` trains a student (or fine-tunes a teacher with ``method="sft"``) and
writes a resumable, reproducible run directory; see :mod:`kdlens.distill._loop` for the loop,
:data:`METHODS` for the methods and :class:`RunDir` for the layout on disk. Generation-based
methods (``seq_kd``, ``gkd``, ``distillm``, ``minillm``, ``blackbox``) live in one module each and
plug into the loop through the optional ``Method.begin`` hook (see :class:`Method`).
"""

from kdlens.distill._generation import GeneratedBatch, generate_continuations
from kdlens.distill._loop import StepCallback, distill
from kdlens.distill._methods import (
           METHODS,
           Method,
           MethodRun,
           RunContext,
           StepContext,
           StepData,
           TeacherOutput,
)
from kdlens.distill._replay import ReplayBuffer
from kdlens.distill._rundir import RunDir
from kdlens.distill.blackbox import OpenAIChatTeacher
from kdlens.distill.distillm import AdaptiveSchedule
from kdlens.distill.minillm import policy_gradient_loss

__all__ = ["distill", "RunDir", "METHODS", "Method", "StepContext", "TeacherOutput", "StepCallback",
           "MethodRun", "RunContext", "StepData", "GeneratedBatch", "generate_continuations", "ReplayBuffer",
           "AdaptiveSchedule", "OpenAIChatTeacher", "policy_gradient_loss"]
