"""One call of :func:`kdlens.sweep.run_sweep`: teachers, runs in order or in parallel workers, timings.

Runs are independent once the shared pieces exist (the base teacher's prunes, the task-aware
teacher, the teachers' evaluations), so :class:`SweepSession` prepares those in the calling process
and then trains and evaluates runs one after the other, or ``workers`` at a time in spawned
processes: a model of this size leaves most of a GPU idle, so several runs share one. Another
executor can run them instead (:mod:`kdlens.sweep._ray`: one Ray task per run); any executor with
``submit(fn, *args, **kwargs) -> concurrent.futures.Future``, ``shutdown(wait, cancel_futures=...)``
and ``slots`` (runs in flight at most) will do. Metrics are always computed in the calling process,
which alone writes the sweep's tables.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._io import atomic_write_bytes, atomic_write_json, read_json
from kdlens._tables import TOKENS_NAME, read_examples, read_tokens, write_parquet
from kdlens.analysis import join_results, run_metrics
from kdlens.distill._identity import inspect_run, mismatch_message, run_identity
from kdlens.distill._rundir import RunDir
from kdlens.sweep._tables import TEACHER_IDS, add_sweep_gains, sweep_status, write_results
from kdlens.sweep.spec import (
    SweepSpec,
    compares_with_aware_teacher,
    eval_splits,
    run_config,
    teacher_sft_config,
)

__all__ = ["SweepSession", "eval_device"]

_REDO = ("; rerun with overwrite=True (`kdlens sweep --overwrite`) to delete and retrain what changed (what did "
         "not change is kept), or use another output directory")

#: the runner's clock (tests replace it to check the time budget)
_clock = time.monotonic


def _teacher_spec(spec: SweepSpec, aware: bool, root: Path) -> str:
    """The model a run is distilled from and measured against: the base teacher, or the task-aware one
    (the spec's ``aware_teacher``, else the base teacher after SFT, trained under ``teachers/sft``)."""
    if not aware:
        return str(spec.base["teacher"])
    return spec.aware_teacher or str((root / "teachers" / "sft").resolve())


def _teacher_eval_dir(spec: SweepSpec, aware: bool, root: Path) -> Path:
    return root / "teachers" / (("aware" if spec.aware_teacher else "sft") if aware else "base") / "eval"


def _eval_tasks(settings: dict[str, Any]) -> tuple[Any, str]:
    """The ``tasks`` and ``split`` arguments of :func:`kdlens.eval.evaluate` for the sweep's eval settings.

    One split: the task specs as they are. Several (``eval.split: [test, gen]``): one evaluation covers
    them all, each task's records of each split under the key ``<spec>@<split>`` (its own shards), and
    the split label records the list.
    """
    splits = eval_splits(settings["split"])
    if len(splits) == 1:
        return settings["tasks"], splits[0]
    from kdlens.data import load_task

    tasks = {f"{task}@{split}": load_task(task, split=split, n=settings["n"]) for task in settings["tasks"]
             for split in splits}
    return tasks, ",".join(splits)


def _by_split(examples: pd.DataFrame, settings: dict[str, Any]) -> pd.DataFrame:
    """Examples whose ``task`` names the split too (``lab_chain@gen``) when the sweep evaluates several splits,
    so that every per-task metric, gain and verdict keeps the splits apart (``"all"`` pools them)."""
    if len(eval_splits(settings["split"])) == 1 or examples.empty:
        return examples
    return examples.assign(task=examples["task"].astype(str) + "@" + examples["split"].astype(str))


def _read_eval(eval_dir: Path, settings: dict[str, Any]) -> pd.DataFrame:
    return _by_split(read_examples(eval_dir), settings)


def _pruned_students(spec: SweepSpec, runs: pd.DataFrame, root: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Save every ``prune:N`` student of the sweep, pruned from the *base* teacher, under ``students/``.

    Used when the sweep has task-aware runs: ``prune:N`` prunes whatever teacher a run uses, so
    without this a student of the fine-tuned teacher would start from fine-tuned weights. Each prune
    records the base teacher's weights fingerprint (``kdlens.json``) and is made again when the
    teacher's weights changed: the runs that started from the old prune then see other student weights.
    """
    from kdlens._io import atomic_directory
    from kdlens.distill import weights_fingerprint
    from kdlens.models import load_model, prune_layers
    from kdlens.models._hf import quiet_progress

    wanted = set(runs["student"].dropna()) if "student" in runs.columns else set()
    wanted.add(spec.base.get("student"))
    wanted = sorted(s for s in wanted if isinstance(s, str) and s.startswith("prune:"))
    out, teacher = {}, None
    source = weights_fingerprint(str(spec.base["teacher"])) if wanted else None
    for name in wanted:
        path = root / "students" / name.replace(":", "-")
        provenance = {"pruned_from": source, "keep": int(name.split(":", 1)[1])}
        if not (path / "config.json").is_file() or _read_json_or_none(path / _PRUNE_PROVENANCE) != provenance:
            say(f"saving {name} of the base teacher {spec.base['teacher']} (the same start for every teacher)")
            if teacher is None:
                teacher, tokenizer = load_model(str(spec.base["teacher"]))
            student = prune_layers(teacher, provenance["keep"])
            with quiet_progress(), atomic_directory(path, overwrite=True) as tmp:  # no "Writing model shards" bar
                student.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                atomic_write_json(tmp / _PRUNE_PROVENANCE, provenance)
        out[name] = str(path.resolve())
    return out


_PRUNE_PROVENANCE = "kdlens.json"


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def _evaluate(models: dict[str, str], settings: dict[str, Any], output_dir: Path, device: str | None) -> pd.DataFrame:
    """:func:`kdlens.eval.evaluate` of ``models`` under the sweep's eval settings (tasks named by split)."""
    from kdlens.eval import evaluate

    tasks, split = _eval_tasks(settings)
    examples = evaluate(models, tasks, n=settings["n"], batch_size=settings["batch_size"],
                        max_new_tokens=settings["max_new_tokens"], split=split, output_dir=output_dir, device=device)
    return _by_split(examples, settings)


def _evaluate_teacher(spec: SweepSpec, aware: bool, root: Path, settings: dict[str, Any]) -> Path:
    out = _teacher_eval_dir(spec, aware, root)
    _evaluate({"teacher": _teacher_spec(spec, aware, root)}, settings, out, eval_device(spec))
    return out


def _cache_margins(path: Path) -> Any:
    """Top-1 minus top-2 raw teacher logit of every token row of a complete teacher cache (numpy, float64).

    A cache stores each response token's top-k raw logits in descending order
    (:class:`kdlens.teacher.TeacherCache`), so the margin is the first column minus the second.
    """
    import numpy as np
    from safetensors.numpy import load_file

    index = read_json(path / "index.json")
    if int(index.get("top_k", 0)) < 2:
        return np.zeros(0)
    parts = [load_file(str(path / shard["file"]))["values"] for shard in index["shards"]]
    values = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 2))
    return values[:, 0] - values[:, 1]


