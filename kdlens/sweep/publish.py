"""A sweep's result tables without its models, merged across the machines that ran it.

A sweep directory holds checkpoints (hundreds of MB per run) that no repository keeps and no lent
GPU sends back. :func:`publish_sweep` copies what the analyses need (results, examples, a sample
of the per-token table, provenance) into a small folder that lives in the repository, e.g.
``analyses/results/<name>/``, and merges into it what each later session adds::

    <publish_dir>/
      results.parquet    one row per (run, task), gains recomputed over every published run
      runs.parquet       every run of the spec, status "published" or "pending"
      examples.parquet   each published run's outputs and the teachers' (from the first session)
      tokens.parquet     per-token statistics, the first examples of each task up to a row cap per run
      manifest.json      spec hash, and one entry per session: device, versions, git sha, runs and their
                         identity hashes, timings, teacher accuracy and how far its outputs match the
                         published teacher's
      spec.yaml          the spec

:func:`kdlens.sweep.run_sweep` with ``publish_dir=`` skips the runs the folder holds, so a fresh
machine that has only the repository goes on where the last one stopped. The folder is a sweep
directory for :func:`kdlens.sweep.read_results` and :func:`kdlens.report.build_report`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._io import atomic_write_json, atomic_write_text, read_json, read_yaml, sha256_json
from kdlens._tables import read_examples, read_tokens, write_parquet
from kdlens.sweep._tables import TEACHER_IDS, add_sweep_gains, read_results, write_results
from kdlens.sweep.spec import expand_sweep, load_sweep_spec

__all__ = ["publish_sweep", "published_run_ids", "grid_status", "teacher_table", "TOKEN_ROWS_PER_RUN"]

#: default cap on each run's per-token rows in a published folder (whole examples, in order)
TOKEN_ROWS_PER_RUN = 5000


def published_run_ids(publish_dir: str | os.PathLike, spec: Any) -> set[str]:
    """The run ids whose results ``publish_dir`` holds (empty when it holds none yet).

    Raises
    ------
    ValueError
        The folder was published from a different spec (its hash differs): results of two specs
        never mix.
    """
    root = Path(publish_dir)
    if not (root / "results.parquet").is_file():
        return set()
    _check_same_spec(root, sha256_json(load_sweep_spec(spec).to_dict()))
    return set(read_results(root)["run_id"])


def publish_sweep(sweep_dir: str | os.PathLike, publish_dir: str | os.PathLike, *,
                  token_rows_per_run: int = TOKEN_ROWS_PER_RUN) -> pd.DataFrame:
    """Merge the model-free tables of ``sweep_dir`` into ``publish_dir`` (created when missing).

    Runs already published keep their published rows (the first session that published a run
    wins); the gains over the SFT baseline are recomputed over the merged table, so a KD run and
    its baseline may come from different sessions. Every file is written atomically.

    Parameters
    ----------
    sweep_dir : path
        A sweep directory with ``results.parquet`` (:func:`kdlens.sweep.run_sweep`).
    publish_dir : path
        The published folder (layout in the module docstring).
    token_rows_per_run : int
        Keep each new run's per-token rows of whole examples, the first of each task in example
        order, up to about this many rows (the examples table keeps every example).

    Returns
    -------
    DataFrame
        The merged results table.
    """

    if token_rows_per_run < 0:
        raise ValueError(f"token_rows_per_run must be >= 0, got {token_rows_per_run}")
    src, dest = Path(sweep_dir), Path(publish_dir)
    if not (src / "results.parquet").is_file():
        raise FileNotFoundError(f"{src} holds no results.parquet: run `kdlens sweep SPEC -o {src}` first")
    spec = load_sweep_spec(read_yaml(src / "spec.yaml", what="sweep spec"))
    spec_hash = sha256_json(spec.to_dict())
    first = not (dest / "results.parquet").is_file()
    if not first:
        _check_same_spec(dest, spec_hash)
    dest.mkdir(parents=True, exist_ok=True)

    new = read_results(src)
    old = pd.DataFrame() if first else read_results(dest)
    old_ids = set(old["run_id"]) if len(old) else set()
    added = new.loc[~new["run_id"].isin(old_ids)]
    merged = pd.concat([_without_gains(old), _without_gains(added)], ignore_index=True) if len(old) \
        else _without_gains(added)
    merged = add_sweep_gains(merged, baseline=spec.baseline or "sft")
    merged["status"] = "published"
    runs = expand_sweep(spec)
    axes = list(runs.columns[4:])
    added_ids = sorted(set(added["run_id"]))
    published_ids = set(merged["run_id"])

    session_examples = read_examples(src / "examples.parquet")
    examples = _merge_examples(session_examples, None if first else read_examples(dest / "examples.parquet"),
                               added_ids)
    tokens_new = read_tokens(src / "tokens.parquet") if (src / "tokens.parquet").is_file() else None
    tokens_old = read_tokens(dest / "tokens.parquet") if (dest / "tokens.parquet").is_file() else None
    tokens = _merge_tokens(tokens_new, tokens_old, added_ids, token_rows_per_run)

    manifest = {"name": spec.name, "spec_hash": spec_hash, "sessions": []} if first \
        else read_json(dest / "manifest.json")
    entry = _session_entry(src, added_ids, examples, session_examples)
    sessions = manifest["sessions"]
    if sessions and entry["session"] is not None and sessions[-1].get("session") == entry["session"]:
        # the same run_sweep call publishing again after its next run: one entry per session
        entry["runs"] = sorted(set(sessions[-1]["runs"]) | set(added_ids))
        entry["seconds"] = {**sessions[-1]["seconds"], **entry["seconds"]}
        entry["identities"] = {**sessions[-1].get("identities", {}), **entry["identities"]}
        entry["published_at_first"] = sessions[-1].get("published_at_first", sessions[-1]["published_at"])
        sessions[-1] = entry
    else:
        sessions.append(entry)
    manifest.update({"n_runs": len(runs), "n_published": len(published_ids),
                     "token_rows_per_run": token_rows_per_run})

    import yaml

    write_results(merged, dest / "results.parquet", axes=axes, spec=spec.to_dict())
    status = runs.assign(status=["published" if r in published_ids else "pending" for r in runs["run_id"]])
    write_results(status, dest / "runs.parquet", axes=axes, spec=spec.to_dict())
    write_parquet(examples, dest / "examples.parquet", compression="zstd")
    if tokens is not None:
        write_parquet(tokens, dest / "tokens.parquet", compression="zstd",
                      metadata={"sample": f"per run, whole examples, the first of each task in example order, "
                                          f"up to about {token_rows_per_run} token rows"})
    atomic_write_text(dest / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    atomic_write_json(dest / "manifest.json", manifest)
    return read_results(dest)


def grid_status(publish_dir: str | os.PathLike) -> str:
    """One line on how much of the grid a published (or sweep) folder holds, e.g. ``"7 of 7 runs"``."""
    root = Path(publish_dir)
    if not (root / "runs.parquet").is_file():
        return f"{root} holds no runs.parquet"
    status = read_results(root / "runs.parquet")["status"]
    done = int(status.isin(["published", "evaluated"]).sum())
    if done == len(status):
        return f"the whole grid: {done} of {len(status)} runs"
    return f"a partial grid: {done} of {len(status)} runs (the rest are not run yet; the verdict reads only these)"


def teacher_table(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """The sweep's teachers: accuracy per task and the scale of their logits (a sweep or published folder).

    Parameters
    ----------
    sweep_dir : path
        A sweep directory (:func:`kdlens.sweep.run_sweep`) or a published folder (:func:`publish_sweep`).

    Returns
    -------
    DataFrame
        One row per (teacher_id, task), ``"all"`` pooling the tasks: ``teacher_id`` (``"teacher"`` the
        base teacher, ``"teacher_sft"`` the task-aware one), ``task``, ``n`` and ``accuracy`` (greedy,
        ``sample == 0``), then, where the runs read a teacher cache, the teacher's top-1 logit margin
        on the KD training tokens (``top1_margin_mean``, ``top1_margin_median``, ``top1_margin_p10``,
        ``n_tokens``; NaN otherwise) and ``model``: the unit in which to read sigma (sigma / margin).
    """
    root = Path(sweep_dir)
    examples = read_examples(root / "examples.parquet")
    manifest = read_json(root / "manifest.json") if (root / "manifest.json").is_file() else {}
    logits = dict(manifest.get("teacher_logits") or {})
    for session in manifest.get("sessions", []):  # a published folder: the latest session that measured it
        for teacher, entry in (session.get("teachers") or {}).items():
            if "top1_margin_mean" in entry:
                logits[teacher] = entry
    rows = []
    for teacher in TEACHER_IDS.values():
        mine = examples.loc[(examples["model_id"] == teacher) & (examples["sample"] == 0)]
        if mine.empty:
            continue
        scale = logits.get(teacher, {})
        for task, part in [*mine.groupby("task", sort=True), ("all", mine)]:
            rows.append({"teacher_id": teacher, "task": str(task), "n": len(part),
                         "accuracy": float(part["correct"].astype(float).mean()),
                         **{k: scale.get(k, float("nan")) for k in ("top1_margin_mean", "top1_margin_median",
                                                                    "top1_margin_p10", "n_tokens")},
                         "model": scale.get("model")})
    return pd.DataFrame(rows, columns=["teacher_id", "task", "n", "accuracy", "top1_margin_mean", "top1_margin_median",
                                       "top1_margin_p10", "n_tokens", "model"])


def _check_same_spec(root: Path, spec_hash: str) -> None:
    path = root / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{root} holds results.parquet but no manifest.json: it was not written by "
                         "kdlens.publish; publish into an empty folder")
    theirs = read_json(path).get("spec_hash")
    if theirs != spec_hash:
        raise ValueError(f"{root} was published from a different sweep spec (hash {str(theirs)[:12]} against "
                         f"{spec_hash[:12]}): publish into a new folder, or restore the spec it was run with "
                         f"({root / 'spec.yaml'})")


def _without_gains(results: pd.DataFrame) -> pd.DataFrame:
    return results.drop(columns=[c for c in results.columns if c.endswith("_gain") or c.startswith("baseline_")])


def _merge_examples(new: pd.DataFrame, old: pd.DataFrame | None, added_ids: list[str]) -> pd.DataFrame:
    teachers = set(TEACHER_IDS.values())
    keep_new = new["model_id"].isin(added_ids)
    if old is None:
        return new.loc[keep_new | new["model_id"].isin(teachers)].reset_index(drop=True)
    # a teacher first seen in this session (e.g. the task-aware one) joins; a known one keeps its rows
    fresh_teachers = new["model_id"].isin(teachers - set(old["model_id"]))
    return pd.concat([old, new.loc[keep_new | fresh_teachers]], ignore_index=True)


def _merge_tokens(new: pd.DataFrame | None, old: pd.DataFrame | None, added_ids: list[str],
                  cap: int) -> pd.DataFrame | None:
    parts = [] if old is None else [old]
    if new is not None:
        for rid in added_ids:
            mine = new.loc[new["model_id"] == rid]
            if len(mine):
                parts.append(_first_examples(mine, cap))
    return pd.concat(parts, ignore_index=True) if parts else None


def _first_examples(tokens: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Whole examples, the first of each task (by example order) taken in turn, until ``cap`` rows."""
    per_task = {task: [eid for eid in pd.unique(part["example_id"])]
                for task, part in tokens.groupby("task", sort=True)}
    sizes = tokens.groupby(["task", "example_id"]).size()
    chosen, rows, depth = set(), 0, 0
    while rows < cap and any(depth < len(ids) for ids in per_task.values()):
        for task, ids in per_task.items():
            if depth < len(ids) and rows < cap:
                chosen.add((task, ids[depth]))
                rows += int(sizes[(task, ids[depth])])
        depth += 1
    keys = list(zip(tokens["task"], tokens["example_id"], strict=True))
    return tokens.loc[[k in chosen for k in keys]]


