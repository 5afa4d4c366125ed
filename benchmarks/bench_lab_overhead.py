"""Engine overhead on a lab run: ``kdlens.distill`` + ``kdlens.eval.evaluate`` against a bare PyTorch loop.

Both sides train the same lab student (same initial weights, same encoded examples, same order of
examples, same AdamW, schedule and clipping, the same loss) for the same steps, then greedy-decode the
same test and generalization items; each variant runs in its own process with one torch thread
(how the lab grid runs its workers), and the variants alternate so that load from other jobs falls
on both alike. The issue's target: kdlens at most 1.25x the bare loop.

The bare loop is what a researcher would write by hand: pre-tokenized examples, a padded batch per
step, ``model(input_ids, attention_mask).logits``, the loss, backward, step; then a greedy loop with
the model's KV cache that stops when every row has emitted EOS, and exact-match scoring of the
last line. It writes nothing but its accuracy.

Usage::

    python benchmarks/bench_lab_overhead.py                       # sft, lab-student-64, 1000 x 32
    python benchmarks/bench_lab_overhead.py --method word_kd --teacher lab-teacher-aware
    python benchmarks/bench_lab_overhead.py --steps 200 --repeat 1 --json /tmp/lab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(args: argparse.Namespace, output_dir: str) -> dict:
    config = {"student": args.student, "tasks": [f"{args.task}:{args.n_train}"], "method": args.method,
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup,
              "scheduler": "cosine", "max_length": 128, "seed": args.seed, "device": "cpu",
              "log_every": args.log_every, "output_dir": output_dir}
    if args.method != "sft":
        config.update(teacher=args.teacher, loss="forward_kl", alpha=1.0, temperature=1.0, sigma=0.0)
    return config


def _kdlens(args: argparse.Namespace) -> dict:
    from kdlens.distill import distill
    from kdlens.eval import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        run = distill(_config(args, str(Path(tmp) / "run")))
        t1, c1 = time.perf_counter(), time.process_time()
        accuracy = {}
        for split in args.splits:
            table = evaluate({"student": str(run.path)}, [args.task], n=args.n_eval, split=split,
                             batch_size=args.eval_batch, max_new_tokens=args.max_new_tokens, data_seed=0)
            accuracy[split] = float(table["correct"].mean())
        t2, c2 = time.perf_counter(), time.process_time()
    return {"train_s": t1 - t0, "eval_s": t2 - t1, "train_cpu_s": c1 - c0, "eval_cpu_s": c2 - c1, "accuracy": accuracy}


def _bare(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import get_scheduler

    from kdlens.data import encode_for_generation, encode_for_training, load_task
    from kdlens.models import load_model

    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(args.seed)
    student, tokenizer = load_model(args.student)
    teacher = load_model(args.teacher)[0].requires_grad_(False) if args.method != "sft" else None
    records = load_task(f"{args.task}:{args.n_train}", split="train", seed=args.seed)
    examples = [encode_for_training(tokenizer, r, max_length=128) for r in records]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=args.warmup, num_training_steps=args.steps)
    per_epoch = len(examples) // args.batch_size
    student.train()
    order: list[int] = []
    for step in range(args.steps):
        epoch, position = divmod(step, per_epoch)
        if position == 0:  # the engine's data order: one seeded permutation per epoch
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(
                args.seed * 1_000_003 + epoch)).tolist()
        batch = [examples[i] for i in order[position * args.batch_size:(position + 1) * args.batch_size]]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])[:, 1:]
        logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels != -100
        if teacher is None:
            loss = F.cross_entropy(logits[target], labels[target])
        else:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1][target]
            loss = F.kl_div(F.log_softmax(logits[target], -1), F.log_softmax(teacher_logits, -1), log_target=True,
                            reduction="batchmean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    t1, c1 = time.perf_counter(), time.process_time()

    student.eval()
    accuracy = {}
    with torch.no_grad():
        for split in args.splits:
            test = load_task(f"{args.task}:{args.n_eval}", split=split, seed=0)
            correct = 0
            for start in range(0, len(test), args.eval_batch):
                chunk = test[start:start + args.eval_batch]
                prompts = [encode_for_generation(tokenizer, r) for r in chunk]
                width = max(map(len, prompts))
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
                mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                out = student(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
                cache, generated = out.past_key_values, []
                done = torch.zeros(len(chunk), dtype=torch.bool)
                for _ in range(args.max_new_tokens):
                    token = out.logits[:, -1].argmax(-1)
                    token = torch.where(done, torch.tensor(pad), token)
                    generated.append(token)
                    done |= token == eos
                    if bool(done.all()):
                        break
                    mask = torch.cat([mask, torch.ones(len(chunk), 1, dtype=mask.dtype)], 1)
                    positions = positions[:, -1:] + 1
                    out = student(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                rows = torch.stack(generated, 1).tolist()
                for record, row in zip(chunk, rows, strict=True):
                    text = tokenizer.decode(row[:row.index(eos)] if eos in row else row, skip_special_tokens=True)
                    lines = [line.strip() for line in text.splitlines() if line.strip()]
                    correct += bool(lines) and lines[-1] == record.answer
            accuracy[split] = correct / len(test)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"train_s": t1 - t0, "eval_s": t2 - t1, "train_cpu_s": c1 - c0, "eval_cpu_s": c2 - c1, "accuracy": accuracy}


def _warm_imports(variant: str) -> None:
    """Import what the variant needs before the clock starts: a sweep worker pays imports once, not per run."""
    import torch  # noqa: F401
    from transformers import LlamaForCausalLM, get_scheduler  # noqa: F401

    import kdlens.data  # noqa: F401
    from kdlens.models import load_model  # noqa: F401

    if variant == "kdlens":
        import accelerate  # noqa: F401

        import kdlens.distill._loop  # noqa: F401
        import kdlens.eval._evaluate  # noqa: F401
        from kdlens.distill import METHODS  # noqa: F401
        from kdlens.losses import LOSSES  # noqa: F401


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    _warm_imports(args.variant)
    started, cpu = time.perf_counter(), time.process_time()
    result = (_kdlens if args.variant == "kdlens" else _bare)(args)
    result["total_s"] = time.perf_counter() - started
    result["cpu_s"] = time.process_time() - cpu
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="lab-student-64")
    parser.add_argument("--teacher", default="lab-teacher-aware")
    parser.add_argument("--method", default="sft", choices=["sft", "word_kd"])
    parser.add_argument("--task", default="lab_chain")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--splits", default="test,gen")
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", default="kdlens,bare")
    parser.add_argument("--json")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.splits = args.splits.split(",")
    if args.variant:
        _child(args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}
    # first use saves an untrained lab model into the cache: do it here, outside every timed child
    names = [args.student] + ([args.teacher] if args.method != "sft" else [])
    subprocess.run([sys.executable, "-c", f"from kdlens.models import load_model\nfor n in {names!r}: load_model(n)"],
                   env=env, check=True, capture_output=True)
    passed = [a for a in sys.argv[1:] if not a.startswith("--json")]
    if args.json and args.json in passed:  # "--json PATH": the children don't write it
        passed.remove(args.json)
    results: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    for repeat in range(args.repeat):
        variants = list(results) if repeat % 2 == 0 else list(reversed(results))
        for variant in variants:
            out = subprocess.run([sys.executable, __file__, *passed, "--variant", variant], env=env,
                                 capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"{variant} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[variant].append(row)
            print(f"{variant:7s} repeat {repeat}: train {row['train_s']:.1f} s (cpu {row['train_cpu_s']:.1f}), "
                  f"eval {row['eval_s']:.1f} s (cpu {row['eval_cpu_s']:.1f}), total {row['total_s']:.1f} s "
                  f"(cpu {row['cpu_s']:.1f}), accuracy {row['accuracy']}", flush=True)
    keys = ("train_s", "eval_s", "total_s", "train_cpu_s", "eval_cpu_s", "cpu_s")
    summary = {v: {k: statistics.median(r[k] for r in rows) for k in keys} for v, rows in results.items()}
    if {"kdlens", "bare"} <= set(summary):
        for key in keys:
            print(f"ratio kdlens / bare, {key}: {summary['kdlens'][key] / summary['bare'][key]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "median": summary}, indent=1))


if __name__ == "__main__":
    main()
