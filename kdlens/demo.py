"""The demo: a small lab experiment end to end, or the SmolLM2 pipeline on a pruned student.

:func:`run_demo` is the README's main job (``kdlens demo``, ``make demo``). It is a sweep
(:func:`kdlens.sweep.run_sweep`) followed by a report (:func:`kdlens.report.write_report`) whose
verdicts (:mod:`kdlens.analysis`) carry their confidence intervals. Two settings:

``"lab"`` (default) — a real experiment on 2 CPU cores in minutes (the kdlens lab, ``analyses/lab_grid.yaml``):

* teachers: the shipped lab teachers, task-unaware ``lab-teacher-base`` (trained on ``lab_add``) and
  task-aware ``lab-teacher-aware`` (then on the target ``lab_chain``);
* student: ``lab-base-l2`` (the task-unaware teacher cut to 2 layers), 1,000 ``lab_chain`` items,
  500 steps, the lab grid's reference recipe (so its runs are the grid's own cells);
* five cells, one at a time from pure word-level KD (forward KL) from the task-aware teacher:
  that cell, the task-unaware teacher, teacher noise sigma = :data:`DEMO_SIGMA`, temperature
  tau = :data:`DEMO_TAU`, and the SFT baseline, each with three seeds (15 runs, two worker processes);
* greedy evaluation on 300 ``lab_chain`` test items, agreement, fidelity, per-token KL, and the
  report's verdicts: KD against SFT, each sigma / tau / teacher contrast, the paradox test.

``"smollm2"`` — the pipeline on the embedded SmolLM2-135M-Instruct: a pruned student, a reasoning-gym
task and (when the shared kd-generalization data is present) a MultiArith slice; four runs (SFT, KD,
KD sigma = 2, KD tau = 2) of a dozen steps: it shows the pipeline, not an effect.

``smoke=True`` shrinks either setting to seconds (the lab setting through
:func:`kdlens.sweep.smoke_spec`, the SmolLM2 one onto the built-in tiny model): tests and CI.

The output directory holds ``sweep/`` (the sweep directory, see :mod:`kdlens.sweep`),
``report.html`` and ``demo.json`` (settings, wall and CPU seconds per stage, versions, the summary).
Rerunning resumes: finished runs and evaluation shards are reused, so a second call only rebuilds the report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdlens._io import atomic_write_json, git_sha, read_yaml, versions

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEMO_SETTINGS", "DEMO_SIGMA", "DEMO_TAU", "DEMO_TEACHER", "demo_spec", "find_shared_data", "run_demo",
           "summary_table"]

#: the settings of :func:`run_demo`: the lab experiment (default) or the SmolLM2 pipeline
DEMO_SETTINGS = ("lab", "smollm2")
#: the teacher of the SmolLM2 setting
DEMO_TEACHER = "smollm2-135m-instruct"
#: the lab demo's noise point, sigma (a cell of analyses/lab_grid.yaml)
DEMO_SIGMA = 5.0
#: the lab demo's temperature point, tau (a cell of analyses/lab_grid.yaml)
DEMO_TAU = 2.0

_KD_GENERALIZATION = "kd-generalization"
_MATH_TEST = Path("math-test") / "MultiArith.json"
_LAB_RECIPE = {  # the reference recipe of analyses/lab_grid.yaml (a test keeps the two equal)
    "teacher": "lab-teacher-base", "student": "lab-base-l2", "tasks": ["lab_chain:2000"], "n_examples": 1000,
    "method": "word_kd", "loss": "forward_kl", "kd_weight": 1.0, "steps": 500, "batch_size": 32, "lr": 1.0e-3,
    "warmup_steps": 30, "scheduler": "cosine", "max_length": 128, "log_every": 100, "top_k": 102, "device": "cpu",
}


def find_shared_data() -> Path | None:
    """The shared ``kd-generalization`` data directory, or None when absent.

    Looked up under ``$KDLENS_SHARED_DATA`` (the folder holding ``kd-generalization/``, or that folder
    itself), else ``shared/data/kd-generalization`` next to the kdlens checkout.
    """
    candidates = []
    env = os.environ.get("KDLENS_SHARED_DATA")
    if env:
        root = Path(env).expanduser()
        candidates += [root / _KD_GENERALIZATION, root]
    checkout = Path(__file__).resolve().parents[1]
    candidates.append(checkout.parent / "shared" / "data" / _KD_GENERALIZATION)
    return next((path for path in candidates if (path / "math-test").is_dir()), None)


def _positive(**values: Any) -> None:
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"demo {key} must be a positive integer, got {value!r}")


def demo_spec(
    setting: str = "lab",
    *,
    smoke: bool = False,
    seeds: int | None = None,
    teacher: str | None = None,
    student_layers: int | None = None,
    train_n: int | None = None,
    eval_n: int | None = None,
    steps: int | None = None,
    max_new_tokens: int | None = None,
    math_test: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The demo's sweep spec (a mapping for :func:`kdlens.sweep.run_sweep`).

    Parameters
    ----------
    setting : {"lab", "smollm2"}
        The lab experiment or the SmolLM2 pipeline (see the module docstring).
    smoke : bool
        Seconds instead of minutes (tests and CI); proves the pipeline works, not anything about distillation.
    seeds : int, optional
        Lab: seeds per cell (default 3; 2 in smoke mode). SmolLM2: one run per cell (``seed``).
    teacher, student_layers, math_test
        SmolLM2 only: the teacher (any :func:`kdlens.models.load_model` name; default SmolLM2, ``tiny``
        in smoke mode), layers kept in the pruned student (default 8; 1), and a math test file
        evaluated on its first ``eval_n`` items besides ``chain_sum``.
    train_n, eval_n : int, optional
        Training items (lab: 1,000; SmolLM2: 48 ``chain_sum`` items) and test items per task (lab: 300;
        SmolLM2: 16); smoke mode: 16 / 4 (lab), 16 / 8 (SmolLM2).
    steps : int, optional
        Optimizer steps per run (lab: 500; SmolLM2: 12; smoke mode: 2 / 4).
    max_new_tokens : int, optional
        Greedy generation budget (lab: 48; SmolLM2: 96, 16 in smoke mode).
    seed : int
        SmolLM2: the training and data seed.

    Returns
    -------
    dict
        name, base, axes (one at a time), replicate (lab: the seeds), ``baseline: sft``, eval.

    Raises
    ------
    ValueError
        An unknown setting, a size or budget below 1, or an option of the other setting.
    """
    if setting not in DEMO_SETTINGS:
        raise ValueError(f"demo setting {setting!r} is not one of {', '.join(DEMO_SETTINGS)}")
    _positive(seeds=seeds, student_layers=student_layers, train_n=train_n, eval_n=eval_n, steps=steps,
              max_new_tokens=max_new_tokens)
    if setting == "lab":
        given = [name for name, value in (("teacher", teacher), ("student_layers", student_layers),
                                          ("math_test", math_test)) if value is not None]
        if given:
            raise ValueError(f"demo {', '.join(given)} belong to the smollm2 setting (a pruned student of a teacher "
                             "you name); the lab setting uses the lab teachers and lab-base-l2")
        return _lab_spec(smoke=smoke, seeds=seeds, train_n=train_n, eval_n=eval_n, steps=steps,
                         max_new_tokens=max_new_tokens)
    if seeds is not None:
        raise ValueError("demo seeds belong to the lab setting (the smollm2 setting runs one seed: seed=)")
    return _smollm2_spec(smoke=smoke, teacher=teacher, student_layers=student_layers, train_n=train_n,
                         eval_n=eval_n, steps=steps, max_new_tokens=max_new_tokens, math_test=math_test, seed=seed)


