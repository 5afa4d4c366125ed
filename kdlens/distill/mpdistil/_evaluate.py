"""Evaluate multi-task encoder classifiers into kdlens's examples table (causal LMs: ``kdlens.eval``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["evaluate_classifier"]


def evaluate_classifier(models: Mapping[str, str | os.PathLike], records: Sequence[Any], *, batch_size: int = 32,
                        max_length: int = 256, device: Any = None):
    """Classify ``records`` with each encoder classifier; one row per (model, record).

    Parameters
    ----------
    models : mapping of model id -> path
        kdlens classifiers (an ``mpdistil`` run or stage directory, or its ``checkpoint/``); each
        reads its tasks' label sets from ``config.kdlens_label_sets``.
    records : sequence of Record
        E.g. ``kdlens.data.load_tasks([...], split="test")``; their tasks must be among the model's.
    batch_size, max_length : int
    device : str or torch.device, optional (CPU)

    Returns
    -------
    DataFrame
        The columns of ``kdlens._schema.EXAMPLES_COLUMNS`` (so ``kdlens.analysis.agreement`` and the
        per-task accuracies work as for generated answers): ``output`` and ``pred_answer`` are the
        predicted label, ``correct`` whether it is the gold answer (a gold answer outside the
        model's label set is never correct), ``mean_logprob`` the log-probability of the prediction
        and ``gold_nll`` minus that of the gold label (NaN when it is outside the label set), both
        over the task's labels; ``n_output_tokens`` is 0 and ``finish_reason`` ``"label"``.
    """
    import pandas as pd
    import torch

    from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES
    from kdlens.models._encoder import label_sets, load_encoder_classifier
    from kdlens.models._load import resolve_device

    device = resolve_device(device)
    rows = []
    for model_id, path in models.items():
        model, tokenizer = load_encoder_classifier(path)
        model.to(device)
        sets = label_sets(model.config)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        unknown = sorted({r.task for r in records} - set(sets))
        if unknown:
            raise ValueError(f"model {model_id!r} ({path}) was not trained on tasks {unknown}; it knows {sorted(sets)}")
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            batch = tokenizer([r.prompt for r in chunk], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt").to(device)
            with torch.no_grad():
                logits = model(**batch).logits.double().cpu()
            for record, row in zip(chunk, logits, strict=True):
                ids = sets[record.task]
                logp = torch.log_softmax(row[ids], dim=-1)
                best = int(logp.argmax())
                pred = names[ids[best]].split(":", 1)[1]
                gold = f"{record.task}:{record.answer.strip()}"
                gold_nll = -float(logp[ids.index(names.index(gold))]) if gold in names else math.nan
                rows.append({"model_id": model_id, "task": record.task, "split": record.split,
                             "example_id": record.id, "sample": 0, "prompt": record.prompt, "output": pred,
                             "pred_answer": pred, "gold_answer": record.answer, "correct": pred == record.answer.strip(),
                             "n_output_tokens": 0, "finish_reason": "label", "mean_logprob": float(logp[best]),
                             "gold_nll": gold_nll, "gold_rationale": record.rationale})
    frame = pd.DataFrame(rows, columns=list(EXAMPLES_COLUMNS))
    return frame.astype(EXAMPLES_DTYPES)
