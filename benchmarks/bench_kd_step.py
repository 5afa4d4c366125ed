"""Cost of one KD step against its physical floor, and the error of the top-k teacher cache.

Part 1 (default): tokens/s and peak memory of
  * ``sft``     one SFT step of the student (forward, backward, AdamW step),
  * ``teacher`` one teacher forward under no_grad,
  * ``kd``      one word_kd step (teacher forward + student step, forward KL on every position),
each in its own process so that peak RSS (CPU) is per phase; on CUDA the peak is
``torch.cuda.max_memory_allocated``. ``sft + teacher`` is the floor a KD step cannot beat.
The steps run the engine's own method objects (``kdlens.distill.METHODS``).

Part 2 (``--topk-error``): on real SmolLM2 batches (math_data.json, the paradox paper's training
set), the relative error of the KD loss computed from a top-k cache against the online loss, and
the cosine between their gradients with respect to the student logits, for k in {8, 32, 128}.

Usage::

    python benchmarks/bench_kd_step.py --device cpu --seq 256 --batch 4 --layers 6
    python benchmarks/bench_kd_step.py --topk-error --data ../shared/data/kd-generalization/train/math_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEACHER = "smollm2-135m-instruct"


def _models(layers: int, device: str):
    import torch

    from kdlens.models import load_model, prune_layers

    teacher, tok = load_model(TEACHER)
    student = prune_layers(teacher, layers)
    teacher.requires_grad_(False)
    return teacher.to(device).eval(), student.to(device).train(), tok, torch


def _context(student, teacher, batch, n_tokens, cfg, vocab, torch, autocast):
    from kdlens.distill import StepContext, TeacherOutput

    def online(b, idx, *, hidden=False, attentions=False):
        with torch.no_grad(), autocast():
            out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        return TeacherOutput(logits=out.logits[:, :-1, :vocab])

    from kdlens.losses import get_loss

    return StepContext(student=student, batch=batch, example_indices=list(range(batch["input_ids"].shape[0])),
                       n_tokens=n_tokens, config=cfg, teacher=online, loss_fn=get_loss("forward_kl"),
                       vocab_size=vocab)


def run_phase(phase: str, args) -> dict:
    """One phase in this process: ``repeats`` timed iterations after one warm-up."""
    import contextlib

    from kdlens.config import DistillConfig
    from kdlens.distill import METHODS

    teacher, student, tok, torch = _models(args.layers, args.device)
    cuda = args.device.startswith("cuda")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.vocab_size, (args.batch, args.seq), generator=gen).to(args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    batch["labels"][:, 0] = -100
    n_tokens = int((batch["labels"][:, 1:] != -100).sum())
    vocab = int(student.get_output_embeddings().weight.shape[0])
    cfg = DistillConfig(teacher=TEACHER, student=f"prune:{args.layers}", tasks=["x"], method="word_kd")
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)

    def autocast():
        if cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    ctx = _context(student, teacher, batch, n_tokens, cfg, vocab, torch, autocast)

    def step():
        if phase == "teacher":
            ctx.teacher(batch, None)
            return
        with autocast():
            parts = METHODS["sft" if phase == "sft" else "word_kd"](ctx)
        parts["loss"].backward()
        del parts
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, optimizer state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"phase": phase, "seconds": seconds, "tokens_per_s": args.batch * args.seq / seconds,
            "peak_mib": peak, "memory": "cuda max_memory_allocated" if cuda else "process peak RSS",
            "times": times}


def topk_error(args) -> list[dict]:
    """Relative loss error and gradient cosine of the top-k cache loss against the online loss."""
    import torch

    from kdlens.data import collate, encode_for_training, load_task
    from kdlens.losses import get_loss
    from kdlens.teacher import kd_token_loss, response_mask, topk_signal

    teacher, student, tok, _ = _models(args.layers, args.device)
    student.eval()
    records = load_task(args.data, split="train", n=args.batch * args.n_batches)
    feats = [encode_for_training(tok, r, max_length=args.seq) for r in records]
    rows = []
    for b in range(args.n_batches):
        batch = collate(feats[b * args.batch:(b + 1) * args.batch], pad_token_id=tok.pad_token_id)
        batch = {k: v.to(args.device) for k, v in batch.items()}
        mask = response_mask(batch["labels"])
        with torch.no_grad():
            zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        for loss in ("forward_kl", "reverse_kl"):
            fn = get_loss(loss)
            for tau in (1.0, 2.0):
                def value_and_grad(signal, tail="uniform", zs=zs, fn=fn, tau=tau, mask=mask):
                    s = zs.clone().requires_grad_(True)
                    total = kd_token_loss(fn, s, signal, mask=mask, temperature=tau, tail=tail).sum() / mask.sum()
                    (grad,) = torch.autograd.grad(total, s)
                    return float(total.detach()), grad[mask].flatten()

                online, g_online = value_and_grad(zt)
                for k in (8, 32, 128):
                    signal = topk_signal(zt, k)
                    for tail in ("uniform", "bucket"):
                        cached, g_cached = value_and_grad(signal, tail=tail)
                        cos = float(torch.nn.functional.cosine_similarity(g_online, g_cached, dim=0))
                        rows.append({"batch": b, "loss": loss, "tau": tau, "k": k, "tail": tail, "online": online,
                                     "cached": cached, "rel_error": (cached - online) / online,
                                     "grad_cosine": cos, "tokens": int(mask.sum())})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=6, help="student = the teacher pruned to this many layers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phase", choices=("sft", "teacher", "kd"), help=argparse.SUPPRESS)
    parser.add_argument("--topk-error", action="store_true")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                              "kd-generalization" / "train" / "math_data.json"))
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    if args.phase:  # child process: one phase, JSON on stdout
        print(json.dumps(run_phase(args.phase, args)))
        return 0
    if args.topk_error:
        rows = topk_error(args)
        print(f"{'tail':<8} {'loss':<11} {'tau':>4} {'k':>4} {'mean rel err':>13} {'max |rel err|':>14} "
              f"{'min grad cos':>13}")
        for tail in ("uniform", "bucket"):
            for loss in ("forward_kl", "reverse_kl"):
                for tau in (1.0, 2.0):
                    for k in (8, 32, 128):
                        sel = [r for r in rows if r["loss"] == loss and r["tau"] == tau and r["k"] == k
                               and r["tail"] == tail]
                        print(f"{tail:<8} {loss:<11} {tau:>4} {k:>4} "
                              f"{statistics.mean(r['rel_error'] for r in sel):>13.2e} "
                              f"{max(abs(r['rel_error']) for r in sel):>14.2e} "
                              f"{min(r['grad_cosine'] for r in sel):>13.6f}")
        result = {"topk_error": rows}
    else:
        result = {"phases": []}
        for phase in ("sft", "teacher", "kd"):
            cmd = [sys.executable, __file__, "--phase", phase, "--device", args.device, "--seq", str(args.seq),
                   "--batch", str(args.batch), "--layers", str(args.layers), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result["phases"].append(json.loads(out.stdout.strip().splitlines()[-1]))
        by = {p["phase"]: p for p in result["phases"]}
        floor = by["sft"]["seconds"] + by["teacher"]["seconds"]
        print(f"device={args.device} seq={args.seq} batch={args.batch} student layers={args.layers} "
              f"(teacher {TEACHER}, 30 layers)")
        for p in result["phases"]:
            print(f"{p['phase']:<8} {p['seconds'] * 1000:9.1f} ms  {p['tokens_per_s']:9.1f} tok/s  "
                  f"peak {p['peak_mib']:8.1f} MiB ({p['memory']})")
        print(f"floor (sft + teacher) {floor * 1000:.1f} ms; kd / floor = {by['kd']['seconds'] / floor:.3f}")
        result["kd_over_floor"] = by["kd"]["seconds"] / floor
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
