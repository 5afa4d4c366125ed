"""Cost of drawing the teacher noise: the per-token counter-based draw against one seeded generator.

Until issue 12 the noise of a micro-batch was ``torch.randn([B, T, V])`` from one generator seeded by
``(seed, step, micro-batch, rank)``, so it depended on the gradient accumulation, the process count
and the padding. :func:`kdlens.teacher.teacher_noise` draws each token row from its own key
``(seed, step, example, position)``. This measures, for a ``[B, T, V]`` batch:

* ``generator``: the former draw, ``torch.randn(B, T, V)`` from one ``torch.Generator``, and the
  former noising step ``logits + sigma * randn(B, T, V)``;
* ``teacher_noise (all rows)``: the counter-based draw of every one of the ``B * T`` rows;
* ``teacher_noise (response rows)``: the rows :func:`kdlens.teacher.add_noise` really draws, those of
  the response mask (``--response-share`` of the positions; prompt and padding are skipped);
* ``add_noise (response rows)``: the whole noising step of the loss (draw, copy, scatter-add).

Usage::

    python benchmarks/bench_teacher_noise.py --batch 4 --seq 256 --vocab 49152 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _time(fn, repeat: int, sync) -> list[float]:
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    import torch

    from kdlens.teacher import NoiseKey, add_noise, teacher_noise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--response-share", type=float, default=0.5,
                        help="share of the positions that are response tokens (default 0.5)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    b, t, v = args.batch, args.seq, args.vocab
    logits = torch.randn(b, t, v, device=device)
    mask = torch.zeros(b, t, dtype=torch.bool, device=device)
    mask[:, t - int(round(args.response_share * t)):] = True
    rows, positions = mask.nonzero(as_tuple=True)
    ids = torch.arange(b, device=device)
    all_ids = ids.repeat_interleave(t)
    all_pos = torch.arange(t, device=device).repeat(b)
    key = NoiseKey(0, 3, list(range(b)))

    def generator():
        gen = torch.Generator(device=device).manual_seed(12345)
        return torch.randn(logits.shape, generator=gen, device=device, dtype=torch.float32)

    variants = {
        "generator (former, all rows)": generator,
        "former add_noise (all rows)": lambda: logits.float() + 2.0 * generator(),
        "teacher_noise (all rows)": lambda: teacher_noise(0, 3, all_ids, all_pos, v),
        "teacher_noise (response rows)": lambda: teacher_noise(0, 3, ids[rows], positions, v),
        "add_noise (response rows)": lambda: add_noise(logits, 2.0, key=key, mask=mask),
    }
    out = {"device": str(device), "threads": torch.get_num_threads(), "batch": b, "seq": t, "vocab": v,
           "response_rows": int(mask.sum()), "torch": torch.__version__, "results": {}}
    for name, fn in variants.items():
        fn()  # warm-up
        times = _time(fn, args.repeat, sync)
        out["results"][name] = {"median_s": statistics.median(times), "min_s": min(times), "times": times}
        print(f"{name:32s} median {statistics.median(times):7.3f} s  min {min(times):7.3f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
