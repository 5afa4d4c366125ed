"""``kdlens analyze``: agreement, fidelity and paired tests from an examples (and tokens) table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "analyze",
        help="agreement, fidelity and McNemar tests of students against a teacher from examples.parquet",
        description="Write agreement.csv, fidelity.csv (per example), fidelity_summary.csv, mcnemar.csv and "
                    "manifest.json into OUTPUT_DIR (built atomically).",
    )
    parser.add_argument("examples", help="examples table (.parquet or .csv) from kdlens.eval.evaluate")
    parser.add_argument("--tokens", default=None, help="tokens table (.parquet or .csv) for token-level agreement")
    parser.add_argument("--teacher", required=True, help="model_id of the teacher in the examples table")
    parser.add_argument("-o", "--output-dir", required=True, help="directory to create")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--no-embedding", action="store_true",
                        help="skip the sentence-embedding cosine (no sentence-transformers needed)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    parser.set_defaults(func=run)
    return parser


def _read_table(path: str):
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist; pass the path of a .parquet or .csv table")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix == ".csv":
        return pd.read_csv(p)
    raise ValueError(f"{p}: unknown table format {p.suffix!r}; use .parquet or .csv")


def _mcnemar_vs_teacher(examples, teacher: str):
    import pandas as pd

    from kdlens.analysis.stats import mcnemar, pair_models

    frames = []
    for student in sorted(set(map(str, examples["model_id"].unique())) - {teacher}):
        paired = pair_models(examples.loc[examples["sample"] == 0], model_a=student, model_b=teacher)
        per_task = mcnemar(paired, a=student, b=teacher, by="task")
        overall = mcnemar(paired, a=student, b=teacher).assign(task="all")
        frames.append(pd.concat([per_task, overall[per_task.columns]], ignore_index=True)
                      .assign(model_id=student, teacher_id=teacher))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run(args: argparse.Namespace) -> int:
    from kdlens._io import atomic_directory, atomic_write_json, versions
    from kdlens.analysis.rationale_fidelity import fidelity, summarize_fidelity
    from kdlens.analysis.teacher_agreement import agreement

    if args.n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0 (0 = no bootstrap intervals), got {args.n_boot}")
    examples = _read_table(args.examples)
    tokens = _read_table(args.tokens) if args.tokens else None
    metrics = ("bleu", "rouge_l") if args.no_embedding else ("bleu", "rouge_l", "embedding_cosine")
    refs = ("teacher", "gold") if "gold_rationale" in examples.columns else ("teacher",)
    agree = agreement(examples, teacher=args.teacher, tokens=tokens, n_boot=args.n_boot, seed=args.seed)
    fid = fidelity(examples, teacher=args.teacher, references=refs, metrics=metrics)
    fid_summary = summarize_fidelity(fid, n_boot=args.n_boot, seed=args.seed)
    tests = _mcnemar_vs_teacher(examples, args.teacher)
    out = Path(args.output_dir)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    with atomic_directory(out, overwrite=args.overwrite) as tmp:
        agree.to_csv(tmp / "agreement.csv", index=False)
        fid.to_csv(tmp / "fidelity.csv", index=False)
        fid_summary.to_csv(tmp / "fidelity_summary.csv", index=False)
        tests.to_csv(tmp / "mcnemar.csv", index=False)
        atomic_write_json(tmp / "manifest.json", {
            "examples": str(Path(args.examples).resolve()), "tokens": args.tokens, "teacher": args.teacher,
            "n_boot": args.n_boot, "seed": args.seed, "fidelity_metrics": list(metrics),
            "bleu_signature": fid.attrs["bleu_signature"], "versions": versions(),
        })
    print(f"wrote agreement, fidelity and McNemar tables to {out}", file=sys.stderr)
    return 0
