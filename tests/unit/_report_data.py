"""Hand-made tables and directories for the plot, report and sweep tests (no training needed).

Two tasks of 10 examples each; the gold answer of example i is ``str(i)``.

=========  =================  =================
model      alpha: correct     beta: correct
=========  =================  =================
teacher    examples 0-7 (8)   examples 0-4 (5)
kd         examples 0-5 (6)   examples 0-6 (7)
sft        examples 0-2 (3)   examples 0-3 (4)
=========  =================  =================

A wrong teacher answers "-1"; a wrong student answers "-1" on even examples and "-2" on odd ones,
so it copies the teacher's wrong answer on even examples only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES, TOKENS_COLUMNS, TOKENS_DTYPES

N = 10
CORRECT = {"teacher": {"alpha": 8, "beta": 5}, "kd": {"alpha": 6, "beta": 7}, "sft": {"alpha": 3, "beta": 4}}


def pred(model: str, task: str, i: int) -> str:
    if i < CORRECT[model][task]:
        return str(i)
    if model == "teacher":
        return "-1"
    return "-1" if i % 2 == 0 else "-2"


def examples(models=("teacher", "kd", "sft")) -> pd.DataFrame:
    rows = []
    for model in models:
        for task in ("alpha", "beta"):
            for i in range(N):
                answer = pred(model, task, i)
                words = f"we add {i} and {i} then halve so the answer is {answer}"
                if model != "teacher":
                    words = words if i % 3 else f"first we add {i} and {i} and the answer is {answer}"
                rows.append({
                    "model_id": model, "task": task, "split": "test", "example_id": f"{task}-{i}", "sample": 0,
                    "prompt": f"what is {i}?", "output": words, "pred_answer": answer, "gold_answer": str(i),
                    "correct": answer == str(i), "n_output_tokens": 12, "finish_reason": "eos",
                    "mean_logprob": -1.0, "gold_nll": float("nan"),
                    "gold_rationale": f"we add {i} and {i} then halve so the answer is {i}",
                })
    frame = pd.DataFrame(rows, columns=list(EXAMPLES_COLUMNS))
    return frame.astype(EXAMPLES_DTYPES)


def tokens(models=("kd", "sft")) -> pd.DataFrame:
    """3 response tokens per example; forward KL of token t of a model is (t + 1) * scale."""
    rows = []
    for k, model in enumerate(models):
        scale = 0.1 * (k + 1)
        for task in ("alpha", "beta"):
            for i in range(N):
                for t in range(3):
                    agree = (i + t + k) % 4 != 0
                    rows.append({
                        "model_id": model, "teacher_id": "teacher", "task": task, "example_id": f"{task}-{i}",
                        "position": t, "token_id": 5 + t, "teacher_top1": 5 + t, "student_top1": 5 + t if agree else 9,
                        "top1_agree": agree, "forward_kl": (t + 1) * scale, "reverse_kl": (t + 1) * scale / 2,
                        "teacher_entropy": 1.0, "student_entropy": 1.2, "teacher_token_prob": 0.5,
                        "student_token_prob": 0.4,
                    })
    return pd.DataFrame(rows, columns=list(TOKENS_COLUMNS)).astype(TOKENS_DTYPES)


def write_run_dir(root: Path, *, with_tokens: bool = True) -> Path:
    """A run directory as distill + evaluate leave it (without the checkpoint, which reports never read)."""
    from kdlens._tables import write_parquet

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(
        "teacher: tiny\nstudent: prune:1\ntasks: [alpha, beta]\nmethod: word_kd\nloss: forward_kl\n"
        "sigma: 0.0\ntemperature: 2.0\nsteps: 3\nbatch_size: 4\nseed: 7\n", encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps({
        "status": "done", "seed": 7, "git_sha": "0123abcd", "data_hash": "feedbeef", "method": "word_kd",
        "teacher": "tiny", "steps": 3, "versions": {"python": "3.11", "torch": "2.13.0"}}), encoding="utf-8")
    (root / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in (1, 2, 3)), encoding="utf-8")
    (root / "done").write_text("", encoding="utf-8")
    write_parquet(examples(("teacher", "kd")), root / "eval" / "examples.parquet")
    if with_tokens:
        write_parquet(tokens(("kd",)), root / "eval" / "tokens.parquet")
    return root


SWEEP_SPEC = {
    "name": "fixture",
    "base": {"teacher": "tiny", "student": "prune:1", "tasks": ["alpha"], "method": "word_kd", "steps": 2},
    "axes": {"sigma": [0.0, 1.0, 2.0, 5.0]},
    "baseline": "sft",
}

#: accuracy on task alpha (out of N) of the run at each sigma; the sft baseline gets 3
SIGMA_CORRECT = {0.0: 8, 1.0: 7, 2.0: 5, 5.0: 1}


def sweep_examples(runs: pd.DataFrame) -> pd.DataFrame:
    """Examples of every run of :data:`SWEEP_SPEC` on task alpha (one teacher, model_id "teacher")."""
    rows = []
    for rid, sigma in zip(runs["run_id"], runs["sigma"], strict=True):
        correct = 3 if pd.isna(sigma) else SIGMA_CORRECT[float(sigma)]
        rows += [(rid, i, i < correct) for i in range(N)]
    rows += [("teacher", i, i < 9) for i in range(N)]
    frame = examples(("teacher",))
    frame = frame.loc[frame["task"] == "alpha"].reset_index(drop=True)
    out = []
    for model, i, ok in rows:
        row = frame.iloc[i].copy()
        row["model_id"] = model
        row["pred_answer"] = str(i) if ok else "-1"
        row["correct"] = ok
        row["output"] = f"{model} reasons about {i} " + ("well" if ok else "badly")
        out.append(row)
    return pd.DataFrame(out).reset_index(drop=True).astype(EXAMPLES_DTYPES)


def write_sweep_dir(root: Path) -> tuple[Path, pd.DataFrame]:
    """A sweep directory as run_sweep leaves it, built from :func:`sweep_examples` (no training)."""
    import yaml

    from kdlens._tables import write_parquet
    from kdlens.analysis import add_gain, join_results, run_metrics
    from kdlens.sweep import expand_sweep, write_results

    root.mkdir(parents=True, exist_ok=True)
    runs = expand_sweep(SWEEP_SPEC)
    ex = sweep_examples(runs)
    metrics = {rid: run_metrics(ex.loc[ex["model_id"].isin([rid, "teacher"])], model_id=rid, n_boot=200)
               for rid in runs["run_id"]}
    results = add_gain(join_results(runs.assign(status="evaluated"), metrics))
    results["teacher_id"] = "teacher"
    write_results(results, root / "results.parquet", axes=list(runs.columns[4:]), spec=SWEEP_SPEC)
    write_parquet(ex, root / "examples.parquet")
    (root / "spec.yaml").write_text(yaml.safe_dump(SWEEP_SPEC), encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps({"name": "fixture", "git_sha": "0123abcd",
                                                    "versions": {"python": "3.11"}, "runs": {}}), encoding="utf-8")
    return root, results
