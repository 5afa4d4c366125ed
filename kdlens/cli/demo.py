"""``kdlens demo``: the README's main job, a thin shell over :func:`kdlens.demo.run_demo`.

Distills the embedded SmolLM2-135M-Instruct teacher into a layer-pruned student (SFT, KD, one noise
point and one temperature point), evaluates and explains the four students, writes an HTML report and
prints where it is. Step lines go to stderr; the summary table and the report path to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="distill the embedded teacher into a pruned student, evaluate, explain and report (CPU, minutes)",
        description="Distill SmolLM2-135M-Instruct into a layer-pruned student with SFT, KD, KD with teacher "
                    "noise sigma=2 and KD with temperature tau=2; evaluate the teacher and the students on "
                    "chain_sum and (when the shared kd-generalization data is found) MultiArith; measure "
                    "agreement, fidelity and per-token KL; write an HTML report. Rerunning resumes.",
    )
    parser.add_argument("-o", "--output-dir", default="kdlens-demo", help="output directory (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="the built-in tiny model and a handful of steps (seconds; checks the pipeline only)")
    parser.add_argument("--model", default=None,
                        help="teacher: built-in name, local directory, .gguf file or hub id "
                             "(default: smollm2-135m-instruct; tiny with --smoke)")
    parser.add_argument("--student-layers", type=int, default=None,
                        help="layers kept in the pruned student (default: 8; 1 with --smoke)")
    parser.add_argument("--train-n", type=int, default=None,
                        help="chain_sum training items (default: 48; 16 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per student (default: 12; 4 with --smoke)")
    parser.add_argument("--eval-n", type=int, default=None, help="test items per task (default: 16; 8 with --smoke)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="greedy generation budget (default: 96; 16 with --smoke)")
    parser.add_argument("--shared-data", default=None,
                        help="the kd-generalization data directory (default: $KDLENS_SHARED_DATA or ../shared)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.demo import run_demo, summary_table
    from kdlens.sweep import read_results

    started = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    # evaluation reports each finished (model, task) shard on the "kdlens.eval" logger; training shows
    # its own step bar on a terminal
    shards = logging.StreamHandler(sys.stderr)
    shards.setFormatter(logging.Formatter("           %(message)s"))
    eval_log = logging.getLogger("kdlens.eval")
    level = eval_log.level
    eval_log.addHandler(shards)
    eval_log.setLevel(logging.INFO)
    try:
        report = run_demo(args.output_dir, smoke=args.smoke, teacher=args.model, student_layers=args.student_layers,
                          train_n=args.train_n, steps=args.steps, eval_n=args.eval_n,
                          max_new_tokens=args.max_new_tokens, shared_data=args.shared_data, threads=args.threads,
                          progress=say)
    finally:
        eval_log.removeHandler(shards)
        eval_log.setLevel(level)
    table = summary_table(read_results(report.parent / "sweep"))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nReport: {report.resolve()}")
    return 0
