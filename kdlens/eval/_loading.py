"""Resolve the ``models`` and ``tasks`` arguments of the eval functions, failing early on bad input."""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlens._io import sha256_json

__all__ = ["ModelSpec", "model_specs", "weights_stamp", "load", "release", "load_tasks_checked"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")

#: a model given by name/path (loaded on demand) or already loaded as (model, tokenizer)
ModelSpec = str | os.PathLike | tuple[Any, Any]


def _looks_like_path(spec: str) -> bool:
    # hub ids ("org/name") also contain "/", so only unambiguous path shapes are checked eagerly
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec


def model_specs(models: Mapping[str, ModelSpec]) -> dict[str, str]:
    """Validate ``models`` and describe each entry for the manifest and the resume fingerprint.

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        An empty mapping, a bad id, an entry of the wrong type, or a path that does not exist
        (checked before any model is loaded, so a typo in the last model does not waste a run).
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping model_id -> path/name or (model, tokenizer)")
    described = {}
    for model_id, spec in models.items():
        if not isinstance(model_id, str) or not model_id or "/" in model_id:
            raise ValueError(f"model id {model_id!r} must be a non-empty string without '/'")
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise TypeError(f"model {model_id!r}: expected (model, tokenizer), got a tuple of {len(spec)}")
            model = spec[0]
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            described[model_id] = f"<in-memory {type(model).__name__}: {name}>"
        elif isinstance(spec, str | os.PathLike):
            text = os.fspath(spec)
            path = Path(text).expanduser()
            if _looks_like_path(text) and not path.exists():
                raise FileNotFoundError(f"model {model_id!r}: {text} does not exist; give a run directory, "
                                        "a checkpoint directory, a .gguf file, a hub id or a built-in name")
            described[model_id] = str(path.resolve()) if path.exists() else text
        else:
            raise TypeError(f"model {model_id!r}: expected a path/name or (model, tokenizer), "
                            f"got {type(spec).__name__}")
    return described


def weights_stamp(spec: ModelSpec) -> str | None:
    """Name, size and modification time of a local model's weight files, hashed (None for other specs).

    Part of the resume fingerprint: a run directory retrained in place gets new weights files, so
    its old shards are not mistaken for results of the new model. Reading stat() only keeps it cheap.
    """
    if isinstance(spec, tuple):
        return None
    path = Path(os.fspath(spec)).expanduser()
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES)
    stats = [(str(p.relative_to(path) if p != path else p.name), p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    return sha256_json(stats)[:16]


def load(spec: ModelSpec, *, device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a spec: loaded pairs pass through, names go to :func:`kdlens.models.load_model`."""
    if isinstance(spec, tuple):
        model, tokenizer = spec
        if device is not None:
            from kdlens.models._load import resolve_device

            model = model.to(resolve_device(device))
        return model.eval(), tokenizer
    from kdlens.models import load_model

    model, tokenizer = load_model(os.fspath(spec), dtype=dtype, device=device)
    return model.eval(), tokenizer


def release(spec: ModelSpec) -> None:
    """Return the memory of a model this package loaded (the caller drops its references first).

    A model the caller passed in as ``(model, tokenizer)`` is left alone.
    """
    if isinstance(spec, tuple):
        return
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tasks_checked(tasks: str | Sequence[str] | Mapping[str, Sequence[Any]], *, split: str, seed: int,
                       n: int | None) -> dict[str, list[Any]]:
    """Load every task up front (spec -> records) and reject empty ones before any model runs.

    ``tasks`` is one spec, a sequence of specs (see :func:`kdlens.data.load_task`), or a mapping
    name -> records already loaded (then ``n`` still truncates).
    """
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if isinstance(tasks, str | os.PathLike):
        tasks = [os.fspath(tasks)]
    if isinstance(tasks, Mapping):
        loaded = {str(name): list(records)[:n] if n else list(records) for name, records in tasks.items()}
    else:
        from kdlens.data import load_task

        specs = [os.fspath(t) for t in tasks]
        if len(set(specs)) != len(specs):
            raise ValueError(f"a task is listed twice in {specs}")
        loaded = {spec: list(load_task(spec, split=split, seed=seed, n=n)) for spec in specs}
    if not loaded:
        raise ValueError("no tasks given; pass at least one task spec (e.g. 'chain_sum:200' or a JSON path)")
    for spec, records in loaded.items():
        if not records:
            raise ValueError(f"task {spec!r} has no records (split={split!r}); check the file or the spec")
    return loaded
