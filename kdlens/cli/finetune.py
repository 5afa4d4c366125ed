"""``kdlens finetune [CONFIG.yaml] key=value ...``: supervised fine-tuning (``method=sft``), e.g. of a teacher."""

from __future__ import annotations

import argparse

from kdlens.cli.distill import add_overwrite_flag

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  kdlens finetune teacher=smollm2-135m-instruct tasks=chain_sum:1000 lora=true epochs=1 output_dir=runs/teacher
  kdlens finetune student=tiny tasks=chain_sum:64 steps=10 output_dir=runs/sft
Without student=, the teacher itself is trained (a task-aware teacher)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", help="supervised fine-tuning on gold responses (task-aware teachers, SFT baselines)",
        description="Fine-tune a model on gold responses (method=sft) and write a run directory.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                        help="an optional YAML config, then overrides")
    add_overwrite_flag(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.cli.distill import config_from_items
    from kdlens.distill import distill

    run_dir = distill(config_from_items(args.items, method="sft"), overwrite=args.overwrite)
    print(run_dir.path)
    return 0
