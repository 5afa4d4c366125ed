"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness does it (``output_type: multiple_choice``).

For each choice the harness scores a (context, continuation) pair: ARC-style tasks share the context
(the prompt) and vary the continuation (``target_delimiter + choice``); Winogrande-style tasks vary
the context (each option completes the sentence start) and share the continuation (the sentence
end). The log-likelihood of the continuation given the context is summed over its tokens, then

* ``acc``: the gold is the choice with the highest log-likelihood (``np.argmax``: the first on ties);
* ``acc_norm``: the same after dividing each log-likelihood by its choice's length in characters
  (the continuation string of ARC-style tasks, the context of Winogrande-style ones).

Tokenization follows the harness's causal-LM ``_encode_pair``: trailing spaces of the context move
to the continuation, the whole string is encoded once and split at the length of the context's
encoding (so a merge across the boundary stays with the continuation), the tokenizer's default
special tokens are kept (a BOS when the tokenizer adds one), and an empty context becomes the prefix
token (BOS, else EOS). No chat template, as the harness without ``--apply_chat_template``.

Sources: lm_eval/api/task.py (``construct_requests``, ``process_results``), lm_eval/api/model.py
(``loglikelihood``, ``_encode_pair``), lm_eval/models/huggingface.py (``tok_encode``,
``_loglikelihood_tokens``).

