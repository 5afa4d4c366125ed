"""``kdlens report``: one self-contained HTML (or Markdown / LaTeX) report of a run or sweep directory."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="write the report of a run or sweep directory (HTML with embedded figures, Markdown or LaTeX)",
        description="Read RUN_OR_SWEEP_DIR (a run directory with eval/examples.parquet, or a sweep directory with "
                    "results.parquet) and write setup, per-task accuracy, agreement, fidelity, statistical tests and "
                    "provenance. No model is loaded.",
    )
    parser.add_argument("path", metavar="RUN_OR_SWEEP_DIR", help="run, evaluation or sweep directory")
    parser.add_argument("-o", "--output", required=True, help="file to write (e.g. report.html, tables.tex)")
    parser.add_argument("--format", choices=["html", "md", "latex"], default=None,
                        help="output format (default: from the suffix of --output, else html)")
    parser.add_argument("--teacher", default=None, help="model_id of the teacher in a run's examples (default: teacher)")
    parser.add_argument("--title", default=None, help="report title")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.report import write_report

    path = write_report(args.path, args.output, format=args.format, teacher=args.teacher, title=args.title)
    print(f"kdlens report: wrote {path}", file=sys.stderr)
    return 0
