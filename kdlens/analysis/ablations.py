"""Ablations as DataFrames: sweep specs expanded into runs, runs joined back to their results.

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

:func:`expand_sweep` turns it into one row per run (TransformerLens-style index DataFrame);
:func:`run_metrics` summarises one run's examples (and tokens) table per task; :func:`join_results`
joins those summaries back onto the runs; :func:`add_gain` adds each run's gain over its SFT
baseline; :func:`axis_curve` and :func:`teacher_gap` are the summaries the plots draw.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdlens._io import read_yaml, sha256_json
from kdlens._schema import RUNS_COLUMNS
from kdlens.analysis._validate import require_columns, require_nonempty

__all__ = [
    "KD_ONLY_KEYS",
    "RESULTS_METRICS",
    "SPECIAL_AXES",
    "SweepSpec",
    "add_gain",
    "axis_curve",
    "expand_sweep",
    "join_results",
    "load_sweep_spec",
    "run_id",
    "run_config",
    "run_metrics",
    "teacher_gap",
    "teacher_sft_config",
]

#: axes that are not DistillConfig keys: the runner resolves them
SPECIAL_AXES: dict[str, str] = {
    "teacher_aware": "false = the base teacher (task-unaware); true = the teacher after method=sft on the tasks",
}

#: config keys that only matter when a teacher is distilled: an SFT run ignores them, so SFT rows
#: of a grid drop them and are de-duplicated (the baseline runs once per student and seed)
KD_ONLY_KEYS: tuple[str, ...] = (
    "sigma", "temperature", "loss", "loss_params", "alpha", "beta", "feature", "teacher_source", "top_k",
    "cache_dtype", "scale_by_temperature_squared", "teacher_aware",
)

#: metric columns of :func:`run_metrics` (and of a sweep's results.parquet)
RESULTS_METRICS: dict[str, str] = {
    "accuracy": "share of examples the run answers correctly (greedy)",
    "teacher_accuracy": "share of the same examples its teacher answers correctly",
    "agreement": "share of examples where the run's extracted answer equals the teacher's",
    "bleu": "mean sentence BLEU (sacrebleu / 100, in [0, 1]) of the run's rationale against the teacher's",
    "token_forward_kl": "mean per-token KL(teacher || run) on the teacher's outputs (nats)",
    "token_reverse_kl": "mean per-token KL(run || teacher) on the teacher's outputs (nats)",
    "token_top1_agreement": "share of teacher-output tokens where both models' top-1 token is the same",
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


def _method_of(spec: SweepSpec, overrides: Mapping[str, Any]) -> str:
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
    keeps every existing run's id and directory: a grown sweep reuses the finished runs.
    """
    spec = load_sweep_spec(spec)
    combos = _combinations(spec)
    if spec.baseline is not None:
        combos += [{**c, "method": spec.baseline} for c in combos]
    rows, seen = [], set()
    for combo in combos:
        method = _method_of(spec, combo)
        if _is_sft(method):
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


def _is_sft(method: str) -> bool:
    from kdlens.distill._methods import METHODS

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
    data["output_dir"] = output_dir
    try:
        if cache_dir is not None and not _is_sft(str(data.get("method", "word_kd"))) \
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


# --------------------------------------------------------------------------- results