def _lab_spec(*, smoke: bool, seeds: int | None, train_n: int | None, eval_n: int | None, steps: int | None,
              max_new_tokens: int | None) -> dict[str, Any]:
    spec = {
        "name": "kdlens-demo-lab",
        "base": dict(_LAB_RECIPE),
        "axes": {"teacher_aware": [True, False], "sigma": [0.0, DEMO_SIGMA], "temperature": [1.0, DEMO_TAU]},
        "grid": "one_at_a_time",
        "replicate": {"seed": list(range(seeds or 3))},
        "baseline": "sft",
        "aware_teacher": "lab-teacher-aware",
        "eval": {"tasks": ["lab_chain"], "n": 300, "max_new_tokens": 48, "batch_size": 64, "split": "test",
                 "tokens": True, "fidelity": True, "n_boot": 1000, "seed": 0},
    }
    if smoke:
        from kdlens.sweep import smoke_spec

        spec = smoke_spec(spec, seeds=seeds or 2, steps=2, n_examples=16, eval_n=4, name="kdlens-demo-lab-smoke")
    for key, value in (("n_examples", train_n), ("steps", steps)):
        if value is not None:
            spec["base"][key] = value
    if train_n is not None:
        spec["base"]["batch_size"] = min(spec["base"]["batch_size"], train_n)
    if eval_n is not None:
        spec["eval"]["n"] = eval_n
    if max_new_tokens is not None:
        spec["eval"]["max_new_tokens"] = max_new_tokens
    return spec


