"""Parquet storage of kdlens's tidy tables: fixed schema, atomic writes, kdlens metadata.

The bottom layer every stage shares: evaluation writes the examples and tokens tables, sweeps
their results, and analyses and reports read them back with their schema checked.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdlens._io import atomic_write_bytes
from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES, TOKENS_COLUMNS, TOKENS_DTYPES

__all__ = ["conform", "write_parquet", "read_parquet", "read_parquet_metadata", "read_examples", "read_tokens",
           "EXAMPLES_NAME", "TOKENS_NAME"]

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
