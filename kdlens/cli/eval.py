"""``kdlens eval``: generate and score with several models on several tasks; optionally token statistics.

Example::

    kdlens eval --model teacher=runs/teacher --model student=runs/kd-student \\
        --task chain_sum:200 --task ../shared/data/kd-generalization/math-test/SVAMP.json -o out/ --tokens
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_parser", "run", "parse_model_args"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="generate, score and record examples.parquet (and tokens.parquet) for models x tasks",
        description="Generate with every model on every task and write examples.parquet (one row per model, "
                    "task, example and sample) and manifest.json into OUTPUT_DIR. Finished (model, task) shards "
                    "are reused on a rerun. With --tokens, also tokens.parquet: every non-teacher model "
                    "teacher-forced on the teacher's outputs.")
    parser.add_argument("--model", "-m", action="append", required=True, metavar="ID=PATH",
                        help="a model to evaluate: ID=run dir, checkpoint dir, .gguf file, hub id or built-in name "
                             "(repeat for several)")
    parser.add_argument("--task", "-t", action="append", required=True, metavar="SPEC",
                        help="a task: reasoning-gym NAME[:N], a JSON/JSONL path, or hf:ID[:CONFIG] (repeat)")
    parser.add_argument("--output-dir", "-o", required=True, help="directory for the tables and manifest")
    parser.add_argument("--tokens", action="store_true",
                        help="also write tokens.parquet (every non-teacher model vs the teacher, on its outputs)")
    parser.add_argument("--teacher-id", default="teacher", help="model ID of the teacher for --tokens (default: teacher)")
    parser.add_argument("--decoding", choices=("greedy", "sample"), default="greedy")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt with --decoding sample")
    parser.add_argument("--n", type=int, default=None, help="first N records of each task (default: all)")
    parser.add_argument("--split", default="test", help="task split (default: test)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--token-temperature", type=float, default=1.0,
                        help="temperature of the distributions compared in tokens.parquet (default 1.0)")
    parser.add_argument("--device", default="auto",
                        help="auto (the GPU when CUDA is available, else the CPU; default), cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default=None, help="e.g. float32, bfloat16 (default: load_model's choice)")
    parser.add_argument("--overwrite", action="store_true", help="recompute shards made under other settings")
    parser.add_argument("--mode", choices=("generate", "loglikelihood"), default="generate",
                        help="generate and extract answers (default), or score multiple-choice records' choices by "
                             "log-likelihood as lm-evaluation-harness does")
    parser.add_argument("--scoring", default=None,
                        help="generate: kdlens (default), strict-match, strict-match-cot, flexible-extract "
                             "(lm-evaluation-harness's GSM8K filters); loglikelihood: acc (default), acc_norm")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)
    return parser


def parse_model_args(values: list[str]) -> dict[str, str]:
    """``["teacher=PATH", ...]`` -> ``{"teacher": "PATH"}``, rejecting malformed or repeated ids."""
    models: dict[str, str] = {}
    for value in values:
        model_id, sep, spec = value.partition("=")
        if not sep or not model_id.strip() or not spec.strip():
            raise ValueError(f"--model {value!r} must look like ID=PATH, e.g. --model teacher=runs/teacher")
        if model_id in models:
            raise ValueError(f"--model id {model_id!r} is given twice")
        models[model_id.strip()] = spec.strip()
    return models


class _StderrHandler(logging.Handler):
    """Progress lines to the *current* sys.stderr (a handler bound to one stream would outlive it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"kdlens eval: {self.format(record)}", file=sys.stderr)


def _show_progress() -> None:
    logger = logging.getLogger("kdlens.eval")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    from kdlens.eval import Decoding, compare_to_teacher, evaluate

    if not args.quiet:
        _show_progress()
    models = parse_model_args(args.model)
    if args.tokens and args.teacher_id not in models:
        raise ValueError(f"--tokens compares models with the teacher, but no --model is named {args.teacher_id!r} "
                         f"(models: {', '.join(models)}); add --model {args.teacher_id}=PATH or set --teacher-id")
    if args.decoding == "greedy" and args.num_samples != 1:
        raise ValueError("--num-samples needs --decoding sample")
    decoding = Decoding(strategy=args.decoding, temperature=args.temperature, top_p=args.top_p,
                        num_samples=args.num_samples, seed=args.seed)
    examples = evaluate(models, args.task, decoding=decoding, n=args.n, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, output_dir=args.output_dir, split=args.split,
                        device=args.device, dtype=args.dtype, overwrite=args.overwrite, scoring=args.scoring,
                        mode=args.mode)
    summary = (examples.groupby(["model_id", "task"], sort=False)
               .agg(n=("correct", "size"), accuracy=("correct", "mean"), gold_nll=("gold_nll", "mean"),
                    output_tokens=("n_output_tokens", "mean"))
               .reset_index())
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {args.output_dir}/examples.parquet ({len(examples)} rows)")
    if args.tokens:
        tokens = compare_to_teacher(models, examples, teacher_id=args.teacher_id, temperature=args.token_temperature,
                                    batch_size=args.batch_size, output_dir=args.output_dir, device=args.device,
                                    dtype=args.dtype)
        print(f"wrote {args.output_dir}/tokens.parquet ({len(tokens)} rows)")
    return 0
