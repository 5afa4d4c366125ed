"""``evaluate``: generate, score and record one row per (model_id, task, example_id, sample)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES
from kdlens._tables import EXAMPLES_NAME, conform, write_parquet
from kdlens.eval._generate import Decoding, generate, gold_nll, sample_seed
from kdlens.eval._loading import ModelSpec, load, load_tasks_checked, model_specs, release, weights_stamp
from kdlens.eval._store import Manifest, load_shard, shard_path

__all__ = ["evaluate"]

logger = logging.getLogger("kdlens.eval")

_KEY = ["model_id", "task", "example_id", "sample"]


def evaluate(
    models: Mapping[str, ModelSpec],
    tasks: str | Sequence[str] | Mapping[str, Sequence[Any]],
    *,
    decoding: Decoding | str | Mapping[str, Any] = "greedy",
    n: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    output_dir: str | os.PathLike | None = None,
    split: str = "test",
    data_seed: int = 0,
    max_length: int = 2048,
    device: Any = None,
    dtype: Any = None,
    overwrite: bool = False,
    scoring: str | None = None,
    mode: str = "generate",
) -> pd.DataFrame:
    """Generate with every model on every task, score the answers, and return the examples table.

    Parameters
    ----------
    models : mapping model_id -> model
        Each value is a run directory, checkpoint directory, ``.gguf`` file, hub id or built-in
        name (loaded with :func:`kdlens.models.load_model`, one model at a time, and freed after
        its tasks), or an already loaded ``(model, tokenizer)`` pair.
    tasks : task spec, list of specs, or mapping name -> list of :class:`kdlens.data.Record`
        Specs as in :func:`kdlens.data.load_task` (``"chain_sum:200"``, a JSON/JSONL path, ``hf:ID``).
        The ``task`` column holds each record's own ``Record.task``.
    decoding : "greedy" (default), "sample", a mapping of :class:`Decoding` fields, or a Decoding
    n : keep the first n records of each task (None: all)
    batch_size : prompts decoded together (left padded; also the teacher-forcing batch size)
    max_new_tokens : generation budget per output
    output_dir : directory for shards, ``examples.parquet`` and ``manifest.json`` (None: nothing written)
    split, data_seed : passed to :func:`kdlens.data.load_task`
    max_length : longest prompt + gold rationale scored for ``gold_nll`` (longer ones are cut on the left)
    device, dtype : where and in which precision to load models given by name
    overwrite : recompute shards written under other settings instead of raising
    scoring : how answers are judged. ``mode="generate"``: a name of :data:`kdlens.data.SCORING_MODES`,
        ``"kdlens"`` (default, :func:`kdlens.data.score`) or lm-evaluation-harness's GSM8K filters
        ``"strict-match"``, ``"strict-match-cot"``, ``"flexible-extract"`` (:func:`kdlens.data.score_as`).
        ``mode="loglikelihood"``: ``"acc"`` (default) or ``"acc_norm"``.
    mode : ``"generate"`` (default) decodes and extracts answers; ``"loglikelihood"`` scores the choices
        of multiple-choice records by log-likelihood as lm-evaluation-harness does
        (:mod:`kdlens.eval._choices`; ARC- and Winogrande-style records), no generation.

    Returns
    -------
    DataFrame
        Columns :data:`kdlens._schema.EXAMPLES_COLUMNS` with :data:`~kdlens._schema.EXAMPLES_DTYPES`,
        ordered by model (as given), task (as given), record, sample.

    Notes
    -----
    Column definitions:

    * ``output``: the decoded continuation without the stop token and special tokens.
    * ``n_output_tokens``: tokens the model generated, *including* the stop token when it stopped
      (so ``finish_reason == "length"`` exactly when ``n_output_tokens == max_new_tokens`` and no
      stop token came); padding is never counted.
    * ``mean_logprob``: mean over those same tokens of ``log p(token | prefix)`` under the model at
      temperature 1, read from the decoding pass itself (no top-p or temperature applied), so it
      measures how likely the model finds its own output whatever the decoding settings.
    * ``gold_nll``: teacher-forced mean NLL (nats/token) of the gold rationale + EOS in the training
      format of :func:`kdlens.data.encode_for_training`; NaN when the record has no rationale. One
      value per record, repeated across samples.
    * ``pred_answer`` / ``correct``: :func:`kdlens.data.score_as` of ``output`` against the record under
      ``scoring``, recorded in the table's metadata (``examples.parquet`` and ``DataFrame.attrs["scoring"]``)
      and the manifest. Finished shards are re-scored under the requested mode (no new generation).
    * ``mode="loglikelihood"``: ``output`` is the chosen choice, ``pred_answer`` its label,
      ``n_output_tokens`` its continuation tokens, ``finish_reason`` ``"loglikelihood"``,
      ``mean_logprob`` its log-likelihood per token, ``gold_nll`` minus the gold choice's per token and
      ``gold_rationale`` the gold choice; :func:`kdlens.eval.score_choices` gives every choice's score.

    Determinism: see :mod:`kdlens.eval._generate` (greedy is batch-independent; sampling is
    seeded per (task, example, sample)).

    Resuming: with ``output_dir``, each finished (model_id, task) unit is written as one shard
    (atomically) carrying a fingerprint of model spec, weight files (name, size, mtime of a local
    model's weights), task, decoding, n, split, data_seed, max_new_tokens and max_length. A rerun
    loads matching shards instead of recomputing them (a model whose shards are all done is not
    even loaded) and raises on a shard made under other settings unless ``overwrite``.
    ``examples.parquet`` is written last, from the shards.
    """
    decoding = Decoding.coerce(decoding)
    scoring = _check_mode(mode, scoring)
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("max_length", max_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    described = model_specs(models)
    task_records = load_tasks_checked(tasks, split=split, seed=data_seed, n=n)
    settings = {"n": n, "split": split, "data_seed": data_seed, "max_new_tokens": max_new_tokens,
                "max_length": max_length}
    if mode == "loglikelihood":  # other rows altogether (generation settings are then irrelevant)
        settings.update(mode=mode, scoring=scoring)
    out_dir = Path(output_dir) if output_dir is not None else None
    manifest = Manifest(out_dir) if out_dir is not None else None
    if manifest is not None:
        manifest.record_run(models=described, tasks=list(task_records), decoding=decoding.to_dict(),
                            settings={**settings, "batch_size": batch_size, "dtype": str(dtype), "device": str(device),
                                      "mode": mode, "scoring": scoring})

    frames = []
    for model_id, spec in models.items():
        weights = weights_stamp(spec)
        fingerprints = {task: {"model": described[model_id], "weights": weights, "task": task,
                               "decoding": decoding.to_dict(), **settings}
                        for task in task_records}
        done: dict[str, pd.DataFrame] = {}
        if out_dir is not None:
            for task in task_records:
                shard = load_shard(shard_path(out_dir, model_id, task), fingerprints[task], EXAMPLES_COLUMNS,
                                   EXAMPLES_DTYPES, overwrite=overwrite)
                if shard is not None:
                    done[task] = shard if mode == "loglikelihood" else _rescore(shard, task_records[task], scoring)
                    logger.info("%s / %s: finished shard found, skipped", model_id, task)
        pending = [task for task in task_records if task not in done]
        if pending:
            model, tokenizer = load(spec, device=device, dtype=dtype)
            try:
                for task in pending:
                    start = time.perf_counter()
                    if mode == "loglikelihood":
                        frame = _choice_unit(model, tokenizer, model_id, task_records[task], scoring=scoring,
                                             batch_size=batch_size, max_length=max_length)
                    else:
                        frame = _evaluate_unit(model, tokenizer, model_id, task_records[task], decoding=decoding,
                                               batch_size=batch_size, max_new_tokens=max_new_tokens,
                                               max_length=max_length, scoring=scoring)
                    seconds = time.perf_counter() - start
                    logger.info("%s / %s: %d rows in %.1f s (%.2f examples/s, %.1f generated tokens/s)",
                                model_id, task, len(frame), seconds, len(frame) / seconds,
                                frame["n_output_tokens"].sum() / seconds)
                    if out_dir is not None:
                        path = write_parquet(frame, shard_path(out_dir, model_id, task),
                                             metadata={"fingerprint": fingerprints[task], "scoring": scoring})
                        manifest.add_shard(model_id, task, path, len(frame), fingerprints[task])
                    done[task] = frame
            finally:
                del model, tokenizer  # one model in memory at a time
                release(spec)
        frames.extend(done[task] for task in task_records)

    table = conform(pd.concat(frames, ignore_index=True), EXAMPLES_COLUMNS, EXAMPLES_DTYPES)
    duplicated = table.duplicated(_KEY, keep=False)
    if duplicated.any():
        first = table.loc[duplicated, _KEY].iloc[0].to_dict()
        raise ValueError(f"two rows share the key {first}: two task specs give the same task name and "
                         "example ids; evaluate them in separate output directories")
    if out_dir is not None:
        path = write_parquet(table, out_dir / EXAMPLES_NAME, metadata={"models": described, "tasks": list(task_records),
                                                                       "mode": mode, "scoring": scoring})
        manifest.add_table(path, len(table), models=list(models), tasks=list(task_records), mode=mode,
                           scoring=scoring)
    table.attrs["scoring"] = scoring
    table.attrs["mode"] = mode
    return table


def _check_mode(mode: str, scoring: str | None) -> str:
    """The scoring to use (validated), given the evaluation mode."""
    from kdlens.data import SCORING_MODES
    from kdlens.eval._choices import CHOICE_SCORINGS

    known = {"generate": tuple(SCORING_MODES), "loglikelihood": CHOICE_SCORINGS}
    if mode not in known:
        raise ValueError(f"unknown evaluation mode {mode!r}; known: {', '.join(known)}")
    scoring = scoring if scoring is not None else known[mode][0]
    if scoring not in known[mode]:
        raise ValueError(f"scoring={scoring!r} does not apply to mode={mode!r}; use one of {', '.join(known[mode])}")
    return scoring


def _rescore(frame: pd.DataFrame, records: Sequence[Any], scoring: str) -> pd.DataFrame:
    """``pred_answer``/``correct`` of finished rows recomputed from their ``output`` under ``scoring``."""
    from kdlens.data import score_as

    by_id = {record.id: record for record in records}
    judged = [score_as(text, by_id[example_id], scoring) for text, example_id in zip(frame["output"],
                                                                                   frame["example_id"], strict=True)]
    frame = frame.copy()
    frame["pred_answer"] = [pred for pred, _ in judged]
    frame["correct"] = [bool(ok) for _, ok in judged]
    return conform(frame, EXAMPLES_COLUMNS, EXAMPLES_DTYPES)


def _choice_unit(model: Any, tokenizer: Any, model_id: str, records: Sequence[Any], *, scoring: str,
                 batch_size: int, max_length: int) -> pd.DataFrame:
    """Rows of one (model, task) scored by log-likelihood of each record's choices (no generation)."""
    from kdlens.eval._choices import choice_predictions, score_choices

    choices = score_choices(model, tokenizer, records, batch_size=batch_size, max_length=max_length)
    picked = choice_predictions(choices, scoring).set_index("example_id")
    gold = choices.loc[choices["is_gold"]].set_index("example_id")
    rows = []
    for record in records:
        best, right = picked.loc[record.id], gold.loc[record.id]
        rows.append({
            "model_id": model_id, "task": record.task, "split": record.split, "example_id": record.id, "sample": 0,
            "prompt": record.prompt, "output": best["text"], "pred_answer": best["label"],
            "gold_answer": record.answer, "correct": bool(best["correct"]), "n_output_tokens": int(best["n_tokens"]),
            "finish_reason": "loglikelihood", "mean_logprob": float(best["loglik"]) / int(best["n_tokens"]),
            "gold_nll": -float(right["loglik"]) / int(right["n_tokens"]), "gold_rationale": right["text"],
        })
    return conform(rows, EXAMPLES_COLUMNS, EXAMPLES_DTYPES)


def _evaluate_unit(model: Any, tokenizer: Any, model_id: str, records: Sequence[Any], *, decoding: Decoding,
                   batch_size: int, max_new_tokens: int, max_length: int, scoring: str = "kdlens") -> pd.DataFrame:
    """Rows of one (model, task): generate every (record, sample), score it, add the gold NLL."""
    from kdlens.data import encode_for_generation, score_as

    prompts = [list(encode_for_generation(tokenizer, record)) for record in records]
    units = [(i, s) for i in range(len(records)) for s in range(decoding.num_samples)]
    # longest prompts first: similar lengths share a batch (less padding) and an out-of-memory
    # error shows up in the first batch, not after an hour
    order = sorted(units, key=lambda unit: -len(prompts[unit[0]]))
    generations = {}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        seeds = [sample_seed(decoding.seed, records[i].task, records[i].id, s) for i, s in batch]
        outputs = generate(model, tokenizer, [prompts[i] for i, _ in batch], max_new_tokens=max_new_tokens,
                           decoding=decoding, seeds=seeds)
        generations.update(zip(batch, outputs, strict=True))
    nll = gold_nll(model, tokenizer, records, batch_size=batch_size, max_length=max_length)

    rows = []
    for i, s in units:
        record, generation = records[i], generations[(i, s)]
        pred, correct = score_as(generation.text, record, scoring)
        rows.append({
            "model_id": model_id, "task": record.task, "split": record.split, "example_id": record.id,
            "sample": s, "prompt": record.prompt, "output": generation.text, "pred_answer": pred,
            "gold_answer": record.answer, "correct": bool(correct), "n_output_tokens": len(generation.token_ids),
            "finish_reason": generation.finish_reason, "mean_logprob": generation.mean_logprob,
            "gold_nll": nll[i],
            # stripped like the training target (kdlens.data.response_text), so fidelity compares like with like
            "gold_rationale": record.rationale.strip() if record.rationale is not None else None,
        })
    return conform(rows, EXAMPLES_COLUMNS, EXAMPLES_DTYPES)
