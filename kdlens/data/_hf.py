"""Hugging Face datasets (``hf:ID[:config]``) as kdlens records.

The optional ``datasets`` package is imported only here. ``ID`` is a hub id (needs the hub, or its
local cache) or a local directory: one written by ``Dataset.save_to_disk`` /
``DatasetDict.save_to_disk`` is read with ``load_from_disk``, any other (e.g. a folder of
``test.jsonl`` files) with ``load_dataset``. Rows are mapped like file rows
(:func:`kdlens.data._files.row_to_record`), so a GSM8K copy yields the same records as its JSON file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdlens.data._files import row_to_record
from kdlens.data._records import Record

__all__ = ["load_hf", "parse_hf_spec"]


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``"hf:openai/gsm8k:main"`` -> (``"openai/gsm8k"``, ``"main"``); config is optional."""
    body = spec[len("hf:"):]
    dataset_id, _, config = body.partition(":")
    if not dataset_id:
        raise ValueError(f"task spec {spec!r} names no dataset; write hf:ID or hf:ID:CONFIG")
    return dataset_id, config or None


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "task specs of the form hf:ID need the Hugging Face `datasets` package: pip install datasets"
        ) from None
    return datasets


def _pick_split(loaded: Any, split: str, dataset_id: str) -> Any:
    if hasattr(loaded, "keys"):  # a DatasetDict
        if split not in loaded:
            raise ValueError(f"hf:{dataset_id} has no split {split!r}; available splits: {sorted(loaded)}")
        return loaded[split]
    return loaded


def load_hf(spec: str, *, split: str) -> list[Record]:
    """Records of the ``split`` split of a Hugging Face dataset (see the module docstring).

    The task name is the last path component of the id (``openai/gsm8k`` -> ``"gsm8k"``); ids are
    ``f"{task}-{split}-{row}"`` unless rows carry an ``id``.
    """
    datasets = _import_datasets()
    dataset_id, config = parse_hf_spec(spec)
    local = Path(dataset_id)
    saved = local.is_dir() and any((local / marker).is_file() for marker in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            rows = _pick_split(datasets.load_from_disk(str(local)), split, dataset_id)
        else:
            # only the split asked for is downloaded/prepared; datasets names the known splits if absent
            rows = datasets.load_dataset(dataset_id, config, split=split)
    except (FileNotFoundError, ConnectionError, OSError) as err:
        raise FileNotFoundError(
            f"could not load hf:{dataset_id}{':' + config if config else ''} ({err}). Offline, save the "
            f"dataset once with save_to_disk and pass hf:/path/to/that/dir"
        ) from err
    task = local.name if local.name else dataset_id
    meta = {"source": "hf", "dataset": dataset_id, "config": config}
    return [
        row_to_record(row, task=task, split=split, default_id=f"{task}-{split}-{i}",
                      where=f"hf:{dataset_id} ({split}) row {i}", meta={**meta, "index": i})
        for i, row in enumerate(rows)
    ]
