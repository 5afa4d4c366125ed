"""Task specs -> records: one entry point for lab tasks, reasoning-gym names, files and Hugging Face datasets."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlens.data._files import FILE_SUFFIXES, load_file
from kdlens.data._gym import DEFAULT_SIZE, TaskInfo, build_tasks, load_gym
from kdlens.data._lab import LAB_TASKS, load_lab
from kdlens.data._records import Record

__all__ = ["load_task", "load_tasks", "tasks", "SPLITS"]

#: Split names a task can be loaded as (``gen``, the generalization split, exists for lab tasks only).
SPLITS = ("train", "validation", "test", "gen")


def _lab_infos() -> dict[str, TaskInfo]:
    return {name: TaskInfo(name=name, answer_kind="exact", scorer="exact", description=task.description,
                           source="kdlens_lab")
            for name, task in LAB_TASKS.items()}


@functools.cache
def tasks() -> dict[str, TaskInfo]:
    """The ``TASKS`` table: the lab tasks, then reasoning-gym's (its registry is read on first use)."""
    return {**_lab_infos(), **build_tasks()}


def _is_path(spec: str) -> bool:
    return spec.endswith(FILE_SUFFIXES) or "/" in spec or "\\" in spec or Path(spec).exists()


def _parse_gym(spec: str) -> tuple[str, int | None]:
    name, sep, size_text = spec.partition(":")
    if not sep:
        return name, None
    try:
        size = int(size_text)
    except ValueError:
        raise ValueError(f"task spec {spec!r}: size {size_text!r} is not an integer; write NAME or NAME:SIZE") from None
    if size <= 0:
        raise ValueError(f"task spec {spec!r}: size must be positive, got {size}")
    return name, size


def _unknown_task(name: str) -> ValueError:
    known = sorted(tasks())
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown task {name!r}: it is not a file path, not hf:ID, not a lab task and not a reasoning-gym task.{hint} "
        f"Known tasks: {', '.join(known)}"
    )


def load_task(
    spec: str,
    *,
    split: str = "test",
    seed: int = 0,
    n: int | None = None,
    config: Mapping[str, Any] | None = None,
    exclude: Iterable[Record] | None = None,
) -> list[Record]:
    """Load one task as a list of :class:`~kdlens.data.Record`.

    Parameters
    ----------
    spec : str
        * ``"NAME"`` or ``"NAME:SIZE"``: a lab task (``lab_chain``, ... see :mod:`kdlens.data._lab`)
          or a reasoning-gym task (:data:`kdlens.data.TASKS`), ``SIZE`` items (default ``n``, else
          100), generated deterministically from ``(split, seed)``.
        * a ``.json``/``.jsonl`` path or a directory of them (task name = file stem).
        * ``"hf:ID"`` or ``"hf:ID:CONFIG"``: a Hugging Face dataset id or local dataset directory.
    split : {"train", "validation", "test", "gen"}
        For lab tasks, disjoint regions of the item space (``gen``: held-out operands); for
        reasoning-gym, each split has its own generator seed, so splits never share an item;
        for files, only the label put on the records; for datasets, the split loaded.
    seed : int
        Generator seed of lab and reasoning-gym tasks (files and datasets are read in their own order).
    n : int, optional
        Keep the first ``n`` records (a deterministic prefix, not a sample).
    config : Mapping, optional
        reasoning-gym dataset config fields, e.g. ``{"min_terms": 2, "max_terms": 3}``; for lab
        tasks ``min_terms``, ``max_terms``, ``ops`` or ``digit_order``.
    exclude : iterable of Record, optional
        Drop records whose prompt equals one of these (e.g. ``split="train", exclude=test``);
        reasoning-gym tasks generate further items to keep their size.

    Returns
    -------
    list of Record

    Raises
    ------
    FileNotFoundError
        A path that doesn't exist.
    ValueError
        An unknown task name (the message lists the known ones), a malformed file (with its line
        number), a record without an answer, a bad split, size or ``n``.
    ImportError
        ``hf:`` specs without the ``datasets`` package.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a task spec must be a non-empty string, got {spec!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    excluded = frozenset(r.prompt for r in exclude) if exclude is not None else frozenset()

    if spec.startswith("hf:") or _is_path(spec):
        if config:
            raise ValueError(f"config= applies to reasoning-gym tasks only, not to {spec!r}")
        if spec.startswith("hf:"):
            from kdlens.data._hf import load_hf

            records = load_hf(spec, split=split)
        else:
            records = load_file(spec, split=split)
        records = [r for r in records if r.prompt not in excluded]
    else:
        name, size = _parse_gym(spec)
        if name in LAB_TASKS:
            records = load_lab(name, size=size or n or DEFAULT_SIZE, split=split, seed=seed, config=config,
                               exclude_prompts=excluded)
            return records[:n] if n is not None else records
        if split == "gen":
            raise ValueError(f"split 'gen' (held-out operands) exists for lab tasks only, not for {spec!r}; "
                             "use train, validation or test")
        if name not in tasks():
            raise _unknown_task(name)
        size = size or n or DEFAULT_SIZE
        records = load_gym(name, size=size, split=split, seed=seed, config=config, exclude_prompts=excluded)
    return records[:n] if n is not None else records


def load_tasks(specs: Sequence[str] | str, **kwargs: Any) -> list[Record]:
    """Concatenate :func:`load_task` over several specs (same keyword arguments for each).

    Raises ``ValueError`` when two records share an id (e.g. a spec given twice).
    """
    if isinstance(specs, str):
        specs = [specs]
    records = [record for spec in specs for record in load_task(spec, **kwargs)]
    seen: set[tuple[str, str]] = set()
    for record in records:
        key = (record.task, record.id)
        if key in seen:
            raise ValueError(f"duplicate record id {record.id!r} in task {record.task!r}; is a spec listed twice?")
        seen.add(key)
    return records
