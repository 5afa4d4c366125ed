"""``kdlens cite``: the references of everything a run or sweep used, as BibTeX or plain text."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cite",
        help="print the references (BibTeX) of the methods, losses, metrics, tests and data a run or sweep used",
        description="Read RUN_OR_SWEEP_DIR's manifest (or, for directories written before manifests held them, its "
                    "config.yaml / spec.yaml) and print the reference of every method, loss, metric, statistical "
                    "test and data source it used, kdlens itself included (kdlens.citations).",
    )
    parser.add_argument("path", metavar="RUN_OR_SWEEP_DIR", help="run directory or sweep directory")
    parser.add_argument("--format", choices=["bibtex", "text"], default="bibtex", help="output format (default bibtex)")
    parser.add_argument("-o", "--output", default=None, help="write to this file instead of standard output")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.citations import directory_references, references, to_bibtex, to_text

    uses = directory_references(args.path)
    for use in (u for u, keys in uses.items() if not keys):
        print(f"kdlens cite: warning: no reference is registered for {use} (kdlens.citations.USES)", file=sys.stderr)
    entries = references(uses)
    text = to_bibtex(entries) if args.format == "bibtex" else to_text(entries)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    from kdlens._io import atomic_write_text

    print(f"kdlens cite: wrote {len(entries)} reference(s) to {atomic_write_text(args.output, text)}", file=sys.stderr)
    return 0
