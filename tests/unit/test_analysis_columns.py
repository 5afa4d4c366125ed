"""Metrics and tests on plain columns give the numbers the command line gives on the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdlens.analysis import (
    agreement,
    correlation,
    examples_from_columns,
    fidelity,
    mcnemar,
    paired_ttest,
    tokens_from_columns,
    ttest,
    wilcoxon,
)


@pytest.fixture(scope="module")
def cli_tables(tmp_path_factory):
    """``kdlens analyze`` on a teacher and one student (the report fixture's ``kd``), and the table."""
    import _report_data as data

    from kdlens.cli import main

    root = tmp_path_factory.mktemp("columns")
    examples = data.examples(("teacher", "kd"))
    examples.to_parquet(root / "examples.parquet")
    tokens = data.tokens(("kd",))
    tokens.to_parquet(root / "tokens.parquet")
    assert main(["analyze", str(root / "examples.parquet"), "--tokens", str(root / "tokens.parquet"),
                 "--teacher", "teacher", "-o", str(root / "out"), "--n-boot", "300", "--seed", "3",
                 "--no-embedding"]) == 0
    read = {name: pd.read_csv(root / "out" / f"{name}.csv") for name in ("agreement", "fidelity", "mcnemar")}
    return examples, tokens, read


def _columns(examples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The student's and the teacher's rows, aligned by (task, example_id): plain columns from here on."""
    s = examples.loc[examples["model_id"] == "kd"].sort_values(["task", "example_id"]).reset_index(drop=True)
    t = examples.loc[examples["model_id"] == "teacher"].set_index(["task", "example_id"])
    t = t.loc[list(zip(s["task"], s["example_id"], strict=True))].reset_index()
    return s, t


def test_agreement_on_columns_equals_the_cli(cli_tables):
    examples, tokens, cli = cli_tables
    s, t = _columns(examples)
    tok = tokens_from_columns(example_ids=tokens["example_id"].tolist(), task=tokens["task"].tolist(),
                              forward_kl=tokens["forward_kl"].to_numpy(), reverse_kl=list(tokens["reverse_kl"]),
                              top1_agree=tokens["top1_agree"])
    mine = agreement(student_answers=s["pred_answer"].tolist(), teacher_answers=t["pred_answer"],
                     student_correct=s["correct"].to_numpy(), teacher_correct=list(t["correct"]),
                     task=s["task"], example_ids=s["example_id"], tokens=tok, n_boot=300, seed=3)
    theirs = cli["agreement"].assign(model_id="student")
    key = ["task", "metric"]
    merged = mine.merge(theirs, on=key, suffixes=("", "_cli"))
    assert len(merged) == len(theirs) == len(mine) == 2 * 3 * 10 // 2  # 3 scopes x (7 answer + 3 token) metrics
    for col in ("value", "ci_low", "ci_high", "n"):
        np.testing.assert_allclose(merged[col].to_numpy(float), merged[f"{col}_cli"].to_numpy(float), rtol=1e-12,
                                   equal_nan=True, err_msg=col)
    # hand check: kd gives the teacher's answer on 13 of 20 examples (data module docstring)
    assert mine.set_index(key).loc[("all", "answer_agreement"), "value"] == pytest.approx(13 / 20)


def test_agreement_of_two_answer_lists_alone(cli_tables):
    out = agreement(student_answers=["7", "7.0", None, "x", "1,000"], teacher_answers=["7", "7", None, "y", "1000"],
                    n_boot=0)
    # equal after the numeric rule: 7 == 7.0 and 1,000 == 1000; a missing answer never agrees
    assert list(out["metric"]) == ["answer_agreement", "answer_agreement"]
    assert out["value"].tolist() == pytest.approx([3 / 5, 3 / 5]) and out["n"].tolist() == [5, 5]
    graded = agreement(student_answers=["1", "2", "3"], teacher_answers=["1", "5", "3"], gold_answers=["1", "2", "4"],
                       n_boot=0).set_index(["task", "metric"])
    assert graded.loc[("all", "student_accuracy"), "value"] == pytest.approx(2 / 3)
    assert graded.loc[("all", "inherit_wrong"), "value"] == pytest.approx(1.0)  # the one miss is the teacher's


def test_fidelity_on_columns_equals_the_cli(cli_tables):
    examples, _, cli = cli_tables
    s, t = _columns(examples)
    mine = fidelity(student_outputs=s["output"], teacher_outputs=t["output"], gold_rationales=s["gold_rationale"],
                    task=s["task"], example_ids=s["example_id"], metrics=("bleu", "rouge_l"))
    theirs = cli["fidelity"].loc[cli["fidelity"]["model_id"] == "kd"]
    merged = mine.merge(theirs.assign(example_id=theirs["example_id"].astype(str)),
                        on=["reference", "task", "example_id"], suffixes=("", "_cli"))
    assert len(merged) == len(theirs) == len(mine) == 40  # 20 examples x {teacher, gold}
    for col in ("bleu", "rouge_l"):
        np.testing.assert_allclose(merged[col], merged[f"{col}_cli"], rtol=1e-12)
    with pytest.raises(ValueError, match="needs teacher_outputs= and/or gold_rationales="):
        fidelity(student_outputs=["a"])


def test_mcnemar_on_columns_equals_the_cli(cli_tables):
    examples, _, cli = cli_tables
    s, t = _columns(examples)
    mine = mcnemar(a=s["correct"], b=t["correct"].to_numpy(), by=s["task"].tolist())
    overall = mcnemar(a=list(s["correct"]), b=list(t["correct"]))
    theirs = cli["mcnemar"].set_index("task")
    for task, row in [*((r["by"], r) for _, r in mine.iterrows()), ("all", overall.iloc[0])]:
        for col in ("statistic", "p_val", "p_adj", "effect_size", "n", "n_a_only", "n_b_only"):
            assert row[col] == pytest.approx(theirs.loc[task, col], nan_ok=True), (task, col)


def test_every_test_takes_columns_and_matches_its_table_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 25), rng.normal(0, 1, 25)
    table = pd.DataFrame({"a": a, "b": b})
    pairs = [(ttest(dv=a), ttest(table, dv="a")), (paired_ttest(a=a, b=b), paired_ttest(table, a="a", b="b")),
             (wilcoxon(a=list(a), b=pd.Series(b)), wilcoxon(table, a="a", b="b")),
             (correlation(x=a, y=b, method=["spearman", "pearson"]), correlation(table.rename(columns={
                 "a": "x", "b": "y"}), x="x", y="y", method=["spearman", "pearson"]))]
    for from_columns, from_table in pairs:
        pd.testing.assert_frame_equal(from_columns, from_table)
    with pytest.raises(ValueError, match="columns have different lengths"):
        ttest(dv=[1.0, 2.0, 3.0], by=["x", "y"])
    with pytest.raises(ValueError, match="hold values, but data= is a table"):
        ttest(table, dv=[1.0, 2.0])
    with pytest.raises(ValueError, match="name columns but there is no data="):
        ttest(dv="a")


def test_adapters_build_valid_kdlens_tables():
    from kdlens._schema import EXAMPLES_COLUMNS, TOKENS_COLUMNS

    ex = examples_from_columns(student_answers=[1, 2], teacher_answers=[1, 3], gold_answers=["1", "3"], task="t")
    assert list(ex.columns) == list(EXAMPLES_COLUMNS) and len(ex) == 4 and ex.attrs["correct_known"]
    assert ex["correct"].tolist() == [True, False, True, True]
    tok = tokens_from_columns(example_ids=[0, 0, 1], forward_kl=[0.1, 0.3, 0.2])
    assert list(tok.columns) == list(TOKENS_COLUMNS) and tok["position"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="teacher_answers has 1 values but the other columns have 2"):
        examples_from_columns(student_answers=[1, 2], teacher_answers=[1])
    with pytest.raises(ValueError, match="example_ids repeat within a task"):
        examples_from_columns(student_answers=[1, 2], teacher_answers=[1, 2], example_ids=["a", "a"])
