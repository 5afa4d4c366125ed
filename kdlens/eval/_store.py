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
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdlens._io import (
    atomic_write_bytes,
    atomic_write_json,
    git_sha,
    read_json,
    sha256_file,
    sha256_json,
    versions,
)
from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES, TOKENS_COLUMNS, TOKENS_DTYPES

__all__ = [
    "conform",
    "write_parquet",
    "read_parquet",
    "read_parquet_metadata",
    "read_examples",
    "read_tokens",
    "shard_path",
    "load_shard",
    "Manifest",
    "MANIFEST_NAME",
    "EXAMPLES_NAME",
    "TOKENS_NAME",
]

MANIFEST_NAME = "manifest.json"
EXAMPLES_NAME = "examples.parquet"
TOKENS_NAME = "tokens.parquet"
_META_KEY = b"kdlens"


def conform(data: pd.DataFrame | Sequence[Mapping[str, Any]], columns: Sequence[str],
            dtypes: Mapping[str, str]) -> pd.DataFrame:
    """Return ``data`` with exactly ``columns`` in that order, cast to ``dtypes``.

    Parameters
    ----------
    data : DataFrame or sequence of row mappings
    columns : the table's columns (from :mod:`kdlens._schema`)
    dtypes : column -> pandas dtype name ("string", "int64", "bool", "float64")

    Raises
    ------
    ValueError
        When a column is missing or unexpected (names them), or a value cannot be cast.
    """
    frame = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    if len(frame) == 0 and len(frame.columns) == 0:
        frame = pd.DataFrame({c: [] for c in columns})
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise ValueError(f"table columns do not match the schema: missing {missing}, unexpected {extra}")
    frame = frame.loc[:, list(columns)].reset_index(drop=True)
    for column in columns:
        dtype = dtypes[column]
        try:
            if dtype == "string":
                # None/NaN stay missing (<NA>); everything else becomes text.
                values = frame[column].astype(object).where(frame[column].notna(), None)
                frame[column] = pd.array([None if v is None else str(v) for v in values], dtype="string")
            else:
                frame[column] = frame[column].astype(dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(f"column {column!r} cannot be stored as {dtype}: {err}") from err
    return frame


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None,
                  compression: str = "snappy") -> Path:
    """Write ``frame`` atomically as parquet, with ``metadata`` (JSON) in the file's key-value metadata.

    ``compression="zstd"`` makes files about a third smaller (used for tables committed to a repository).
    """
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata is not None:
        merged = dict(table.schema.metadata or {})
        merged[_META_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode("utf-8")
        table = table.replace_schema_metadata(merged)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=compression)
    return atomic_write_bytes(path, buffer.getvalue())


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The kdlens metadata stored by :func:`write_parquet` (``{}`` when there is none)."""
    raw = (pq.read_schema(path).metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


def read_parquet(path: str | os.PathLike, columns: Sequence[str], dtypes: Mapping[str, str]) -> pd.DataFrame:
    """Read a kdlens table and check it against its schema (a clear error names the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the path")
    try:
        return conform(pd.read_parquet(path), columns, dtypes)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def read_examples(path: str | os.PathLike) -> pd.DataFrame:
    """Load an examples table: a parquet file, or an evaluation directory holding ``examples.parquet``."""
    path = Path(path)
    return read_parquet(path / EXAMPLES_NAME if path.is_dir() else path, EXAMPLES_COLUMNS, EXAMPLES_DTYPES)


def read_tokens(path: str | os.PathLike) -> pd.DataFrame:
    """Load a tokens table: a parquet file, or an evaluation directory holding ``tokens.parquet``."""
    path = Path(path)
    return read_parquet(path / TOKENS_NAME if path.is_dir() else path, TOKENS_COLUMNS, TOKENS_DTYPES)


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
