"""The run directory: what a finished or interrupted distillation run leaves on disk.

Layout of ``<output_dir>/``::

    manifest.json     the run's identity (written first, once the inputs are checked), then versions,
                      seed, data hash, teacher id, method, loss, sigma, tau, steps, git sha, status
    config.yaml       resolved DistillConfig
    train_log.jsonl   one JSON object per logged step: step, loss parts, lr, tokens/s
    state/step-N/     resumable training state (see kdlens.distill._checkpoint), latest only
    checkpoint/       the trained model in Hugging Face format (safetensors) + tokenizer
    done              its presence makes a rerun of the same identity a no-op
    .kdlens.lock      held by the process writing the run (kdlens._lock)

Finishing is ordered so that a kill at any point resumes or completes: the checkpoint (written
atomically, only once training ended) comes first, so a run killed after it is completed from it
without training (:meth:`RunDir.complete`); then ``manifest.json`` says done, then the ``done``
marker, then ``state/`` is deleted (a finished run with a ``state/`` left is tidied on its next call).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdlens._io import (
    atomic_write_json,
    atomic_write_text,
    is_temporary,
    read_json,
    remove_stale_temporaries,
    stale_temporaries,
)
from kdlens._lock import LOCK_NAME

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

    # ------------------------------------------------------------------ identity and lifecycle

    def identity(self):
        """The :class:`~kdlens.distill._identity.RunIdentity` recorded in the manifest, or None."""
        from kdlens.distill._identity import RunIdentity

        if not self.manifest_path.is_file():
            return None
        recorded = self.manifest().get("identity")
        return RunIdentity.from_dict(recorded) if isinstance(recorded, Mapping) else None

    def is_run(self) -> bool:
        """Whether ``manifest.json`` is one kdlens wrote (any version): the directory holds a kdlens run."""
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and manifest.get("status") in ("running", "done") \
            and ("identity" in manifest or "versions" in manifest)

    def foreign(self) -> list[str]:
        """The entries of a directory that holds no kdlens run (its lock and kdlens temporaries aside).

        kdlens neither trains into nor deletes such a directory: its ``config.yaml`` or ``manifest.json``
        would be overwritten, and ``overwrite`` would delete the rest. Empty for a missing or empty
        directory and for a kdlens run.
        """
        if not self.path.is_dir() or self.is_run():
            return []
        return sorted(e.name for e in self.path.iterdir() if e.name != LOCK_NAME and not is_temporary(e.name))

    def check_deletable(self) -> None:
        """Refuse to empty a directory whose contents are more than a run: the home directory, or one that
        holds the home or the working directory (an older kdlens let a run be trained there).

        Raises
        ------
        ValueError
            Naming the directory and why.
        """
        path = self.path.resolve()
        try:
            home = Path.home().resolve()
        except (RuntimeError, KeyError):  # no home directory known
            home = None
        cwd = Path.cwd().resolve()
        why = ("is the home directory" if path == home else
               "holds the home directory" if home is not None and path in home.parents else
               "holds the working directory" if path in cwd.parents else None)
        if why is not None:
            raise ValueError(f"{self.path} {why}: overwriting the run there would delete everything in it; delete "
                             "the old run's files by hand, or choose another output_dir")

    @property
    def has_checkpoint(self) -> bool:
        """True once training ended: ``checkpoint/`` is written (atomically) only then."""
        return (self.checkpoint_path / "config.json").is_file()

    def has_progress(self) -> bool:
        """Whether anything of a training is here: a state, a checkpoint or a logged step."""
        logged = self.log_path.is_file() and self.log_path.stat().st_size > 0
        return self.latest_state() is not None or self.has_checkpoint or logged

    def leftovers(self) -> list[Path]:
        """What killed writers left in a finished run: ``state/`` and stale temporaries."""
        found = stale_temporaries(self.path) if self.path.is_dir() else []
        return ([self.state_root] if self.done and self.state_root.exists() else []) + found

    def remove_leftovers(self) -> None:
        """Delete :meth:`leftovers` (hold the run's lock)."""
        if self.done:
            self._remove_state()
        if self.path.is_dir():
            remove_stale_temporaries(self.path)

    def start(self, config: Any, identity: Any) -> None:
        """Record a run about to train: its identity (in ``manifest.json``), then ``config.yaml``."""
        from kdlens.config import config_to_yaml

        atomic_write_json(self.manifest_path, {"status": "running", "identity": identity.to_dict()})
        atomic_write_text(self.config_path, config_to_yaml(config))

    def discard_unstarted(self, identity: Any) -> bool:
        """Delete what :meth:`start` wrote for ``identity`` when nothing else is here; return whether it did.

        For a run that failed after its first write but before anything worth keeping (a bad input
        that only the method's start or the first step finds): the corrected rerun then starts in
        a clean directory instead of being refused as another identity. Anything else keeps the
        directory as it is: a state, a logged step, a checkpoint, a method's cache, any other file.
        """
        if not self.path.is_dir() or self.done or self.identity() != identity:
            return False
        start_files = {LOCK_NAME, self.manifest_path.name, self.config_path.name, self.log_path.name}
        if any(e.name not in start_files for e in self.path.iterdir() if not is_temporary(e.name)) \
                or (self.log_path.is_file() and self.log_path.stat().st_size > 0):
            return False
        for path in (self.log_path, self.config_path, self.manifest_path):
            path.unlink(missing_ok=True)
        remove_stale_temporaries(self.path)
        return True

    def mark_done(self, manifest: Mapping[str, Any]) -> None:
        """The last steps of finishing, after the checkpoint: the manifest, the ``done`` marker, no state."""
        atomic_write_json(self.manifest_path, dict(manifest))
        atomic_write_text(self.done_path, "")
        self._remove_state()

    def _remove_state(self) -> None:
        shutil.rmtree(self.state_root, ignore_errors=True)

    def complete(self) -> None:
        """Finish a run killed after its checkpoint was written, without training again.

        The manifest keeps what the run recorded when it started training; its ``final`` entry is the
        last logged step (every run logs its last step) with ``wall_s`` unknown.
        """
        if not self.has_checkpoint:
            raise FileNotFoundError(f"{self.path} has no complete checkpoint/ to finish the run from")
        manifest = self.manifest()
        if manifest.get("status") != "done":
            rows = self.log()
            manifest = {**manifest, "status": "done",
                        "final": {**(rows[-1] if rows else {}), "wall_s": None, "completed_after_kill": True}}
        self.mark_done(manifest)

    def clear(self) -> None:
        """Delete the run recorded here (to train another identity in its place); keeps the lock file.

        The ``done`` marker goes first and ``manifest.json`` last, so a delete cut short leaves a
        directory that is neither taken for finished nor for empty: the next call names the old run
        again. Everything else is moved aside at once and then deleted. Refuses what
        :meth:`check_deletable` refuses.
        """
        self.check_deletable()
        self.done_path.unlink(missing_ok=True)
        trash = Path(tempfile.mkdtemp(prefix=f".overwritten.old-{os.getpid()}-", dir=self.path))
        for entry in self.path.iterdir():
            if entry.name not in (LOCK_NAME, self.manifest_path.name, trash.name):
                os.replace(entry, trash / entry.name)
        self.manifest_path.unlink(missing_ok=True)
        shutil.rmtree(trash, ignore_errors=True)

    def load_model(self, **kwargs: Any):
        """``(model, tokenizer)`` of the trained checkpoint via :func:`kdlens.models.load_model`."""
        from kdlens.models import load_model

        if not self.done:
            raise FileNotFoundError(f"{self.path} is not a finished run (no 'done' marker)")
        return load_model(str(self.path), **kwargs)
