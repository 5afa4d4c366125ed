"""``collect_tokens``: teacher-forced, per-token comparison of a student with its teacher.

Both models read the same sequences (a prompt and a response, e.g. the teacher's own outputs or
the gold rationales); one row is written per *response* token. Divergences come from
:mod:`kdlens.losses` with ``reduction="none"``, so analysis uses the exact definition training
optimizes. Sequences are processed ``batch_size`` at a time and only the response positions of
a batch are kept, so ``[tokens, V]`` is never held for more than one batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kdlens._schema import TOKENS_COLUMNS, TOKENS_DTYPES
from kdlens._tables import TOKENS_NAME, conform, write_parquet
from kdlens.eval._generate import logits_from
from kdlens.eval._loading import ModelSpec, load, model_specs, release
from kdlens.eval._store import Manifest

__all__ = ["collect_tokens", "compare_to_teacher"]

logger = logging.getLogger("kdlens.eval")


@dataclass(frozen=True)
class _Sequence:
    task: str
    example_id: str
    prompt: str
    response: str
    ends_with_eos: bool


def _as_sequences(sequences: Any) -> list[_Sequence]:
    """Normalize the accepted inputs: an examples table, Records, or (prompt, response) pairs."""
    if isinstance(sequences, pd.DataFrame):
        missing = [c for c in ("prompt", "output") if c not in sequences.columns]
        if missing:
            raise ValueError(f"a sequences table needs columns 'prompt' and 'output' (an examples table); missing {missing}")
        frame = sequences.reset_index(drop=True)
        task = frame["task"].astype(str).tolist() if "task" in frame else [""] * len(frame)
        example_id = frame["example_id"].astype(str).tolist() if "example_id" in frame else [str(i) for i in frame.index]
        # an output cut at max_new_tokens did not end: no EOS is appended to it
        eos = (frame["finish_reason"] != "length").tolist() if "finish_reason" in frame else [True] * len(frame)
        out = [_Sequence(t, e, str(p), "" if pd.isna(o) else str(o), bool(s))
               for t, e, p, o, s in zip(task, example_id, frame["prompt"], frame["output"], eos, strict=True)]
        return _check_unique(out)
    out = []
    for index, item in enumerate(sequences):
        if hasattr(item, "prompt") and hasattr(item, "task") and hasattr(item, "id"):
            from kdlens.data import response_text

            out.append(_Sequence(item.task, item.id, item.prompt, response_text(item), True))
        elif isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append(_Sequence("", str(index), item[0], item[1], True))
        else:
            raise TypeError(f"sequence {index} is a {type(item).__name__}; expected a kdlens.data.Record, "
                            "a (prompt, response) pair of strings, or pass an examples DataFrame")
    return _check_unique(out)


def _check_unique(items: list[_Sequence]) -> list[_Sequence]:
    seen = set()
    for item in items:
        key = (item.task, item.example_id)
        if key in seen:
            raise ValueError(f"sequences holds example {item.example_id!r} of task {item.task!r} twice (several "
                             "models or samples?); give one output per example, e.g. "
                             "df[(df.model_id == 'teacher') & (df['sample'] == 0)]")
        seen.add(key)
    return items


def _encode(tokenizer: Any, seq: _Sequence, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response (+ EOS) and the index where the response starts."""
    from kdlens.data import encode_for_generation

    prompt_ids = list(encode_for_generation(tokenizer, seq.prompt))
    response_ids = list(tokenizer(seq.response, add_special_tokens=False)["input_ids"])
    if seq.ends_with_eos:
        response_ids.append(tokenizer.eos_token_id)
    if not response_ids:
        raise ValueError(f"example {seq.example_id!r} of task {seq.task!r} has an empty response and no EOS: "
                         "there is no response token to compare")
    if len(response_ids) >= max_length:
        raise ValueError(f"example {seq.example_id!r}: the response has {len(response_ids)} tokens, more than "
                         f"max_length={max_length} allows; raise max_length")
    # keep the whole response and as much of the prompt's end as fits
    prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(response_ids) - max_length):]
    return prompt_ids + response_ids, len(prompt_ids)


def _vocab_width(student: Any, student_tok: Any, teacher: Any, teacher_tok: Any) -> int:
    from kdlens.models import check_compatible

    # the head sizes (logit widths), which may exceed the tokenizers by padding rows
    return check_compatible(teacher_tok, student_tok,
                            teacher_vocab_size=getattr(getattr(teacher, "config", None), "vocab_size", None),
                            student_vocab_size=getattr(getattr(student, "config", None), "vocab_size", None))


