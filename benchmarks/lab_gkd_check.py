"""Why does GKD collapse on the lab? Ablations of on-policy distillation with a look at the samples.

Each arm is a ``kdlens.distill`` run on the lab probe's reference cell (``lab-base-l2`` student,
``lab-teacher-aware`` teacher, ``lab_chain:1000``, 500 steps x 32, lr 1e-3 cosine, warmup 30), scored
greedily on 300 test and 300 gen items, like ``benchmarks/lab_probe.py``. On top of the probe it
records, for every on-policy arm, what the policy sampled: at every sampling step the share of rows
that ended with EOS, their mean length and the share whose last line is the right answer (the sample
accuracy), plus a few decoded samples; and, from the train log, the mean divergence per token on
gold steps and on sampled steps. The ``*_from_sft`` arms start from the ``sft`` arm's student (the GKD
paper's setting: students are supervised fine-tuned first), so they run after it.

Usage::

    python benchmarks/lab_gkd_check.py --arms sft,kd_jsd,gkd,gkd_l0,gkd_l1,gkd_fkl --out /tmp/gkd.jsonl
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
sys.path.insert(0, str(ROOT))

TEACHER = "lab-teacher-aware"
GKD = {"method": "gkd", "teacher": TEACHER, "loss": "jsd", "gkd.max_new_tokens": 48}
#: arm name -> config overrides on top of the reference cell; "student": "@sft" = the sft arm's run
ARMS: dict[str, dict] = {
    "sft": {"method": "sft"},
    "kd": {"method": "word_kd", "teacher": TEACHER, "loss": "forward_kl"},
    "kd_jsd": {"method": "word_kd", "teacher": TEACHER, "loss": "jsd"},
    "gkd": GKD,
    "gkd_l0": {**GKD, "gkd.lambda_": 0.0},
    "gkd_l1": {**GKD, "gkd.lambda_": 1.0},
    "kd_jsd_b01": {"method": "word_kd", "teacher": TEACHER, "loss": "jsd", "loss_params.beta": 0.1},
    "gkd_b01": {**GKD, "loss_params.beta": 0.1},
    "gkd_fkl": {**GKD, "loss": "forward_kl"},
    "gkd_fkl_l1": {**GKD, "loss": "forward_kl", "gkd.lambda_": 1.0},
    "gkd_t05": {**GKD, "gkd.temperature": 0.5},
    "gkd_len24": {**GKD, "gkd.max_new_tokens": 24},
    "gkd_teacher": {**GKD, "gkd.teacher_generates": True},
    "gkd_from_sft": {**GKD, "student": "@sft"},
    "gkd_fkl_from_sft": {**GKD, "loss": "forward_kl", "student": "@sft"},
    "kd_from_sft": {"method": "word_kd", "teacher": TEACHER, "loss": "forward_kl", "student": "@sft"},
    "kd_jsd_from_sft": {"method": "word_kd", "teacher": TEACHER, "loss": "jsd", "student": "@sft"},
}


def lab_value(text: str) -> str:
    """The right answer of a lab_chain prompt, in its least-significant-digit-first notation."""
    total, sign, number = 0, 1, ""
    for ch in text + "+":
        if ch.isdigit():
            number += ch
        else:
            total += sign * int(number[::-1])
            sign, number = (1 if ch == "+" else -1), ""
    return str(total)[::-1]


def _watch(records: list) -> None:
    """Wrap the sampler of ``gkd`` so that every sampled batch is summarised into ``records``."""
    import kdlens.distill.gkd as gkd
    from kdlens.distill._generation import prompt_ids

    inner = gkd.sample_rows

    def sample_rows(model, tok, features, **kw):
        rows, generated = inner(model, tok, features, **kw)
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in generated.continuations()]
        prompts = [tok.decode(prompt_ids(f), skip_special_tokens=True) for f in features]
        right = [t.strip().split("\n")[-1] == lab_value(p) for t, p in zip(texts, prompts, strict=True)]
        records.append({"eos": float(generated.finished.float().mean()), "length": float(generated.lengths.float().mean()),
                        "sample_accuracy": sum(right) / len(right),
                        "examples": [f"{p} -> {t!r}" for p, t in list(zip(prompts, texts, strict=True))[:3]]})
        return rows, generated

    gkd.sample_rows = sample_rows


def _one(job: dict) -> dict:
    from kdlens.config import apply_overrides
    from kdlens.distill import distill
    from kdlens.eval import evaluate

    base = {"student": job["student"], "tasks": [f"lab_chain:{job['n_train']}"], "steps": job["steps"],
            "batch_size": 32, "lr": 1e-3, "warmup_steps": 30, "scheduler": "cosine", "max_length": 128,
            "seed": job["seed"], "device": "cpu", "log_every": 10, "output_dir": job["run_dir"]}
    config = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in job["overrides"].items()])
    samples: list[dict] = []
    _watch(samples)
    c0 = time.process_time()
    run = distill(config)
    c1 = time.process_time()
    accuracy, finished = {}, {}
    for split in ("test", "gen"):
        table = evaluate({"student": str(run.path)}, ["lab_chain"], n=300, split=split, batch_size=64, max_new_tokens=48)
        accuracy[split] = round(float(table["correct"].mean()), 3)
        finished[split] = round(float((table["finish_reason"] != "length").mean()), 3)
    log = run.log()
    kd = {source: [r["kd"] for r in log if r.get("batch_source", "gold") == source and "kd" in r] for source in ("gold", "fresh")}
    third = max(1, len(samples) // 3)
    return {"arm": job["arm"], "seed": job["seed"], "accuracy": accuracy, "eval_finished_with_eos": finished,
            "kd_per_token": {s: round(statistics.mean(v), 4) for s, v in kd.items() if v},
            "kd_last_100_steps": {s: round(statistics.mean(v[-5:]), 4) for s, v in kd.items() if v},
            "samples": {"n_steps": len(samples),
                        **({k: [round(statistics.mean(s[k] for s in part), 3)
                                for part in (samples[:third], samples[third:2 * third], samples[2 * third:])]
                            for k in ("eos", "length", "sample_accuracy")} if samples else {}),
                        "first": samples[0]["examples"] if samples else [],
                        "last": samples[-1]["examples"] if samples else []},
            "train_cpu_s": round(c1 - c0), "run": str(run.path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="sft,kd_jsd,gkd,gkd_l0,gkd_l1,gkd_fkl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student", default="lab-base-l2")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", help="directory of the run directories (default: a temporary one)")
    parser.add_argument("--out", help="append the JSON lines here too")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        sys.exit(f"unknown arm(s) {unknown}; known: {sorted(ARMS)}")
    if any(ARMS[a].get("student") == "@sft" for a in arms) and "sft" not in arms:
        arms.insert(0, "sft")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="lab-gkd-"))
    run_dir = {a: str(work / f"{a}-seed{args.seed}-{args.steps}") for a in ARMS}

    def job(arm: str) -> dict:
        overrides = dict(ARMS[arm])
        student = run_dir["sft"] if overrides.pop("student", None) == "@sft" else args.student
        return {"arm": arm, "seed": args.seed, "student": student, "n_train": args.n_train, "steps": args.steps,
                "overrides": overrides, "run_dir": run_dir[arm]}

    first = [a for a in arms if ARMS[a].get("student") != "@sft"]
    later = [a for a in arms if ARMS[a].get("student") == "@sft"]
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_init) as pool:
        for wave in (first, later):
            for row in pool.map(_one, [job(a) for a in wave]):
                line = json.dumps(row)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as handle:
                        handle.write(line + "\n")


def _init() -> None:
    import torch

    torch.set_num_threads(1)


if __name__ == "__main__":
    main()
