"""``kdlens sweep``: expand a sweep spec, train the missing runs, evaluate and join the results."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sweep",
        help="run a sigma / tau / teacher-awareness / method / size / seed sweep from a YAML spec",
        description="Expand SPEC into one run per combination of its axes, train the runs that are not finished "
                    "(a killed sweep resumes), evaluate them and write results.parquet into OUTPUT_DIR. "
                    "See kdlens.analysis.ablations for the spec format and analyses/*.yaml for examples.",
    )
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("-o", "--output-dir", required=True, help="sweep directory (created or resumed)")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="train at most N missing runs now; the next call continues (default: all)")
    parser.add_argument("--no-eval", action="store_true", help="only train; evaluate in a later call")
    parser.add_argument("--dry-run", action="store_true", help="print the runs the spec expands to and exit")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.analysis.ablations import expand_sweep
    from kdlens.sweep import run_sweep, sweep_status

    if args.dry_run:
        runs = expand_sweep(args.spec)
        runs["status"] = sweep_status(runs, args.output_dir)
        with_axes = runs.drop(columns=["overrides", "run_dir"])
        print(with_axes.to_string(index=False))
        print(f"{len(runs)} run(s); {int((runs['status'] == 'pending').sum())} not started", file=sys.stderr)
        return 0
    results = run_sweep(args.spec, output_dir=args.output_dir, evaluate=not args.no_eval, max_runs=args.max_runs,
                        progress=lambda line: print(f"kdlens sweep: {line}", file=sys.stderr, flush=True))
    if len(results):
        print(f"kdlens sweep: results in {args.output_dir}/results.parquet; report with "
              f"`kdlens report {args.output_dir} -o report.html`", file=sys.stderr)
    return 0
