"""Parquet storage of the tidy tables: fixed schema, atomic writes, resumable shards, manifest.

An evaluation directory looks like this::

    output_dir/
      manifest.json                     models, tasks, decoding, settings, versions, shards
      shards/<model>__<task>__<hash>.parquet   one finished (model_id, task) unit each
      examples.parquet                  all shards combined, written last
      tokens.parquet                    teacher-relative token statistics (optional)

Every file is written to a temporary sibling and renamed (:mod:`kdlens._io`), so a killed run
leaves only whole files behind. Each shard carries a *fingerprint* of everything its rows depend
on (model, task, decoding, sizes) in its parquet metadata, so a rerun can tell a finished shard
from one produced under different settings.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._io import (
    atomic_write_json,
    git_sha,
    read_json,
    sha256_file,
    sha256_json,
    versions,
)
from kdlens._tables import (
    read_parquet,
    read_parquet_metadata,
)

__all__ = ["shard_path", "load_shard", "Manifest", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.json"


def _slug(text: str, limit: int = 40) -> str:
    # the end of a path names the task ("...math-test-SVAMP.json"), so long names keep their tail
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[-limit:].strip("-.") or "x"


def shard_path(output_dir: str | os.PathLike, model_id: str, task: str) -> Path:
    """Where the (model_id, task) shard lives: readable names plus a hash, so distinct keys never collide."""
    digest = sha256_json([model_id, task])[:10]
    return Path(output_dir) / "shards" / f"{_slug(model_id)}__{_slug(task)}__{digest}.parquet"


def load_shard(path: Path, fingerprint: Mapping[str, Any], columns: Sequence[str],
               dtypes: Mapping[str, str], *, overwrite: bool = False) -> pd.DataFrame | None:
    """Return a finished shard's rows, or None when the unit still has to be computed.

    A shard written under a different fingerprint (other decoding, n, model spec, ...) is an error
    unless ``overwrite``: silently mixing settings in one directory would corrupt comparisons.
    """
    if not path.is_file():
        return None
    stored = read_parquet_metadata(path).get("fingerprint")
    if stored != dict(fingerprint):
        if overwrite:
            return None
        changed = sorted(k for k in set(stored or {}) | set(fingerprint)
                         if (stored or {}).get(k) != fingerprint.get(k))
        raise ValueError(
            f"{path} was produced with different settings (differs in {changed}); "
            "use a new output_dir, or pass overwrite=True (--overwrite) to recompute it")
    return read_parquet(path, columns, dtypes)


class Manifest:
    """``manifest.json`` of an evaluation directory: what was run, with which versions, and what is done.

    It is rewritten atomically after every finished shard, so it always describes the files on disk.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / MANIFEST_NAME
        previous = read_json(self.path) if self.path.is_file() else {}
        self.data: dict[str, Any] = {
            "kind": "kdlens.eval",
            "created": previous.get("created") or _now(),
            **{k: v for k, v in previous.items() if k not in ("kind", "created")},
        }
        # shards and tables of earlier runs stay listed: their files are still valid
        self.data.setdefault("shards", {})
        self.data.setdefault("tables", {})

    def record_run(self, *, models: Mapping[str, str], tasks: Sequence[str], decoding: Mapping[str, Any],
                   settings: Mapping[str, Any]) -> None:
        """Record what this run evaluates and with which versions (replaces the previous run's entry)."""
        self.data.update(models=dict(models), tasks=list(tasks), decoding=dict(decoding),
                         settings=dict(settings), versions=versions(), git_sha=git_sha())
        self.save()

    def add_shard(self, model_id: str, task: str, path: Path, n_rows: int, fingerprint: Mapping[str, Any]) -> None:
        self.data["shards"][f"{model_id}/{task}"] = {
            "model_id": model_id, "task": task, "path": str(path.relative_to(self.path.parent)),
            "rows": int(n_rows), "sha256": sha256_file(path), "fingerprint": dict(fingerprint),
        }
        self.save()

    def add_table(self, path: Path, n_rows: int, **info: Any) -> None:
        self.data["tables"][path.name] = {"rows": int(n_rows), "sha256": sha256_file(path), **info}
        self.save()

    def save(self) -> None:
        self.data["updated"] = _now()
        atomic_write_json(self.path, self.data)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