@torch.no_grad()
def collect_tokens(
    student: ModelSpec,
    teacher: ModelSpec,
    sequences: pd.DataFrame | Sequence[Any],
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    max_length: int = 2048,
    student_id: str = "student",
    teacher_id: str = "teacher",
    device: Any = None,
    dtype: Any = None,
) -> pd.DataFrame:
    """Per-token teacher/student statistics on teacher-forced sequences.

    Parameters
    ----------
    student, teacher : ``(model, tokenizer)`` pairs or anything :func:`kdlens.models.load_model` takes
        They must share the tokenizer (:func:`kdlens.models.check_compatible`); logits are cut to the
        common vocabulary width when the heads differ only by padding rows.
    sequences : examples DataFrame, list of :class:`kdlens.data.Record`, or list of (prompt, response)
        A DataFrame needs ``prompt`` and ``output`` (and normally ``task``, ``example_id``,
        ``finish_reason``), one row per example: pass one model's outputs, e.g. the teacher's
        ``sample == 0`` rows. Records use their gold response (:func:`kdlens.data.response_text`).
    temperature : float > 0
        Both distributions are ``softmax(logits / temperature)``: KL, entropies and token
        probabilities are all computed at this temperature (top-1 ids do not depend on it).
    batch_size : sequences per forward pass; memory is about ``batch_size x length x V`` per model
    max_length : longest sequence; longer prompts are cut on the left, the response is always kept whole
    student_id, teacher_id : values of the ``model_id`` and ``teacher_id`` columns

    Returns
    -------
    DataFrame
        :data:`kdlens._schema.TOKENS_COLUMNS`: one row per response token (prompt and padding
        never appear), ``position`` = index within the response starting at 0.

    Notes
    -----
    Each sequence is ``encode_for_generation(prompt) + tokenize(response) + [EOS]`` with the
    teacher's tokenizer; the EOS row is left out for examples-table rows whose ``finish_reason``
    is ``"length"`` (the output never ended). Re-tokenizing a generated text usually, but not
    always, reproduces the tokens the model generated. The row for response token ``y_t`` compares
    the two models' next-token distributions ``p(. | x, y_<t)`` (teacher) and ``q(. | x, y_<t)``
    (student)::

        forward_kl      = KL(p || q)       reverse_kl      = KL(q || p)
        teacher_entropy = -sum p log p     student_entropy = -sum q log q
        teacher_token_prob = p(y_t)        student_token_prob = q(y_t)
        teacher_top1 = argmax p,  student_top1 = argmax q,  top1_agree = (teacher_top1 == student_top1)
    """
    from kdlens.losses import forward_kl, reverse_kl

    if not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    model_specs({student_id: student, teacher_id: teacher})  # fail fast on a missing path
    items = _as_sequences(sequences)
    student_model, student_tok = load(student, device=device, dtype=dtype)
    teacher_model, teacher_tok = load(teacher, device=device, dtype=dtype)
    try:
        width = _vocab_width(student_model, student_tok, teacher_model, teacher_tok)
        encoded = [_encode(teacher_tok, item, max_length) for item in items]
        pad_id = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else teacher_tok.eos_token_id
        # longest first: similar lengths share a batch, and memory problems show up at once
        order = sorted(range(len(items)), key=lambda i: -len(encoded[i][0]))
        parts = []
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            parts.append(_batch_rows(student_model, teacher_model, [encoded[i] for i in chunk], pad_id, width,
                                     temperature, forward_kl, reverse_kl, [items[i] for i in chunk]))
    finally:
        del student_model, teacher_model
        release(student)
        release(teacher)
    if parts:
        frame = pd.concat(parts, ignore_index=True)
        # input order, then position: the batching order must not show in the table
        rank = {(item.task, item.example_id): i for i, item in enumerate(items)}
        frame["_rank"] = [rank[key] for key in zip(frame["task"], frame["example_id"], strict=True)]
        frame = frame.sort_values(["_rank", "position"], kind="stable").drop(columns="_rank")
    else:
        frame = pd.DataFrame({c: [] for c in TOKENS_COLUMNS if c not in ("model_id", "teacher_id")})
    frame.insert(0, "teacher_id", teacher_id)
    frame.insert(0, "model_id", student_id)
    return conform(frame, TOKENS_COLUMNS, TOKENS_DTYPES)


