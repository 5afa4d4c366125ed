"""``kdlens distill [CONFIG.yaml] key=value ...``: train a student; a thin shell over :func:`kdlens.distill.distill`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["add_parser", "add_overwrite_flag", "run", "config_from_items"]

_EPILOG = """\
examples:
  kdlens distill teacher=tiny student=prune:1 tasks=chain_sum:64 method=word_kd \\
      loss=reverse_kl steps=4 output_dir=runs/x
  kdlens distill kdlens/configs/word_kd_smollm2.yaml sigma=1.0 output_dir=runs/noise1
keys: see kdlens.config.DistillConfig (nested: lora.r=16, feature.layer_map=skip,
mpdistil.curriculum=none).
Rerunning a finished run does nothing; rerunning an interrupted one resumes it. A run directory
holding other settings (config, data or teacher weights) is refused; --overwrite replaces it."""


def config_from_items(items: Sequence[str], *, method: str | None = None):
    """A :class:`~kdlens.config.DistillConfig` from ``[CONFIG.yaml] key=value ...`` items.

    ``method``, when given, is forced (``kdlens finetune`` is ``method=sft``); a conflicting
    ``method=`` item is an error.
    """
    from kdlens.config import load_config, parse_overrides

    items = list(items)
    path = None
    if items and "=" not in items[0]:
        path = items.pop(0)
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r} is not key=value (only the first argument may be a YAML file)")
    if method is not None:
        given = parse_overrides(items).get("method")
        if given not in (None, method):
            raise ValueError(f"this command trains with method={method}; drop method={given}")
        items.append(f"method={method}")
    return load_config(path, items)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "distill", help="distill a teacher into a student (word-level, feature, sequence-level, on-policy, black-box or meta KD)",
        description="Distill a teacher into a student and write a run directory.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                        help="an optional YAML config, then overrides")
    add_overwrite_flag(parser)
    parser.set_defaults(func=run)
    return parser


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="output_dir holds a run with other settings (config, data or teacher weights): delete it "
                             "and train this one (a run with the same settings is kept)")


def run(args: argparse.Namespace) -> int:
    from kdlens.distill import distill

    run_dir = distill(config_from_items(args.items), overwrite=args.overwrite)
    print(run_dir.path)
    return 0
