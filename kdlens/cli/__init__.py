"""The ``kdlens`` command line: one thin subcommand per file, each over a public function.

Each subcommand module defines ``add_parser(subparsers)`` (registering its arguments and
``set_defaults(func=run)``) and ``run(args) -> int``. Modules are imported only when the
command line is built, so ``import kdlens`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: subcommand name -> module under kdlens.cli (in ``kdlens --help`` order)
SUBCOMMANDS: dict[str, str] = {
    "finetune": "kdlens.cli.finetune",
    "distill": "kdlens.cli.distill",
    "eval": "kdlens.cli.eval",
    "models": "kdlens.cli.models",
    "demo": "kdlens.cli.demo",
    "analyze": "kdlens.cli.analyze",
    "sweep": "kdlens.cli.sweep",
    "report": "kdlens.cli.report",
    "paper-stats": "kdlens.cli.paper_stats",
    "cite": "kdlens.cli.cite",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``kdlens`` argument parser with every subcommand of :data:`SUBCOMMANDS` registered."""
    from kdlens import __version__

    parser = argparse.ArgumentParser(
        prog="kdlens",
        description="Distill language models, then explain what the distillation did.",
    )
    parser.add_argument("--version", action="version", version=f"kdlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kdlens`` command line on ``argv`` (default: ``sys.argv[1:]``) and return its exit code.

    Expected user errors (a bad path, value or name) print one line naming the problem on standard
    error and return 1 instead of raising; no subcommand prints the help and returns 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
        # Expected user errors: one clear line, no traceback.
        print(f"kdlens {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
