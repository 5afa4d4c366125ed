"""Resumable training state, written atomically, and the final Hugging Face checkpoint.

A state directory ``state/step-N/`` holds the trainable parameters (safetensors), the optimizer
and scheduler states, every RNG state (Python, NumPy, torch CPU and CUDA) and ``trainer.json``
(step, data position, tokens seen). It is built under a temporary name and renamed, so a kill
leaves either the previous state or the new one. The teacher noise needs no saved generator: it
is a pure function of ``(seed, step, example, position)`` (:func:`kdlens.teacher.teacher_noise`).
"""

from __future__ import annotations

import io
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlens._io import atomic_directory, atomic_write_json, read_json

__all__ = ["save_state", "load_state", "trainable_state_dict", "save_checkpoint"]


def trainable_state_dict(modules: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Parameters that require grad, keyed ``"<module>.<param name>"`` (frozen ones never change)."""
    out = {}
    for prefix, module in modules.items():
        for name, param in module.named_parameters():
            if param.requires_grad:
                out[f"{prefix}.{name}"] = param.detach().to("cpu", copy=True).contiguous()
    return out


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_state(root: Path, step: int, *, modules: Mapping[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer, scheduler: Any, trainer: Mapping[str, Any]) -> Path:
    """Write ``root/step-<step>/`` atomically, then delete older states.

    Parameters
    ----------
    root : Path
        The run's ``state/`` directory.
    modules : dict of nn.Module
        Unwrapped trainable modules by name (``"student"``, ``"projection"``).
    trainer : dict
        JSON-serialisable loop position (step, epoch, batch index, tokens seen, seed).
    """
    from safetensors.torch import save_file

    target = root / f"step-{step:08d}"
    with atomic_directory(target, overwrite=True) as tmp:
        save_file(trainable_state_dict(modules), str(tmp / "trainable.safetensors"))
        (tmp / "optimizer.pt").write_bytes(_torch_bytes(optimizer.state_dict()))
        (tmp / "scheduler.pt").write_bytes(_torch_bytes(scheduler.state_dict()))
        (tmp / "rng.pt").write_bytes(_torch_bytes(_rng_state()))
        atomic_write_json(tmp / "trainer.json", dict(trainer))
    for old in root.glob("step-*"):
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_state(path: Path, *, modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
               scheduler: Any) -> dict[str, Any]:
    """Restore a state written by :func:`save_state`; returns its ``trainer.json``."""
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    for prefix, module in modules.items():
        own = {k[len(prefix) + 1:]: v for k, v in saved.items() if k.startswith(prefix + ".")}
        wanted = {n for n, p in module.named_parameters() if p.requires_grad}
        if set(own) != wanted:
            missing, extra = sorted(wanted - set(own))[:5], sorted(set(own) - wanted)[:5]
            raise ValueError(f"training state {path} does not match the {prefix} being trained "
                             f"(missing {missing}, unexpected {extra}); was the config changed?")
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in own.items():
                params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=False))
    return read_json(path / "trainer.json")


def save_checkpoint(path: Path, model: torch.nn.Module, tokenizer: Any, *, merge_lora: bool = True) -> Path:
    """Save the trained model (safetensors) and tokenizer in Hugging Face format, atomically.

    A PEFT model is merged into its base when ``merge_lora`` (so plain transformers loads it);
    otherwise the adapter is saved (load it with ``peft``).
    """
    from kdlens.distill._lora import is_peft_model, merged_copy
    from kdlens.models._hf import quiet_progress

    to_save = merged_copy(model) if is_peft_model(model) and merge_lora else model
    with quiet_progress(), atomic_directory(path, overwrite=True) as tmp:  # no "Writing model shards" bar
        to_save.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return path
