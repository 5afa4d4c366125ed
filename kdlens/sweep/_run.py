"""Run a sweep: expand the spec, train the missing runs, evaluate them, join everything.

``run_sweep(spec, output_dir=...)`` is resumable at every level: a finished run of the same
identity (its full resolved config, data and teacher weights) is not trained again, one of another
identity is refused unless ``overwrite``, a killed one resumes from its last saved state, evaluation shards
already written are reused, and the teacher runs once per (teacher, data) for every KD run
because they all read the same logit cache. A sweep directory::

    <output_dir>/
      spec.yaml             the resolved spec of the last call
      runs.parquet          one row per run (kdlens.sweep.expand_sweep) with its status
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
      manifest.json         spec hash, versions, git sha, per-run config, identity hash and timings
      .kdlens.lock          held by the process running the sweep (one at a time, kdlens._lock)

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
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._io import (
    atomic_write_text,
    git_sha,
    is_temporary,
    read_json,
    remove_stale_temporaries,
    sha256_json,
    versions,
)
from kdlens._lock import LOCK_NAME, exclusive_lock
from kdlens.citations import sweep_references
from kdlens.sweep import _session
from kdlens.sweep._session import SweepSession, _device_name
from kdlens.sweep._tables import read_results, sweep_status, write_results
from kdlens.sweep.publish import TOKEN_ROWS_PER_RUN, publish_sweep, published_run_ids
from kdlens.sweep.spec import SweepSpec, expand_sweep, load_sweep_spec, schedule

__all__ = ["run_sweep", "full_results"]

logger = logging.getLogger("kdlens.sweep")


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


def _write_runs(runs: pd.DataFrame, root: Path) -> None:
    runs = runs.assign(status=sweep_status(runs, root))
    write_results(runs, root / "runs.parquet", axes=list(runs.columns[4:]), spec=runs.attrs.get("spec"))


def run_sweep(
    spec: str | os.PathLike | Mapping[str, Any] | SweepSpec,
    *,
    output_dir: str | os.PathLike,
    evaluate: bool = True,
    max_runs: int | None = None,
    time_budget_s: float | None = None,
    publish_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    task_options: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    token_rows_per_run: int = TOKEN_ROWS_PER_RUN,
) -> pd.DataFrame:
    """Train, evaluate and summarise every run of a sweep that is not finished yet.

    Each run is evaluated as soon as it is trained, so a call stopped by ``max_runs`` or
    ``time_budget_s`` leaves only whole results behind. The teachers' evaluations and the
    task-aware teacher are shared by every run.

    Parameters
    ----------
    spec : path to a YAML sweep spec, mapping or :class:`kdlens.sweep.SweepSpec`
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
        A folder of published result tables (:func:`kdlens.sweep.publish_sweep`), e.g.
        ``analyses/results/<name>`` in a repository: runs it already holds are neither trained nor
        evaluated again, and this call's results are merged into it. This is how a sweep goes on
        across machines that keep nothing but the repository (each session of a lent GPU).
    workers : int, optional
        Train and evaluate this many runs at a time, each in its own process (a small model leaves
        most of a GPU idle); default 1. With the Ray backend, the runs in flight at once; default as
        many as the cluster's resources hold. Runs are started seed by seed, baselines first
        (:func:`kdlens.sweep.schedule`), whatever the number of workers.
    backend : {"local", "ray"}
        ``"local"``: this process, or ``workers`` spawned processes. ``"ray"``: each run is a Ray task
        (:mod:`kdlens.sweep._ray`; ``pip install -e .[ray]``): on a cluster of several nodes
        ``output_dir`` must be on a filesystem every node shares, since the tasks write the run
        directories there and this process reads them. A task whose worker dies is retried.
    address : str, optional
        The Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a local Ray (or uses
        the one this process is connected to). Only with ``backend="ray"``.
    task_options : mapping, optional
        Ray task options of each run: ``num_cpus`` (default 1), ``num_gpus`` (default 1 when the base
        config trains on CUDA, else 0; fractions share a GPU), ``memory`` (bytes), ``max_retries``
        (default 2), ``retry_exceptions`` (default False). Only with ``backend="ray"``.
    progress : callable, optional
        Called with one line of text per step (the CLI prints it); logging gets it too.
    overwrite : bool
        Retrain, in place, every run (and the task-aware teacher) on disk whose identity differs from
        the one the spec now gives (see Raises); runs of the same identity are kept either way. Also
        evaluate again when the evaluation settings that decide the outputs (``eval.tasks``, ``n``,
        ``max_new_tokens``, ``split``) changed since the runs were evaluated.
    token_rows_per_run : int
        With ``publish_dir``: the per-token rows of each new run kept in the published folder
        (:func:`kdlens.sweep.publish_sweep`; a repository keeps a sample, the metrics use them all).

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
        An invalid spec; run directories (or the task-aware teacher) on disk whose identity differs
        from what the spec now gives, i.e. whose full resolved config, training data or teacher
        weights changed (the message names each run and what changed; ``overwrite`` retrains them);
        evaluations made under other evaluation settings (``overwrite`` redoes them);
        or a ``publish_dir`` published from another spec: the message names the problem.
    ModuleNotFoundError
        ``backend="ray"`` without ray installed (the message says how to install it).
    ChildProcessError
        Some runs failed in their workers (after their retries, on Ray): the message names each; the
        tables of the finished runs are written first.
    kdlens._lock.DirectoryInUseError
        Another process is running a sweep in ``output_dir`` (the message names it).

    Notes
    -----
    Every check comes before the first write of the call (``spec.yaml``, the tables, the manifest), so
    a refused call leaves the sweep directory as it was.
    """
    if max_runs is not None and max_runs < 0:
        raise ValueError(f"max_runs must be >= 0, got {max_runs}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be > 0 seconds, got {time_budget_s}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if token_rows_per_run < 0:
        raise ValueError(f"token_rows_per_run must be >= 0, got {token_rows_per_run}")
    ray_backend = _ray_backend(backend, address, task_options)
    started = _session._clock()  # read through the module: tests replace the clock
    spec = load_sweep_spec(spec)
    root = Path(output_dir)
    say = _reporter(progress)
    runs = expand_sweep(spec)
    published = published_run_ids(publish_dir, spec) if publish_dir is not None else set()
    settings = _eval_settings(spec) if evaluate else None
    _refuse_foreign(root)
    with exclusive_lock(root, what="sweep"):
        remove_stale_temporaries(root)
        return _run_locked(spec, root, runs, published, settings, say, started, max_runs=max_runs,
                           time_budget_s=time_budget_s, publish_dir=publish_dir, workers=workers, overwrite=overwrite,
                           backend=backend, ray_backend=ray_backend, token_rows_per_run=token_rows_per_run)


#: what a sweep directory holds (module docstring), and what a sweep killed while it made its teachers leaves
_SWEEP_ENTRIES = frozenset({"spec.yaml", "runs.parquet", "runs", "teachers", "students", "teacher_cache",
                            "examples.parquet", "tokens.parquet", "results.parquet", "manifest.json", LOCK_NAME})


def _refuse_foreign(root: Path) -> None:
    """Refuse a sweep directory that holds something else: its files would be overwritten (``manifest.json``,
    ``spec.yaml``) and its whole tree searched for temporaries to delete."""
    if not root.is_dir():
        return
    manifest = root / "manifest.json"
    try:
        ours = not manifest.exists() or "spec_hash" in dict(read_json(manifest))
    except (ValueError, TypeError):  # not JSON, or JSON but not an object
        ours = False
    other = sorted(e.name for e in root.iterdir() if e.name not in _SWEEP_ENTRIES and not is_temporary(e.name))
    if other or not ours:
        shown = other or ["manifest.json"]
        raise ValueError(f"{root} holds what is not a kdlens sweep ({', '.join(shown[:8])}"
                         f"{', ...' if len(shown) > 8 else ''}): kdlens neither writes into nor deletes a directory "
                         "it did not make; choose a new or empty output directory")


def _run_locked(spec: SweepSpec, root: Path, runs: pd.DataFrame, published: set[str], settings: dict[str, Any] | None,
                say: Callable[[str], None], started: float, *, max_runs: int | None, time_budget_s: float | None,
                publish_dir: str | os.PathLike | None, workers: int | None, overwrite: bool, backend: str,
                ray_backend: Any, token_rows_per_run: int) -> pd.DataFrame:
    """:func:`run_sweep` once it holds the sweep directory's lock."""
    if published:
        say(f"{len(published)} of {len(runs)} run(s) already published in {publish_dir}; they are skipped")
    todo = schedule(runs.loc[~runs["run_id"].isin(published)], spec)
    manifest_path = root / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {"runs": {}}
    if settings is not None:
        _check_evaluations(root, manifest.get("eval"), settings, overwrite=overwrite, say=say)
    manifest.update({"name": spec.name, "spec_hash": sha256_json(spec.to_dict()), "versions": versions(),
                     "session": uuid.uuid4().hex, "git_sha": git_sha(), "device": _device_name(spec),
                     "workers": workers if workers is not None or ray_backend else 1,  # Ray: set when it starts
                     "backend": backend,
                     "eval": settings if settings is not None else manifest.get("eval"),  # what evaluated the runs
                     "references": sweep_references(spec.base, map(json.loads, runs["overrides"]),
                                                    evaluation=settings)})
    session = SweepSession(spec, root, settings, say, manifest, runs, overwrite=overwrite)
    if len(todo):
        session.prepare_teachers()
        session.check_runs(todo)
    import yaml

    atomic_write_text(root / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    _write_runs(runs, root)

    def after_each() -> None:  # publish after every run: a killed session loses only the runs in progress
        if publish_dir is not None and settings is not None:
            session.finish(runs, quiet=True)
            publish_sweep(root, publish_dir, token_rows_per_run=token_rows_per_run)

    executor = None
    if ray_backend is not None:
        def executor():  # started only when a run needs training: a finished sweep needs no Ray
            started_executor = ray_backend.start(device=str(spec.base.get("device", "auto")), workers=workers,
                                                 say=say)
            manifest["workers"] = started_executor.slots
            return started_executor

    try:
        session.run(todo, workers=workers or 1, started=started, max_runs=max_runs, budget=time_budget_s,
                    after_each=after_each, executor=executor)
    finally:  # a failed worker run still leaves the finished runs' tables behind
        _write_runs(runs, root)
        results = session.finish(runs)
        if publish_dir is not None and settings is not None and len(results):
            publish_sweep(root, publish_dir, token_rows_per_run=token_rows_per_run)
    if publish_dir is not None and (Path(publish_dir) / "results.parquet").is_file():
        results = read_results(publish_dir)
        say(f"{results['run_id'].nunique()} of {len(runs)} run(s) published in {publish_dir}")
    return results


#: the evaluation settings that decide what an evaluation holds (n_boot, seed, fidelity and tokens only change
#: what is computed from it; batch_size nothing: greedy decoding does not depend on the batch)
_EVAL_OUTPUT_KEYS = ("tasks", "n", "max_new_tokens", "split")


def _check_evaluations(root: Path, recorded: Any, settings: Mapping[str, Any], *, overwrite: bool,
                       say: Callable[[str], None]) -> None:
    """Refuse (or, with ``overwrite``, delete) the sweep's evaluations made under other evaluation settings.

    Checked before the call writes anything: the runs' evaluations would otherwise be reused by the
    run (or refused shard by shard after ``spec.yaml`` says the new settings).
    """
    if not isinstance(recorded, Mapping):
        return

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    changed = [f"{k}: {recorded.get(k)} -> {settings.get(k)}" for k in sorted(_EVAL_OUTPUT_KEYS)
               if not same(recorded.get(k), settings.get(k))]
    evaluated = sorted(p for pattern in ("runs/*/eval", "teachers/*/eval") for p in root.glob(pattern) if p.is_dir())
    if not changed or not evaluated:
        return
    if not overwrite:
        raise ValueError(f"{root}: the sweep's runs were evaluated with other settings ({', '.join(changed)}); rerun "
                         "with --overwrite (overwrite=True) to delete their evaluations and evaluate them again (the "
                         "trained runs are kept), or use another output directory")
    say(f"evaluation settings changed ({', '.join(changed)}): evaluating again ({len(evaluated)} evaluation(s) deleted)")
    for path in evaluated:
        shutil.rmtree(path)


def _ray_backend(backend: str, address: str | None, task_options: Mapping[str, Any] | None):
    """The Ray backend asked for (checked, ray importable), or None for the local one."""
    if backend == "local":
        if address is not None or task_options:
            raise ValueError("address and task_options are options of the Ray backend: add backend='ray' "
                             "(--backend ray)")
        return None
    if backend != "ray":
        raise ValueError(f"unknown backend {backend!r}: 'local' (this machine's processes) or 'ray'")
    from kdlens.sweep._ray import RayBackend

    ray_backend = RayBackend.from_options(address, task_options)
    ray_backend.check_installed()
    return ray_backend


def _reporter(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(text: str) -> None:
        logger.info(text)
        if progress is not None:
            progress(text)

    return say


def full_results(spec: str | os.PathLike, publish_dir: str | os.PathLike, *, work_dir: str | os.PathLike,
                 progress: Any = None) -> Path:
    """The published folder of a full-scale sweep, grown first when a CUDA GPU is here.

    On a machine with CUDA the missing runs of ``spec`` are trained and evaluated under
    ``work_dir`` and merged into ``publish_dir`` (:func:`kdlens.sweep.run_sweep`); elsewhere the
    published tables are read as they are. This is what the notebooks' full setting calls. A CPU
    grid (``base.device: cpu``, the lab) is never trained from here: a notebook should not start an
    hour of training unasked; the message says how to run it.

    Raises
    ------
    FileNotFoundError
        Nothing published yet (and no CUDA device, or a CPU grid): the message says how to run the grid.
    """
    import torch

    publish_dir = Path(publish_dir)
    try:
        cpu_grid = str(load_sweep_spec(spec).base.get("device", "auto")) == "cpu"
    except (FileNotFoundError, ValueError):  # a spec that is not there: the message below names it
        cpu_grid = False
    if torch.cuda.is_available() and not cpu_grid:
        run_sweep(spec, output_dir=work_dir, publish_dir=publish_dir, progress=progress)
    if not (publish_dir / "results.parquet").is_file():
        if cpu_grid:
            raise FileNotFoundError(
                f"no published results in {publish_dir}: {spec} is a CPU grid; run "
                f"`kdlens sweep {spec} -o {work_dir} --workers 2 --publish {publish_dir}` (it resumes if stopped), "
                "or set SMOKE = True")
        raise FileNotFoundError(
            f"no published results in {publish_dir} and no CUDA device to run {spec} here: run "
            f"`kdlens sweep {spec} -o {work_dir} --publish {publish_dir}` on a GPU (analyses/device/README.md "
            "shows how on a lent one), or set SMOKE = True")
    return publish_dir
