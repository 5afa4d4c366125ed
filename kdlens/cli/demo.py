"""``kdlens demo``: the README's main job, a thin shell over :func:`kdlens.demo.run_demo`.

By default a small lab experiment on the CPU (task-aware against task-unaware teacher, SFT against KD,
one noise and one temperature point, three seeds each, minutes on 2 cores); ``--setting smollm2``
(or ``--model NAME``) distills SmolLM2-135M-Instruct (or NAME) into a layer-pruned student instead.
Either way it evaluates and explains the students, writes an HTML report with the verdicts and prints
where it is. Step lines go to stderr; the summary table and the report path to stdout.
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
        help="a small lab experiment end to end: distill, evaluate, explain, test and report (CPU, minutes)",
        description="Default (the lab): the lab student lab-base-l2 trained with SFT, and with word-level KD from the "
                    "task-aware and from the task-unaware lab teacher, with teacher noise sigma=5 and at temperature "
                    "tau=2, three seeds each (15 runs, two worker processes, minutes on 2 cores); greedy evaluation, "
                    "agreement, fidelity, per-token KL and an HTML report whose verdicts carry confidence "
                    "intervals. --setting smollm2 (or --model NAME): SmolLM2-135M-Instruct (or NAME) distilled into "
                    "a layer-pruned student with SFT, KD, KD sigma=2 and KD tau=2 on chain_sum and (when the shared "
                    "kd-generalization data is found) MultiArith. Rerunning resumes.",
    )
    parser.add_argument("-o", "--output-dir", default="kdlens-demo", help="output directory (default: %(default)s)")
    parser.add_argument("--setting", choices=("lab", "smollm2"), default=None,
                        help="lab: the lab experiment (default); smollm2: the SmolLM2 pipeline (implied by --model, "
                             "--student-layers or --shared-data)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budgets (seconds; checks the pipeline only)")
    parser.add_argument("--seeds", type=int, default=None, help="lab: seeds per cell (default: 3; 2 with --smoke)")
    parser.add_argument("--model", default=None,
                        help="smollm2 setting: the teacher, a built-in name, local directory, .gguf file or hub id "
                             "(default: smollm2-135m-instruct; tiny with --smoke)")
    parser.add_argument("--student-layers", type=int, default=None,
                        help="smollm2 setting: layers kept in the pruned student (default: 8; 1 with --smoke)")
    parser.add_argument("--train-n", type=int, default=None,
                        help="training items (lab: 1000 lab_chain items; smollm2: 48 chain_sum items; fewer with "
                             "--smoke)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per run (lab: 500; smollm2: 12; fewer with --smoke)")
    parser.add_argument("--eval-n", type=int, default=None, help="test items per task (lab: 300; smollm2: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="greedy generation budget (lab: 48; smollm2: 96, 16 with --smoke)")
    parser.add_argument("--shared-data", default=None,
                        help="smollm2 setting: the kd-generalization data directory (default: $KDLENS_SHARED_DATA "
                             "or ../shared)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the main process "
                                                                  "(default: all cores)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs trained at a time, one process and one thread each (default: lab 2, smollm2 1)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.analysis import ablation_tests
    from kdlens.demo import run_demo, summary_table
    from kdlens.sweep import read_results

    started = time.perf_counter()
    setting = args.setting or ("smollm2" if any(v is not None for v in (args.model, args.student_layers,
                                                                         args.shared_data)) else "lab")

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    # evaluation reports each finished (model, task) shard on the "kdlens.eval" logger; training shows
    # its own step bar on a terminal (not in worker processes)
    shards = logging.StreamHandler(sys.stderr)
    shards.setFormatter(logging.Formatter("           %(message)s"))
    eval_log = logging.getLogger("kdlens.eval")
    level = eval_log.level
    eval_log.addHandler(shards)
    eval_log.setLevel(logging.INFO)
    try:
        report = run_demo(args.output_dir, setting=setting, smoke=args.smoke, seeds=args.seeds, teacher=args.model,
                          student_layers=args.student_layers, train_n=args.train_n, steps=args.steps,
                          eval_n=args.eval_n, max_new_tokens=args.max_new_tokens, shared_data=args.shared_data,
                          threads=args.threads, workers=args.workers, progress=say)
    finally:
        eval_log.removeHandler(shards)
        eval_log.setLevel(level)
    results = read_results(report.parent / "sweep")
    print(summary_table(results).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    verdicts = ablation_tests(results)  # the report's verdicts (kdlens.analysis decides, this prints)
    print("\nVerdicts (kdlens.analysis.ablation_tests; 95% intervals, smallest effect of interest 2 points):")
    for sentence in [*verdicts["sentence"], *(f"{line}." for line in verdicts.attrs.get("skipped", []))]:
        print(f"- {sentence}")
    print(f"\nReport: {report.resolve()}")
    return 0
