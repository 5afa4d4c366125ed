"""Run a sweep: expand the spec, train the missing runs, evaluate them, join everything.

``run_sweep(spec, output_dir=...)`` is resumable at every level: a finished run (its ``done``
marker) is not trained again, a killed one resumes from its last saved state, evaluation shards
already written are reused, and the teacher runs once per (teacher, data) for every KD run
because they all read the same logit cache. A sweep directory::

    <output_dir>/
      spec.yaml             the resolved spec of the last call
      runs.parquet          one row per run (kdlens.analysis.ablations.expand_sweep) with its status
      runs/<run_id>/        run directories (kdlens.distill.RunDir), each with
        eval/examples.parquet   the run's and its teacher's (model_id "teacher") greedy outputs
        eval/tokens.parquet     per-token statistics of the run against its teacher (eval.tokens)
      teachers/base/eval/   the base (task-unaware) teacher's outputs
      teachers/sft/         the task-aware teacher: the base teacher after method=sft (when needed)
      teacher_cache/        logit caches shared by the KD runs
      students/prune-N/     prunes of the base teacher, the start of every run (task-aware sweeps)
      examples.parquet      every model's examples (model_id = run_id, "teacher" or "teacher_sft")
      tokens.parquet        every run's tokens table (when collected)
      results.parquet       one row per (run, task): axes, accuracy, agreement, fidelity, gains
      manifest.json         spec hash, versions, git sha, per-run status and timings

:func:`kdlens.report.build_report` reads this directory; it never loads a model. The tables without
the models (``kdlens.publish``) go on across machines: ``run_sweep(..., publish_dir=...)`` skips the
runs a published folder holds and merges its own into it, which is how a grid grows over several
sessions of a lent GPU.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._io import atomic_write_json, atomic_write_text, git_sha, read_json, sha256_json, versions
from kdlens.analysis.ablations import (
    SweepSpec,
    add_gain,
    expand_sweep,
    join_results,
    load_sweep_spec,
    run_config,
    run_metrics,
    teacher_sft_config,
)

__all__ = ["run_sweep", "read_results", "write_results", "sweep_status", "add_sweep_gains", "TEACHER_IDS"]

logger = logging.getLogger("kdlens.sweep")

#: model_id of each teacher in the sweep-level examples table
TEACHER_IDS: dict[bool, str] = {False: "teacher", True: "teacher_sft"}

#: the runner's clock (tests replace it to check the time budget)
_clock = time.monotonic

_EVAL_DEFAULTS: dict[str, Any] = {"n": None, "max_new_tokens": 256, "batch_size": 8, "split": "test",
                                  "tokens": True, "fidelity": True, "n_boot": 1000, "seed": 0}


def _eval_settings(spec: SweepSpec) -> dict[str, Any]:
    settings = {**_EVAL_DEFAULTS, **dict(spec.eval)}
    tasks = settings.get("tasks", spec.base.get("tasks"))
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("the sweep has no evaluation tasks: set eval.tasks (or base.tasks)")
    settings["tasks"] = list(tasks)
    return settings


def sweep_status(runs: pd.DataFrame, output_dir: str | os.PathLike) -> pd.Series:
    """Status of each run on disk: ``"evaluated"``, ``"trained"``, ``"partial"`` or ``"pending"``.

    ``"partial"`` is a run directory without its ``done`` marker (killed: it resumes).
    """
    root = Path(output_dir)
    out = []
    for rel in runs["run_dir"]:
        path = root / rel
        if (path / "eval" / "examples.parquet").is_file() and (path / "done").is_file():
            out.append("evaluated")
        elif (path / "done").is_file():
            out.append("trained")
        elif path.exists():
            out.append("partial")
        else:
            out.append("pending")
    return pd.Series(out, index=runs.index, name="status", dtype="string")


def _write_runs(runs: pd.DataFrame, root: Path) -> None:
    runs = runs.assign(status=sweep_status(runs, root))
    write_results(runs, root / "runs.parquet", axes=list(runs.columns[4:]), spec=runs.attrs.get("spec"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _teacher_spec(spec: SweepSpec, aware: bool, root: Path) -> str:
    return str((root / "teachers" / "sft").resolve()) if aware else str(spec.base["teacher"])


def _pruned_students(spec: SweepSpec, runs: pd.DataFrame, root: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Save every ``prune:N`` student of the sweep, pruned from the *base* teacher, under ``students/``.

    Used when the sweep has task-aware runs: ``prune:N`` prunes whatever teacher a run uses, so
    without this a student of the fine-tuned teacher would start from fine-tuned weights.
    """
    from kdlens._io import atomic_directory
    from kdlens.models import load_model, prune_layers

    wanted = set(runs["student"].dropna()) if "student" in runs.columns else set()
    wanted.add(spec.base.get("student"))
    wanted = sorted(s for s in wanted if isinstance(s, str) and s.startswith("prune:"))
    out, teacher = {}, None
    for name in wanted:
        path = root / "students" / name.replace(":", "-")
        if not (path / "config.json").is_file():
            say(f"saving {name} of the base teacher {spec.base['teacher']} (the same start for every teacher)")
            if teacher is None:
                teacher, tokenizer = load_model(str(spec.base["teacher"]))
            student = prune_layers(teacher, int(name.split(":", 1)[1]))
            with atomic_directory(path, overwrite=True) as tmp:
                student.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        out[name] = str(path.resolve())
    return out


