"""``kdlens paper-stats``: recompute the paradox paper's tests from its released result CSVs."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "paper-stats",
        help="recompute the paradox paper's t-tests, ANOVA and Spearman correlations from its results/*.csv",
        description="Recompute the authors' analysis (kdlens.analysis.paper.reproduce) from the CSVs of "
                    "the paper's results/ folder and write one row per test and task.",
    )
    parser.add_argument("results_dir", help="folder with the paper's results/*.csv (math_results_main.csv, EM1.csv ...)")
    parser.add_argument("--domain", default="math", choices=("math", "commonsense"), help="default: math")
    parser.add_argument("-o", "--output", default=None,
                        help="CSV file to write (atomically); default: print the CSV to stdout")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--improvements", action="store_true",
                      help="write the per (teacher, student, method, task) improvement table instead of the tests")
    kind.add_argument("--robustness", action="store_true",
                      help="write the claims re-tested on defensible units, with three-way verdicts and sentences "
                           "(kdlens.analysis.robustness), instead of the authors' tests")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens._io import atomic_write_text
    from kdlens.analysis.paper import improvements, reproduce, robustness

    fn = improvements if args.improvements else robustness if args.robustness else reproduce
    table = fn(args.results_dir, args.domain)
    text = table.to_csv(index=False)
    if args.output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(args.output, text)
        print(f"wrote {len(table)} rows to {args.output}", file=sys.stderr)
    return 0
