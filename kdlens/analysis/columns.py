"""Plain columns in, kdlens tables out: the adapters behind the column forms of the metrics and tests.

Every analysis function takes kdlens's tidy tables (:mod:`kdlens._schema`). To use one on data
from elsewhere (a list of answers, a pandas column, a numpy array), either call it with the
columns directly (``agreement(student_answers=[...], teacher_answers=[...])``,
``mcnemar(a=[True, ...], b=[False, ...])``) or build the table with these adapters and pass it
on; both give exactly the numbers the command line gives on the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES, TOKENS_COLUMNS, TOKENS_DTYPES
from kdlens.data import infer_kind, same_answer

__all__ = ["as_frame", "examples_from_columns", "tokens_from_columns"]

#: model_id values of the tables these adapters build
STUDENT, TEACHER = "student", "teacher"


def _column(values: Any, name: str, n: int | None) -> list:
    if isinstance(values, str) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a list, array or pandas Series of values, got {type(values).__name__}")
    out = list(values.tolist() if hasattr(values, "tolist") else values)
    if n is not None and len(out) != n:
        raise ValueError(f"{name} has {len(out)} values but the other columns have {n}; give one value per example")
    return out


def _ids(example_ids: Any, task: Any, n: int) -> tuple[list[str], list[str]]:
    ids = [str(i) for i in (_column(example_ids, "example_ids", n) if example_ids is not None else range(n))]
    tasks = [str(t) for t in (_column(task, "task", n) if not isinstance(task, str) else [task] * n)]
    if len(set(zip(tasks, ids, strict=True))) != n:
        raise ValueError("example_ids repeat within a task; give one distinct id per example")
    return tasks, ids


def examples_from_columns(
    *,
    student_answers: Sequence[Any] | None = None,
    teacher_answers: Sequence[Any] | None = None,
    student_correct: Sequence[bool] | None = None,
    teacher_correct: Sequence[bool] | None = None,
    gold_answers: Sequence[Any] | None = None,
    student_outputs: Sequence[str] | None = None,
    teacher_outputs: Sequence[str] | None = None,
    gold_rationales: Sequence[str] | None = None,
    task: str | Sequence[str] = "task",
    example_ids: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """An examples table (:data:`kdlens._schema.EXAMPLES_COLUMNS`) of one student and its teacher.

    Row ``i`` of every column is example ``i``; the student's rows have ``model_id="student"``, the
    teacher's ``"teacher"``, all greedy (``sample=0``).

    Parameters
    ----------
    student_answers, teacher_answers : sequence, optional
        Extracted final answers (None or NaN: no answer extracted).
    student_correct, teacher_correct : sequence of bool, optional
        Whether each answer is right. When not given, ``gold_answers`` decides it with the
        agreement rule (equal after stripping, or numbers within 1e-3); when neither is given,
        ``correct`` is unknown and the table's ``attrs["correct_known"]`` is False.
    gold_answers : sequence, optional
    student_outputs, teacher_outputs, gold_rationales : sequence of str, optional
        Generated rationales and gold rationales (for :func:`kdlens.analysis.fidelity`).
    task : str or sequence of str
        One task name for all rows, or one per example.
    example_ids : sequence, optional
        Ids of the examples (default ``0..n-1``); kdlens orders examples by id, so pass the ids of
        a kdlens table to reproduce its bootstrap draws exactly.

    Returns
    -------
    DataFrame
        Two rows per example; columns not given are empty (NA).

    Raises
    ------
    ValueError
        Columns of different lengths, no column at all, or repeated example ids.
    """
    given = {"student_answers": student_answers, "teacher_answers": teacher_answers,
             "student_outputs": student_outputs, "teacher_outputs": teacher_outputs,
             "student_correct": student_correct, "teacher_correct": teacher_correct,
             "gold_answers": gold_answers, "gold_rationales": gold_rationales}
    lengths = {name: len(_column(v, name, None)) for name, v in given.items() if v is not None}
    if not lengths:
        raise ValueError("give at least student_answers and teacher_answers (or student_outputs and teacher_outputs)")
    n = next(iter(lengths.values()))
    cols = {name: (_column(v, name, n) if v is not None else [pd.NA] * n) for name, v in given.items()}
    tasks, ids = _ids(example_ids, task, n)
    correct_known = student_correct is not None and teacher_correct is not None or gold_answers is not None
    frames = []
    for model in (STUDENT, TEACHER):
        frame = pd.DataFrame({
            "model_id": model, "task": tasks, "split": "test", "example_id": ids, "sample": 0, "prompt": pd.NA,
            "output": cols[f"{model}_outputs"], "pred_answer": cols[f"{model}_answers"],
            "gold_answer": cols["gold_answers"], "n_output_tokens": 0, "finish_reason": pd.NA,
            "mean_logprob": np.nan, "gold_nll": np.nan, "gold_rationale": cols["gold_rationales"],
        })
        pred = frame["pred_answer"].astype("string")
        if given[f"{model}_correct"] is not None:
            correct = pd.Series([bool(v) for v in cols[f"{model}_correct"]])
        elif gold_answers is not None:
            # scored as kdlens.data.score scores extracted answers: one definition of "the same answer"
            correct = pd.Series([_same_as_gold(p, g) for p, g in zip(pred, frame["gold_answer"], strict=True)])
        else:
            correct = pd.Series([False] * n)  # unknown; see attrs["correct_known"]
        frames.append(frame.assign(correct=correct.to_numpy(bool)))
    out = pd.concat(frames, ignore_index=True)[list(EXAMPLES_COLUMNS)]
    out = out.astype({c: d for c, d in EXAMPLES_DTYPES.items() if c in out.columns})
    out.attrs["correct_known"] = bool(correct_known)
    return out


def tokens_from_columns(
    *,
    example_ids: Sequence[Any],
    forward_kl: Sequence[float],
    reverse_kl: Sequence[float] | None = None,
    top1_agree: Sequence[bool] | None = None,
    task: str | Sequence[str] = "task",
) -> pd.DataFrame:
    """A tokens table (:data:`kdlens._schema.TOKENS_COLUMNS`) from per-token values of one student.

    Parameters
    ----------
    example_ids : sequence
        The example each token belongs to (tokens of an example share its id; ids as in
        :func:`examples_from_columns`).
    forward_kl : sequence of float
        ``KL(p_teacher || q_student)`` per token (nats).
    reverse_kl : sequence of float, optional
        ``KL(q_student || p_teacher)`` per token; NaN when not given.
    top1_agree : sequence of bool, optional
        Whether the two models' most likely tokens agree; NaN-free False when not given.
    task : str or sequence of str

    Returns
    -------
    DataFrame
        One row per token, ``model_id="student"``, ``teacher_id="teacher"``, positions numbered
        within each example in the given order.
    """
    ids = [str(i) for i in _column(example_ids, "example_ids", None)]
    n = len(ids)
    tasks = [str(t) for t in (_column(task, "task", n) if not isinstance(task, str) else [task] * n)]
    frame = pd.DataFrame({"model_id": STUDENT, "teacher_id": TEACHER, "task": tasks, "example_id": ids})
    frame["position"] = frame.groupby(["task", "example_id"]).cumcount()
    for col in ("token_id", "teacher_top1", "student_top1"):
        frame[col] = 0
    frame["top1_agree"] = [bool(v) for v in _column(top1_agree, "top1_agree", n)] if top1_agree is not None else False
    frame["forward_kl"] = np.asarray(_column(forward_kl, "forward_kl", n), dtype=float)
    frame["reverse_kl"] = (np.asarray(_column(reverse_kl, "reverse_kl", n), dtype=float)
                           if reverse_kl is not None else np.nan)
    for col in ("teacher_entropy", "student_entropy", "teacher_token_prob", "student_token_prob"):
        frame[col] = np.nan
    return frame[list(TOKENS_COLUMNS)].astype(TOKENS_DTYPES)


def as_frame(data: pd.DataFrame | None, **columns: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table a test runs on, and its column names, from either form of a call.

    With ``data`` given, each of ``columns`` must name a column of it (or be None) and they pass
    through. Without ``data``, each non-None column argument is a sequence of values; they become
    the columns of a new table, named after the argument.

    Parameters
    ----------
    data : DataFrame or None
    **columns
        The call's column arguments (e.g. ``a=..., b=...``); a list value of a name argument
        (``y=["bleu", "agreement"]``) is passed through with ``data``.

    Raises
    ------
    ValueError
        Arrays given together with ``data`` (or names without it), or arrays of different lengths.
    """
    if data is not None:
        bad = [k for k, v in columns.items() if v is not None and not _is_names(v)]
        if bad:
            raise ValueError(f"{bad} hold values, but data= is a table: give column names of data, or call without "
                             "data= to pass the values themselves")
        return data, columns
    arrays = {k: v for k, v in columns.items() if v is not None}
    if not arrays:
        raise ValueError("give data= (a table) with column names, or the values themselves as columns")
    names = [k for k, v in arrays.items() if isinstance(v, str)]
    if names:
        raise ValueError(f"{names} name columns but there is no data=; pass the table as data=, or pass values")
    n = {k: len(_column(v, k, None)) for k, v in arrays.items()}
    if len(set(n.values())) > 1:
        raise ValueError(f"columns have different lengths {n}; give one value per unit in each")
    frame = pd.DataFrame({k: _column(v, k, None) for k, v in arrays.items()})
    return frame, {k: (k if v is not None else None) for k, v in columns.items()}


def _is_names(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, Sequence) and not isinstance(value, Mapping) and all(isinstance(v, str) for v in value) \
        and len(value) > 0


def _same_as_gold(pred, gold) -> bool:
    if pred is None or pd.isna(pred) or gold is None or pd.isna(gold) or not str(gold).strip():
        return False
    return same_answer(str(pred), str(gold), infer_kind(str(gold)))