def _seed_teacher_shards(teacher_eval: Path, run_eval: Path) -> None:
    """Give a run's eval directory its teacher's finished shards, so the teacher is not rerun.

    ``kdlens.eval.evaluate`` reuses a shard whose fingerprint (model spec, task, decoding, sizes)
    matches, and recomputes any other one, so a copy can only save time, never change a result.
    """
    for shard in sorted((teacher_eval / "shards").glob("teacher__*.parquet")):
        target = run_eval / "shards" / shard.name
        if not target.exists():
            atomic_write_bytes(target, shard.read_bytes())


def eval_device(spec: SweepSpec) -> str | None:
    """Where the sweep's models are evaluated: the GPU when training uses one, else the CPU (None).

    ``kdlens.eval`` loads models on the CPU unless told otherwise, while training places itself
    (``device: auto``); without this a GPU sweep would generate on the CPU, minutes per run.
    """
    return _eval_device(str(spec.base.get("device", "auto")))


def _eval_device(wanted: str) -> str | None:
    """:func:`eval_device` for the config's ``device``, decided where the evaluation runs (a Ray node's GPU)."""
    import torch

    return "cuda" if wanted != "cpu" and torch.cuda.is_available() else None


def _evaluate_run(rid: str, run_dir: Path, teacher: str, teacher_eval: Path, settings: dict[str, Any],
                  device: str | None) -> None:
    from kdlens.eval import collect_tokens

    eval_dir = run_dir / "eval"
    _seed_teacher_shards(teacher_eval, eval_dir)
    examples = _evaluate({"teacher": teacher, rid: str(run_dir)}, settings, eval_dir, device)
    if settings["tokens"] and not (eval_dir / TOKENS_NAME).is_file():
        teacher_rows = examples.loc[(examples["model_id"] == "teacher") & (examples["sample"] == 0)]
        tokens = collect_tokens(str(run_dir), teacher, teacher_rows, batch_size=settings["batch_size"],
                                student_id=rid, teacher_id="teacher", device=device)
        write_parquet(tokens, eval_dir / TOKENS_NAME, metadata={"student": str(run_dir), "teacher": teacher})