def _evaluate_teacher(spec: SweepSpec, aware: bool, root: Path, settings: dict[str, Any]) -> Path:
    from kdlens.eval import evaluate

    out = (root / "teachers" / ("sft" if aware else "base") / "eval")
    evaluate({"teacher": _teacher_spec(spec, aware, root)}, settings["tasks"], n=settings["n"],
             batch_size=settings["batch_size"], max_new_tokens=settings["max_new_tokens"],
             split=settings["split"], output_dir=out)
    return out


def _seed_teacher_shards(teacher_eval: Path, run_eval: Path) -> None:
    """Give a run's eval directory its teacher's finished shards, so the teacher is not rerun.

    ``kdlens.eval.evaluate`` reuses a shard whose fingerprint (model spec, task, decoding, sizes)
    matches, and recomputes any other one, so a copy can only save time, never change a result.
    """
    for shard in sorted((teacher_eval / "shards").glob("teacher__*.parquet")):
        target = run_eval / "shards" / shard.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(shard, tmp)
            os.replace(tmp, target)


def _evaluate_run(rid: str, run_dir: Path, teacher: str, teacher_eval: Path, settings: dict[str, Any]) -> None:
    from kdlens.eval import collect_tokens, evaluate
    from kdlens.eval._store import TOKENS_NAME, write_parquet

    eval_dir = run_dir / "eval"
    _seed_teacher_shards(teacher_eval, eval_dir)
    examples = evaluate({"teacher": teacher, rid: str(run_dir)}, settings["tasks"], n=settings["n"],
                        batch_size=settings["batch_size"], max_new_tokens=settings["max_new_tokens"],
                        split=settings["split"], output_dir=eval_dir)
    if settings["tokens"] and not (eval_dir / TOKENS_NAME).is_file():
        teacher_rows = examples.loc[(examples["model_id"] == "teacher") & (examples["sample"] == 0)]
        tokens = collect_tokens(str(run_dir), teacher, teacher_rows, batch_size=settings["batch_size"],
                                student_id=rid, teacher_id="teacher")
        write_parquet(tokens, eval_dir / TOKENS_NAME, metadata={"student": str(run_dir), "teacher": teacher})


