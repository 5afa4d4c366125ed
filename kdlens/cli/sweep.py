"""``kdlens sweep``: expand a sweep spec, train the missing runs, evaluate and join the results."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sweep",
        help="run a sigma / tau / teacher-awareness / method / size / seed sweep from a YAML spec",
        description="Expand SPEC into one run per combination of its axes, train the runs that are not finished "
                    "(a killed sweep resumes), evaluate them and write results.parquet into OUTPUT_DIR. "
                    "See kdlens.analysis.ablations for the spec format and analyses/*.yaml for examples.",
    )
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("-o", "--output-dir", required=True, help="sweep directory (created or resumed)")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="train at most N missing runs now; the next call continues (default: all)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="start no run that would likely end after SECONDS from now (a lent GPU's time); "
                             "the next call continues")
    parser.add_argument("--publish", default=None, metavar="DIR",
                        help="published result tables (e.g. analyses/results/NAME): skip the runs DIR holds and "
                             "merge this call's results into it, so a sweep goes on across machines")
    parser.add_argument("--token-rows", type=int, default=None, metavar="N",
                        help="with --publish: per-token rows of each run kept in DIR (whole examples, the first of "
                             "each task in turn; default 5000); the metrics use every row either way")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="train and evaluate N runs at a time, each in its own process (a small model leaves "
                             "most of a GPU idle; default 1; with --backend ray: as many as the cluster holds)")
    ray = parser.add_argument_group(
        "Ray backend", "each run a Ray task (pip install -e .[ray]); on a cluster, OUTPUT_DIR must be on a "
                       "filesystem every node mounts at the same path")
    ray.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="local: this machine's processes (default); ray: one Ray task per run")
    ray.add_argument("--address", default=None,
                     help="Ray cluster to join ('auto', 'ray://HOST:10001'; default: start a local Ray)")
    ray.add_argument("--num-cpus", type=float, default=None, metavar="N", help="CPUs per run (default 1)")
    ray.add_argument("--num-gpus", type=float, default=None, metavar="N",
                     help="GPUs per run; a fraction shares a GPU (default 1 when the base config trains on CUDA)")
    ray.add_argument("--memory", type=float, default=None, metavar="GIB", help="memory reserved per run, in GiB")
    ray.add_argument("--max-retries", type=int, default=None, metavar="N",
                     help="retry a run whose worker died up to N times (default 2)")
    ray.add_argument("--retry-exceptions", action="store_true",
                     help="also retry a run that raised an exception (default: only died workers)")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain, in place, the runs (and the task-aware teacher) on disk whose settings differ "
                             "from the spec's now (its base, data or teacher weights changed), and evaluate again "
                             "when the eval settings changed; the others are kept")
    parser.add_argument("--no-eval", action="store_true", help="only train; evaluate in a later call")
    parser.add_argument("--dry-run", action="store_true", help="print the runs the spec expands to and exit")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from kdlens.sweep import expand_sweep, run_sweep, sweep_status

    if args.dry_run:
        runs = expand_sweep(args.spec)
        runs["status"] = sweep_status(runs, args.output_dir)
        if args.publish:
            from kdlens.sweep import published_run_ids

            runs.loc[runs["run_id"].isin(published_run_ids(args.publish, args.spec)), "status"] = "published"
        with_axes = runs.drop(columns=["overrides", "run_dir"])
        print(with_axes.to_string(index=False))
        print(f"{len(runs)} run(s); {int((runs['status'] == 'pending').sum())} not started", file=sys.stderr)
        return 0
    if args.publish and args.no_eval:
        raise ValueError("--publish needs evaluated runs; drop --no-eval")
    if args.token_rows is not None and not args.publish:
        raise ValueError("--token-rows sets how many token rows --publish keeps per run: add --publish DIR")
    options = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "max_retries": args.max_retries,
               "memory": args.memory * 2**30 if args.memory is not None else None,
               "retry_exceptions": args.retry_exceptions or None}
    options = {k: v for k, v in options.items() if v is not None}
    results = run_sweep(args.spec, output_dir=args.output_dir, evaluate=not args.no_eval, max_runs=args.max_runs,
                        time_budget_s=args.time_budget, publish_dir=args.publish, workers=args.workers,
                        overwrite=args.overwrite, backend=args.backend, address=args.address, task_options=options,
                        **({} if args.token_rows is None else {"token_rows_per_run": args.token_rows}),
                        progress=lambda line: print(f"kdlens sweep: {line}", file=sys.stderr, flush=True))
    if len(results):
        where = args.publish or args.output_dir
        print(f"kdlens sweep: results in {where}/results.parquet; report with "
              f"`kdlens report {where} -o report.html`", file=sys.stderr)
    return 0
