"""The run directory: what a finished or interrupted distillation run leaves on disk.

Layout of ``<output_dir>/``::

    config.yaml       resolved DistillConfig (written first; a rerun must match it)
    manifest.json     versions, seed, data hash, teacher id, method, loss, sigma, tau, steps, git sha
    train_log.jsonl   one JSON object per logged step: step, loss parts, lr, tokens/s
    state/step-N/     resumable training state (see kdlens.distill._checkpoint), latest only
    checkpoint/       the trained model in Hugging Face format (safetensors) + tokenizer
    done              written last; its presence makes a rerun a no-op
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdlens._io import read_json

__all__ = ["RunDir"]


class RunDir:
    """A kdlens run directory (see the module docstring for its layout).

    Parameters
    ----------
    path : path
        The run's ``output_dir``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, done={self.done})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def log_path(self) -> Path:
        return self.path / "train_log.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint"

    @property
    def state_root(self) -> Path:
        return self.path / "state"

    @property
    def done_path(self) -> Path:
        return self.path / "done"

    @property
    def done(self) -> bool:
        """True once the run finished (``checkpoint/`` and ``manifest.json`` are complete)."""
        return self.done_path.is_file()

    def config(self):
        """The resolved :class:`kdlens.config.DistillConfig` of the run."""
        from kdlens.config import load_config

        return load_config(self.config_path)

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path)

    def log(self) -> list[dict[str, Any]]:
        """Rows of ``train_log.jsonl`` (a torn last line from a kill is skipped)."""
        if not self.log_path.is_file():
            return []
        rows = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows

    def latest_state(self) -> Path | None:
        """The newest complete training state directory, or None."""
        if not self.state_root.is_dir():
            return None
        states = [p for p in self.state_root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
        return max(states, key=lambda p: int(p.name[5:]), default=None)

    def load_model(self, **kwargs: Any):
        """``(model, tokenizer)`` of the trained checkpoint via :func:`kdlens.models.load_model`."""
        from kdlens.models import load_model

        if not self.done:
            raise FileNotFoundError(f"{self.path} is not a finished run (no 'done' marker)")
        return load_model(str(self.path), **kwargs)
