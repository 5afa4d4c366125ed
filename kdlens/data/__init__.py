"""Tasks and data: uniform records from reasoning-gym, JSON/JSONL files and Hugging Face datasets;
prompt formatting and tokenization; answer extraction and scoring.

``TASKS`` (reasoning-gym names -> :class:`TaskInfo`) is built from the reasoning-gym registry on
first access, so importing this package does not import reasoning-gym (about a second, and it pulls
in matplotlib) unless a named task is used.
"""

from __future__ import annotations

from typing import Any

from kdlens.data._answers import (
    ANSWER_KINDS,
    HARNESS_INVALID,
    NUMERIC_TOLERANCE,
    SCORING_MODES,
    ScoringMode,
    answers_equal,
    extract_answer,
    harness_exact_match,
    harness_flexible_extract,
    harness_strict_match,
    harness_strict_match_cot,
    infer_kind,
    same_answer,
    score,
    score_as,
)
from kdlens.data._files import row_to_record
from kdlens.data._format import (
    ALPACA_PREAMBLE,
    IGNORE_INDEX,
    TRUNCATION_POLICIES,
    collate,
    encode_for_generation,
    encode_for_training,
    format_prompt,
    response_text,
)
from kdlens.data._gym import DEFAULT_SIZE, TaskInfo, gym_seed
from kdlens.data._records import Record, save_records
from kdlens.data._registry import SPLITS, load_task, load_tasks, tasks

#: reasoning-gym task name -> :class:`kdlens.data.TaskInfo`: a plain dict built on first access from the
#: reasoning-gym registry (a declaration only, resolved by the module's ``__getattr__``)
TASKS: dict[str, TaskInfo]

__all__ = [
    "ALPACA_PREAMBLE",
    "ANSWER_KINDS",
    "DEFAULT_SIZE",
    "HARNESS_INVALID",
    "IGNORE_INDEX",
    "NUMERIC_TOLERANCE",
    "SCORING_MODES",
    "SPLITS",
    "TASKS",
    "TRUNCATION_POLICIES",
    "Record",
    "ScoringMode",
    "TaskInfo",
    "answers_equal",
    "collate",
    "encode_for_generation",
    "encode_for_training",
    "extract_answer",
    "format_prompt",
    "gym_seed",
    "harness_exact_match",
    "harness_flexible_extract",
    "harness_strict_match",
    "harness_strict_match_cot",
    "infer_kind",
    "load_task",
    "load_tasks",
    "response_text",
    "row_to_record",
    "same_answer",
    "save_records",
    "score",
    "score_as",
]


def __getattr__(name: str) -> Any:
    # TASKS: dict[str, TaskInfo], a plain dict built once from the reasoning-gym registry
    if name == "TASKS":
        return tasks()
    raise AttributeError(f"module 'kdlens.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "TASKS"})