A record is multiple-choice when its ``meta`` (or ``meta["extra"]``, where file loaders keep unknown
fields) holds ``choices`` (a list of strings, or ARC's ``{"text": [...], "label": [...]}``), or
``contexts`` and ``continuation`` (Winogrande-style). The gold is ``meta["gold"]`` (an index), else
``record.answer`` as a label (``"B"``, ARC's ``answerKey``), a letter A-E, or the choice text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from kdlens._schema import CHOICES_COLUMNS, CHOICES_DTYPES

__all__ = ["Choices", "multiple_choice", "encode_pair", "loglikelihoods", "score_choices", "choice_predictions",
           "CHOICE_SCORINGS"]

#: scoring modes of multiple-choice tasks (the harness's metric names)
CHOICE_SCORINGS = ("acc", "acc_norm")
_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Choices:
    """The harness's requests for one multiple-choice record.

    Attributes
    ----------
    pairs : list of (str, str)
        (context, continuation) per choice.
    texts : list of str
        The strings whose lengths ``acc_norm`` divides by (the choices; the contexts for
        Winogrande-style records).
    labels : list of str
        How each choice is named in ``pred_answer`` (ARC labels, else A, B, C, ...).
    gold : int
        Index of the correct choice.
    """

    pairs: list[tuple[str, str]]
    texts: list[str]
    labels: list[str]
    gold: int


def _field(meta: Mapping[str, Any], key: str) -> Any:
    if key in meta:
        return meta[key]
    extra = meta.get("extra")
    return extra.get(key) if isinstance(extra, Mapping) else None


def multiple_choice(record: Any) -> Choices:
    """The :class:`kdlens.eval.Choices` of a record (formats in the module docstring).

    Raises
    ------
    ValueError
        The record has no choices, or its gold cannot be found among them.
    """
    meta = record.meta
    delimiter = _field(meta, "target_delimiter")
    delimiter = " " if delimiter is None else str(delimiter)
    contexts, choices = _field(meta, "contexts"), _field(meta, "choices")
    labels = None
    if contexts is not None:
        continuation = _field(meta, "continuation")
        if not isinstance(continuation, str):
            raise ValueError(f"record {record.id!r} has contexts but no continuation string (Winogrande-style records "
                             "need meta['continuation'])")
        texts = [str(c) for c in contexts]
        pairs = [(context, f"{delimiter}{continuation}") for context in texts]
    elif choices is not None:
        if isinstance(choices, Mapping):  # ARC: {"text": [...], "label": [...]}
            labels = [str(x) for x in choices.get("label", [])] or None
            choices = choices.get("text", [])
        texts = [str(c) for c in choices]
        pairs = [(record.prompt, f"{delimiter}{choice}") for choice in texts]
    else:
        raise ValueError(f"record {record.id!r} of task {record.task!r} is not multiple-choice: give meta['choices'] "
                         "(or meta['contexts'] and meta['continuation'])")
    if len(texts) < 2:
        raise ValueError(f"record {record.id!r} has {len(texts)} choice(s); multiple choice needs at least 2")
    labels = labels if labels is not None and len(labels) == len(texts) else list(_LETTERS[:len(texts)])
    gold = _field(meta, "gold")
    if gold is None:
        answer = record.answer.strip()
        for candidates in (labels, list(_LETTERS[:len(texts)]), texts):
            if answer in candidates:
                gold = candidates.index(answer)
                break
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(texts):
        raise ValueError(f"record {record.id!r}: gold {record.answer!r} is neither a label ({labels}), a letter nor one "
                         f"of the {len(texts)} choices; set meta['gold'] to its index")
    return Choices(pairs=pairs, texts=texts, labels=labels, gold=gold)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """The harness's ``tok_encode``: default special tokens, unless the text already starts with BOS."""
    bos = tokenizer.bos_token
    add = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids as the harness's causal ``_encode_pair`` (and empty-context rule)."""
    if context == "":
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return whole[:len(context_ids)], whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8,
                   max_length: int = 2048) -> list[tuple[float, bool, int]]:
    """``(sum of log p(continuation tokens | context), whether every token is the argmax, n tokens)`` per pair.

    The input is ``(context + continuation)[-(max_length + 1):][:-1]`` as in the harness's
    ``_loglikelihood_tokens``; float32 log-softmax.
    """
    from kdlens.eval._generate import model_device

    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    for (context, continuation), (_, cont) in zip(pairs, encoded, strict=True):
        if not cont:
            raise ValueError(f"the continuation {continuation!r} of context {context[-40:]!r} encodes to no token")
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(pairs)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    out: list[tuple[float, bool, int] | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = [(encoded[i][0] + encoded[i][1])[-(max_length + 1):][:-1] for i in chunk]
        width = max(map(len, inputs))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(inputs):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for row, i in enumerate(chunk):
            cont = encoded[i][1]
            n = len(inputs[row])
            logprobs = torch.log_softmax(logits[row, n - len(cont):n], dim=-1)
            target = torch.tensor(cont, device=logprobs.device)
            ll = float(logprobs.gather(-1, target[:, None]).sum())
            out[i] = (ll, bool((logprobs.argmax(-1) == target).all()), len(cont))
    return out  # type: ignore[return-value]


def score_choices(model: Any, tokenizer: Any, records: Sequence[Any], *, batch_size: int = 8,
                  max_length: int = 2048) -> pd.DataFrame:
    """One row per (record, choice): the harness's log-likelihood of the choice and what it is normalized by.

    Returns
    -------
    DataFrame
        Columns :data:`kdlens._schema.CHOICES_COLUMNS` (``task, example_id, choice, label, text,
        loglik, n_tokens, n_chars, n_bytes, is_greedy, is_gold``), records and choices in order.
    """
    from kdlens._tables import conform

    requests = [multiple_choice(record) for record in records]
    flat = [pair for request in requests for pair in request.pairs]
    scores = iter(loglikelihoods(model, tokenizer, flat, batch_size=batch_size, max_length=max_length))
    rows = []
    for record, request in zip(records, requests, strict=True):
        for j, (text, label) in enumerate(zip(request.texts, request.labels, strict=True)):
            ll, greedy, n_tokens = next(scores)
            rows.append({"task": record.task, "example_id": record.id, "choice": j, "label": label, "text": text,
                         "loglik": ll, "n_tokens": n_tokens, "n_chars": len(text), "n_bytes": len(text.encode()),
                         "is_greedy": greedy, "is_gold": j == request.gold})
    return conform(rows, CHOICES_COLUMNS, CHOICES_DTYPES)


def choice_predictions(choices: pd.DataFrame, scoring: str = "acc") -> pd.DataFrame:
    """Per example, the choice the harness picks under ``scoring`` and whether it is the gold one.

    Parameters
    ----------
    choices : DataFrame
        From :func:`score_choices`.
    scoring : {"acc", "acc_norm"}
        ``acc``: argmax of ``loglik``; ``acc_norm``: argmax of ``loglik / n_chars``. Ties go to the
        first choice, as ``np.argmax``.

    Returns
    -------
    DataFrame
        ``task, example_id, choice, label, text, loglik, n_tokens, correct, gold_choice`` (one row per example,
        in input order).
    """
    if scoring not in CHOICE_SCORINGS:
        raise ValueError(f"unknown multiple-choice scoring {scoring!r}; known: {', '.join(CHOICE_SCORINGS)}")
    frame = choices.copy()
    frame["_key"] = frame["loglik"] / frame["n_chars"] if scoring == "acc_norm" else frame["loglik"]
    rows = []
    for (_task, _example), group in frame.groupby(["task", "example_id"], sort=False):
        best = group.iloc[int(group["_key"].to_numpy().argmax())]
        gold = group.loc[group["is_gold"]]
        rows.append({**{k: best[k] for k in ("task", "example_id", "choice", "label", "text", "loglik", "n_tokens")},
                     "correct": bool(best["is_gold"]),
                     "gold_choice": int(gold["choice"].iloc[0]) if len(gold) else -1})
    return pd.DataFrame(rows)