def _batch_rows(student: Any, teacher: Any, encoded: list[tuple[list[int], int]], pad_id: int, width: int,
                temperature: float, forward_kl: Any, reverse_kl: Any, items: list[_Sequence]) -> pd.DataFrame:
    """Statistics of the response tokens of one right-padded batch (all [N, V] tensors are this batch's)."""
    length = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    response = torch.zeros_like(ids, dtype=torch.bool)
    for row, (seq, prompt_len) in enumerate(encoded):
        ids[row, :len(seq)] = torch.as_tensor(seq)
        attention[row, :len(seq)] = 1
        response[row, prompt_len:len(seq)] = True
    # logits at t predict token t + 1: keep the positions whose *next* token is a response token,
    # computing logits only from one before the earliest response token on
    first = max(0, min(prompt_len for _, prompt_len in encoded) - 1)
    predicts = response[:, first + 1:]
    targets = ids[:, first + 1:][predicts]
    s_logits = _response_logits(student, ids, attention, first, predicts, width)
    t_logits = _response_logits(teacher, ids, attention, first, predicts, width)
    log_q = torch.log_softmax(s_logits / temperature, dim=-1)
    log_p = torch.log_softmax(t_logits / temperature, dim=-1)
    t_top1 = t_logits.argmax(-1).cpu()
    s_top1 = s_logits.argmax(-1).cpu()
    position = (response.long().cumsum(-1) - 1)[:, first + 1:][predicts]
    row_of_token = torch.arange(len(encoded))[:, None].expand_as(predicts)[predicts]
    return pd.DataFrame({
        "task": [items[r].task for r in row_of_token.tolist()],
        "example_id": [items[r].example_id for r in row_of_token.tolist()],
        "position": position.numpy(),
        "token_id": targets.numpy(),
        "teacher_top1": t_top1.numpy(),
        "student_top1": s_top1.numpy(),
        "top1_agree": (t_top1 == s_top1).numpy(),
        "forward_kl": forward_kl(s_logits, t_logits, temperature=temperature, reduction="none").double().cpu().numpy(),
        "reverse_kl": reverse_kl(s_logits, t_logits, temperature=temperature, reduction="none").double().cpu().numpy(),
        "teacher_entropy": -(log_p.exp() * log_p).sum(-1).double().cpu().numpy(),
        "student_entropy": -(log_q.exp() * log_q).sum(-1).double().cpu().numpy(),
        "teacher_token_prob": log_p.gather(-1, targets[:, None].to(log_p.device)).squeeze(-1).exp().double().cpu().numpy(),
        "student_token_prob": log_q.gather(-1, targets[:, None].to(log_q.device)).squeeze(-1).exp().double().cpu().numpy(),
    })


def _response_logits(model: Any, ids: torch.Tensor, attention: torch.Tensor, first: int, predicts: torch.Tensor,
                     width: int) -> torch.Tensor:
    """float32 logits [N, width] at the N positions (from ``first`` on) that predict a response token."""
    logits = logits_from(model, ids, attention, first)[:, :-1]
    return logits[predicts.to(logits.device)][:, :width].float()


def compare_to_teacher(
    models: Mapping[str, ModelSpec],
    examples: pd.DataFrame,
    *,
    teacher_id: str = "teacher",
    temperature: float = 1.0,
    batch_size: int = 8,
    max_length: int = 2048,
    output_dir: str | os.PathLike | None = None,
    device: Any = None,
    dtype: Any = None,
) -> pd.DataFrame:
    """Token statistics of every non-teacher model against the teacher, on the teacher's own outputs.

    Parameters
    ----------
    models : the mapping given to :func:`kdlens.eval.evaluate` (must contain ``teacher_id``)
    examples : the examples table from :func:`kdlens.eval.evaluate`; the teacher's ``sample == 0``
        rows are the sequences every student is teacher-forced on
    output_dir : when given, writes ``tokens.parquet`` there (atomically) and lists it in ``manifest.json``

    Returns
    -------
    DataFrame
        :data:`kdlens._schema.TOKENS_COLUMNS`, students in the order of ``models``.
    """
    if teacher_id not in models:
        raise ValueError(f"teacher id {teacher_id!r} is not among the models {sorted(models)}; "
                         "name the teacher with --teacher-id / teacher_id=")
    students = [m for m in models if m != teacher_id]
    if not students:
        raise ValueError("comparing to the teacher needs at least one model besides the teacher")
    model_specs(models)
    teacher_rows = examples[(examples["model_id"] == teacher_id) & (examples["sample"] == 0)]
    if teacher_rows.empty:
        raise ValueError(f"the examples table has no rows of the teacher {teacher_id!r} (sample 0)")
    teacher = load(models[teacher_id], device=device, dtype=dtype)
    try:
        frames = [collect_tokens(models[m], teacher, teacher_rows, temperature=temperature, batch_size=batch_size,
                                 max_length=max_length, student_id=m, teacher_id=teacher_id, device=device,
                                 dtype=dtype)
                  for m in students]
    finally:
        del teacher
        release(models[teacher_id])
    table = conform(pd.concat(frames, ignore_index=True), TOKENS_COLUMNS, TOKENS_DTYPES)
    if output_dir is not None:
        path = write_parquet(table, Path(output_dir) / TOKENS_NAME,
                             metadata={"teacher_id": teacher_id, "students": students, "temperature": temperature})
        Manifest(output_dir).add_table(path, len(table), teacher_id=teacher_id, students=students,
                                       temperature=temperature, sequences="teacher outputs, sample 0")
    return table