def run_sweep(
    spec: str | os.PathLike | Mapping[str, Any] | SweepSpec,
    *,
    output_dir: str | os.PathLike,
    evaluate: bool = True,
    max_runs: int | None = None,
    time_budget_s: float | None = None,
    publish_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Train, evaluate and summarise every run of a sweep that is not finished yet.

    Each run is evaluated as soon as it is trained, so a call stopped by ``max_runs`` or
    ``time_budget_s`` leaves only whole results behind.

    Parameters
    ----------
    spec : path to a YAML sweep spec, mapping or :class:`kdlens.analysis.ablations.SweepSpec`
    output_dir : path
        The sweep directory (layout in the module docstring); created when missing.
    evaluate : bool
        Evaluate the runs and write the results; False only trains.
    max_runs : int, optional
        Train at most this many missing runs in this call; the next call continues where this one
        stopped.
    time_budget_s : float, optional
        Start no run that would likely end after this many seconds from the call's start (the
        estimate is the longest train-and-evaluate time of the runs of this call; the first run
        always starts). For a device lent for a fixed time: the next call continues.
    publish_dir : path, optional
        A folder of published result tables (:func:`kdlens.publish.publish_sweep`), e.g.
        ``analyses/results/<name>`` in a repository: runs it already holds are neither trained nor
        evaluated again, and this call's results are merged into it. This is how a sweep goes on
        across machines that keep nothing but the repository (each session of a lent GPU).
    progress : callable, optional
        Called with one line of text per step (the CLI prints it); logging gets it too.

    Returns
    -------
    DataFrame
        The results table (also written to ``results.parquet``): one row per evaluated run and
        task (``"all"`` pools the tasks) with the run's axes, the metrics of
        :func:`kdlens.analysis.ablations.run_metrics`, and, when the sweep has SFT runs,
        ``<metric>_gain`` over the SFT baseline of the same student and seed. With ``publish_dir``,
        the merged table of every published run. Empty when nothing is evaluated yet.

    Raises
    ------
    ValueError
        An invalid spec, a run directory holding a different config (the engine refuses to mix
        settings), or a ``publish_dir`` published from another spec: the message names the problem.
    """
    from kdlens.distill import RunDir
    from kdlens.publish import publish_sweep, published_run_ids

    if max_runs is not None and max_runs < 0:
        raise ValueError(f"max_runs must be >= 0, got {max_runs}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be > 0 seconds, got {time_budget_s}")
    started = _clock()
    spec = load_sweep_spec(spec)
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    say = _reporter(progress)
    runs = expand_sweep(spec)
    published = published_run_ids(publish_dir, spec) if publish_dir is not None else set()
    if published:
        say(f"{len(published)} of {len(runs)} run(s) already published in {publish_dir}; they are skipped")
    todo = runs.loc[~runs["run_id"].isin(published)]
    import yaml

    atomic_write_text(root / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    _write_runs(runs, root)
    manifest_path = root / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {"runs": {}}
    manifest.update({"name": spec.name, "spec_hash": sha256_json(spec.to_dict()), "versions": versions(),
                     "session": uuid.uuid4().hex,
                     "git_sha": git_sha(), "device": _device_name(spec), "eval": _eval_settings(spec) if evaluate else None})
    state = _SweepState(spec, root, evaluate, say, manifest, runs)
    if len(todo):
        state.prepare_teachers()
    trained = 0
    for i, row in enumerate(todo.itertuples(index=False), start=1):
        label = f"[{i}/{len(todo)}]"
        run = RunDir(root / row.run_dir)
        if not run.done:
            if max_runs is not None and trained >= max_runs:
                say(f"stopping after {trained} run(s) (max_runs); run the sweep again to continue")
                break
            if not state.time_left(started, time_budget_s):
                say(f"stopping before {row.run_id}: it would likely overrun the time budget of {time_budget_s:g} s "
                    f"(longest run so far {state.longest_s:.0f} s); run the sweep again to continue")
                break
        state.train_and_evaluate(row, run, label)
        trained += int(state.trained_last)
        if publish_dir is not None and evaluate:  # after every run: a killed session loses at most one
            state.finish(runs, quiet=True)
            publish_sweep(root, publish_dir)
    _write_runs(runs, root)
    results = state.finish(runs)
    if publish_dir is not None and (Path(publish_dir) / "results.parquet").is_file():
        results = read_results(publish_dir)
        say(f"{results['run_id'].nunique()} of {len(runs)} run(s) published in {publish_dir}")
    return results


class _SweepState:
    """What one :func:`run_sweep` call builds up: teachers, evaluated runs, timings."""

    def __init__(self, spec: SweepSpec, root: Path, evaluate: bool, say: Callable[[str], None],
                 manifest: dict[str, Any], runs: pd.DataFrame) -> None:
        self.spec, self.root, self.evaluate, self.say, self.manifest = spec, root, evaluate, say, manifest
        self.runs = runs
        self.any_aware = any(bool(v) for v in runs.get("teacher_aware", pd.Series(dtype=object)).dropna())
        self.settings = _eval_settings(spec) if evaluate else None
        self.cache_dir = str((root / "teacher_cache").resolve())
        self.student_dirs: dict[str, str] | None = None
        self.teacher_evals: dict[bool, Path] = {}
        self.metrics: dict[str, pd.DataFrame] = {}
        self.example_frames: list[pd.DataFrame] = []
        self.token_frames: list[pd.DataFrame] = []
        self.longest_s = 0.0
        self.trained_last = False

    def prepare_teachers(self) -> None:
        """Save the base teacher's prunes and fine-tune the task-aware teacher when the sweep has one."""
        from kdlens.distill import RunDir, distill

        if not self.any_aware:
            return
        self.student_dirs = _pruned_students(self.spec, self.runs, self.root, self.say)
        teacher_run = RunDir(self.root / "teachers" / "sft")
        if not teacher_run.done:
            self.say(f"task-aware teacher: fine-tuning {self.spec.base.get('teacher')} with method=sft")
            distill(teacher_sft_config(self.spec, output_dir=str(teacher_run.path)))

    def time_left(self, started: float, budget: float | None) -> bool:
        if budget is None or self.longest_s == 0.0:
            return budget is None or _clock() - started < budget
        return _clock() - started + self.longest_s <= budget

    def train_and_evaluate(self, row: Any, run: Any, label: str) -> None:
        from kdlens.config import config_to_yaml
        from kdlens.distill import distill

        begun = _clock()
        self.trained_last = not run.done
        if self.trained_last:
            overrides = json.loads(row.overrides)
            cfg = run_config(self.spec, overrides, output_dir=str(run.path),
                             teacher_dir=_teacher_spec(self.spec, True, self.root), cache_dir=self.cache_dir,
                             student_dirs=self.student_dirs)
            self.say(f"{label} training {row.run_id}" + (" (resuming)" if run.path.exists() else ""))
            distill(cfg)
            self.manifest["runs"][row.run_id] = {"config": config_to_yaml(cfg),
                                                 "train_s": _clock() - begun}
        if self.evaluate:
            self._evaluate(row, run, label)
        if self.trained_last:
            entry = self.manifest["runs"][row.run_id]
            entry["total_s"] = _clock() - begun
            self.longest_s = max(self.longest_s, entry["total_s"])
        atomic_write_json(self.root / "manifest.json", self.manifest)

    def _evaluate(self, row: Any, run: Any, label: str) -> None:
        from kdlens.eval._store import read_examples, read_tokens

        settings = self.settings
        aware = _compares_with_aware_teacher(self.spec, json.loads(row.overrides), self.any_aware)
        if aware not in self.teacher_evals:
            self.say(f"evaluating the {'task-aware' if aware else 'base'} teacher")
            self.teacher_evals[aware] = _evaluate_teacher(self.spec, aware, self.root, settings)
            teacher_rows = read_examples(self.teacher_evals[aware])
            self.example_frames.append(teacher_rows.assign(model_id=TEACHER_IDS[aware]))
        if not (run.path / "eval" / "examples.parquet").is_file() or \
                (settings["tokens"] and not (run.path / "eval" / "tokens.parquet").is_file()):
            self.say(f"{label} evaluating {row.run_id}")
        _evaluate_run(row.run_id, run.path, _teacher_spec(self.spec, aware, self.root), self.teacher_evals[aware],
                      settings)
        examples = read_examples(run.path / "eval")
        tokens = read_tokens(run.path / "eval") if settings["tokens"] else None
        self.metrics[row.run_id] = run_metrics(examples, model_id=row.run_id, teacher="teacher", tokens=tokens,
                                               fidelity=settings["fidelity"], n_boot=settings["n_boot"],
                                               seed=settings["seed"])
        self.example_frames.append(examples.loc[examples["model_id"] == row.run_id])
        if tokens is not None:
            self.token_frames.append(tokens.assign(teacher_id=TEACHER_IDS[aware]))

    def finish(self, runs: pd.DataFrame, *, quiet: bool = False) -> pd.DataFrame:
        """Join the evaluated runs into ``results.parquet`` (and the examples and tokens tables)."""
        from kdlens.eval._store import write_parquet

        if not self.evaluate:
            return pd.DataFrame()
        if not self.metrics:
            if not quiet:
                self.say("no run of this call to evaluate")
            return pd.DataFrame()
        spec, root = self.spec, self.root
        runs = runs.assign(status=sweep_status(runs, root))
        results = join_results(runs, self.metrics)
        results["teacher_id"] = [TEACHER_IDS[_compares_with_aware_teacher(spec, json.loads(o), self.any_aware)]
                                 for o in results["overrides"]]
        results = add_sweep_gains(results, baseline=spec.baseline or "sft")
        write_results(results, root / "results.parquet", axes=list(runs.columns[4:]), spec=spec.to_dict())
        write_parquet(pd.concat(self.example_frames, ignore_index=True), root / "examples.parquet")
        if self.token_frames:
            write_parquet(pd.concat(self.token_frames, ignore_index=True), root / "tokens.parquet")
        self.manifest["n_evaluated"] = len(self.metrics)
        atomic_write_json(root / "manifest.json", self.manifest)
        if not quiet:
            self.say(f"results of {len(self.metrics)} run(s) written to {root / 'results.parquet'}")
        return results


