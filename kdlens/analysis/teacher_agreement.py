"""Teacher-student agreement: answers from examples tables, tokens from tokens tables.

The unit of analysis is an example (greedy ``sample == 0``); token metrics nest tokens in their
example, so their bootstrap resamples examples too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kdlens._schema import AGREEMENT_COLUMNS
from kdlens.analysis._bootstrap import ratio_bootstrap_ci
from kdlens.analysis._validate import require_columns, require_level, require_nonempty
from kdlens.analysis.columns import TEACHER, examples_from_columns
from kdlens.data import NUMERIC_TOLERANCE, infer_kind, same_answer

__all__ = ["ANSWER_METRICS", "NUMERIC_TOLERANCE", "TOKEN_METRICS", "agreement", "answer_pairs"]

ALL_TASKS = "all"

#: metric -> (numerator event, denominator event), both over the paired examples
ANSWER_METRICS: dict[str, str] = {
    "answer_agreement": "student answer == teacher answer, over all examples",
    "agreement_teacher_correct": "student answer == teacher answer, over examples the teacher got right",
    "agreement_teacher_wrong": "student answer == teacher answer, over examples the teacher got wrong",
    "inherit_wrong": "teacher wrong and student answer == teacher answer, over examples the student got wrong "
                     "(the share of the student's errors copied from the teacher)",
    "correct_teacher": "student right, over examples the teacher got wrong (the student corrects the teacher)",
    "student_accuracy": "student right, over all examples",
    "teacher_accuracy": "teacher right, over all examples",
}

#: token metric -> tokens-table column averaged over response tokens
TOKEN_METRICS: dict[str, str] = {
    "token_top1_agreement": "top1_agree",
    "token_forward_kl": "forward_kl",
    "token_reverse_kl": "reverse_kl",
}

_KEYS = ["task", "example_id"]


def answer_pairs(examples: pd.DataFrame, *, teacher: str) -> pd.DataFrame:
    """Pair each student's greedy answer with the teacher's on the same (task, example_id).

    Parameters
    ----------
    examples : DataFrame
        Examples table (``kdlens._schema.EXAMPLES_COLUMNS``); needs ``model_id, task, example_id,
        sample, pred_answer, correct``. Only ``sample == 0`` rows are used.
    teacher : str
        The teacher's ``model_id``.

    Returns
    -------
    DataFrame
        One row per (model_id, task, example_id) with ``student_pred, teacher_pred,
        student_correct, teacher_correct, agree``. Two answers agree when they are the same answer
        by :func:`kdlens.data.same_answer`, the very rule that scores them against the gold answer
        (numbers within ``NUMERIC_TOLERANCE`` = 1e-3, ``"1/2"`` = ``"0.5"``; the same choice letter,
        ``"(B)"`` = ``"B"``; strings equal up to case, whitespace and a final period), under the
        answer kind of the example's ``gold_answer`` (inferred from the two answers when the table
        has no gold answer). A missing prediction (no answer extracted) never agrees, not even with
        another missing one.
    """
    require_columns(examples, ["model_id", *_KEYS, "sample", "pred_answer", "correct"], what="examples")
    greedy = examples.loc[examples["sample"] == 0]
    require_nonempty(greedy, what="examples with sample == 0")
    models = sorted(map(str, greedy["model_id"].unique()))
    if teacher not in models:
        raise ValueError(f"teacher {teacher!r} is not a model_id of the examples; known: {models}")
    if greedy.duplicated(["model_id", *_KEYS]).any():
        raise ValueError("examples have duplicate (model_id, task, example_id) rows at sample 0")
    gold = ["gold_answer"] if "gold_answer" in greedy.columns else []
    cols = [*_KEYS, "pred_answer", "correct"]
    t = greedy.loc[greedy["model_id"] == teacher, cols + gold].rename(
        columns={"pred_answer": "teacher_pred", "correct": "teacher_correct"})
    s = greedy.loc[greedy["model_id"] != teacher, ["model_id", *cols]].rename(
        columns={"pred_answer": "student_pred", "correct": "student_correct"})
    pairs = s.merge(t, on=_KEYS, how="inner")
    for col in ("student_pred", "teacher_pred"):
        pairs[col] = pairs[col].astype("string").str.strip()
    kinds = [_kind(g) for g in pairs["gold_answer"]] if gold else [None] * len(pairs)
    pairs["agree"] = [same_answer(_text(a), _text(b), k)
                      for a, b, k in zip(pairs["student_pred"], pairs["teacher_pred"], kinds, strict=True)]
    pairs["agree"] = pairs["agree"].astype(bool)
    pairs = pairs.drop(columns=gold)
    for col in ("student_correct", "teacher_correct"):
        pairs[col] = pairs[col].astype(bool)
    return pairs.sort_values(["model_id", *_KEYS]).reset_index(drop=True)


def _text(value) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _kind(gold) -> str | None:
    text = _text(gold)
    return infer_kind(text) if text is not None and text.strip() else None


def _answer_indicators(p: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    agree = p["agree"].to_numpy(bool)
    s_ok, t_ok = p["student_correct"].to_numpy(bool), p["teacher_correct"].to_numpy(bool)
    ones = np.ones(len(p), dtype=bool)
    return {
        "answer_agreement": (agree, ones),
        "agreement_teacher_correct": (agree & t_ok, t_ok),
        "agreement_teacher_wrong": (agree & ~t_ok, ~t_ok),
        "inherit_wrong": (agree & ~t_ok & ~s_ok, ~s_ok),
        "correct_teacher": (s_ok & ~t_ok, ~t_ok),
        "student_accuracy": (s_ok, ones),
        "teacher_accuracy": (t_ok, ones),
    }


def _token_per_example(tokens: pd.DataFrame, teacher: str) -> pd.DataFrame:
    needed = ["model_id", "teacher_id", *_KEYS, *TOKEN_METRICS.values()]
    require_columns(tokens, needed, what="tokens")
    tok = tokens.loc[tokens["teacher_id"] == teacher]
    if tok.empty:
        known = sorted(map(str, tokens["teacher_id"].unique()))
        raise ValueError(f"tokens table has no rows with teacher_id {teacher!r}; known: {known}")
    values = tok[list(TOKEN_METRICS.values())].astype("float64")
    if not np.isfinite(values.to_numpy()).all():
        raise ValueError("tokens table has NaN or infinite values in top1_agree/forward_kl/reverse_kl")
    grouped = values.assign(model_id=tok["model_id"], task=tok["task"], example_id=tok["example_id"]).groupby(
        ["model_id", *_KEYS], sort=True)
    per = grouped.sum()
    per["n_tokens"] = grouped.size()
    return per.reset_index()


def agreement(
    examples: pd.DataFrame | None = None,
    *,
    teacher: str | None = None,
    tokens: pd.DataFrame | None = None,
    students: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    student_answers: Sequence[Any] | None = None,
    teacher_answers: Sequence[Any] | None = None,
    student_correct: Sequence[bool] | None = None,
    teacher_correct: Sequence[bool] | None = None,
    gold_answers: Sequence[Any] | None = None,
    task: str | Sequence[str] = "task",
    example_ids: Sequence[Any] | None = None,
) -> pd.DataFrame:
    r"""Answer and token agreement of each student with the teacher, per task and overall.

    Two call forms: a kdlens examples table and the teacher's ``model_id``
    (``agreement(examples, teacher="teacher")``), or one student's and its teacher's answers as
    plain columns (``agreement(student_answers=[...], teacher_answers=[...])``, lists, arrays or
    pandas Series, built into a table by :func:`kdlens.analysis.columns.examples_from_columns`;
    the student is ``model_id="student"``). Both give the same numbers on the same rows.

    Parameters
    ----------
    examples : DataFrame, optional
        Examples table holding the teacher's and the students' greedy outputs.
    teacher : str
        The teacher's ``model_id`` (required with ``examples``; ``"teacher"`` in the column form).
    tokens : DataFrame, optional
        Tokens table (``kdlens._schema.TOKENS_COLUMNS``) for token-level metrics; per-token values
        from elsewhere go through :func:`kdlens.analysis.columns.tokens_from_columns`.
    students : list of str, optional
        Restrict to these ``model_id`` values (default: every model but the teacher).
    n_boot : int
        Bootstrap replicates for the CIs (0: no CI).
    seed : int
        Seed of the bootstrap; the same data and seed give identical CIs.
    level : float
        Two-sided confidence level.
    student_answers, teacher_answers : sequence, optional
        The column form: extracted answers, one per example (None or NaN: no answer).
    student_correct, teacher_correct, gold_answers : sequence, optional
        The column form's correctness (see :func:`~kdlens.analysis.columns.examples_from_columns`).
        Without any of them only ``answer_agreement`` (and the token metrics) can be computed, and
        only those rows are returned.
    task, example_ids : optional
        The column form's task name(s) and example ids.

    Returns
    -------
    DataFrame
        ``kdlens._schema.AGREEMENT_COLUMNS`` (``model_id, task, metric, value, ci_low, ci_high,
        n``); ``task="all"`` pools the tasks. ``value`` is a rate in [0, 1] (or a mean KL in nats)
        and ``n`` the number of examples in its denominator (tokens for token metrics). Metrics
        are defined in :data:`ANSWER_METRICS` and :data:`TOKEN_METRICS`.

    Notes
    -----
    Every value is ``sum(num_i) / sum(den_i)`` over examples ``i``; CIs are percentile bootstrap
    over examples, resampled within task for ``task="all"``. A metric with an empty denominator
    (e.g. the teacher is never wrong) has value NaN and ``n = 0``.

    Each value is :math:`\hat\theta = \sum_i \mathrm{num}_i / \sum_i \mathrm{den}_i`; its interval is
    the :math:`[\alpha/2, 1 - \alpha/2]` percentile interval of :math:`\hat\theta^*` over ``n_boot``
    resamples of the examples (the percentile bootstrap). Agreement and the inherited errors are the
    paradox paper's measures.

    References: Ramesh, Sengupta and Chakraborty 2025, Findings of ACL (``ramesh2025generalization``);
    Efron 1979, the bootstrap (``efron1979bootstrap``). ``kdlens cite`` prints these entries for a run
    that used this function (:mod:`kdlens.citations`).
    """
    require_level(level)
    correct_known = True
    if student_answers is not None or teacher_answers is not None:
        if examples is not None:
            raise ValueError("give either an examples table or student_answers/teacher_answers, not both")
        if student_answers is None or teacher_answers is None:
            raise ValueError("the column form needs both student_answers and teacher_answers")
        examples = examples_from_columns(student_answers=student_answers, teacher_answers=teacher_answers,
                                         student_correct=student_correct, teacher_correct=teacher_correct,
                                         gold_answers=gold_answers, task=task, example_ids=example_ids)
        correct_known, teacher = examples.attrs["correct_known"], teacher or TEACHER
    if examples is None or teacher is None:
        raise ValueError("agreement needs an examples table and teacher= (its model_id), or student_answers= and "
                         "teacher_answers=")
    pairs = answer_pairs(examples, teacher=teacher)
    if students is not None:
        unknown = sorted(set(students) - set(pairs["model_id"]))
        if unknown:
            raise ValueError(f"student(s) {unknown} have no examples paired with teacher {teacher!r}; "
                             f"known: {sorted(set(pairs['model_id']))}")
        pairs = pairs.loc[pairs["model_id"].isin(list(students))]
    if pairs.empty:
        raise ValueError(f"no student example shares (task, example_id) with teacher {teacher!r}")
    token_rows = _token_per_example(tokens, teacher) if tokens is not None else None

    rows = []

    def emit(model, task, metric, num, den, strata):
        value, low, high = ratio_bootstrap_ci(num, den, strata=strata, n_boot=n_boot, seed=seed, level=level)
        rows.append((model, task, metric, value, low, high, int(np.asarray(den).sum())))

    for model, mp in pairs.groupby("model_id", sort=True):
        scopes = [(task, tp) for task, tp in mp.groupby("task", sort=True)] + [(ALL_TASKS, mp)]
        for task, part in scopes:
            strata = part["task"].to_numpy() if task == ALL_TASKS else None
            for metric, (num, den) in _answer_indicators(part).items():
                emit(model, task, metric, num.astype(float), den.astype(float), strata)
        if token_rows is None:
            continue
        mt = token_rows.loc[token_rows["model_id"] == model]
        if mt.empty:
            continue
        scopes = [(task, tp) for task, tp in mt.groupby("task", sort=True)] + [(ALL_TASKS, mt)]
        for task, part in scopes:
            strata = part["task"].to_numpy() if task == ALL_TASKS else None
            for metric, column in TOKEN_METRICS.items():
                emit(model, task, metric, part[column].to_numpy(float), part["n_tokens"].to_numpy(float), strata)

    out = pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))
    if not correct_known:  # answers only: the metrics that need correctness cannot be computed
        out = out.loc[~out["metric"].isin(list(ANSWER_METRICS)) | (out["metric"] == "answer_agreement")]
        out = out.reset_index(drop=True)
    out["n"] = out["n"].astype("int64")
    out.attrs.update({"teacher": teacher, "n_boot": n_boot, "seed": seed, "level": level})
    return out
