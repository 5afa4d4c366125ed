"""Storage of the eval tables: schema enforcement, parquet round trips, shard fingerprints, manifest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kdlens._io import sha256_file
from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES, TOKENS_COLUMNS, TOKENS_DTYPES
from kdlens._tables import conform, read_examples, read_parquet_metadata, write_parquet
from kdlens.eval._store import Manifest, load_shard, shard_path


def _example_row(**overrides):
    row = {
        "model_id": "teacher", "task": "SVAMP", "split": "test", "example_id": "SVAMP-0", "sample": 0,
        "prompt": "How many?", "output": "The answer is 3.", "pred_answer": "3", "gold_answer": "3.0",
        "correct": True, "n_output_tokens": 7, "finish_reason": "eos", "mean_logprob": -0.5,
        "gold_nll": float("nan"), "gold_rationale": None,
    }
    row.update(overrides)
    return row


def test_conform_orders_columns_and_casts_to_schema_dtypes():
    rows = [_example_row(), _example_row(example_id="SVAMP-1", pred_answer=None, correct=False, sample=np.int32(1))]
    shuffled = pd.DataFrame(rows)[list(reversed(EXAMPLES_COLUMNS))]
    table = conform(shuffled, EXAMPLES_COLUMNS, EXAMPLES_DTYPES)
    assert tuple(table.columns) == EXAMPLES_COLUMNS
    assert {c: str(t) for c, t in table.dtypes.items()} == EXAMPLES_DTYPES
    assert table["pred_answer"].isna().tolist() == [False, True]  # None stays missing, not "None"
    assert table["gold_rationale"].isna().all()
    assert table["sample"].tolist() == [0, 1]


def test_conform_names_missing_and_unexpected_columns():
    frame = pd.DataFrame([_example_row()]).drop(columns=["gold_nll"]).assign(extra=1)
    with pytest.raises(ValueError, match=r"missing \['gold_nll'\], unexpected \['extra'\]"):
        conform(frame, EXAMPLES_COLUMNS, EXAMPLES_DTYPES)


def test_conform_rejects_values_that_do_not_fit_the_dtype():
    with pytest.raises(ValueError, match="'n_output_tokens' cannot be stored as int64"):
        conform([_example_row(n_output_tokens="seven")], EXAMPLES_COLUMNS, EXAMPLES_DTYPES)


def test_empty_tokens_table_has_the_schema():
    table = conform([], TOKENS_COLUMNS, TOKENS_DTYPES)
    assert len(table) == 0 and tuple(table.columns) == TOKENS_COLUMNS
    assert {c: str(t) for c, t in table.dtypes.items()} == TOKENS_DTYPES


def test_parquet_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    table = conform([_example_row(), _example_row(example_id="SVAMP-1", gold_nll=1.25, gold_rationale="3 = 3")],
                    EXAMPLES_COLUMNS, EXAMPLES_DTYPES)
    path = write_parquet(table, tmp_path / "examples.parquet", metadata={"fingerprint": {"n": 2}})
    back = read_examples(tmp_path)  # a directory resolves to its examples.parquet
    pd.testing.assert_frame_equal(back, table)
    assert read_parquet_metadata(path) == {"fingerprint": {"n": 2}}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_read_examples_reports_a_file_with_the_wrong_schema(tmp_path):
    pd.DataFrame({"model_id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: table columns do not match the schema"):
        read_examples(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_examples(tmp_path / "missing.parquet")


def test_shard_paths_never_collide_even_when_names_slug_alike(tmp_path):
    a = shard_path(tmp_path, "student", "math/SVAMP.json")
    b = shard_path(tmp_path, "student", "math-SVAMP.json")
    assert a != b and a.parent == b.parent == tmp_path / "shards"
    assert a == shard_path(tmp_path, "student", "math/SVAMP.json")  # stable


def test_load_shard_skips_matching_and_refuses_other_settings(tmp_path):
    table = conform([_example_row()], EXAMPLES_COLUMNS, EXAMPLES_DTYPES)
    path = shard_path(tmp_path, "teacher", "SVAMP")
    fingerprint = {"model": "tiny", "decoding": {"strategy": "greedy"}, "n": 1}
    assert load_shard(path, fingerprint, EXAMPLES_COLUMNS, EXAMPLES_DTYPES) is None  # not written yet
    write_parquet(table, path, metadata={"fingerprint": fingerprint})
    pd.testing.assert_frame_equal(load_shard(path, dict(fingerprint), EXAMPLES_COLUMNS, EXAMPLES_DTYPES), table)
    other = {**fingerprint, "n": 5}
    with pytest.raises(ValueError, match=r"different settings \(differs in \['n'\]\).*overwrite=True"):
        load_shard(path, other, EXAMPLES_COLUMNS, EXAMPLES_DTYPES)
    assert load_shard(path, other, EXAMPLES_COLUMNS, EXAMPLES_DTYPES, overwrite=True) is None


def test_manifest_records_run_versions_and_shard_hashes(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.record_run(models={"teacher": "tiny"}, tasks=["SVAMP"], decoding={"strategy": "greedy"},
                        settings={"n": 1})
    path = write_parquet(conform([_example_row()], EXAMPLES_COLUMNS, EXAMPLES_DTYPES),
                         shard_path(tmp_path, "teacher", "SVAMP"))
    manifest.add_shard("teacher", "SVAMP", path, 1, {"n": 1})
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["models"] == {"teacher": "tiny"} and data["tasks"] == ["SVAMP"]
    assert data["versions"]["torch"] and data["versions"]["python"]
    shard = data["shards"]["teacher/SVAMP"]
    assert shard["sha256"] == sha256_file(path) and shard["rows"] == 1
    assert shard["path"].startswith("shards/")
    # a second run keeps the first run's shard entries and creation time
    again = Manifest(tmp_path)
    again.record_run(models={"student": "tiny"}, tasks=["SVAMP"], decoding={}, settings={})
    data2 = json.loads((tmp_path / "manifest.json").read_text())
    assert "teacher/SVAMP" in data2["shards"] and data2["created"] == data["created"]


def test_shard_names_stay_readable_for_long_task_paths(tmp_path):
    path = shard_path(tmp_path, "teacher", "/work/shared/data/kd-generalization/math-test/SVAMP.json")
    assert path.name.startswith("teacher__") and "SVAMP.json__" in path.name
