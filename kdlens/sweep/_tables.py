"""A sweep's tables on disk: the runs and results parquet files, run status, gains over the baseline.

A leaf of :mod:`kdlens.sweep`: the spec, the session and publishing all read and write through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._tables import read_parquet_metadata, write_parquet
from kdlens.analysis import add_gain

__all__ = ["TEACHER_IDS", "add_sweep_gains", "missing", "read_results", "sweep_status", "write_results"]

#: model_id of each teacher in the sweep-level examples table
TEACHER_IDS: dict[bool, str] = {False: "teacher", True: "teacher_sft"}


def missing(value: Any) -> bool:
    """A run-table cell that holds no value (None or NaN)."""
    return value is None or (isinstance(value, float) and value != value)


def sweep_status(runs: pd.DataFrame, output_dir: str | os.PathLike) -> pd.Series:
    """Status of each run on disk: ``"evaluated"``, ``"trained"``, ``"partial"`` or ``"pending"``.

    ``"partial"`` is a run directory without its ``done`` marker (killed: it resumes).
    """
    root = Path(output_dir)
    out = []
    for rel in runs["run_dir"]:
        path = root / rel
        if (path / "eval" / "examples.parquet").is_file() and (path / "done").is_file():
            out.append("evaluated")
        elif (path / "done").is_file():
            out.append("trained")
        elif path.exists():
            out.append("partial")
        else:
            out.append("pending")
    return pd.Series(out, index=runs.index, name="status", dtype="string")


def add_sweep_gains(results: pd.DataFrame, *, baseline: str = "sft") -> pd.DataFrame:
    """Gains over the baseline run (:func:`kdlens.analysis.ablations.add_gain`) for a sweep's results.

    ``accuracy_gain`` compares a run with the baseline run of the same student, seed and task;
    ``agreement_gain`` and ``bleu_gain`` only where both were measured against the same teacher
    (``teacher_id``), else they are missing: agreement with two different teachers is not a change.
    Results without a baseline run come back unchanged.
    """
    if "method" not in results.columns or not (results["method"] == baseline).any():
        return results
    if "teacher_id" not in results.columns:
        return add_gain(results, baseline=baseline)
    out = add_gain(results.drop(columns=["teacher_id"]), baseline=baseline, metrics=("accuracy",))
    same_teacher = add_gain(results, baseline=baseline, metrics=("agreement", "bleu"))
    for col in ("baseline_agreement", "agreement_gain", "baseline_bleu", "bleu_gain"):
        out[col] = same_teacher[col].to_numpy()
    out.insert(out.columns.get_loc("baseline_run_id"), "teacher_id", results["teacher_id"].to_numpy())
    return out


def write_results(results: pd.DataFrame, path: str | os.PathLike, *, axes: list[str],
                  spec: Mapping[str, Any] | None = None) -> Path:
    """Write a results table atomically as parquet; :func:`read_results` reads it back.

    Axis columns can mix types across rows (a number for KD runs, missing for SFT runs, a string
    for ``student``), which parquet cannot store in one column, so they are stored as JSON text.
    """
    stored = results.copy()
    for col in axes:
        stored[col] = [None if missing(v) else json.dumps(v) for v in stored[col]]
    return write_parquet(stored, path, metadata={"axes_as_json": list(axes), "spec": dict(spec or {})})


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load a sweep's ``results.parquet`` (or ``runs.parquet``) with its axis columns decoded."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `kdlens sweep SPEC -o DIR` first")
    frame = pd.read_parquet(path)
    for col in read_parquet_metadata(path).get("axes_as_json", []):
        frame[col] = [None if v is None or v != v else json.loads(v) for v in frame[col]]
        if frame[col].map(lambda v: isinstance(v, int | float) and not isinstance(v, bool) or v is None).all():
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame
