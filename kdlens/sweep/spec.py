"""Sweep specs: their validation, their expansion into runs, run identity and each run's config.

A *sweep spec* (YAML or a mapping) declares a base distillation config and the axes to vary::

    name: sigma_tau
    base:                       # kdlens.config.DistillConfig keys shared by every run
      teacher: smollm2-135m-instruct
      student: prune:22
      tasks: [math_data.json]
      method: word_kd
    axes:                       # config keys (dotted for nested ones) -> values
      sigma: [0.0, 1.0, 2.0, 5.0]
      temperature: [1.0, 2.0, 5.0]
      teacher_aware: [false, true]   # special: true = the teacher after ``sft`` on the tasks
      student: [prune:10, prune:22]
      seed: [0, 1]
    grid: product               # "product" (every combination) or "one_at_a_time" (each axis alone)
    baseline: sft               # also run each student with plain SFT, the reference of every gain
    teacher_sft: {steps: 200}   # overrides of the teacher's SFT run (task-aware teacher)
    eval: {tasks: [SVAMP.json], n: 200, max_new_tokens: 256, batch_size: 16, tokens: true}

:func:`expand_sweep` turns a spec into one row per run (TransformerLens-style index DataFrame),
:func:`run_config` gives each run's :class:`kdlens.config.DistillConfig`, and :func:`schedule` the
order a session starts them in.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._io import read_yaml, sha256_json
from kdlens._schema import KD_ONLY_KEYS, RUNS_COLUMNS
from kdlens.sweep._tables import missing

__all__ = [
    "KD_ONLY_KEYS",
    "SPECIAL_AXES",
    "SweepSpec",
    "compares_with_aware_teacher",
    "expand_sweep",
    "is_sft",
    "load_sweep_spec",
    "method_of",
    "run_config",
    "run_id",
    "schedule",
    "teacher_sft_config",
]

#: axes that are not DistillConfig keys: the runner resolves them
SPECIAL_AXES: dict[str, str] = {
    "teacher_aware": "false = the base teacher (task-unaware); true = the teacher after method=sft on the tasks",
}


_GRIDS = ("product", "one_at_a_time")
_SPEC_KEYS = ("name", "base", "axes", "grid", "baseline", "teacher_sft", "eval")
_EVAL_KEYS = ("tasks", "n", "max_new_tokens", "batch_size", "split", "tokens", "fidelity", "n_boot", "seed")


def _config_fields() -> dict[str, Any]:
    from kdlens.config import DistillConfig

    return typing.get_type_hints(DistillConfig)


def _known_key(key: str, fields: Mapping[str, Any], where: str) -> None:
    top = key.split(".", 1)[0]
    if top in fields or key in SPECIAL_AXES:
        return
    known = sorted([*fields, *SPECIAL_AXES])
    close = difflib.get_close_matches(top, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"{where}: unknown key {key!r}{hint}; known: {', '.join(known)}")


def _normalize(key: str, value: Any, fields: Mapping[str, Any]) -> Any:
    """Make equal settings hash equally: ``sigma: 1`` and ``sigma: 1.0`` are the same run."""
    hint = fields.get(key)
    floaty = hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                               and float in typing.get_args(hint) and int not in typing.get_args(hint))
    if floaty and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification (see the module docstring for the YAML layout).

    Parameters
    ----------
    name : str
        Name of the sweep (used in reports).
    base : mapping
        DistillConfig keys shared by every run (no ``output_dir``: the runner sets it).
    axes : mapping of str to list
        Config key (or a :data:`SPECIAL_AXES` name) -> the values it takes. Order is kept.
    grid : {"product", "one_at_a_time"}
        Every combination of the axes, or each axis varied alone from its first value.
    baseline : str or None
        A method (normally ``"sft"``) run once per student and seed as the reference of gains.
    teacher_sft : mapping
        Overrides of the run that fine-tunes the teacher (``teacher_aware: true``).
    eval : mapping
        Evaluation settings: ``tasks`` (default: the training tasks' test split), ``n``,
        ``max_new_tokens``, ``batch_size``, ``split``, ``tokens`` (collect per-token statistics),
        ``fidelity`` (BLEU against the teacher), ``n_boot``, ``seed``.
    """

    name: str
    base: Mapping[str, Any]
    axes: Mapping[str, Sequence[Any]]
    grid: str = "product"
    baseline: str | None = None
    teacher_sft: Mapping[str, Any] = field(default_factory=dict)
    eval: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fields = _config_fields()
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name):
            raise ValueError(f"sweep name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not isinstance(self.base, Mapping):
            raise ValueError(f"sweep 'base' must be a mapping of config keys, got {type(self.base).__name__}")
        for key in self.base:
            _known_key(str(key), fields, "sweep base")
        if "output_dir" in self.base:
            raise ValueError("sweep base sets output_dir; remove it: each run goes to <sweep dir>/runs/<run_id>")
        if not isinstance(self.axes, Mapping) or not self.axes:
            raise ValueError("sweep 'axes' must be a non-empty mapping key -> list of values, e.g. sigma: [0, 1, 2]")
        axes = {}
        for key, values in self.axes.items():
            _known_key(str(key), fields, "sweep axes")
            if key == "output_dir":
                raise ValueError("output_dir cannot be an axis")
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
                raise ValueError(f"axis {key!r} must be a non-empty list of values, got {values!r}")
            normalized = [_normalize(str(key), v, fields) for v in values]
            if len({json.dumps(v, sort_keys=True, default=str) for v in normalized}) != len(normalized):
                raise ValueError(f"axis {key!r} repeats a value: {list(values)}")
            if key == "teacher_aware" and not all(isinstance(v, bool) for v in normalized):
                raise ValueError(f"axis teacher_aware takes true/false, got {list(values)}")
            axes[str(key)] = normalized
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "base", {str(k): _normalize(str(k), v, fields) for k, v in self.base.items()})
        if self.grid not in _GRIDS:
            raise ValueError(f"sweep grid={self.grid!r} is not one of {list(_GRIDS)}")
        for key in self.teacher_sft:
            _known_key(str(key), fields, "sweep teacher_sft")
        unknown = sorted(set(self.eval) - set(_EVAL_KEYS))
        if unknown:
            raise ValueError(f"sweep eval: unknown key(s) {unknown}; known: {list(_EVAL_KEYS)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSpec:
        """Build from a mapping (e.g. parsed YAML), rejecting unknown top-level keys."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a sweep spec must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SPEC_KEYS))
        if unknown:
            raise ValueError(f"sweep spec: unknown key(s) {unknown}; known: {list(_SPEC_KEYS)}")
        missing = [k for k in ("name", "base", "axes") if k not in data]
        if missing:
            raise ValueError(f"sweep spec is missing {missing}: it needs name, base and axes")
        return cls(**{k: data[k] for k in _SPEC_KEYS if k in data and data[k] is not None})

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable dict that :meth:`from_dict` reads back."""
        out = dataclasses.asdict(self)
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in out.items()}


def load_sweep_spec(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec) -> SweepSpec:
    """Read and validate a sweep spec from a YAML file, a mapping or an existing :class:`SweepSpec`.

    Raises
    ------
    FileNotFoundError
        The YAML file does not exist.
    ValueError
        Malformed YAML or an invalid spec (the message names the key and the fix).
    """
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, Mapping):
        return SweepSpec.from_dict(spec)
    path = Path(spec)
    data = read_yaml(path, what="sweep spec")
    try:
        return SweepSpec.from_dict(data or {})
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _slug_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9.]+", "", json.dumps(value, sort_keys=True) if isinstance(value, Mapping | list)
                  else str(value))[:24]


_SHORT = {"temperature": "tau", "teacher_aware": "aware", "student": "", "method": "", "seed": "seed"}


def run_id(overrides: Mapping[str, Any]) -> str:
    """Stable id of a run: a readable slug of its overrides and a hash of them.

    ``{"sigma": 1.0, "temperature": 2.0}`` -> ``"sigma1-tau2-3f2a9c1e"``. The hash covers the exact
    overrides (sorted keys), so the id never depends on the order of the axes or of the runs.

    The id names the run's place in the grid (its directory ``runs/<run_id>``), not what it is: the
    run's identity (its full resolved config, data and teacher weights,
    :func:`kdlens.distill.run_identity`) is recorded in that directory, and a sweep whose base,
    data or teacher changed finds every run of another identity there and refuses it (or, with
    ``overwrite``, retrains it), while the runs a grown axis adds get directories of their own.
    """
    parts = []
    for key in sorted(overrides):
        label = _SHORT.get(key, key.split(".")[-1])
        parts.append(f"{label}{_slug_value(overrides[key])}")
    slug = "-".join(p for p in parts if p) or "base"
    return f"{slug[:80]}-{sha256_json(dict(overrides))[:8]}"


def _combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.axes)
    if spec.grid == "product":
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.axes.values())]
    # one at a time: the first value of every axis is the reference point, each axis varies alone
    reference = {k: spec.axes[k][0] for k in keys}
    rows = [dict(reference)]
    for key in keys:
        rows += [{**reference, key: value} for value in spec.axes[key][1:]]
    return rows


def method_of(spec: SweepSpec, overrides: Mapping[str, Any]) -> str:
    return str(overrides.get("method", spec.base.get("method", "word_kd")))


def expand_sweep(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec, *, validate: bool = True) -> pd.DataFrame:
    """Expand a sweep spec into one row per run.

    Parameters
    ----------
    spec : path to YAML, mapping or :class:`SweepSpec`
    validate : bool
        Build every run's :class:`kdlens.config.DistillConfig` so a bad value fails now, before
        any training (the task-aware teacher's path is a placeholder at this point).

    Returns
    -------
    DataFrame
        Columns :data:`kdlens._schema.RUNS_COLUMNS` (``run_id, overrides, run_dir, status``) and then
        one column per axis (plus ``method`` when a baseline adds it, filled with the base method for the
        other runs). ``overrides`` is the JSON text of
        the run's overrides (sorted keys); ``run_dir`` is relative to the sweep directory
        (``runs/<run_id>``); ``status`` is ``"pending"``. SFT rows (the baseline, or ``method: sft``
        on an axis) ignore :data:`KD_ONLY_KEYS`: those axes are NaN there and duplicates are
        dropped, so the baseline runs once per (student, seed, ...). ``attrs["spec"]`` holds the spec.

    Notes
    -----
    ``run_id`` (see :func:`run_id`) depends only on the overrides, so adding values to an axis
    keeps every existing run's id and directory: a grown sweep reuses the finished runs (each is
    checked against its full identity before it is reused).
    """
    spec = load_sweep_spec(spec)
    combos = _combinations(spec)
    if spec.baseline is not None:
        combos += [{**c, "method": spec.baseline} for c in combos]
    rows, seen = [], set()
    for combo in combos:
        method = method_of(spec, combo)
        if is_sft(method):
            combo = {k: v for k, v in combo.items() if k not in KD_ONLY_KEYS}
        key = json.dumps(combo, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        rid = run_id(combo)
        rows.append({"run_id": rid, "overrides": json.dumps(combo, sort_keys=True, default=str),
                     "run_dir": f"runs/{rid}", "status": "pending", **combo})
    axis_cols = list(spec.axes) + (["method"] if spec.baseline is not None and "method" not in spec.axes else [])
    frame = pd.DataFrame(rows, columns=[*RUNS_COLUMNS, *axis_cols])
    if "method" in frame.columns:  # runs that keep the base method show it too
        frame["method"] = frame["method"].fillna(str(spec.base.get("method", "word_kd")))
    if frame["run_id"].duplicated().any():  # a hash collision would silently merge two runs
        raise RuntimeError("two runs of the sweep share a run_id; rename an axis value")
    if validate:
        for overrides in frame["overrides"]:
            run_config(spec, json.loads(overrides), output_dir="validate-only", teacher_dir="validate-only")
    frame.attrs["spec"] = spec.to_dict()
    return frame


def is_sft(method: str) -> bool:
    from kdlens.distill._registry import METHODS

    entry = METHODS.get(method)
    return entry is not None and not entry.needs_teacher


def run_config(spec: SweepSpec, overrides: Mapping[str, Any], *, output_dir: str, teacher_dir: str | None,
               cache_dir: str | None = None, student_dirs: Mapping[str, str] | None = None):
    """The :class:`kdlens.config.DistillConfig` of one run of ``spec``.

    ``teacher_aware: true`` swaps the teacher for ``teacher_dir`` (the SFT run of the base teacher).
    KD runs read the teacher from a shared logit cache under ``cache_dir`` when one is given, their
    method can use one (word-level methods; on-policy and feature methods run the teacher online)
    and the cache is faithful to their loss (:func:`kdlens.config.cache_is_faithful`: forward KL at
    tau = 1), so the teacher runs once per (teacher, data) along the sigma axis; other losses and
    tau != 1 run the teacher online. ``student_dirs`` maps a
    student spec (e.g. ``"prune:22"``) to a saved model used instead: the runner saves the prunes of
    the *base* teacher there, so that a student distilled from the task-aware teacher starts from the
    same weights as one distilled from the base teacher (``prune:N`` would otherwise prune the
    fine-tuned teacher and mix the teacher's task tuning into the student's initialisation).
    """
    from kdlens.config import DistillConfig, apply_overrides, cache_is_faithful

    extra = {k: v for k, v in overrides.items() if k not in SPECIAL_AXES}
    data = apply_overrides(dict(spec.base), {k: v for k, v in extra.items() if "." not in k})
    dotted = [f"{k}={json.dumps(v)}" for k, v in extra.items() if "." in k]
    if dotted:
        data = apply_overrides(data, dotted)
    if overrides.get("teacher_aware"):
        if teacher_dir is None:
            raise ValueError("teacher_aware runs need the task-aware teacher's run directory")
        data["teacher"] = teacher_dir
    if student_dirs and str(data.get("student")) in student_dirs:
        data["student"] = student_dirs[str(data["student"])]
    if is_sft(str(data.get("method", "word_kd"))):  # the base's KD settings do not apply (and are refused)
        data = {k: v for k, v in data.items() if k not in KD_ONLY_KEYS}
    data["output_dir"] = output_dir
    try:
        if cache_dir is not None and not is_sft(str(data.get("method", "word_kd"))) \
                and cache_is_faithful(str(data.get("loss", "forward_kl")), float(data.get("temperature", 1.0))) \
                and "teacher_source" not in spec.base and "teacher_source" not in overrides:
            cached = {**data, "teacher_source": "cache", "cache_dir": data.get("cache_dir") or cache_dir}
            try:
                return DistillConfig.from_dict(cached)
            except ValueError:
                # methods that need more than cached logits (on-policy scoring, hidden states) run
                # the teacher online; any other problem shows up again just below
                pass
        return DistillConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sweep run {run_id(overrides)} ({json.dumps(dict(overrides), default=str)}): {err}") from err


def teacher_sft_config(spec: SweepSpec, *, output_dir: str):
    """The config that fine-tunes the base teacher on the tasks (the task-aware teacher)."""
    from kdlens.config import DistillConfig

    base = {k: v for k, v in spec.base.items() if k not in KD_ONLY_KEYS and k not in ("student", "method")}
    data = {**base, **dict(spec.teacher_sft), "method": "sft", "student": None, "output_dir": output_dir}
    return DistillConfig.from_dict(data)


def schedule(runs: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """The order runs are started in: seed by seed, and within a seed the baseline runs first.

    A session cut short then leaves whole comparisons (every setting of the first seeds, each with
    its baseline) rather than every seed of the first settings.
    """
    base_seed = spec.base.get("seed", 0)
    keys = []
    for position, text in enumerate(runs["overrides"]):
        overrides = json.loads(text)
        seed = overrides.get("seed", base_seed)
        baseline_first = 0 if is_sft(method_of(spec, overrides)) else 1
        keys.append((0 if missing(seed) else seed, baseline_first, position))
    order = sorted(range(len(runs)), key=keys.__getitem__)
    return runs.iloc[order]


def compares_with_aware_teacher(spec: SweepSpec, overrides: Mapping[str, Any], any_aware: bool) -> bool:
    """Whether a run is measured against the task-aware teacher (agreement, fidelity, token KL).

    A KD run against the teacher it learned from; a run without a teacher (the SFT baseline)
    against the task-aware teacher when the sweep has one, so that "before KD" and "after KD" are
    measured against the same teacher (the paradox paper's setting).
    """
    if "teacher_aware" in overrides and not missing(overrides["teacher_aware"]):
        return bool(overrides["teacher_aware"])
    return any_aware and is_sft(method_of(spec, overrides))
