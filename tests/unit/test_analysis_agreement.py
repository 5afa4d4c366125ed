"""kdlens.analysis.teacher_agreement on hand-built examples and tokens tables with hand-counted rates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kdlens._schema import AGREEMENT_COLUMNS
from kdlens.analysis import agreement, answer_pairs
from kdlens.analysis._bootstrap import ratio_bootstrap_ci

# (task, example_id, teacher pred, teacher correct, student pred, student correct)
CASES = [
    ("A", "1", "5", True, "5", True),      # agree, both right
    ("A", "2", "7", False, "7", False),    # student inherits the teacher's wrong answer
    ("A", "3", "3", True, "4", False),     # disagree, student wrong
    ("A", "4", "10", False, "9", True),    # student corrects the teacher
    ("B", "1", "1", True, "1", True),
    ("B", "2", "2", False, "6", False),    # both wrong, different answers
    ("B", "3", None, False, None, False),  # no answer extracted by either: not an agreement
]


def examples() -> pd.DataFrame:
    rows = []
    for task, ex, tp, tc, sp, sc in CASES:
        rows.append({"model_id": "teacher", "task": task, "example_id": ex, "sample": 0, "pred_answer": tp,
                     "correct": tc})
        rows.append({"model_id": "student", "task": task, "example_id": ex, "sample": 0, "pred_answer": sp,
                     "correct": sc})
    # a sampled (sample=1) row must be ignored
    rows.append({"model_id": "student", "task": "A", "example_id": "1", "sample": 1, "pred_answer": "0",
                 "correct": False})
    return pd.DataFrame(rows)


EXPECTED = {  # (task, metric): (value, n)
    ("A", "answer_agreement"): (2 / 4, 4),
    ("A", "agreement_teacher_correct"): (1 / 2, 2),
    ("A", "agreement_teacher_wrong"): (1 / 2, 2),
    ("A", "inherit_wrong"): (1 / 2, 2),
    ("A", "correct_teacher"): (1 / 2, 2),
    ("B", "answer_agreement"): (1 / 3, 3),
    ("B", "agreement_teacher_correct"): (1.0, 1),
    ("B", "agreement_teacher_wrong"): (0.0, 2),
    ("B", "inherit_wrong"): (0.0, 2),
    ("B", "correct_teacher"): (0.0, 2),
    ("all", "answer_agreement"): (3 / 7, 7),
    ("all", "agreement_teacher_correct"): (2 / 3, 3),
    ("all", "agreement_teacher_wrong"): (1 / 4, 4),
    ("all", "inherit_wrong"): (1 / 4, 4),
    ("all", "correct_teacher"): (1 / 4, 4),
    ("all", "student_accuracy"): (3 / 7, 7),
    ("all", "teacher_accuracy"): (3 / 7, 7),
}


def test_answer_metrics_match_hand_counts():
    out = agreement(examples(), teacher="teacher", n_boot=200, seed=0)
    assert list(out.columns) == list(AGREEMENT_COLUMNS)
    assert set(out.model_id) == {"student"}
    table = out.set_index(["task", "metric"])
    for key, (value, n) in EXPECTED.items():
        assert table.loc[key, "value"] == pytest.approx(value), key
        assert table.loc[key, "n"] == n, key
        lo, hi = table.loc[key, ["ci_low", "ci_high"]]
        assert lo <= value + 1e-12 and value - 1e-12 <= hi, key


def test_missing_answers_never_agree():
    pairs = answer_pairs(examples(), teacher="teacher")
    row = pairs[(pairs.task == "B") & (pairs.example_id == "3")].iloc[0]
    assert not row["agree"]


def test_bootstrap_is_deterministic_under_seed_and_changes_with_it():
    a = agreement(examples(), teacher="teacher", n_boot=300, seed=11)
    b = agreement(examples(), teacher="teacher", n_boot=300, seed=11)
    c = agreement(examples(), teacher="teacher", n_boot=300, seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"].fillna(-1), c["ci_low"].fillna(-1)) or not np.allclose(
        a["ci_high"].fillna(-1), c["ci_high"].fillna(-1))


def test_bootstrap_ci_matches_normal_approximation_on_a_large_sample():
    rng = np.random.default_rng(0)
    x = (rng.random(4000) < 0.3).astype(float)
    value, lo, hi = ratio_bootstrap_ci(x, np.ones_like(x), n_boot=2000, seed=1)
    half = 1.96 * math.sqrt(value * (1 - value) / len(x))
    assert (lo, hi) == pytest.approx((value - half, value + half), abs=0.003)


def test_token_metrics_pool_tokens_and_resample_examples():
    tokens = pd.DataFrame({
        "model_id": "student", "teacher_id": "teacher", "task": "A",
        "example_id": ["1", "1", "1", "2"],
        "top1_agree": [True, True, False, False],
        "forward_kl": [0.1, 0.2, 0.3, 1.0],
        "reverse_kl": [0.0, 0.4, 0.2, 0.2],
    })
    out = agreement(examples(), teacher="teacher", tokens=tokens, n_boot=200, seed=0).set_index(["task", "metric"])
    assert out.loc[("A", "token_top1_agreement"), "value"] == pytest.approx(2 / 4)
    assert out.loc[("A", "token_forward_kl"), "value"] == pytest.approx(1.6 / 4)
    assert out.loc[("A", "token_reverse_kl"), "value"] == pytest.approx(0.8 / 4)
    assert out.loc[("A", "token_top1_agreement"), "n"] == 4
    # two examples: replicates can only be example 1 (2/3), example 2 (0), or mixes; never a token subset
    lo, hi = out.loc[("A", "token_top1_agreement"), ["ci_low", "ci_high"]]
    assert lo >= 0.0 and hi <= 2 / 3 + 1e-12


def test_bad_inputs_name_the_problem():
    ex = examples()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['pred_answer'\]"):
        agreement(ex.drop(columns=["pred_answer"]), teacher="teacher")
    with pytest.raises(ValueError, match="teacher 'gpt' is not a model_id.*known: \\['student', 'teacher'\\]"):
        agreement(ex, teacher="gpt")
    with pytest.raises(ValueError, match="no student example"):
        agreement(ex[ex.model_id == "teacher"], teacher="teacher")
    with pytest.raises(ValueError, match="confidence level"):
        agreement(ex, teacher="teacher", level=95)
    with pytest.raises(ValueError, match="duplicate"):
        agreement(pd.concat([ex, ex.iloc[:1]]), teacher="teacher")


def test_empty_denominator_gives_nan_and_zero_n():
    ex = examples()
    ex.loc[ex.model_id == "teacher", "correct"] = True  # the teacher is never wrong
    out = agreement(ex, teacher="teacher", n_boot=50).set_index(["task", "metric"])
    row = out.loc[("all", "correct_teacher")]
    assert math.isnan(row["value"]) and row["n"] == 0


def test_numeric_answers_agree_within_the_scoring_tolerance():
    ex = pd.DataFrame({
        "model_id": ["t", "t", "t", "t", "s", "s", "s", "s"],
        "task": "A", "example_id": ["1", "2", "3", "4"] * 2, "sample": 0,
        "pred_answer": ["7", "7000", "0.5", "B", "7.0", "7,000", "0.502", " B "],
        "correct": True,
    })
    pairs = answer_pairs(ex, teacher="t").set_index("example_id")
    assert pairs["agree"].to_dict() == {"1": True, "2": True, "3": False, "4": True}


# (gold, teacher pred, student pred): each pair is one answer that scoring calls correct twice
SAME_ANSWER_CASES = [
    ("0.5", "1/2", "0.5"),
    ("0.75", "3/4", "0.750"),
    ("1234", "1,234", "1234.0"),
    ("B", "(B)", "B"),
    ("C", "c", "(C)"),
    ("Paris", "Paris.", "paris"),
    ("blue green", "Blue  green", "blue green."),
]


@pytest.mark.parametrize("gold,teacher_pred,student_pred", SAME_ANSWER_CASES)
def test_two_answers_scored_correct_against_one_gold_answer_agree(gold, teacher_pred, student_pred):
    """One definition of "the same answer": agreement uses the scoring rule (issue 12, item 6)."""
    from kdlens.data import answers_equal, infer_kind

    kind = infer_kind(gold)
    assert answers_equal(teacher_pred, gold, kind) and answers_equal(student_pred, gold, kind)
    ex = pd.DataFrame({"model_id": ["t", "s"], "task": "A", "example_id": "1", "sample": 0,
                       "pred_answer": [teacher_pred, student_pred], "correct": True, "gold_answer": gold})
    assert answer_pairs(ex, teacher="t")["agree"].tolist() == [True]


def test_agreement_follows_the_gold_answers_kind():
    from kdlens.data import same_answer

    # an exact-string task: "1/2" and "0.5" are different strings there, as scoring would judge them
    ex = pd.DataFrame({"model_id": ["t", "s"], "task": "A", "example_id": "1", "sample": 0,
                       "pred_answer": ["1/2", "0.5"], "correct": False, "gold_answer": "one half"})
    assert answer_pairs(ex, teacher="t")["agree"].tolist() == [False]
    assert same_answer("1/2", "0.5") and not same_answer("1/2", "0.5", "exact")
    assert same_answer("7", "7.0004", "numeric") and not same_answer("7", "7.002", "numeric")
    assert not same_answer(None, None) and same_answer("B", "(B)")  # symmetric, None never agrees
    assert same_answer("(B)", "B") and same_answer("(b)", "B", "choice") and not same_answer("A", "B", "choice")