def run_metrics(
    examples: pd.DataFrame,
    *,
    model_id: str,
    teacher: str | None = "teacher",
    tokens: pd.DataFrame | None = None,
    fidelity: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per-task summary of one model: accuracy, agreement and fidelity with its teacher.

    Parameters
    ----------
    examples : DataFrame
        Examples table (``kdlens._schema.EXAMPLES_COLUMNS``) holding ``model_id`` and, when given,
        the ``teacher``'s greedy outputs on the same examples.
    model_id : str
        The model summarised.
    teacher : str or None
        The teacher's ``model_id``; None skips the teacher-relative columns (NaN).
    tokens : DataFrame, optional
        Tokens table of ``model_id`` against ``teacher`` (token KL and top-1 agreement).
    fidelity : bool
        Compute the sentence BLEU of the model's rationales against the teacher's.
    n_boot, seed, level
        Percentile bootstrap over examples (within task for ``task="all"``).

    Returns
    -------
    DataFrame
        One row per task plus ``task="all"``: ``task, n,`` then for each metric of
        :data:`RESULTS_METRICS` the value and, for ``accuracy`` and ``agreement``, ``_ci_low`` and
        ``_ci_high``. Rates and BLEU are in [0, 1]; KL in nats.
    """
    from kdlens.analysis.rationale_fidelity import fidelity as fidelity_table
    from kdlens.analysis.rationale_fidelity import summarize_fidelity
    from kdlens.analysis.teacher_agreement import agreement

    require_columns(examples, ["model_id", "task", "example_id", "sample", "correct"], what="examples")
    mine = examples.loc[(examples["model_id"] == model_id) & (examples["sample"] == 0)]
    if mine.empty:
        known = sorted(map(str, examples["model_id"].unique()))
        raise ValueError(f"model_id {model_id!r} has no greedy rows in the examples; known: {known}")
    if teacher is None or teacher not in set(examples["model_id"]):
        if teacher is not None:
            raise ValueError(f"teacher {teacher!r} is not a model_id of the examples; "
                             f"known: {sorted(map(str, examples['model_id'].unique()))} (pass teacher=None to skip)")
        return _accuracy_only(mine, n_boot=n_boot, seed=seed, level=level)

    both = examples.loc[examples["model_id"].isin([model_id, teacher])]
    agree = agreement(both, teacher=teacher, tokens=tokens, students=[model_id], n_boot=n_boot, seed=seed, level=level)
    wide = {}
    for metric, column in (("student_accuracy", "accuracy"), ("teacher_accuracy", "teacher_accuracy"),
                           ("answer_agreement", "agreement"), ("token_forward_kl", "token_forward_kl"),
                           ("token_reverse_kl", "token_reverse_kl"), ("token_top1_agreement", "token_top1_agreement")):
        part = agree.loc[agree["metric"] == metric].set_index("task")
        wide[column] = part["value"]
        if column in ("accuracy", "agreement"):
            wide[f"{column}_ci_low"] = part["ci_low"]
            wide[f"{column}_ci_high"] = part["ci_high"]
        if column == "accuracy":
            wide["n"] = part["n"]
    out = pd.DataFrame(wide)
    if fidelity:
        fid = fidelity_table(both, teacher=teacher, references=("teacher",), metrics=("bleu",))
        summary = summarize_fidelity(fid, n_boot=0)
        bleu = summary.loc[(summary["metric"] == "bleu") & (summary["model_id"] == model_id)].set_index("task")["value"]
        out["bleu"] = bleu
    return _finish_metrics(out)


def _accuracy_only(mine: pd.DataFrame, *, n_boot: int, seed: int, level: float) -> pd.DataFrame:
    from kdlens.analysis._bootstrap import ratio_bootstrap_ci

    rows = {}
    scopes = [(task, part) for task, part in mine.groupby("task", sort=True)] + [("all", mine)]
    for task, part in scopes:
        correct = part["correct"].to_numpy(bool).astype(float)
        strata = part["task"].to_numpy() if task == "all" else None
        value, low, high = ratio_bootstrap_ci(correct, np.ones(len(correct)), strata=strata, n_boot=n_boot,
                                              seed=seed, level=level)
        rows[task] = {"accuracy": value, "accuracy_ci_low": low, "accuracy_ci_high": high, "n": len(correct)}
    return _finish_metrics(pd.DataFrame.from_dict(rows, orient="index"))


def _finish_metrics(out: pd.DataFrame) -> pd.DataFrame:
    out.index.name = "task"
    columns = ["n"]
    for metric in RESULTS_METRICS:
        columns.append(metric)
        if metric in ("accuracy", "agreement"):
            columns += [f"{metric}_ci_low", f"{metric}_ci_high"]
    out = out.reindex(columns=columns)
    out["n"] = out["n"].astype("int64")
    for col in columns[1:]:
        out[col] = out[col].astype("float64")
    # tasks in name order, the pooled row last
    order = sorted(t for t in out.index if t != "all") + (["all"] if "all" in out.index else [])
    return out.loc[order].reset_index()


def join_results(runs: pd.DataFrame, metrics: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Join per-run summaries back onto the runs table (one row per run and task).

    Parameters
    ----------
    runs : DataFrame
        Output of :func:`expand_sweep` (``run_id`` and axis columns).
    metrics : mapping run_id -> DataFrame
        :func:`run_metrics` of each finished run; runs without an entry are left out.

    Returns
    -------
    DataFrame
        The run's columns (``overrides`` and ``run_dir`` included), then ``task, n`` and the metric
        columns; sorted like ``runs``, tasks in name order with ``"all"`` last.
    """
    require_columns(runs, ["run_id"], what="runs")
    unknown = sorted(set(metrics) - set(runs["run_id"]))
    if unknown:
        raise ValueError(f"metrics for run(s) {unknown} that are not in the runs table")
    frames = [m.assign(run_id=rid) for rid, m in metrics.items()]
    if not frames:
        raise ValueError("no finished run to join: run the sweep first")
    table = pd.concat(frames, ignore_index=True)
    joined = runs.merge(table, on="run_id", how="inner", validate="one_to_many")
    return joined.reset_index(drop=True)


def add_gain(results: pd.DataFrame, *, baseline: str = "sft", match: Sequence[str] | None = None,
             metrics: Sequence[str] = ("accuracy", "agreement", "bleu")) -> pd.DataFrame:
    """Add each run's gain over its baseline run (same student, seed and task; method = ``baseline``).

    Parameters
    ----------
    results : DataFrame
        Output of :func:`join_results`; needs ``method`` and ``task`` columns.
    baseline : str
        Method of the reference runs.
    match : list of str, optional
        Columns a run and its baseline share. Default: every axis column that is not in
        :data:`KD_ONLY_KEYS` (e.g. ``student``, ``seed``), plus ``task``.
    metrics : list of str
        Metrics whose gain is added as ``<metric>_gain`` (with ``baseline_<metric>``).

    Returns
    -------
    DataFrame
        ``results`` plus ``baseline_run_id``, ``baseline_<metric>`` and ``<metric>_gain`` columns;
        missing for baseline rows and for runs without a baseline.
    """
    require_columns(results, ["method", "task", "run_id", *metrics], what="results")
    if match is None:
        skip = set(KD_ONLY_KEYS) | set(RUNS_COLUMNS) | {"method", "task", "n"} | set(_metric_columns())
        skip |= {c for c in results.columns if c.endswith("_gain") or c.startswith("baseline_")}
        match = [c for c in results.columns if c not in skip]
    keys = [*match, "task"]
    require_columns(results, keys, what="results")
    base = results.loc[results["method"] == baseline, [*keys, "run_id", *metrics]]
    if base.empty:
        raise ValueError(f"no run has method={baseline!r}: add 'baseline: {baseline}' to the sweep spec")
    if base.duplicated(keys).any():
        raise ValueError(f"several {baseline} runs share {keys}; add the distinguishing axis to match=")
    base = base.rename(columns={"run_id": "baseline_run_id", **{m: f"baseline_{m}" for m in metrics}})
    out = results.merge(base, on=keys, how="left", validate="many_to_one")
    is_base = (out["method"] == baseline).to_numpy()
    out["baseline_run_id"] = out["baseline_run_id"].where(~is_base)
    for metric in metrics:
        out[f"baseline_{metric}"] = out[f"baseline_{metric}"].astype("float64").where(~is_base)
        out[f"{metric}_gain"] = out[metric].astype("float64") - out[f"baseline_{metric}"]
    return out


def _metric_columns() -> list[str]:
    cols = []
    for metric in RESULTS_METRICS:
        cols.append(metric)
        if metric in ("accuracy", "agreement"):
            cols += [f"{metric}_ci_low", f"{metric}_ci_high"]
    return cols


def axis_curve(results: pd.DataFrame, axis: str, *, metric: str = "accuracy", hue: str | None = None,
               task: str = "all", level: float = 0.95) -> pd.DataFrame:
    """One point per axis value (and hue group): the metric with its confidence interval.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (:func:`join_results`).
    axis : str
        Column on the x axis, e.g. ``"sigma"`` or ``"temperature"``.
    metric : str
        Metric column; ``<metric>_ci_low``/``_ci_high`` are used when a point is one run.
    hue : str, optional
        Column separating curves (e.g. ``"student"``).
    task : str
        Which task's rows (``"all"`` pools the tasks).
    level : float
        Level of the t interval across runs when several runs (seeds) share a point.

    Returns
    -------
    DataFrame
        Columns ``[hue,] axis, value, ci_low, ci_high, n_runs``, sorted by hue then axis. One run
        per point: its own bootstrap CI (or NaN when the table has none); several: the mean over
        runs and a t interval across them.
    """
    from scipy import stats as sps

    cols = [axis, metric, "task"] + ([hue] if hue else [])
    require_columns(results, cols, what="results")
    part = results.loc[(results["task"] == task) & results[axis].notna()]
    if part.empty:
        raise ValueError(f"results have no rows with task={task!r} and a value of {axis!r}; "
                         f"tasks: {sorted(map(str, results['task'].unique()))}")
    rows = []
    groups = part.groupby([hue, axis] if hue else [axis], sort=True, dropna=False)
    for key, g in groups:
        keys = key if isinstance(key, tuple) else (key,)
        values = g[metric].to_numpy(float)
        values = values[np.isfinite(values)]
        if len(values) == 1:
            low = float(g[f"{metric}_ci_low"].iloc[0]) if f"{metric}_ci_low" in g else math.nan
            high = float(g[f"{metric}_ci_high"].iloc[0]) if f"{metric}_ci_high" in g else math.nan
            value = float(values[0])
        elif len(values) > 1:
            value = float(values.mean())
            half = sps.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
            low, high = value - half, value + half
        else:
            value = low = high = math.nan
        rows.append((*keys, value, low, high, len(values)))
    out = pd.DataFrame(rows, columns=[*([hue] if hue else []), axis, "value", "ci_low", "ci_high", "n_runs"])
    out.attrs.update({"metric": metric, "task": task, "axis": axis})
    return out


def teacher_gap(examples: pd.DataFrame, *, teacher: str) -> pd.DataFrame:
    """Student-minus-teacher accuracy per (model, task), MPDistil's headline comparison.

    Parameters
    ----------
    examples : DataFrame
        Examples table with the teacher's and the students' greedy outputs on the same examples.
    teacher : str
        The teacher's ``model_id``.

    Returns
    -------
    DataFrame
        Columns ``model_id, task, student_accuracy, teacher_accuracy, delta, n`` (``delta`` in
        [-1, 1]; positive = the student beats its teacher), one row per student and task plus
        ``task="all"``; only examples both answered are compared.
    """
    from kdlens.analysis.teacher_agreement import answer_pairs

    pairs = answer_pairs(examples, teacher=teacher)
    require_nonempty(pairs, what="paired examples")
    rows = []
    for model, mp in pairs.groupby("model_id", sort=True):
        scopes = [(task, tp) for task, tp in mp.groupby("task", sort=True)] + [("all", mp)]
        for task, part in scopes:
            s, t = part["student_correct"].mean(), part["teacher_correct"].mean()
            rows.append((model, task, float(s), float(t), float(s - t), len(part)))
    out = pd.DataFrame(rows, columns=["model_id", "task", "student_accuracy", "teacher_accuracy", "delta", "n"])
    out["n"] = out["n"].astype("int64")
    return out