def _compares_with_aware_teacher(spec: SweepSpec, overrides: Mapping[str, Any], any_aware: bool) -> bool:
    """Whether a run is measured against the task-aware teacher (agreement, fidelity, token KL).

    A KD run against the teacher it learned from; a run without a teacher (the SFT baseline)
    against the task-aware teacher when the sweep has one, so that "before KD" and "after KD" are
    measured against the same teacher (the paradox paper's setting).
    """
    if "teacher_aware" in overrides and not _missing(overrides["teacher_aware"]):
        return bool(overrides["teacher_aware"])
    from kdlens.analysis.ablations import _is_sft

    return any_aware and _is_sft(str(overrides.get("method", spec.base.get("method", "word_kd"))))


def add_sweep_gains(results: pd.DataFrame, *, baseline: str = "sft") -> pd.DataFrame:
    """Gains over the baseline run (:func:`kdlens.analysis.ablations.add_gain`) for a sweep's results.

    ``accuracy_gain`` compares a run with the baseline run of the same student, seed and task;
    ``agreement_gain`` and ``bleu_gain`` only where both were measured against the same teacher
    (``teacher_id``), else they are missing: agreement with two different teachers is not a change.
    Results without a baseline run come back unchanged.
    """
    if "method" not in results.columns or not (results["method"] == baseline).any():
        return results
    if "teacher_id" not in results.columns:
        return add_gain(results, baseline=baseline)
    out = add_gain(results.drop(columns=["teacher_id"]), baseline=baseline, metrics=("accuracy",))
    same_teacher = add_gain(results, baseline=baseline, metrics=("agreement", "bleu"))
    for col in ("baseline_agreement", "agreement_gain", "baseline_bleu", "bleu_gain"):
        out[col] = same_teacher[col].to_numpy()
    out.insert(out.columns.get_loc("baseline_run_id"), "teacher_id", results["teacher_id"].to_numpy())
    return out


