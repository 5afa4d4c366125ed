"""Peak memory and time of plain, chunked and fused divergences, forward + backward.

Usage::

    python benchmarks/bench_losses.py                      # tokens=4096, V=49152, hidden=576, CPU
    python benchmarks/bench_losses.py --device cuda        # torch.cuda.max_memory_allocated
    python benchmarks/bench_losses.py --tokens 1024 --variants fused --chunk-size 256

Each variant runs in a fresh subprocess so peaks do not leak into each other. On CPU the peak is
the growth of the process's peak resident set (``ru_maxrss``) over its level after the inputs were
built, so it counts everything the loss allocates (logits, float32 temporaries, gradients); on CUDA
it is ``max_memory_allocated`` minus the allocated bytes after set-up. The model is SmolLM2-135M's
head shape (hidden 576, V 49152) with a teacher of the same width; inputs are random, float32.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

VARIANTS = ("plain", "chunked", "fused")


def _run_variant(args: argparse.Namespace) -> dict:
    import torch

    from kdlens import losses

    torch.manual_seed(0)
    device = torch.device(args.device)
    n, v, h = args.tokens, args.vocab, args.hidden
    hs = torch.randn(n, h, device=device, requires_grad=True)
    ws = (torch.randn(v, h, device=device) * h**-0.5).requires_grad_()
    ht = torch.randn(n, h, device=device)
    wt = torch.randn(v, h, device=device) * h**-0.5

    def step() -> float:
        hs.grad = ws.grad = None
        if args.variant == "fused":
            loss = losses.fused_divergence(hs, ws, ht, wt, loss=args.loss, chunk_size=args.chunk_size)
        else:
            zs = hs @ ws.T
            with torch.no_grad():
                zt = ht @ wt.T
            if args.variant == "plain":
                loss = losses.get_loss(args.loss)(zs, zt)
            else:
                loss = losses.chunked_divergence(args.loss, zs, zt, chunk_size=args.chunk_size)
        loss.backward()
        return float(loss)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        value = step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "variant": args.variant,
        "loss": args.loss,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "tokens": n,
        "vocab": v,
        "hidden": h,
        "chunk_size": args.chunk_size if args.variant != "plain" else None,
        "peak_extra_mib": peak / 2**20,
        "time_s_min": min(times),
        "time_s_all": times,
        "loss_value": value,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--loss", default="forward_kl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of plain,chunked,fused")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the per-variant subprocess
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(_run_variant(args)))
        return 0
    results = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        cmd = [sys.executable, __file__, "--variant", variant, *(argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'variant':8} {'chunk':>6} {'peak extra MiB':>15} {'time s (min)':>13} {'loss':>10}")
    for r in results:
        chunk = "-" if r["chunk_size"] is None else r["chunk_size"]
        print(f"{r['variant']:8} {chunk:>6} {r['peak_extra_mib']:>15.0f} {r['time_s_min']:>13.2f} {r['loss_value']:>10.6f}")
    print(f"device: {results[0]['device']}, threads {results[0]['threads']}, torch {results[0]['torch']}, "
          f"tokens={args.tokens} V={args.vocab} hidden={args.hidden} loss={args.loss}")
    if args.json:
        from kdlens._io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
