"""``kdlens models``: list the built-in models, or convert one into the cache."""

from __future__ import annotations

import argparse
import time

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        help="list built-in models; --convert NAME prepares the cache",
        description="List the built-in model names with whether each is in the cache "
                    "(KDLENS_CACHE, default ~/.cache/kdlens), or convert one into it ahead of time.",
    )
    parser.add_argument("--convert", metavar="NAME",
                        help="convert the built-in NAME into the cache now (a no-op when already there)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.models import BUILTINS, cache_root, prepare_builtin

    if args.convert:
        if args.convert not in BUILTINS:
            raise ValueError(f"unknown built-in model {args.convert!r}; known: {', '.join(BUILTINS)}")
        started = time.perf_counter()
        directory = prepare_builtin(args.convert)
        print(f"{args.convert}: ready in {directory} ({time.perf_counter() - started:.1f} s)")
        return 0
    print(f"cache: {cache_root()}")
    width = max(map(len, BUILTINS))
    for name, builtin in BUILTINS.items():
        if builtin.cached is None:
            state = "in memory"
        else:
            state = "cached" if builtin.cached() else "not cached"
        print(f"{name:<{width}}  {state:<10}  {builtin.description}")
    return 0
