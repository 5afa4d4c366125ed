"""``kdlens analyze`` end to end on a hand-built examples table (in-process)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdlens._schema import AGREEMENT_COLUMNS, FIDELITY_COLUMNS
from kdlens.cli import main


def _examples() -> pd.DataFrame:
    rows = []
    for i in range(6):
        gold = str(i)
        rows.append(("teacher", "A", str(i), f"so the answer is {gold}", gold, True))
        pred = gold if i < 4 else "99"
        rows.append(("student", "A", str(i), f"thus the answer is {pred}", pred, pred == gold))
    frame = pd.DataFrame(rows, columns=["model_id", "task", "example_id", "output", "pred_answer", "correct"])
    return frame.assign(sample=0, gold_rationale=None)


def test_analyze_writes_tables_and_manifest(tmp_path):
    src = tmp_path / "examples.parquet"
    _examples().to_parquet(src)
    out = tmp_path / "analysis"
    argv = ["analyze", str(src), "--teacher", "teacher", "-o", str(out), "--n-boot", "50", "--no-embedding"]
    assert main(argv) == 0
    agree = pd.read_csv(out / "agreement.csv")
    assert list(agree.columns) == list(AGREEMENT_COLUMNS)
    row = agree[(agree.task == "all") & (agree.metric == "answer_agreement")].iloc[0]
    assert row["value"] == pytest.approx(4 / 6) and row["n"] == 6
    fid = pd.read_csv(out / "fidelity.csv")
    assert list(fid.columns) == list(FIDELITY_COLUMNS) and len(fid) == 6
    mc = pd.read_csv(out / "mcnemar.csv")
    overall = mc[mc.task == "all"].iloc[0]
    # teacher right on all 6, student wrong on 2: discordant (student only, teacher only) = (0, 2)
    assert (overall["n_a_only"], overall["n_b_only"]) == (0, 2) and overall["p_val"] == pytest.approx(0.5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"] == "teacher" and manifest["bleu_signature"].startswith("nrefs:1")
    # an existing output directory is not replaced silently
    assert main(argv) == 1
    assert main([*argv, "--overwrite"]) == 0


def test_analyze_bad_path_is_one_line_error(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope.parquet"), "--teacher", "t", "-o", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
