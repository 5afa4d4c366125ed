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

from kdlens._lock import DirectoryInUseError  # stdlib only: `import kdlens` stays light

__all__ = ["main", "build_parser", "error_message", "SUBCOMMANDS", "USER_ERRORS"]

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


#: the exception types a user causes and can fix: bad values and inputs (ValueError, which includes
#: JSON, Unicode and Arrow decoding errors), the file system and the network (OSError: missing,
#: unreadable or unwritable paths, a full disk, an unreachable endpoint), missing optional
#: dependencies (ImportError) and a run or sweep directory another kdlens process holds
#: (DirectoryInUseError, naming that process). kdlens raises them with a message that names the
#: problem and the fix; anything else (TypeError, KeyError, RuntimeError, ...) is a bug and keeps
#: its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError, DirectoryInUseError)

_OS_HINTS = {
    FileNotFoundError: "check the path",
    PermissionError: "check the permissions of that path (or choose another one)",
    IsADirectoryError: "a file was expected there, not a directory",
    NotADirectoryError: "a directory was expected there (or a parent of the path is a file)",
    FileExistsError: "remove it or choose another path",
}


def error_message(err: BaseException) -> str:
    """One line for a user error: the message kdlens wrote, or the OS error with its path and a fix."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        where = f": {err.filename}" if err.filename is not None else ""
        where += f" -> {err.filename2}" if err.filename2 is not None else ""
        hint = next((h for kind, h in _OS_HINTS.items() if isinstance(err, kind)), None)
        if hint is None and err.errno == 28:  # ENOSPC
            hint = "free some disk space or choose another output directory"
        text = f"{err.strerror}{where}" + (f"; {hint}" if hint else "")
    elif type(err).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        text = f"out of memory on the device ({first}); lower batch_size or max_length, or raise grad_accum"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kdlens`` command line on ``argv`` (default: ``sys.argv[1:]``); return its exit status.

    0 on success; 1 with one line ``kdlens COMMAND: error: ...`` on stderr for a problem the user
    can fix (:data:`USER_ERRORS`); 2 for a malformed command line (argparse's own convention);
    130 when interrupted (a rerun resumes). Other exceptions are bugs and propagate with their
    traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"kdlens {args.command}: interrupted; rerun the same command to resume (finished work is kept)",
              file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"kdlens {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 1
    except Exception as err:
        if type(err).__name__ != "OutOfMemoryError":
            raise
        print(f"kdlens {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
