"""Experiment trackers of a run (``report_to=tensorboard | wandb | mlflow``), through accelerate's trackers.

``train_log.jsonl`` is always written; a tracker gets the same rows (their numeric fields: losses,
``lr``, ``tokens_per_s``, ``grad_norm``, ...) at the same steps, plus the run's teacher-signal and
optimisation settings once at the start. Every tracker writes offline, inside the run directory:

* ``tensorboard``: event files in ``<run>/tensorboard/`` (accelerate's ``TensorBoardTracker``);
* ``wandb``: ``mode="offline"`` (unless ``WANDB_MODE`` is set) with ``dir=<run>``; sync later with
  ``wandb sync``;
* ``mlflow``: a file store in ``<run>/mlruns`` (unless ``MLFLOW_TRACKING_URI`` is set).

Only the main process logs. The packages are optional (``pip install kdlens[track]`` installs
tensorboard); asking for a tracker whose package is missing is an error that names it, before any
training.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Trackers", "tracker_settings"]

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

#: config keys that describe the teacher signal and the optimisation (logged once per run)
_SETTINGS = ("teacher", "student", "method", "loss", "kd_weight", "feature_weight", "sigma",
             "temperature", "scale_by_temperature_squared", "teacher_source", "top_k", "cache_dtype", "cache_tail",
             "lr", "batch_size", "grad_accum", "max_length", "seed", "steps", "epochs")


def tracker_settings(config: Any) -> dict[str, bool | int | float | str]:
    """The scalar settings a tracker records (teacher signal, loss and its parameters, optimisation)."""
    data = config.to_dict()
    out: dict[str, bool | int | float | str] = {}
    for key in _SETTINGS:
        if key in data:
            value = data[key]
            out[key] = value if isinstance(value, bool | int | float | str) else str(value)
    for key, value in (data.get("loss_params") or {}).items():
        out[f"loss_params.{key}"] = value if isinstance(value, bool | int | float | str) else str(value)
    if data.get("teacher_source") == "endpoint":
        from kdlens._http import public_url

        endpoint = data.get("endpoint") or {}
        out["endpoint"] = f"{public_url(str(endpoint.get('url')))}#{endpoint.get('model')}"
    return out


def _require(name: str) -> None:
    package = _PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        extra = " (or pip install 'kdlens[track]')" if name == "tensorboard" else ""
        raise ImportError(f"report_to={name} needs the {package} package: pip install {package}{extra}")


def _tracker(name: str, run_path: Path):
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if name == "tensorboard":
        return TensorBoardTracker("tensorboard", run_path)
    if name == "wandb":
        return WandBTracker(run_path.name, dir=str(run_path), mode=os.environ.get("WANDB_MODE", "offline"),
                            name=run_path.name)
    if name == "mlflow":
        import mlflow

        if "MLFLOW_TRACKING_URI" not in os.environ:
            mlflow.set_tracking_uri((run_path / "mlruns").resolve().as_uri())
        return MLflowTracker(experiment_name="kdlens", logging_dir=str(run_path / "mlruns"), run_name=run_path.name)
    raise ValueError(f"report_to={name!r} is not one of none, tensorboard, wandb, mlflow")


class Trackers:
    """The run's tracker (or none): ``start`` once, ``log`` each train-log row, ``finish`` at the end.

    Parameters
    ----------
    name : {"none", "tensorboard", "wandb", "mlflow"}
    run_path : path
        The run directory (trackers write inside it).
    enabled : bool
        False on processes other than the main one.

    Raises
    ------
    ImportError
        At construction, when the tracker's package is not installed (naming the pip command).
    """

    def __init__(self, name: str, run_path: str | os.PathLike, *, enabled: bool = True) -> None:
        self.name, self.run_path = name, Path(run_path)
        self.enabled = enabled and name != "none"
        self.tracker = None
        if self.enabled:
            _require(name)  # before the run writes anything

    def start(self, settings: Mapping[str, Any]) -> None:
        """Open the tracker and record ``settings`` once (:func:`tracker_settings`)."""
        if self.enabled and self.tracker is None:
            self.tracker = _tracker(self.name, self.run_path)
            self.tracker.start()
            self.tracker.store_init_configuration(dict(settings))

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Log the finite numeric fields of one train-log row at ``step``."""
        if self.tracker is None:
            return
        values = {k: float(v) for k, v in row.items()
                  if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        self.tracker.log(values, step=step)

    def finish(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
