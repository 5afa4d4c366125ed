"""What a report reads: a run directory or a sweep directory, loaded without any model.

A **run directory** (``kdlens.distill.distill`` + ``kdlens.eval.evaluate``) must hold::

    eval/examples.parquet    required: the examples table of the run's model(s) and of its
                             teacher (model_id "teacher"; other ids are students)
    eval/tokens.parquet      optional: per-token statistics against the teacher
    config.yaml, manifest.json, train_log.jsonl   optional: setup, provenance, training curve

An evaluation directory (``examples.parquet`` at its top, from ``kdlens eval -o DIR``) is read
like a run directory without training files.

A **sweep directory** (``kdlens.sweep.run_sweep``) must hold ``results.parquet``; it may hold
``spec.yaml``, ``runs.parquet``, ``manifest.json``, ``examples.parquet`` and ``tokens.parquet``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["ReportSource", "describe", "load_source"]


@dataclass
class ReportSource:
    """Everything a report shows, read from disk.

    Attributes
    ----------
    kind : {"run", "sweep"}
    path : Path
    examples : DataFrame or None
        Examples table (run: required; sweep: every model's outputs when present).
    tokens : DataFrame or None
    results : DataFrame or None
        Sweep only: one row per (run, task).
    config : dict
        Run: the resolved DistillConfig; sweep: the spec.
    manifest : dict
        Run: the training manifest; sweep: the sweep manifest (plus ``eval`` manifest under ``"eval"``).
    log : list of dict
        Training log rows (run only).
    teacher : str or None
        The teacher's model_id in ``examples`` (None when there is none).
    """

    kind: str
    path: Path
    examples: pd.DataFrame | None = None
    tokens: pd.DataFrame | None = None
    results: pd.DataFrame | None = None
    config: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    teacher: str | None = None


def _read_yaml(path: Path) -> dict[str, Any]:
    from kdlens._io import read_yaml

    return dict(read_yaml(path)) if path.is_file() else {}


def _read_json(path: Path) -> dict[str, Any]:
    from kdlens._io import read_json

    return dict(read_json(path)) if path.is_file() else {}


def load_source(path: str | os.PathLike, *, teacher: str | None = None) -> ReportSource:
    """Read a run, evaluation or sweep directory for a report (see the module docstring).

    Parameters
    ----------
    path : path
        The directory.
    teacher : str, optional
        The teacher's ``model_id`` in the examples (default ``"teacher"`` when present).

    Raises
    ------
    FileNotFoundError
        ``path`` is not a directory, or holds none of the tables a report needs.
    ValueError
        A table does not match its schema, or ``teacher`` is not in the examples.
    """
    from kdlens.eval import read_examples, read_tokens

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; give a run directory or a sweep directory")
    if (root / "results.parquet").is_file():
        from kdlens.sweep import read_results

        src = ReportSource(kind="sweep", path=root, results=read_results(root / "results.parquet"),
                           config=_read_yaml(root / "spec.yaml"), manifest=_read_json(root / "manifest.json"))
        if (root / "examples.parquet").is_file():
            src.examples = read_examples(root / "examples.parquet")
        if (root / "tokens.parquet").is_file():
            src.tokens = read_tokens(root / "tokens.parquet")
        src.teacher = "teacher" if src.examples is not None and "teacher" in set(src.examples["model_id"]) else None
        return src
    eval_dir = root / "eval" if (root / "eval" / "examples.parquet").is_file() else root
    if not (eval_dir / "examples.parquet").is_file():
        raise FileNotFoundError(
            f"{root} holds neither results.parquet (a sweep directory) nor eval/examples.parquet (an evaluated run); "
            "evaluate the run first (kdlens eval ... -o RUN_DIR/eval) or run the sweep")
    src = ReportSource(kind="run", path=root, examples=read_examples(eval_dir / "examples.parquet"),
                       config=_read_yaml(root / "config.yaml"), manifest=_read_json(root / "manifest.json"))
    if (eval_dir / "tokens.parquet").is_file():
        src.tokens = read_tokens(eval_dir / "tokens.parquet")
    if (eval_dir / "manifest.json").is_file() and eval_dir != root:
        src.manifest["eval"] = _read_json(eval_dir / "manifest.json")
    if (root / "train_log.jsonl").is_file():
        from kdlens.distill import RunDir

        src.log = RunDir(root).log()
    models = sorted(map(str, src.examples["model_id"].unique()))
    if teacher is not None and teacher not in models:
        raise ValueError(f"teacher {teacher!r} is not a model_id of {eval_dir / 'examples.parquet'}; known: {models}")
    src.teacher = teacher if teacher is not None else ("teacher" if "teacher" in models else None)
    return src


def describe(value: Any) -> str:
    """A short text for a config value in a setup table."""
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "{}"
    return "" if value is None else str(value)
