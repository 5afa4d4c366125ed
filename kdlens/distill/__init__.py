"""The distillation engine: one readable training loop, methods as small objects, run directories.

``distill(config) -> RunDir`` trains a student (or fine-tunes a teacher with ``method="sft"``) and
writes a resumable, reproducible run directory; see :mod:`kdlens.distill._loop` for the loop,
:data:`METHODS` for the methods and :class:`RunDir` for the layout on disk.
"""

from kdlens.distill._loop import StepCallback, distill
from kdlens.distill._methods import METHODS, Method, StepContext, TeacherOutput
from kdlens.distill._rundir import RunDir

__all__ = ["distill", "RunDir", "METHODS", "Method", "StepContext", "TeacherOutput", "StepCallback"]