class SweepSession:
    """What one :func:`kdlens.sweep.run_sweep` call builds up: teachers, evaluated runs, timings."""

    def __init__(self, spec: SweepSpec, root: Path, settings: dict[str, Any] | None, say: Callable[[str], None],
                 manifest: dict[str, Any], runs: pd.DataFrame, *, overwrite: bool = False) -> None:
        self.spec, self.root, self.settings, self.say, self.manifest = spec, root, settings, say, manifest
        self.runs, self.overwrite = runs, overwrite
        self.replaced: set[str] = set()  # runs of another identity on disk, that overwrite retrains
        self.data_memo: dict[str, str] = {}  # training-data hashes, shared by the runs' identity checks
        self.any_aware = any(bool(v) for v in runs.get("teacher_aware", pd.Series(dtype=object)).dropna())
        self.cache_dir = str((root / "teacher_cache").resolve())
        self.student_dirs: dict[str, str] | None = None
        self.teacher_evals: dict[bool, Path] = {}
        self.metrics: dict[str, pd.DataFrame] = {}
        self.example_frames: list[pd.DataFrame] = []
        self.token_frames: list[pd.DataFrame] = []
        self.longest_s = 0.0
        self.margins: dict[str, tuple[str, Any]] = {}  # complete teacher cache -> (teacher weights, margins)

    # ----------------------------------------------------------------- shared pieces

    def prepare_teachers(self) -> None:
        """Save the base teacher's prunes and fine-tune the task-aware teacher when the sweep has one.

        A task-aware teacher trained with other settings (``teacher_sft`` or the base changed) is an
        error, or, with ``overwrite``, is trained again.
        """
        from kdlens.distill import distill

        if not self.any_aware:
            return
        self.student_dirs = _pruned_students(self.spec, self.runs, self.root, self.say)
        if self.spec.aware_teacher:  # a ready task-aware teacher: nothing to train
            return
        teacher_run = RunDir(self.root / "teachers" / "sft")
        config = teacher_sft_config(self.spec, output_dir=str(teacher_run.path))
        check = inspect_run(teacher_run, run_identity(config, memo=self.data_memo))
        if not check.same and not self.overwrite:
            raise ValueError(f"the task-aware teacher {mismatch_message(teacher_run, check)} (the spec's base or "
                             f"teacher_sft changed){_REDO}")
        if check.state != "finished" or not check.same:
            self.say(f"task-aware teacher: fine-tuning {self.spec.base.get('teacher')} with method=sft"
                     + ("" if check.same else " (replacing the one trained with other settings)"))
            distill(config, overwrite=self.overwrite)

    def check_runs(self, todo: pd.DataFrame) -> None:
        """Compare every run directory of ``todo`` on disk with the run the spec now defines.

        A run of the same identity is kept (a finished one is only evaluated); a run of another
        identity (the spec's base, the data or a teacher's weights changed) is an error naming each such
        run and what changed, or, with ``overwrite``, is retrained in place.
        """
        changed = []
        for row in todo.itertuples(index=False):
            run = RunDir(self.root / row.run_dir)
            if not run.path.exists():
                continue
            check = inspect_run(run, run_identity(self.config(row, run), memo=self.data_memo))
            if check.state == "foreign":  # never replaced, overwrite or not
                raise ValueError(mismatch_message(run, check))
            if check.same:
                if check.state == "finished" and run.leftovers():
                    run.remove_leftovers()
            else:
                changed.append(mismatch_message(run, check))
                self.replaced.add(row.run_id)
        if changed and not self.overwrite:
            shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise ValueError(f"{len(changed)} run(s) of this sweep on disk differ from what the spec now gives: "
                             f"{shown}{_REDO}")
        if changed:
            self.say(f"{len(changed)} run(s) with other settings will be retrained (overwrite)")

    def aware(self, row: Any) -> bool:
        return compares_with_aware_teacher(self.spec, json.loads(row.overrides), self.any_aware)

    def teacher_eval(self, aware: bool) -> Path:
        """The teacher's evaluation directory (evaluated on first use); its rows join the examples."""
        if aware not in self.teacher_evals:
            self.say(f"evaluating the {'task-aware' if aware else 'base'} teacher")
            self.teacher_evals[aware] = _evaluate_teacher(self.spec, aware, self.root, self.settings)
            teacher_rows = _read_eval(self.teacher_evals[aware], self.settings)
            self.example_frames.append(teacher_rows.assign(model_id=TEACHER_IDS[aware]))
        return self.teacher_evals[aware]

    def config(self, row: Any, run: Any):
        return run_config(self.spec, json.loads(row.overrides), output_dir=str(run.path),
                          teacher_dir=_teacher_spec(self.spec, True, self.root), cache_dir=self.cache_dir,
                          student_dirs=self.student_dirs)

    def time_left(self, started: float, budget: float | None) -> bool:
        if budget is None or self.longest_s == 0.0:
            return budget is None or _clock() - started < budget
        return _clock() - started + self.longest_s <= budget

    # ----------------------------------------------------------------- running

    def run(self, todo: pd.DataFrame, *, workers: int, started: float, max_runs: int | None,
            budget: float | None, after_each: Callable[[], None],
            executor: Callable[[], Any] | None = None) -> None:
        """Train and evaluate the runs of ``todo`` in order, ``workers`` at a time, within the limits.

        With several workers a run that fails (say, out of GPU memory) does not stop the others: the
        call raises at the end, naming each failed run, after the finished ones are collected.
        ``executor`` starts another executor than the local processes (see the module docstring); it
        is called only when a run needs training, and its ``slots`` replace ``workers``.
        """
        pending = [(f"[{i}/{len(todo)}]", row, RunDir(self.root / row.run_dir))
                   for i, row in enumerate(todo.itertuples(index=False), start=1)]
        pool = None
        if (executor is not None or workers > 1) and any(not run.done for _, _, run in pending):
            if self.settings is not None:  # runs seed their evaluation from the teachers'
                for aware in sorted({self.aware(row) for _, row, run in pending if not run.done}):
                    self.teacher_eval(aware)
            _release_accelerator_memory()
            pool = executor() if executor is not None else _pool(workers)
            workers = pool.slots if executor is not None else workers
        running: dict[Any, tuple[str, Any, Any, Any]] = {}
        failed: dict[str, str] = {}
        started_runs, stopped = 0, False
        try:
            while pending or running:
                while pending and len(running) < workers and not stopped:
                    label, row, run = pending[0]
                    if run.done and row.run_id not in self.replaced:  # trained by an earlier call: evaluate only
                        pending.pop(0)
                        # no after_each: nothing is lost if the call stops here (the caller publishes at the end)
                        self._finished(label, row, run, None)
                        continue
                    if max_runs is not None and started_runs >= max_runs:
                        self.say(f"stopping after {started_runs} run(s) (max_runs); run the sweep again to continue")
                        stopped = True
                        break
                    if not self.time_left(started, budget):
                        self.say(f"stopping before {row.run_id}: it would likely overrun the time budget of "
                                 f"{budget:g} s (longest run so far {self.longest_s:.0f} s); run the sweep "
                                 "again to continue")
                        stopped = True
                        break
                    pending.pop(0)
                    started_runs += 1
                    cfg = self.config(row, run)
                    how = " (replacing a run with other settings)" if row.run_id in self.replaced else \
                        " (resuming)" if run.path.exists() else ""
                    self.say(f"{label} training {row.run_id}{how}")
                    job = {**self._job(row, run), "overwrite": self.overwrite}
                    if pool is None:
                        timing = _train_and_evaluate(cfg, **job)
                        self._finished(label, row, run, timing, cfg)
                        after_each()
                    else:
                        running[pool.submit(_train_and_evaluate, cfg, **job)] = (label, row, run, cfg)
                if not running:
                    break
                import concurrent.futures as cf

                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    label, row, run, cfg = running.pop(future)
                    try:
                        timing = future.result()
                        if not run.done:  # a Ray node that wrote to a disk the driver does not see
                            raise FileNotFoundError(f"its worker returned but {run.done_path} is not there: "
                                                    "output_dir must be on a filesystem that every node of "
                                                    "the Ray cluster mounts at the same path")
                    except Exception as err:  # noqa: BLE001 - the other workers' runs go on; raised below
                        failed[row.run_id] = f"{type(err).__name__}: {err}"
                        self.say(f"{label} {row.run_id} failed ({failed[row.run_id]}); the other runs go on")
                        continue
                    self._finished(label, row, run, timing, cfg)
                    after_each()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if failed:
            # an OSError (the CLI's one line): each worker's own error is in the message
            raise ChildProcessError(f"{len(failed)} run(s) failed in their workers (the finished ones are kept): "
                               + "; ".join(f"{rid}: {why}" for rid, why in failed.items()))

    def _job(self, row: Any, run: Any) -> dict[str, Any]:
        if self.settings is None:
            return {"evaluation": None}
        aware = self.aware(row)
        return {"evaluation": {"run_id": row.run_id, "run_dir": str(run.path),
                               "teacher": _teacher_spec(self.spec, aware, self.root),
                               "teacher_eval": str(self.teacher_eval(aware)), "settings": self.settings,
                               "device": str(self.spec.base.get("device", "auto"))}}

    def _finished(self, label: str, row: Any, run: Any, timing: dict[str, float] | None, cfg: Any = None) -> None:
        """Record a trained run's provenance and timings and collect its metrics (evaluating it here if need be).

        A run trained by an earlier call that was stopped before it recorded the run (killed while
        evaluating it) gets its entry from the run directory.
        """
        from kdlens.config import config_to_yaml

        if timing is not None:
            identity = run.manifest()["identity"]["hash"]
            self.manifest["runs"][row.run_id] = {"config": config_to_yaml(cfg), "identity": identity, **timing}
            self.longest_s = max(self.longest_s, timing["total_s"])
        elif row.run_id not in self.manifest["runs"]:
            self.manifest["runs"][row.run_id] = _entry_from_run(run)
        if self.settings is not None:
            self._collect(label, row, run)
        atomic_write_json(self.root / "manifest.json", self.manifest)

    def _collect(self, label: str, row: Any, run: Any) -> None:
        settings = self.settings
        aware = self.aware(row)
        teacher_eval = self.teacher_eval(aware)
        if not (run.path / "eval" / "examples.parquet").is_file() or \
                (settings["tokens"] and not (run.path / "eval" / "tokens.parquet").is_file()):
            self.say(f"{label} evaluating {row.run_id}")
            _evaluate_run(row.run_id, run.path, _teacher_spec(self.spec, aware, self.root), teacher_eval, settings,
                          eval_device(self.spec))
        examples = _read_eval(run.path / "eval", settings)
        tokens = read_tokens(run.path / "eval") if settings["tokens"] else None
        self.metrics[row.run_id] = run_metrics(examples, model_id=row.run_id, teacher="teacher", tokens=tokens,
                                               fidelity=settings["fidelity"], n_boot=settings["n_boot"],
                                               seed=settings["seed"])
        self.example_frames.append(examples.loc[examples["model_id"] == row.run_id])
        if tokens is not None:
            self.token_frames.append(tokens.assign(teacher_id=TEACHER_IDS[aware]))

    # ----------------------------------------------------------------- tables

    def teacher_logits(self) -> dict[str, dict[str, Any]]:
        """Each teacher's mean top-1 logit margin on the KD training tokens, from the sweep's teacher caches.

        The margin (top-1 minus top-2 raw logit) is the scale of the teacher's logits that noise of
        standard deviation sigma competes with: sigma / margin says how strong a sigma is *for this
        teacher*. Pooled over every complete cache of the teacher (one per training set); a teacher
        whose runs read no cache has no entry.
        """
        import numpy as np

        from kdlens.distill import weights_fingerprint

        root = self.root / "teacher_cache"
        for path in sorted(root.glob("*/complete")) if root.is_dir() else []:
            key = str(path.parent)
            if key not in self.margins:
                self.margins[key] = (read_json(path.parent / "index.json").get("teacher_weights"),
                                     _cache_margins(path.parent))
        out = {}
        for aware in sorted({self.aware(row) for row in self.runs.itertuples(index=False)}):
            model = _teacher_spec(self.spec, aware, self.root)
            try:
                weights = weights_fingerprint(model)
            except (FileNotFoundError, OSError, ValueError):  # a task-aware teacher not trained yet
                continue
            found = [margins for w, margins in self.margins.values() if w == weights and len(margins)]
            if found:
                margins = np.concatenate(found)
                out[TEACHER_IDS[aware]] = {
                    "model": model, "top1_margin_mean": float(margins.mean()),
                    "top1_margin_median": float(np.median(margins)),
                    "top1_margin_p10": float(np.quantile(margins, 0.1)), "n_tokens": int(margins.size),
                    "n_caches": len(found), "source": "the sweep's teacher caches (raw logits of the KD training "
                                                      "tokens, top-1 minus top-2)"}
        return out

    def finish(self, runs: pd.DataFrame, *, quiet: bool = False) -> pd.DataFrame:
        """Join the evaluated runs into ``results.parquet`` (and the examples and tokens tables)."""
        if self.settings is None:
            return pd.DataFrame()
        if not self.metrics:
            if not quiet:
                self.say("no run of this call to evaluate")
            return pd.DataFrame()
        spec, root = self.spec, self.root
        runs = runs.assign(status=sweep_status(runs, root))
        results = join_results(runs, self.metrics)
        results["teacher_id"] = [TEACHER_IDS[compares_with_aware_teacher(spec, json.loads(o), self.any_aware)]
                                 for o in results["overrides"]]
        results = add_sweep_gains(results, baseline=spec.baseline or "sft")
        write_results(results, root / "results.parquet", axes=list(runs.columns[4:]), spec=spec.to_dict())
        write_parquet(pd.concat(self.example_frames, ignore_index=True), root / "examples.parquet")
        if self.token_frames:
            write_parquet(pd.concat(self.token_frames, ignore_index=True), root / "tokens.parquet")
        self.manifest["n_evaluated"] = len(self.metrics)
        self.manifest["teacher_logits"] = self.teacher_logits()
        atomic_write_json(root / "manifest.json", self.manifest)
        if not quiet:
            self.say(f"results of {len(self.metrics)} run(s) written to {root / 'results.parquet'}")
        return results


