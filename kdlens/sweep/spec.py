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
    replicate: {seed: [0, 1]}   # crossed with every cell of the grid, whatever the grid (see below)
    baseline: sft               # also run each student with plain SFT, the reference of every gain
    teacher_sft: {steps: 200}   # overrides of the teacher's SFT run (task-aware teacher)
    eval: {tasks: [SVAMP.json], n: 200, max_new_tokens: 256, batch_size: 16, tokens: true}

``grid: one_at_a_time`` varies each axis alone from the reference point (the first value of every
axis); an axis there is a factor, never a replicate, so ``seed: [0, 1, 2]`` among the ``axes`` of a
one-at-a-time grid gives the reference cell three seeds and every other cell one. ``replicate``
holds the axes that repeat *every* cell instead (normally the seed): each cell of ``axes`` (product
or one at a time) is run once per combination of the ``replicate`` values. Run ids depend only on a
run's overrides, so a spec that moves ``seed`` from ``axes`` to ``replicate`` keeps the ids of the
runs both expand to.

``teacher_aware: true`` runs use the *task-aware* teacher: ``aware_teacher`` when the spec names
one (a model already tuned on the tasks, e.g. the shipped ``lab-teacher-aware``), else the base
teacher after ``method: sft`` on the tasks, trained once by the sweep (settings in ``teacher_sft``).
``teacher`` itself cannot be an axis: the session measures agreement and fidelity against the
sweep's base or task-aware teacher, and a baseline ignores the teacher (compare teachers with
``teacher_aware``, or run one sweep per teacher).

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
    "has_kd_term",
    "expand_sweep",
    "is_sft",
    "load_sweep_spec",
    "method_of",
    "on_axis",
    "run_config",
    "run_id",
    "schedule",
    "smoke_spec",
    "teacher_sft_config",
]

#: axes that are not DistillConfig keys: the runner resolves them
SPECIAL_AXES: dict[str, str] = {
    "teacher_aware": "false = the base teacher (task-unaware); true = the teacher after method=sft on the tasks",
}


