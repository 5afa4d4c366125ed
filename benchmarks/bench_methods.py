"""Cost per optimizer step of each distillation method relative to ``word_kd`` (SmolLM2 teacher).

Every method runs through the real engine (``kdlens.distill.distill``) on the same data: the
SmolLM2-135M-Instruct teacher into its ``--layers``-layer prune, ``--batch`` examples of
math_data.json per step, ``--new-tokens`` generated tokens at most per continuation. Step time is
the wall time between consecutive step callbacks (the first step, which warms up, is dropped),
so it includes generation, teacher scoring, the student's forward/backward and the optimizer.

* ``seq_kd`` decodes the whole training set once before training; its one-off decoding time per
  example is reported separately (its steps are plain cross-entropy steps).
* ``distillm``'s cost depends on phi; to measure all three batch kinds the harness forces
  ``phi = 1`` after the first validation (by patching ``AdaptiveSchedule.update``) and reports the
  mean step time per batch source.
* ``blackbox`` has no teacher model, so its student is the full SmolLM2 (not the prune) trained
  with CE on a stand-in text teacher's fixed answers: its row is not comparable to the others.

Usage::

    python benchmarks/bench_methods.py --steps 5 --batch 4 --new-tokens 32 --json /tmp/bench_methods.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kd-generalization" / "train" / "math_data.json"


def _methods(new_tokens: int) -> dict[str, dict]:
    return {
        "word_kd": dict(method="word_kd", loss="forward_kl"),
        "seq_kd": dict(method="seq_kd", seq_kd={"num_beams": 4, "max_new_tokens": new_tokens, "batch_size": 8}),
        "gkd (lambda=1)": dict(method="gkd", loss="jsd", loss_params={"beta": 0.5},
                               gkd={"lambda_": 1.0, "max_new_tokens": new_tokens}),
        "gkd (lambda=0.5)": dict(method="gkd", loss="jsd", loss_params={"beta": 0.5},
                                 gkd={"lambda_": 0.5, "max_new_tokens": new_tokens}),
        "distillm (phi=1)": dict(method="distillm", loss="skew_forward_kl", loss_params={"alpha": 0.1},
                                 distillm={"val_size": 8, "eval_every": 1000, "max_new_tokens": new_tokens,
                                           "replay_capacity": 8}),
        "minillm (pg)": dict(method="minillm", loss="reverse_kl", minillm={"max_new_tokens": new_tokens}),
        "minillm (token)": dict(method="minillm", loss="reverse_kl", minillm={"form": "token"}),
        "blackbox": dict(method="blackbox", teacher=None, student="smollm2-135m-instruct",
                         blackbox={"teacher": "bench_methods:_fixed_teacher"}),
    }


def _fixed_teacher(prompts):
    """A stand-in text-only teacher (an API's cost is the API's): a fixed-length rationale."""
    return ["Let us compute it step by step. First we add the numbers, then we check. The answer is 42."
            for _ in prompts]


def _run(name: str, overrides: dict, args, root: Path) -> dict:
    from kdlens.config import load_config
    from kdlens.distill import distill
    from kdlens.distill.distillm import AdaptiveSchedule

    stamps: list[float] = []
    base = dict(teacher="smollm2-135m-instruct", student=f"prune:{args.layers}", tasks=[str(args.data)],
                n_examples=args.examples, steps=args.steps, batch_size=args.batch, max_length=args.max_length,
                lr=1e-5, device=args.device, seed=0, output_dir=str(root / name.replace(" ", "_")))
    base.update(overrides)
    cfg = load_config(None, base)
    if cfg.method == "distillm":  # force phi = 1 so that fresh and replay batches occur
        original = AdaptiveSchedule.update

        def update(self, loss):
            original(self, loss)
            self.phi = 1.0
            return True

        AdaptiveSchedule.update = update
    started = time.perf_counter()
    try:
        run = distill(cfg, callbacks=[lambda step, logs: stamps.append(time.perf_counter())])
    finally:
        if cfg.method == "distillm":
            AdaptiveSchedule.update = original
    total = time.perf_counter() - started
    rows = run.log()
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]  # drop step 1 (warm-up)
    out = {"method": name, "step_s": statistics.mean(steps), "total_s": total,
           "sources": [r.get("batch_source", "gold") for r in rows]}
    by_source: dict[str, list[float]] = {}
    for row, dt in zip(rows[1:], steps, strict=True):
        by_source.setdefault(row.get("batch_source", "gold"), []).append(dt)
    out["step_s_by_source"] = {k: statistics.mean(v) for k, v in by_source.items()}
    gen = [r["gen_tokens_per_s"] for r in rows[1:] if "gen_tokens_per_s" in r]
    if gen:
        out["gen_tokens_per_s"] = statistics.mean(gen)
    meta = run.path / "seq_kd_teacher.meta.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        out["decode_s_per_example"] = m["seconds"] / m["examples"]
        out["gen_tokens_per_s"] = m["gen_tokens_per_s"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", default=None, help="comma-separated method labels to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stand-in black-box teacher
    methods = _methods(args.new_tokens)
    if args.only:
        methods = {k: v for k, v in methods.items() if k in args.only.split(",")}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in methods.items():
            results.append(_run(name, overrides, args, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    ref = next((r["step_s"] for r in results if r["method"] == "word_kd"), None)
    print("\n| method | s/step | x word_kd | by batch source (s) | gen tok/s |\n|---|---:|---:|---|---:|")
    for r in results:
        rel = f"{r['step_s'] / ref:.2f}" if ref else "–"
        src = ", ".join(f"{k} {v:.2f}" for k, v in r["step_s_by_source"].items())
        gen = f"{r['gen_tokens_per_s']:.0f}" if "gen_tokens_per_s" in r else "–"
        print(f"| {r['method']} | {r['step_s']:.2f} | {rel} | {src} | {gen} |")
        if "decode_s_per_example" in r:
            print(f"|   (one-off teacher beam decoding) | {r['decode_s_per_example']:.2f} s/example | | | |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
