"""What a run's identity costs: the weights fingerprint of a model, first and repeated, and a whole identity.

A run's identity (:func:`kdlens.distill.run_identity`) hashes its teacher's weight files; the
hash is memoised in the kdlens cache by (resolved path, size, inode, mtime), so the first use of a
model reads its weights once and every later use (a rerun that is a no-op, each run of a sweep)
only stats the files. This measures, on the built-in SmolLM2-135M-Instruct (517 MB of safetensors):

* ``first``: :func:`kdlens.distill.weights_fingerprint` with an empty memo (reads every byte; the
  file may already sit in the OS page cache, see ``--drop-note``);
* ``repeated``: the same call again (the memo hit);
* ``identity``: :func:`kdlens.distill.run_identity` of a prune:N word_kd config on ``--tasks``
  (data records and the fingerprints, memo warm), the cost a rerun pays before it returns.

The memo goes to a fresh temporary cache (the converted model is linked into it), so the user's
cache is left alone. Usage::

    python benchmarks/bench_fingerprint.py --repeats 5 --json /tmp/bench_fingerprint.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", default="chain_sum:200")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from kdlens.config import DistillConfig
    from kdlens.distill import run_identity, weights_fingerprint
    from kdlens.models import cache_root, prepare_builtin

    source = prepare_builtin(args.model)  # converted once into the user's cache (not timed)
    size = sum(p.stat().st_size for p in source.iterdir() if p.suffix == ".safetensors")
    real_cache = cache_root()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models").mkdir()
        os.symlink(source, Path(tmp) / "models" / source.name)
        os.environ["KDLENS_CACHE"] = tmp  # an empty fingerprint memo; the same model files
        started = time.perf_counter()
        first = weights_fingerprint(args.model)
        first_s = time.perf_counter() - started
        repeated = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            assert weights_fingerprint(args.model) == first
            repeated.append(time.perf_counter() - started)
        config = DistillConfig(teacher=args.model, student="prune:6", tasks=[args.tasks], output_dir="unused")
        run_identity(config)  # warms the data loader's imports
        identity = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run_identity(config)
            identity.append(time.perf_counter() - started)
    os.environ["KDLENS_CACHE"] = str(real_cache)
    result = {"model": args.model, "weight_bytes": size, "first_s": round(first_s, 3),
              "first_mb_per_s": round(size / first_s / 1e6, 1),
              "repeated_median_ms": round(1e3 * statistics.median(repeated), 2),
              "identity_median_ms": round(1e3 * statistics.median(identity), 1), "tasks": args.tasks}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