def _smollm2_spec(*, smoke: bool, teacher: str | None, student_layers: int | None, train_n: int | None,
                  eval_n: int | None, steps: int | None, max_new_tokens: int | None,
                  math_test: str | os.PathLike | None, seed: int) -> dict[str, Any]:
    settings = {
        "student_layers": student_layers if student_layers is not None else (1 if smoke else 8),
        "train_n": train_n if train_n is not None else (16 if smoke else 48),
        "eval_n": eval_n if eval_n is not None else (8 if smoke else 16),
        "steps": steps if steps is not None else (4 if smoke else 12),
        "max_new_tokens": max_new_tokens if max_new_tokens is not None else (16 if smoke else 96),
    }
    eval_tasks = [f"chain_sum:{settings['eval_n']}"]
    if math_test is not None:
        path = Path(math_test)
        if not path.is_file():
            raise FileNotFoundError(f"math test file {path} does not exist; pass an existing JSON file or None")
        eval_tasks.append(str(path.resolve()))
    return {
        "name": "kdlens-demo-smoke" if smoke else "kdlens-demo",
        "base": {
            "teacher": teacher or ("tiny" if smoke else DEMO_TEACHER),
            "student": f"prune:{settings['student_layers']}",
            "tasks": [f"chain_sum:{settings['train_n']}"],
            "method": "word_kd",
            "loss": "forward_kl",
            "kd_weight": 1.0,
            "steps": settings["steps"],
            "batch_size": 8,
            # a pruned student starts far from the teacher: a large step size shows an effect in a dozen steps
            "lr": 1.0e-3 if smoke else 2.0e-4,
            "warmup_steps": 0 if smoke else 2,
            "max_length": 256,
            "seed": seed,
            "device": "cpu",
        },
        # one at a time from (sigma 0, tau 1): plain KD, one noise point, one temperature point
        "axes": {"sigma": [0.0, 2.0], "temperature": [1.0, 2.0]},
        "grid": "one_at_a_time",
        "baseline": "sft",
        "eval": {
            "tasks": eval_tasks,
            "n": settings["eval_n"],
            "max_new_tokens": settings["max_new_tokens"],
            "batch_size": 8,
            "tokens": True,
            "fidelity": True,
            "n_boot": 200 if smoke else 1000,
            "seed": seed,
        },
    }


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per run, pooled over the tasks: the numbers the demo prints at the end.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table (:func:`kdlens.sweep.run_sweep`).

    Returns
    -------
    DataFrame
        ``run_id, method, teacher_aware, sigma, temperature, seed, accuracy, teacher_accuracy,
        agreement, bleu, token_forward_kl`` and ``accuracy_gain`` (the columns present), SFT first.
    """
    rows = results.loc[results["task"] == "all"] if "task" in results.columns else results
    columns = [c for c in ("run_id", "method", "teacher_aware", "sigma", "temperature", "seed", "accuracy",
                           "teacher_accuracy", "agreement", "bleu", "token_forward_kl", "accuracy_gain")
               if c in rows.columns]
    order = rows["method"].ne("sft") if "method" in rows.columns else None
    if order is not None:
        rows = rows.assign(_kd=order).sort_values(["_kd", "run_id"], kind="stable")
    return rows[columns].reset_index(drop=True)


def _refuse_other_settings(spec: dict[str, Any], root: Path) -> None:
    """Raise when ``root`` holds a demo of other settings: finished runs are skipped, not compared."""
    previous = root / "sweep" / "spec.yaml"
    if not previous.is_file():
        return
    from kdlens.sweep import load_sweep_spec

    if read_yaml(previous) != load_sweep_spec(spec).to_dict():
        raise ValueError(f"{root} holds a demo with other settings (its sweep/spec.yaml): pass another output "
                         f"directory (-o) or delete {root}")


def _set_threads(threads: int | None) -> int:
    import torch

    if threads is None:
        threads = os.cpu_count() or 1
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def run_demo(
    output_dir: str | os.PathLike = "kdlens-demo",
    *,
    setting: str = "lab",
    smoke: bool = False,
    seeds: int | None = None,
    teacher: str | None = None,
    student_layers: int | None = None,
    train_n: int | None = None,
    eval_n: int | None = None,
    steps: int | None = None,
    max_new_tokens: int | None = None,
    shared_data: str | os.PathLike | None = None,
    threads: int | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Distill, evaluate, explain and report: the whole kdlens pipeline on one small experiment.

    Parameters
    ----------
    output_dir : path
        Where the sweep, the report and ``demo.json`` go (created; reused on a rerun).
    setting : {"lab", "smollm2"}
        The lab experiment (default) or the SmolLM2 pipeline (module docstring).
    smoke : bool
        Seconds instead of minutes; no shared data unless ``shared_data`` is given.
    seeds, teacher, student_layers, train_n, eval_n, steps, max_new_tokens
        See :func:`demo_spec`.
    shared_data : path, optional
        SmolLM2 setting: the ``kd-generalization`` directory (default: :func:`find_shared_data`, not in
        smoke mode). Its ``math-test/MultiArith.json`` is evaluated besides ``chain_sum``.
    threads : int, optional
        torch CPU threads of this process (default: every core; ``torch.set_num_threads``).
    workers : int, optional
        Runs trained at a time, each in its own process with one thread (default: the lab setting
        two, or one on a single core or in smoke mode; the SmolLM2 setting one).
    progress : callable, optional
        Called with one line per step (the CLI prints it with the elapsed time).

    Returns
    -------
    Path
        The HTML report (``<output_dir>/report.html``).

    Raises
    ------
    FileNotFoundError
        ``shared_data`` given but without ``math-test/MultiArith.json``.
    ValueError
        A size or budget below 1, an option of the other setting, or an output directory holding a
        demo with other settings (its finished runs would be reused as they are: use a new ``output_dir``).
    """
    from kdlens.report import write_report
    from kdlens.sweep import run_sweep

    say = progress or (lambda text: None)
    root = Path(output_dir)
    math_test = None
    if setting == "smollm2":
        if shared_data is None and not smoke:
            shared_data = find_shared_data()
        if shared_data is not None:
            math_test = Path(shared_data) / _MATH_TEST
            if not math_test.is_file():
                raise FileNotFoundError(f"{math_test} does not exist: shared_data must be the kd-generalization "
                                        "directory (holding math-test/)")
    elif shared_data is not None:
        raise ValueError("demo shared_data belongs to the smollm2 setting (the lab generates its own tasks)")
    spec = demo_spec(setting, smoke=smoke, seeds=seeds, teacher=teacher, student_layers=student_layers,
                     train_n=train_n, eval_n=eval_n, steps=steps, max_new_tokens=max_new_tokens, math_test=math_test)
    if workers is None:
        workers = 2 if setting == "lab" and not smoke and (os.cpu_count() or 1) >= 2 else 1
    elif workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _refuse_other_settings(spec, root)
    threads = _set_threads(threads)
    root.mkdir(parents=True, exist_ok=True)
    say(f"output in {root.resolve()}; torch on {threads} CPU thread(s)"
        + (f", {workers} worker processes (one thread each)" if workers > 1 else ""))
    sweep_dir = root / "sweep"
    stages: dict[str, dict[str, float]] = {}
    # wall time and process CPU time (all threads of this process; the workers' own CPU time is in the
    # sweep manifest): on a shared machine the CPU time is the steadier number
    clock = {"wall_s": time.perf_counter, "cpu_s": time.process_time}
    started = {k: f() for k, f in clock.items()}

    def stage_done(name: str) -> None:
        now = {k: f() for k, f in clock.items()}
        stages[name] = {k: now[k] - started[k] for k in clock}
        started.update(now)

    from kdlens.models import load_model

    teachers = [spec["base"]["teacher"], *([spec["aware_teacher"]] if spec.get("aware_teacher") else [])]
    say(f"loading the teacher{'s' if len(teachers) > 1 else ''} {', '.join(teachers)} and the student "
        f"{spec['base']['student']} (prepared in the cache on first use)")
    for name in [*teachers, *([spec["base"]["student"]] if setting == "lab" else [])]:
        load_model(name)
    stage_done("teacher_load")

    if setting == "lab":
        say(f"{_describe(spec)}; training and evaluating each as it finishes")
        results = run_sweep(spec, output_dir=sweep_dir, workers=workers, progress=say)
        stage_done("sweep")
    else:
        say(f"training 4 students ({spec['base']['student']}): SFT, KD, KD sigma=2, KD tau=2")
        run_sweep(spec, output_dir=sweep_dir, evaluate=False, progress=say)
        stage_done("train")
        say("evaluating the teacher and the students; agreement, fidelity and per-token KL")
        results = run_sweep(spec, output_dir=sweep_dir, evaluate=True, progress=say)
        stage_done("evaluate")

    say("writing the report")
    title = ("kdlens demo (smoke: tiny budgets, proves the pipeline, not the science)" if smoke else
             "kdlens demo: the lab, task-aware against task-unaware teacher, SFT against KD, sigma and tau"
             if setting == "lab" else f"kdlens demo: {spec['base']['teacher']} distilled into {spec['base']['student']}")
    report = write_report(sweep_dir, root / "report.html", title=title)
    stage_done("report")
    stages["total"] = {k: sum(v[k] for v in stages.values()) for k in clock}

    atomic_write_json(root / "demo.json", {
        "setting": setting, "spec": spec, "smoke": smoke, "threads": threads, "workers": workers,
        "cpu_count": os.cpu_count(), "load_average": _load_average(), "stages": stages,
        "report": str(report.resolve()), "versions": versions(), "git_sha": git_sha(),
        "summary": summary_table(results).to_dict(orient="records"),
    })
    say("stage times (wall / CPU of this process): " + ", ".join(f"{k} {v['wall_s']:.1f} / {v['cpu_s']:.1f} s"
                                                                 for k, v in stages.items()))
    return report


def _describe(spec: dict[str, Any]) -> str:
    from kdlens.sweep import expand_sweep

    runs = expand_sweep(spec, validate=False)
    seeds = len(spec.get("replicate", {}).get("seed", [0]))
    return (f"{len(runs)} runs of {spec['base']['student']}: SFT; word-level KD from the task-aware teacher; from "
            f"the task-unaware one; with teacher noise sigma={spec['axes']['sigma'][1]:g}; at temperature "
            f"tau={spec['axes']['temperature'][1]:g} ({seeds} seeds each)")


def _load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages at the end (the demo's wall time depends on them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