def _entry_from_run(run: Any) -> dict[str, Any]:
    """A sweep manifest's entry for a run, read back from its directory (its config, identity, training time)."""
    manifest = run.manifest()
    entry = {"config": run.config_path.read_text(encoding="utf-8"), "identity": manifest["identity"]["hash"],
             "recorded_from": "the run directory (trained by an earlier call stopped before recording it)"}
    wall = (manifest.get("final") or {}).get("wall_s")
    if wall is not None:
        entry["train_s"] = wall
    return entry


def _train_and_evaluate(cfg: Any, *, evaluation: dict[str, Any] | None, overwrite: bool = False) -> dict[str, float]:
    """Train one run and, when asked, evaluate it (in the calling process or a worker); its timings."""
    from kdlens.distill import distill

    begun = _clock()
    distill(cfg, overwrite=overwrite)
    trained = _clock()
    if evaluation is not None:
        _evaluate_run(evaluation["run_id"], Path(evaluation["run_dir"]), evaluation["teacher"],
                      Path(evaluation["teacher_eval"]), evaluation["settings"], _eval_device(evaluation["device"]))
    return {"train_s": trained - begun, "total_s": _clock() - begun}


def _pool(workers: int):
    """Worker processes (spawned: CUDA cannot fork) sharing the machine's CPU threads."""
    import concurrent.futures as cf
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_worker_init, initargs=(threads,))


def _release_accelerator_memory() -> None:
    """Hand the memory this process cached on the GPU (teacher fine-tuning, evaluation) to the workers."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # the workers share one terminal: their step bars would overwrite each other (the session says each run)
    os.environ["TQDM_DISABLE"] = "1"


def _device_name(spec: SweepSpec) -> str:
    """The accelerator the runs of this call use, in words (for provenance)."""
    import torch

    wanted = str(spec.base.get("device", "auto"))
    if wanted != "cpu" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return "cpu"


