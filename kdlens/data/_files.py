"""JSON/JSONL task files, and the mapping of raw rows (files or Hugging Face datasets) to records.

Recognized row schemas (first match wins):

``{id, task, split, prompt, answer, ...}``
    a kdlens record as written by :func:`kdlens.data.save_records`; loaded unchanged.
``{instruction, input, output, answer}``
    the kd-generalization / Alpaca schema: prompt = instruction (+ ``"\\n\\n"`` + input when
    non-empty), rationale = output, answer = answer.
``{question, answer}``
    GSM8K style: when ``answer`` holds a worked solution ending in ``#### N``, rationale = that
    solution and answer = ``N``; otherwise the answer is used as is (a ``rationale``, ``solution`` or
    ``explanation`` field, if any, becomes the rationale).
``{problem, solution}``
    MATH style: answer = the last ``\\boxed{...}`` of the solution unless an ``answer`` field is given.

GSM8K conventions: a missing ``answer`` is taken from a ``#### N`` line of the rationale; the
rationale keeps its ``#### N`` line (it is a consistent final-answer marker that
:func:`kdlens.data.extract_answer` prefers) but loses GSM8K's calculator annotations ``<<48/2=24>>``,
which are tool-call artifacts, not text. Thousands commas in a ``####`` answer are dropped.

The answer kind of each record is inferred from its gold answer (:func:`kdlens.data.infer_kind`):
``math_data.json`` mixes numeric answers with AQuA-style letters, so a per-file kind would be wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdlens.data._answers import _last_boxed, infer_kind
from kdlens.data._records import Record

__all__ = ["load_file", "row_to_record", "FILE_SUFFIXES"]

FILE_SUFFIXES = (".json", ".jsonl")

_HASH_ANSWER = re.compile(r"\n?####\s*(.+?)\s*$", re.DOTALL)
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_RATIONALE_KEYS = ("rationale", "solution", "explanation")
_SCHEMAS = (
    "{instruction, input, output, answer}",
    "{question, answer}",
    "{problem, solution}",
    "kdlens records {id, task, split, prompt, answer}",
)


def _text(value: Any, where: str, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where}: field {key!r} must be a string or number, got {type(value).__name__}")
    return str(value)


def _split_hash(text: str) -> tuple[str, str | None]:
    """``"work\\n#### 1,234"`` -> (``"work\\n#### 1234"`` without calculator notes, ``"1234"``)."""
    cleaned = _CALCULATOR.sub("", text)
    match = _HASH_ANSWER.search(cleaned)
    if match is None:
        return cleaned, None
    answer = match.group(1).strip()
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", answer):
        answer = answer.replace(",", "")
    return cleaned, answer or None


def row_to_record(row: Mapping[str, Any], *, task: str, split: str, default_id: str, where: str,
                  meta: Mapping[str, Any] | None = None) -> Record:
    """Map one raw row to a :class:`Record` (schemas in the module docstring).

    Parameters
    ----------
    row : Mapping
        One JSON object or dataset row.
    task, split : str
        Task name and split label for the record.
    default_id : str
        The id used when the row has no ``id`` field.
    where : str
        Location for error messages, e.g. ``"AQuA.json: record 3"``.
    meta : Mapping, optional
        Source details merged into ``record.meta``.
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if {"prompt", "answer", "id", "task"} <= set(row):
        try:
            return Record.from_dict(row)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err

    rationale: str | None = None
    answer = _text(row.get("answer"), where, "answer")
    if "instruction" in row:
        prompt = _text(row["instruction"], where, "instruction") or ""
        extra = (_text(row.get("input"), where, "input") or "").strip()
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        rationale = _text(row.get("output"), where, "output")
        used = {"instruction", "input", "output", "answer"}
    elif "question" in row:
        prompt = _text(row["question"], where, "question") or ""
        rationale = next((_text(row[k], where, k) for k in _RATIONALE_KEYS if row.get(k)), None)
        if rationale is None and answer is not None and "####" in answer:
            rationale, answer = answer, None
        used = {"question", "answer", *_RATIONALE_KEYS}
    elif "problem" in row:
        prompt = _text(row["problem"], where, "problem") or ""
        rationale = _text(row.get("solution"), where, "solution")
        if answer is None and rationale is not None:
            answer = _last_boxed(rationale)
        used = {"problem", "solution", "answer"}
    else:
        raise ValueError(
            f"{where}: unrecognized fields {sorted(row)}; expected one of: {'; '.join(_SCHEMAS)}"
        )

    if rationale is not None and "####" in rationale:
        rationale, hashed = _split_hash(rationale)
        answer = answer if answer not in (None, "") else hashed
    if answer is None or not answer.strip():
        raise ValueError(
            f"{where} has no answer (no 'answer' field and no '#### N' line in its solution); "
            f"every record needs a gold answer"
        )
    if not prompt.strip():
        raise ValueError(f"{where} has an empty prompt")
    answer = answer.strip()
    kind = infer_kind(answer)
    extra_fields = {k: v for k, v in row.items() if k not in used and k != "id"}
    record_meta = {**(meta or {}), "answer_kind": kind, "scorer": kind}
    if extra_fields:
        record_meta["extra"] = json.loads(json.dumps(extra_fields, default=str))
    record_id = _text(row.get("id"), where, "id") or default_id
    return Record(id=record_id, task=task, split=split, prompt=prompt, answer=answer,
                  rationale=rationale, meta=record_meta)


def _parse_jsonl(path: Path, text: str) -> list[tuple[int, Any]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{lineno}: malformed JSON line ({err.msg} at column {err.colno}); "
                f"each line of a JSONL file must be one JSON object"
            ) from None
    return rows


def read_utf8(path: Path) -> str:
    """The text of ``path``; a file that is not UTF-8 is a ValueError naming it and the first bad byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         "re-save it as UTF-8") from None


def _read_rows(path: Path) -> list[tuple[str, int, Any]]:
    """``(where, index, row)`` for each row of a JSON array or JSONL file."""
    text = read_utf8(path)
    if not text.strip():
        raise ValueError(f"{path} is empty; a task file needs at least one record")
    if path.suffix == ".jsonl":
        return [(f"{path}:{lineno} (record {i})", i, row) for i, (lineno, row) in enumerate(_parse_jsonl(path, text))]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # a .json file holding JSON Lines, as many exporters write
            return [(f"{path}:{lineno} (record {i})", i, row)
                    for i, (lineno, row) in enumerate(_parse_jsonl(path, text))]
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records, got a {type(data).__name__}")
    if not data:
        raise ValueError(f"{path} holds an empty array; a task file needs at least one record")
    return [(f"{path}: record {i}", i, row) for i, row in enumerate(data)]


def load_file(path: str | os.PathLike, *, split: str) -> list[Record]:
    """Records of one JSON/JSONL file, or of every such file in a directory (sorted by name).

    The task name is the file stem (``math-test/SVAMP.json`` -> ``"SVAMP"``); ids are
    ``f"{task}-{index}"`` unless rows carry an ``id``; ``split`` is the label given (files carry none).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a JSON/JSONL file, a directory of them, "
            f"a reasoning-gym task name (see kdlens.data.TASKS) or hf:DATASET_ID"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"{path} is a directory without .json/.jsonl files")
        return [record for file in files for record in load_file(file, split=split)]
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .json or .jsonl")
    task = path.stem
    return [
        row_to_record(row, task=task, split=split, default_id=f"{task}-{index}", where=where,
                      meta={"source": "file", "file": path.name, "index": index})
        for where, index, row in _read_rows(path)
    ]
