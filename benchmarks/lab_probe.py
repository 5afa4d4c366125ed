"""A quick probe of the lab: does KD beat SFT at this scale, and what does a lab run cost?

Trains lab students through ``kdlens.distill`` in worker processes (one torch thread each, as the lab
grid will) and scores them greedily with ``kdlens.eval.evaluate`` on the test and generalization
splits. Each named arm is a set of config overrides; every arm runs with every seed. Prints one
JSON line per run (accuracies, wall and CPU seconds of training and evaluation) and a summary: mean
and standard deviation over seeds, and the paired difference to the ``sft`` arm seed by seed.

This is a probe for sizing the lab grid, not the grid: verdicts come from the sweep and the
statistics functions.

Usage::

    python benchmarks/lab_probe.py --arms sft,kd,kd_unaware,kd_sigma5 --seeds 0,1,2 --out /tmp/probe.jsonl
    python benchmarks/lab_probe.py --arms sft,kd --n-train 250 --student lab-student-32 --steps 500
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this checkout's kdlens, in this process and in the spawned workers (which inherit sys.path)
sys.path.insert(0, str(ROOT))

#: arm name -> config overrides on top of the student's SFT run
ARMS: dict[str, dict] = {
    "sft": {"method": "sft"},
    "kd": {"method": "word_kd", "teacher": "lab-teacher-aware", "loss": "forward_kl"},
    "kd_cache": {"method": "word_kd", "teacher": "lab-teacher-aware", "loss": "forward_kl", "teacher_source": "cache",
                 "top_k": 102},
    "kd_unaware": {"method": "word_kd", "teacher": "lab-teacher-base", "loss": "forward_kl"},
    "kd_sigma1": {"method": "word_kd", "teacher": "lab-teacher-aware", "loss": "forward_kl", "sigma": 1.0},
    "kd_sigma5": {"method": "word_kd", "teacher": "lab-teacher-aware", "loss": "forward_kl", "sigma": 5.0},
    "kd_tau2": {"method": "word_kd", "teacher": "lab-teacher-aware", "loss": "forward_kl", "temperature": 2.0},
    "kd_rkl": {"method": "word_kd", "teacher": "lab-teacher-aware", "loss": "reverse_kl"},
    "kd_jsd": {"method": "word_kd", "teacher": "lab-teacher-aware", "loss": "jsd"},
    "seq_kd": {"method": "seq_kd", "teacher": "lab-teacher-aware", "seq_kd.num_beams": 1,
               "seq_kd.max_new_tokens": 48, "seq_kd.batch_size": 64},
    "gkd": {"method": "gkd", "teacher": "lab-teacher-aware", "loss": "jsd", "gkd.max_new_tokens": 48},
}


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _one(job: dict) -> dict:
    from kdlens.config import apply_overrides
    from kdlens.distill import distill
    from kdlens.eval import evaluate

    base = {"student": job["student"], "tasks": [f"{job['task']}:{job['n_train']}"], "steps": job["steps"],
            "batch_size": job["batch_size"], "lr": job["lr"], "warmup_steps": 30, "scheduler": "cosine",
            "max_length": 128, "seed": job["seed"], "device": "cpu", "log_every": 100,
            "output_dir": job["run_dir"]}
    config = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in ARMS[job["arm"]].items()])
    t0, c0 = time.perf_counter(), time.process_time()
    run = distill(config)
    t1, c1 = time.perf_counter(), time.process_time()
    accuracy = {}
    for split in job["splits"]:
        table = evaluate({"student": str(run.path)}, [job["task"]], n=job["n_eval"], split=split, batch_size=64,
                         max_new_tokens=48)
        accuracy[split] = float(table["correct"].mean())
    t2, c2 = time.perf_counter(), time.process_time()
    return {**{k: job[k] for k in ("arm", "seed", "student", "n_train", "steps")}, "accuracy": accuracy,
            "train_s": t1 - t0, "train_cpu_s": c1 - c0, "eval_s": t2 - t1, "eval_cpu_s": c2 - c1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="sft,kd,kd_unaware,kd_sigma5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--student", default="lab-student-64")
    parser.add_argument("--task", default="lab_chain")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--splits", default="test,gen")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", help="directory of the run directories (default: a temporary one)")
    parser.add_argument("--out", help="append the JSON lines here too")
    args = parser.parse_args()
    unknown = sorted(set(args.arms.split(",")) - set(ARMS))
    if unknown:
        sys.exit(f"unknown arm(s) {unknown}; known: {sorted(ARMS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="lab-probe-"))
    tag = f"{Path(args.student).name}-{args.task}{args.n_train}-{args.steps}x{args.batch_size}-lr{args.lr:g}"
    jobs = [{"arm": arm, "seed": int(seed), "student": args.student, "task": args.task, "n_train": args.n_train,
             "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "n_eval": args.n_eval,
             "splits": args.splits.split(","), "run_dir": str(work / tag / f"{arm}-seed{seed}")}
            for seed in args.seeds.split(",") for arm in args.arms.split(",")]
    rows = []
    started = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_init, initargs=(1,)) as pool:
        for row in pool.map(_one, jobs):
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
    print(f"wall {time.perf_counter() - started:.0f} s for {len(rows)} runs with {args.workers} workers")
    by_arm: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {})[row["seed"]] = row
    for split in args.splits.split(","):
        for arm, runs in by_arm.items():
            values = [r["accuracy"][split] for r in runs.values()]
            line = f"{split:4s} {arm:11s} mean {statistics.mean(values):.3f}"
            if len(values) > 1:
                line += f" sd {statistics.stdev(values):.3f}"
            if arm != "sft" and "sft" in by_arm:
                diffs = [runs[s]["accuracy"][split] - by_arm["sft"][s]["accuracy"][split] for s in runs if s in by_arm["sft"]]
                line += f"  minus sft per seed {[round(d, 3) for d in diffs]}"
            print(line)
    for arm, runs in by_arm.items():
        cpu = [r["train_cpu_s"] + r["eval_cpu_s"] for r in runs.values()]
        print(f"cost {arm:11s} train+eval cpu s median {statistics.median(cpu):.0f} "
              f"(train {statistics.median(r['train_cpu_s'] for r in runs.values()):.0f}, "
              f"eval {statistics.median(r['eval_cpu_s'] for r in runs.values()):.0f})")


if __name__ == "__main__":
    main()