def _device_name(spec: SweepSpec) -> str:
    """The accelerator the runs of this call use, in words (for provenance)."""
    import torch

    wanted = str(spec.base.get("device", "auto"))
    if wanted != "cpu" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return "cpu"


def write_results(results: pd.DataFrame, path: str | os.PathLike, *, axes: list[str],
                  spec: Mapping[str, Any] | None = None) -> Path:
    """Write a results table atomically as parquet; :func:`read_results` reads it back.

    Axis columns can mix types across rows (a number for KD runs, missing for SFT runs, a string
    for ``student``), which parquet cannot store in one column, so they are stored as JSON text.
    """
    from kdlens.eval._store import write_parquet

    stored = results.copy()
    for col in axes:
        stored[col] = [None if _missing(v) else json.dumps(v) for v in stored[col]]
    return write_parquet(stored, path, metadata={"axes_as_json": list(axes), "spec": dict(spec or {})})


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load a sweep's ``results.parquet`` (or ``runs.parquet``) with its axis columns decoded."""
    from kdlens.eval._store import read_parquet_metadata

    path = Path(path)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `kdlens sweep SPEC -o DIR` first")
    frame = pd.read_parquet(path)
    for col in read_parquet_metadata(path).get("axes_as_json", []):
        frame[col] = [None if v is None or v != v else json.loads(v) for v in frame[col]]
        if frame[col].map(lambda v: isinstance(v, int | float) and not isinstance(v, bool) or v is None).all():
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def _reporter(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(text: str) -> None:
        logger.info(text)
        if progress is not None:
            progress(text)

    return say
