"""The uniform record every task source yields, and its JSONL persistence."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kdlens._io import atomic_write_text

__all__ = ["Record", "save_records"]

_REQUIRED = ("id", "task", "split", "prompt", "answer")


@dataclass(frozen=True)
class Record:
    """One task item, whatever its source (reasoning-gym, a JSON/JSONL file, a Hugging Face dataset).

    Parameters
    ----------
    id : str
        Stable identifier, unique within a task and split (e.g. ``"chain_sum-test-0-17"``, ``"SVAMP-3"``).
    task : str
        Task name: the reasoning-gym name, the file stem, or the dataset id.
    split : str
        ``"train"``, ``"validation"``, ``"test"`` or (lab tasks) ``"gen"``; for files, the label the caller gave.
    prompt : str
        The user turn, before any chat template.
    answer : str
        Gold final answer (never empty).
    rationale : str or None
        Gold worked solution when the source has one; it is the training target (see
        :func:`kdlens.data.response_text`).
    meta : Mapping
        Source details: ``answer_kind`` (``"numeric"``, ``"choice"`` or ``"exact"``), ``scorer``
        (``"reasoning_gym"`` or the answer kind), ``source`` and source-specific keys. JSON-serializable.
    """

    id: str
    task: str
    split: str
    prompt: str
    answer: str
    rationale: str | None = None
    meta: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _REQUIRED:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Record.{name} must be a str, got {type(value).__name__} ({value!r})")
        if not self.answer.strip():
            raise ValueError(f"record {self.id!r} of task {self.task!r} has an empty answer; every record needs a gold answer")
        if self.rationale is not None and not isinstance(self.rationale, str):
            raise TypeError(f"Record.rationale must be a str or None, got {type(self.rationale).__name__}")
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"Record.meta must be a mapping, got {type(self.meta).__name__}")

    def __hash__(self) -> int:
        # meta is a dict, so the generated hash would fail; equal records share these fields
        return hash((self.id, self.task, self.split, self.prompt, self.answer))

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serializable dict (``meta`` copied)."""
        return {f.name: (dict(self.meta) if f.name == "meta" else getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming missing or unknown keys."""
        known = {f.name for f in fields(cls)}
        missing = [k for k in _REQUIRED if k not in data]
        unknown = sorted(set(data) - known)
        if missing or unknown:
            raise ValueError(
                f"cannot build a Record: missing keys {missing}, unknown keys {unknown}; "
                f"expected keys {sorted(known)}"
            )
        return cls(**{k: data[k] for k in known if k in data})


def save_records(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records as JSONL (one :meth:`Record.to_dict` per line), atomically.

    The file loads back unchanged with ``load_task(path)``.

    Parameters
    ----------
    records : iterable of Record
    path : path-like
        Destination, conventionally ending in ``.jsonl``.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    lines = [json.dumps(r.to_dict(), ensure_ascii=False, sort_keys=True) for r in records]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