def _session_entry(src: Path, added_ids: list[str], published_examples: pd.DataFrame,
                   session_examples: pd.DataFrame) -> dict[str, Any]:
    sweep_manifest = read_json(src / "manifest.json") if (src / "manifest.json").is_file() \
        else {}
    entry: dict[str, Any] = {
        "session": sweep_manifest.get("session"),
        "published_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": sweep_manifest.get("device"),
        "git_sha": sweep_manifest.get("git_sha"),
        "versions": sweep_manifest.get("versions"),
        "runs": added_ids,
        # what each run is (kdlens.distill.run_identity: its config, data and teacher weights)
        "identities": {rid: sweep_manifest.get("runs", {}).get(rid, {}).get("identity") for rid in added_ids},
        "seconds": {rid: {k: round(float(v), 1) for k, v in sweep_manifest.get("runs", {}).get(rid, {}).items()
                          if k.endswith("_s")} for rid in added_ids},
        "teachers": {},
    }
    for teacher in TEACHER_IDS.values():
        mine = session_examples.loc[(session_examples["model_id"] == teacher) & (session_examples["sample"] == 0)]
        if mine.empty:
            continue
        kept = published_examples.loc[(published_examples["model_id"] == teacher)
                                      & (published_examples["sample"] == 0)]
        both = mine.merge(kept, on=["task", "example_id"], suffixes=("", "_published"))
        entry["teachers"][teacher] = {
            "accuracy": float(mine["correct"].mean()),
            **(sweep_manifest.get("teacher_logits") or {}).get(teacher, {}),
            # 1.0 when this session's teacher wrote exactly the published teacher's outputs
            "same_output_as_published": float((both["output"] == both["output_published"]).mean()) if len(both)
            else None,
        }
    return json.loads(json.dumps(entry, default=str))
