"""The demo: distill the embedded SmolLM2 teacher into a layer-pruned student, explain it, report it.

:func:`run_demo` is the README's main job (``kdlens demo``, ``make demo``). It is a small sweep
(:func:`kdlens.sweep.run_sweep`) followed by a report (:func:`kdlens.report.write_report`):

* teacher: SmolLM2-135M-Instruct (``load_model("smollm2-135m-instruct")``), task-unaware;
* student: the teacher pruned to a few layers (``prune:N``);
* data: a reasoning-gym task (``chain_sum``) for training and testing, plus a slice of the MultiArith
  math test set when the shared kd-generalization data is present;
* four student runs: SFT on the gold answers, word-level KD (forward KL, kd_weight = 1), KD with teacher
  noise sigma = 2 and KD with temperature tau = 2 (a one-at-a-time grid: the two tau = 1 KD runs
  share one teacher-logit cache, the tau = 2 run reads the teacher online, where a top-k cache is
  not faithful);
* greedy evaluation of the teacher and every student, agreement with the teacher, fidelity (sentence
  BLEU of the rationales), per-token KL, and the HTML report.

The output directory holds ``sweep/`` (the sweep directory, see :mod:`kdlens.sweep`),
``report.html`` and ``demo.json`` (settings, wall and CPU seconds per stage, versions, the summary). Rerunning resumes:
finished runs and evaluation shards are reused, so a second call only rebuilds the report.
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

__all__ = ["DEMO_TEACHER", "demo_spec", "find_shared_data", "run_demo", "summary_table"]

#: the demo's teacher (full mode)
DEMO_TEACHER = "smollm2-135m-instruct"

_KD_GENERALIZATION = "kd-generalization"
_MATH_TEST = Path("math-test") / "MultiArith.json"


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


def demo_spec(
    *,
    smoke: bool = False,
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
    smoke : bool
        The built-in tiny model, a 1-layer student and a handful of steps (seconds; tests and CI).
        Proves the pipeline works, not anything about distillation.
    teacher : str, optional
        Any :func:`kdlens.models.load_model` name (default: SmolLM2-135M-Instruct; ``"tiny"`` in smoke mode).
    student_layers : int, optional
        Layers kept in the pruned student (default 8; 1 in smoke mode).
    train_n, eval_n : int, optional
        ``chain_sum`` training items (default 48; 16) and test items per evaluation task (default 16; 8).
    steps : int, optional
        Optimizer steps per student run (default 12, two epochs of 48 items at batch 8; 4 in smoke mode).
    max_new_tokens : int, optional
        Greedy generation budget per answer (default 96; 16 in smoke mode).
    math_test : path, optional
        A math test file evaluated on its first ``eval_n`` items besides ``chain_sum`` (the full demo
        passes MultiArith from the shared data when present).
    seed : int
        Training and data seed.

    Returns
    -------
    dict
        name, base, axes (``sigma: [0, 2]``, ``temperature: [1, 2]``, one at a time), ``baseline: sft``, eval.

    Raises
    ------
    ValueError
        A size or budget below 1.
    """
    settings = {
        "student_layers": student_layers if student_layers is not None else (1 if smoke else 8),
        "train_n": train_n if train_n is not None else (16 if smoke else 48),
        "eval_n": eval_n if eval_n is not None else (8 if smoke else 16),
        "steps": steps if steps is not None else (4 if smoke else 12),
        "max_new_tokens": max_new_tokens if max_new_tokens is not None else (16 if smoke else 96),
    }
    for key, value in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"demo {key} must be a positive integer, got {value!r}")
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
        ``run_id, method, sigma, temperature, accuracy, teacher_accuracy, agreement, bleu,
        token_forward_kl`` and ``accuracy_gain`` when present, SFT first.
    """
    rows = results.loc[results["task"] == "all"] if "task" in results.columns else results
    columns = [c for c in ("run_id", "method", "sigma", "temperature", "accuracy", "teacher_accuracy",
                           "agreement", "bleu", "token_forward_kl", "accuracy_gain") if c in rows.columns]
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
    smoke: bool = False,
    teacher: str | None = None,
    student_layers: int | None = None,
    train_n: int | None = None,
    eval_n: int | None = None,
    steps: int | None = None,
    max_new_tokens: int | None = None,
    shared_data: str | os.PathLike | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Distill, evaluate, explain and report: the whole kdlens pipeline on one small example.

    Parameters
    ----------
    output_dir : path
        Where the sweep, the report and ``demo.json`` go (created; reused on a rerun).
    smoke : bool
        Tiny model and a handful of steps (seconds); no shared data unless ``shared_data`` is given.
    teacher, student_layers, train_n, eval_n, steps, max_new_tokens
        See :func:`demo_spec`.
    shared_data : path, optional
        The ``kd-generalization`` directory (default: :func:`find_shared_data` in full mode). Its
        ``math-test/MultiArith.json`` is evaluated besides ``chain_sum``.
    threads : int, optional
        torch CPU threads (default: every core; set process-wide with ``torch.set_num_threads``).
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
        A size or budget below 1, or an output directory holding a demo with other settings (its
        finished runs would be reused as they are: use a new ``output_dir``).
    """
    from kdlens.report import write_report
    from kdlens.sweep import run_sweep

    say = progress or (lambda text: None)
    root = Path(output_dir)
    if shared_data is None and not smoke:
        shared_data = find_shared_data()
    math_test = None
    if shared_data is not None:
        math_test = Path(shared_data) / _MATH_TEST
        if not math_test.is_file():
            raise FileNotFoundError(f"{math_test} does not exist: shared_data must be the kd-generalization "
                                    "directory (holding math-test/)")
    spec = demo_spec(smoke=smoke, teacher=teacher, student_layers=student_layers, train_n=train_n,
                     eval_n=eval_n, steps=steps, max_new_tokens=max_new_tokens, math_test=math_test)
    _refuse_other_settings(spec, root)
    threads = _set_threads(threads)
    root.mkdir(parents=True, exist_ok=True)
    say(f"output in {root.resolve()}; torch on {threads} CPU thread(s)")
    say(f"tasks: train {spec['base']['tasks']}, evaluate {[Path(t).name for t in spec['eval']['tasks']]}"
        + ("" if math_test is not None or smoke else " (shared math data not found; set KDLENS_SHARED_DATA)"))
    sweep_dir = root / "sweep"
    stages: dict[str, dict[str, float]] = {}
    # wall time and process CPU time (all threads): on a shared machine the CPU time is the steadier number
    clock = {"wall_s": time.perf_counter, "cpu_s": time.process_time}
    started = {k: f() for k, f in clock.items()}

    def stage_done(name: str) -> None:
        now = {k: f() for k, f in clock.items()}
        stages[name] = {k: now[k] - started[k] for k in clock}
        started.update(now)

    from kdlens.models import load_model

    say(f"loading the teacher {spec['base']['teacher']} (converted into the cache on first use)")
    load_model(spec["base"]["teacher"])
    stage_done("teacher_load")

    say(f"training 4 students ({spec['base']['student']}): SFT, KD, KD sigma=2, KD tau=2")
    run_sweep(spec, output_dir=sweep_dir, evaluate=False, progress=say)
    stage_done("train")

    say("evaluating the teacher and the students; agreement, fidelity and per-token KL")
    results = run_sweep(spec, output_dir=sweep_dir, evaluate=True, progress=say)
    stage_done("evaluate")

    say("writing the report")
    title = "kdlens demo (smoke: tiny model, proves the pipeline, not the science)" if smoke else \
        f"kdlens demo: {spec['base']['teacher']} distilled into {spec['base']['student']}"
    report = write_report(sweep_dir, root / "report.html", title=title)
    stage_done("report")
    stages["total"] = {k: sum(v[k] for v in stages.values()) for k in clock}

    atomic_write_json(root / "demo.json", {
        "spec": spec, "smoke": smoke, "threads": threads, "cpu_count": os.cpu_count(), "stages": stages,
        "report": str(report.resolve()), "versions": versions(), "git_sha": git_sha(),
        "summary": summary_table(results).to_dict(orient="records"),
    })
    say("stage times (wall / CPU): " + ", ".join(f"{k} {v['wall_s']:.1f} / {v['cpu_s']:.1f} s"
                                                 for k, v in stages.items()))
    return report