_GRIDS = ("product", "one_at_a_time")
_SPEC_KEYS = ("name", "base", "axes", "grid", "replicate", "baseline", "teacher_sft", "aware_teacher", "eval")
#: keys written by :meth:`SweepSpec.to_dict` only when set, so the specs written before they existed keep their hash
_OPTIONAL_KEYS = {"replicate": {}, "aware_teacher": None}
#: config keys that cannot be axes, and why
_NOT_AXES = {
    "output_dir": "output_dir cannot be an axis: each run goes to <sweep dir>/runs/<run_id>",
    "teacher": ("teacher cannot be an axis: the session measures every run against the sweep's base (or task-aware) "
                "teacher and the SFT baseline ignores the teacher; compare a task-aware and a task-unaware teacher "
                "with the axis teacher_aware: [true, false] (aware_teacher: MODEL names a ready task-aware one), or "
                "run one sweep per teacher"),
}
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
    replicate : mapping of str to list
        Axes crossed with every cell of the grid (``{"seed": [0, 1, 2, 3, 4]}``): each cell of
        ``axes`` runs once per combination of these values. Not also in ``axes``.
    baseline : str or None
        A method (normally ``"sft"``) run once per student and seed as the reference of gains.
    teacher_sft : mapping
        Overrides of the run that fine-tunes the teacher (``teacher_aware: true``).
    aware_teacher : str or None
        The task-aware teacher of ``teacher_aware: true`` runs, a ready model (any
        :func:`kdlens.models.load_model` name); None = the sweep fine-tunes ``base.teacher``
        (``teacher_sft``). Needs the ``teacher_aware`` axis; not with ``teacher_sft``.
    eval : mapping
        Evaluation settings: ``tasks`` (default: the training tasks' test split), ``n``,
        ``max_new_tokens``, ``batch_size``, ``split`` (one split, or a list such as ``[test, gen]``:
        one evaluation then covers them all, and each task appears as ``<task>@<split>`` in the
        results), ``tokens`` (collect per-token statistics),
        ``fidelity`` (BLEU against the teacher), ``n_boot``, ``seed``.
    """

    name: str
    base: Mapping[str, Any]
    axes: Mapping[str, Sequence[Any]]
    grid: str = "product"
    replicate: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    baseline: str | None = None
    teacher_sft: Mapping[str, Any] = field(default_factory=dict)
    aware_teacher: str | None = None
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
        if not isinstance(self.replicate, Mapping):
            raise ValueError(f"sweep 'replicate' must be a mapping key -> list of values, e.g. seed: [0, 1, 2], "
                             f"got {type(self.replicate).__name__}")
        both = sorted(set(map(str, self.axes)) & set(map(str, self.replicate)))
        if both:
            raise ValueError(f"{', '.join(both)} is both an axis and a replicate axis: keep it in one of axes or "
                             "replicate")
        object.__setattr__(self, "axes", _checked_axes(self.axes, fields, "sweep axes"))
        object.__setattr__(self, "replicate", _checked_axes(self.replicate, fields, "sweep replicate"))
        object.__setattr__(self, "base", {str(k): _normalize(str(k), v, fields) for k, v in self.base.items()})
        if self.grid not in _GRIDS:
            raise ValueError(f"sweep grid={self.grid!r} is not one of {list(_GRIDS)}")
        if not isinstance(self.teacher_sft, Mapping):
            raise ValueError(f"sweep teacher_sft must be a mapping of config keys, got {type(self.teacher_sft).__name__}")
        for key in self.teacher_sft:
            _known_key(str(key), fields, "sweep teacher_sft")
            if key in _TEACHER_SFT_FIXED:
                raise ValueError(f"sweep teacher_sft sets {key}, which the task-aware teacher's run fixes "
                                 f"({_TEACHER_SFT_FIXED[key]}); remove it")
        if self.aware_teacher is not None:
            if not isinstance(self.aware_teacher, str) or not self.aware_teacher:
                raise ValueError(f"sweep aware_teacher must be a model name or path, got {self.aware_teacher!r}")
            if self.teacher_sft:
                raise ValueError("sweep gives both aware_teacher (a ready task-aware teacher) and teacher_sft (the "
                                 "settings to train one): keep one")
            if "teacher_aware" not in self.axes and "teacher_aware" not in self.replicate:
                raise ValueError("sweep aware_teacher is the teacher of teacher_aware: true runs, but the sweep has "
                                 "no teacher_aware axis: add teacher_aware: [true, false] to its axes")
        if not isinstance(self.eval, Mapping):
            raise ValueError(f"sweep eval must be a mapping, got {type(self.eval).__name__}")
        unknown = sorted(set(self.eval) - set(_EVAL_KEYS))
        if unknown:
            raise ValueError(f"sweep eval: unknown key(s) {unknown}; known: {list(_EVAL_KEYS)}")
        _check_eval(self.eval)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSpec:
        """Build from a mapping (e.g. parsed YAML), rejecting unknown top-level keys."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a sweep spec must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SPEC_KEYS))
        if unknown:
            raise ValueError(f"sweep spec: unknown key(s) {unknown}; known: {list(_SPEC_KEYS)}")
        missing = [k for k in ("name", "base", "axes") if data.get(k) is None]
        if missing:
            raise ValueError(f"sweep spec is missing {missing}: it needs name, base and axes")
        return cls(**{k: data[k] for k in _SPEC_KEYS if k in data and data[k] is not None})

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable dict that :meth:`from_dict` reads back.

        ``replicate`` and ``aware_teacher`` appear only when set: a spec that does not use them has
        the dict (and the hash that published folders check) it had before they existed.
        """
        out = dataclasses.asdict(self)
        out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in out.items()}
        return {k: v for k, v in out.items() if not (k in _OPTIONAL_KEYS and v == _OPTIONAL_KEYS[k])}


def _checked_axes(axes: Mapping[str, Any], fields: Mapping[str, Any], where: str) -> dict[str, list[Any]]:
    """Axes (or replicate axes) with known keys, non-empty lists of distinct values, normalized numbers."""
    out = {}
    for key, values in axes.items():
        _known_key(str(key), fields, where)
        if key in _NOT_AXES:
            raise ValueError(_NOT_AXES[key])
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"axis {key!r} must be a non-empty list of values, got {values!r}")
        normalized = [_normalize(str(key), v, fields) for v in values]
        if len({json.dumps(v, sort_keys=True, default=str) for v in normalized}) != len(normalized):
            raise ValueError(f"axis {key!r} repeats a value: {list(values)}")
        if key == "teacher_aware" and not all(isinstance(v, bool) for v in normalized):
            raise ValueError(f"axis teacher_aware takes true/false, got {list(values)}")
        out[str(key)] = normalized
    return out


def eval_splits(split: Any) -> list[str]:
    """The splits of a sweep's ``eval.split`` (one name or a list of distinct names), checked."""
    splits = [split] if isinstance(split, str) else split
    if not isinstance(splits, Sequence) or isinstance(splits, bytes) or not splits \
            or not all(isinstance(s, str) and s for s in splits):
        raise ValueError(f"sweep eval.split must be a split name or a non-empty list of them (e.g. [test, gen]), "
                         f"got {split!r}")
    if len(set(splits)) != len(splits):
        raise ValueError(f"sweep eval.split repeats a split: {list(splits)}")
    return list(splits)


#: keys of teacher_sft that the teacher's SFT run sets itself (a value there would be ignored)
_TEACHER_SFT_FIXED = {"student": "it always trains the base teacher itself", "method": "method=sft",
                      "output_dir": "<sweep dir>/teachers/sft"}


def _check_eval(settings: Mapping[str, Any]) -> None:
    """The evaluation settings' types and ranges, checked with the spec rather than after the first run."""
    from kdlens.data import SPLITS

    def integer(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    for key in ("max_new_tokens", "batch_size"):
        if key in settings and not integer(settings[key], 1):
            raise ValueError(f"sweep eval.{key} must be a positive integer, got {settings[key]!r}")
    if "n_boot" in settings and not integer(settings["n_boot"], 0):
        raise ValueError(f"sweep eval.n_boot must be an integer >= 0 (0: no bootstrap), got {settings['n_boot']!r}")
    if settings.get("n") is not None and not integer(settings["n"], 1):
        raise ValueError(f"sweep eval.n must be a positive integer or null (every example), got {settings['n']!r}")
    if "seed" in settings and (isinstance(settings["seed"], bool) or not isinstance(settings["seed"], int)):
        raise ValueError(f"sweep eval.seed must be an integer, got {settings['seed']!r}")
    for key in ("tokens", "fidelity"):
        if key in settings and not isinstance(settings[key], bool):
            raise ValueError(f"sweep eval.{key} must be true or false, got {settings[key]!r}")
    if "split" in settings:
        bad = [s for s in eval_splits(settings["split"]) if s not in SPLITS]
        if bad:
            raise ValueError(f"sweep eval.split: {bad} not among the splits {list(SPLITS)}")
    if "tasks" in settings:
        tasks = settings["tasks"]
        if isinstance(tasks, str):
            tasks = [t for t in tasks.split(",") if t.strip()]
        if not tasks:
            raise ValueError("sweep eval.tasks is empty: name the evaluation tasks, or remove it to evaluate on "
                             "the training tasks")


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
        cells = [dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.axes.values())]
    else:  # one at a time: the first value of every axis is the reference point, each axis varies alone
        reference = {k: spec.axes[k][0] for k in keys}
        cells = [dict(reference)]
        for key in keys:
            cells += [{**reference, key: value} for value in spec.axes[key][1:]]
    copies = [dict(zip(spec.replicate, values, strict=True)) for values in itertools.product(*spec.replicate.values())]
    # replicate outermost: cell by cell, each with all its replicates (schedule() orders the runs anyway)
    return [{**cell, **copy} for cell in cells for copy in copies]


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
        one column per axis and replicate axis (plus ``method`` when a baseline adds it, filled with the
        base method for the other runs). ``overrides`` is the JSON text of
        the run's overrides (sorted keys); ``run_dir`` is relative to the sweep directory
        (``runs/<run_id>``); ``status`` is ``"pending"``. Rows of methods without a KD term (the
        SFT baseline, ``seq_kd``, ``blackbox``) ignore :data:`KD_ONLY_KEYS` (``_not_applicable``;
        ``seq_kd`` keeps ``teacher_aware``): those axes are NaN there and duplicates are dropped, so the
        baseline runs once per (student, seed, ...). ``attrs["spec"]`` holds the spec.

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
        combo = {k: v for k, v in combo.items() if k not in _not_applicable(method)}
        key = json.dumps(combo, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        rid = run_id(combo)
        rows.append({"run_id": rid, "overrides": json.dumps(combo, sort_keys=True, default=str),
                     "run_dir": f"runs/{rid}", "status": "pending", **combo})
    axis_cols = [*spec.axes, *spec.replicate]
    axis_cols += ["method"] if spec.baseline is not None and "method" not in axis_cols else []
    frame = pd.DataFrame(rows, columns=[*RUNS_COLUMNS, *axis_cols])
    if "method" in frame.columns:  # runs that keep the base method show it too
        frame["method"] = frame["method"].fillna(str(spec.base.get("method", "word_kd")))
    if frame["run_id"].duplicated().any():  # a hash collision would silently merge two runs
        raise RuntimeError("two runs of the sweep share a run_id; rename an axis value")
    if validate:
        for overrides in frame["overrides"]:
            run_config(spec, json.loads(overrides), output_dir="validate-only", teacher_dir="validate-only")
        if any(json.loads(o).get("teacher_aware") is True for o in frame["overrides"]):  # the teacher is trained
            teacher_sft_config(spec, output_dir="validate-only")
    frame.attrs["spec"] = spec.to_dict()
    return frame


def is_sft(method: str) -> bool:
    """Whether ``method`` trains without a teacher (the SFT baseline)."""
    from kdlens.distill._registry import METHODS

    entry = METHODS.get(method)
    return entry is not None and not entry.needs_teacher


def _not_applicable(method: str) -> frozenset[str]:
    """The override keys a run of ``method`` ignores, so its rows drop them (and duplicates merge).

    A method without a KD term on teacher logits (``sft``, ``seq_kd``, ``blackbox``) ignores
    :data:`KD_ONLY_KEYS` (loss, sigma, tau, ...), but one that learns from a teacher's outputs
    (``seq_kd``) still has a teacher, so it keeps ``teacher_aware``; a method without a teacher
    (``sft``) ignores that too.
    """
    keys = set() if has_kd_term(method) else set(KD_ONLY_KEYS) - {"teacher_aware"}
    return frozenset(keys | {"teacher_aware"} if is_sft(method) else keys)


def has_kd_term(method: str) -> bool:
    """Whether ``method`` has a KD term on teacher logits (``sft``, ``seq_kd`` and ``blackbox`` have none,
    so :data:`KD_ONLY_KEYS` such as ``loss``, ``sigma`` or ``kd_weight`` do not apply to their runs)."""
    from kdlens.distill._registry import METHODS

    entry = METHODS.get(method)
    return entry is None or entry.default_loss is not None


def run_config(spec: SweepSpec, overrides: Mapping[str, Any], *, output_dir: str, teacher_dir: str | None,
               cache_dir: str | None = None, student_dirs: Mapping[str, str] | None = None):
    """The :class:`kdlens.config.DistillConfig` of one run of ``spec``.

    ``teacher_aware: true`` swaps the teacher for ``teacher_dir`` (the spec's ``aware_teacher``, or the
    SFT run of the base teacher). KD runs read the teacher from a shared logit cache under
    ``cache_dir`` when one is given, their method can use one (word-level methods; on-policy and
    feature methods run the teacher online) and the cache is faithful to their loss
    (:func:`kdlens.config.cache_is_faithful`: forward KL at tau = 1, or any loss and tau when the
    config's ``top_k`` reaches the teacher's vocabulary, read from its ``config.json`` by
    :func:`kdlens.models.model_vocab_size`), so the teacher runs once per (teacher, data) for all
    of them; the other runs use the teacher online. ``student_dirs`` maps a
    student spec (e.g. ``"prune:22"``) to a saved model used instead: the runner saves the prunes of
    the *base* teacher there, so that a student distilled from the task-aware teacher starts from the
    same weights as one distilled from the base teacher (``prune:N`` would otherwise prune the
    fine-tuned teacher and mix the teacher's task tuning into the student's initialisation).
    """
    from kdlens.config import DistillConfig, apply_overrides

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
    if not has_kd_term(str(data.get("method", "word_kd"))):  # the base's KD settings do not apply (and are refused)
        data = {k: v for k, v in data.items() if k not in KD_ONLY_KEYS}
    data["output_dir"] = output_dir
    try:
        if cache_dir is not None and has_kd_term(str(data.get("method", "word_kd"))) \
                and "teacher_source" not in spec.base and "teacher_source" not in overrides and _cache_faithful(data):
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


def _cache_faithful(data: Mapping[str, Any]) -> bool:
    """Whether a teacher cache stands in for the online teacher in the run of config ``data``."""
    from kdlens.config import DistillConfig, cache_is_faithful
    from kdlens.models import model_vocab_size

    loss, tau = str(data.get("loss", "forward_kl")), float(data.get("temperature", 1.0))
    if cache_is_faithful(loss, tau):
        return True
    top_k = int(data.get("top_k", DistillConfig.__dataclass_fields__["top_k"].default))
    teacher = data.get("teacher")
    return cache_is_faithful(loss, tau, top_k=top_k, vocab_size=model_vocab_size(teacher) if teacher else None)


def teacher_sft_config(spec: SweepSpec, *, output_dir: str):
    """The config that fine-tunes the base teacher on the tasks (the task-aware teacher).

    ``teacher_sft`` overrides the base; a length it gives (``steps`` or ``epochs``) replaces the base's.
    """
    from kdlens.config import DistillConfig

    dropped = {"student", "method", *KD_ONLY_KEYS}
    if {"steps", "epochs"} & set(spec.teacher_sft):
        dropped |= {"steps", "epochs"}
    base = {k: v for k, v in spec.base.items() if k not in dropped}
    data = {**base, **dict(spec.teacher_sft), "method": "sft", "student": None, "output_dir": output_dir}
    try:
        return DistillConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sweep teacher_sft (the task-aware teacher's run): {err}") from err


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


def on_axis(results: pd.DataFrame, spec: str | os.PathLike | Mapping[str, Any] | SweepSpec,
            axis: str | None = None) -> pd.DataFrame:
    """The rows of a sweep's table on one line through the reference point: ``axis`` alone varies.

    In a one-at-a-time grid each axis is varied from the reference point (the first value of every
    axis); this picks the runs of one such line, with their baseline runs, so that a verdict on
    ``axis`` compares runs that differ in nothing else (e.g. the three students of a grid that also
    varies sigma, tau and the data size, each with its SFT baseline).

    Parameters
    ----------
    results : DataFrame
        A table with the spec's axis columns (:func:`kdlens.sweep.read_results` of a sweep or
        published folder, or :func:`expand_sweep`).
    spec : path to YAML, mapping or :class:`SweepSpec`
        The sweep's spec (a published folder holds it as ``spec.yaml``).
    axis : str, optional
        An axis of ``spec.axes``; None keeps the reference cell alone (with its baselines).

    Returns
    -------
    DataFrame
        The rows (index kept) whose every other axis is at its reference value or does not apply to
        the run (missing: the SFT baseline's sigma, ``seq_kd``'s loss); rows of the baseline method
        are kept whatever the ``method`` axis says. Replicate axes (the seed) are not filtered.

    Raises
    ------
    ValueError
        ``axis`` is not an axis of the spec, or the table lacks an axis column.
    """
    spec = load_sweep_spec(spec)
    if axis is not None and axis not in spec.axes:
        raise ValueError(f"{axis!r} is not an axis of sweep {spec.name!r}; its axes: {', '.join(spec.axes)}")
    others = [key for key in spec.axes if key != axis]
    absent = [key for key in others if key not in results.columns]
    if absent:
        raise ValueError(f"the table has no column for the axes {absent} of sweep {spec.name!r}: pass its results")
    keep = pd.Series(True, index=results.index)
    baseline = results["method"].eq(spec.baseline) if spec.baseline and "method" in results.columns \
        else pd.Series(False, index=results.index)
    for key in others:
        reference = spec.axes[key][0]
        at = results[key].map(lambda v, ref=reference: missing(v) or _same_value(v, ref))
        keep &= at | (baseline if key == "method" else False)
    return results.loc[keep]


def _same_value(value: Any, reference: Any) -> bool:
    """Equal axis values across the types a table gives back (1 and 1.0; numpy scalars; True and 1.0)."""
    value = value.item() if hasattr(value, "item") and not isinstance(value, str) else value
    if isinstance(value, bool | int | float) and isinstance(reference, bool | int | float):
        return float(value) == float(reference)
    return json.dumps(value, sort_keys=True, default=str) == json.dumps(reference, sort_keys=True, default=str)


def smoke_spec(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec, *,
               axes: Sequence[str] | Mapping[str, Sequence[Any]] | None = None, seeds: int = 2, steps: int = 2,
               n_examples: int = 32, eval_n: int = 4, name: str | None = None) -> dict[str, Any]:
    """A version of ``spec`` that runs in seconds: the same models, tasks and methods, tiny budgets.

    For CI and the notebooks' smoke settings: it goes through every piece of the real sweep
    (its teachers, caches, evaluation splits and tables) and proves nothing about distillation.

    Parameters
    ----------
    spec : path to YAML, mapping or :class:`SweepSpec`
    axes : list of axis names, or mapping axis -> values, optional
        The axes kept (a list keeps their values, a mapping gives them); every other axis is held at
        its reference value (its first), which moves into ``base``. Default: every axis.
    seeds : int
        The first ``seeds`` values of each replicate axis.
    steps : int
        Optimizer steps per run (no warmup), the task-aware teacher's SFT (``teacher_sft``) too.
    n_examples : int
        Training items per task, unless ``n_examples`` is a kept axis (the batch size is cut to the
        smallest data size).
    eval_n : int
        Evaluation items per task and split.
    name : str, optional
        Default ``<spec name>_smoke``.

    Returns
    -------
    dict
        A spec mapping for :func:`kdlens.sweep.run_sweep`.
    """
    spec = load_sweep_spec(spec)
    out = spec.to_dict()
    wanted = list(spec.axes) if axes is None else list(axes)
    unknown = [key for key in wanted if key not in spec.axes]
    if unknown:
        raise ValueError(f"{unknown} are not axes of sweep {spec.name!r}; its axes: {', '.join(spec.axes)}")
    keep = {key: list(axes[key]) if isinstance(axes, Mapping) else list(spec.axes[key]) for key in wanted}
    held = {key: values[0] for key, values in spec.axes.items() if key not in keep}
    base = {**dict(spec.base), **{k: v for k, v in held.items() if k not in SPECIAL_AXES},
            "steps": int(steps), "warmup_steps": 0, "log_every": 1}
    base.pop("epochs", None)
    if "n_examples" not in keep:
        base["n_examples"] = int(n_examples)
    smallest = min(keep["n_examples"]) if "n_examples" in keep else base["n_examples"]
    if isinstance(smallest, int) and "batch_size" in base and base["batch_size"] > smallest:
        base["batch_size"] = smallest  # a batch cannot hold more items than the data has
    if "teacher_aware" in held:
        if held["teacher_aware"] and not spec.aware_teacher:
            keep["teacher_aware"] = [True]  # the sweep still trains its task-aware teacher (teacher_sft)
        else:  # the axis is gone: its reference teacher becomes the base teacher
            base["teacher"] = spec.aware_teacher if held["teacher_aware"] else base["teacher"]
            out.pop("aware_teacher", None)
            out.pop("teacher_sft", None)
    out.update(name=name or f"{spec.name}_smoke", base=base, axes=keep,
               eval={**dict(spec.eval), "n": int(eval_n), "n_boot": 200})
    if out.get("teacher_sft"):  # its steps would replace the smoke budget in the teacher's SFT run
        kept = {k: v for k, v in dict(out["teacher_sft"]).items() if k not in ("epochs", "warmup_steps", "log_every")}
        out["teacher_sft"] = {**kept, "steps": int(steps)}
    if spec.replicate:
        out["replicate"] = {key: list(values)[:max(1, int(seeds))] for key, values in spec.replicate.items()}
    return out
