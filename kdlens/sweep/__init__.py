"""Sweeps: a spec expanded into runs, trained and evaluated resumably, their tables published.

* :mod:`kdlens.sweep.spec` — the spec (:class:`SweepSpec`), its expansion into runs
  (:func:`expand_sweep`), run identity and each run's config;
* :func:`run_sweep` — train, evaluate and summarise the runs that are not finished yet
  (:mod:`kdlens.sweep._run`, the session in :mod:`kdlens.sweep._session`), in local processes or as
  Ray tasks (``backend="ray"``, :mod:`kdlens.sweep._ray`);
* :func:`read_results` / :func:`write_results` — a sweep's tables (:mod:`kdlens.sweep._tables`);
* :mod:`kdlens.sweep.publish` — the tables without the models, merged across machines.

A sweep directory::

    <output_dir>/
      spec.yaml             the resolved spec of the last call
      runs.parquet          one row per run (expand_sweep) with its status
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

A run is reused only when its identity (full resolved config, data, teacher weights:
:func:`kdlens.distill.run_identity`) is the one the spec now gives; ``run_sweep(..., overwrite=True)``
retrains those whose identity changed.

:func:`kdlens.report.build_report` reads this directory; it never loads a model. The tables without
the models (:mod:`kdlens.sweep.publish`) go on across machines: ``run_sweep(..., publish_dir=...)`` skips the
runs a published folder holds and merges its own into it, which is how a grid grows over several
sessions of a lent GPU.
"""

from kdlens.sweep._run import full_results, run_sweep
from kdlens.sweep._tables import TEACHER_IDS, add_sweep_gains, read_results, sweep_status, write_results
from kdlens.sweep.publish import (
    TOKEN_ROWS_PER_RUN,
    grid_status,
    publish_sweep,
    published_run_ids,
    teacher_table,
)
from kdlens.sweep.spec import (
    KD_ONLY_KEYS,
    SPECIAL_AXES,
    SweepSpec,
    expand_sweep,
    load_sweep_spec,
    on_axis,
    run_config,
    run_id,
    schedule,
    smoke_spec,
    teacher_sft_config,
)

__all__ = [
    "KD_ONLY_KEYS",
    "SPECIAL_AXES",
    "TEACHER_IDS",
    "TOKEN_ROWS_PER_RUN",
    "SweepSpec",
    "add_sweep_gains",
    "expand_sweep",
    "full_results",
    "grid_status",
    "load_sweep_spec",
    "on_axis",
    "publish_sweep",
    "published_run_ids",
    "read_results",
    "run_config",
    "run_id",
    "run_sweep",
    "schedule",
    "smoke_spec",
    "sweep_status",
    "teacher_sft_config",
    "teacher_table",
    "write_results",
]
