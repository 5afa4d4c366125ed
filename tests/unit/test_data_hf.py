"""Hugging Face datasets as tasks (kdlens.data._hf), on local datasets only."""

from __future__ import annotations

import json
import sys

import pytest

from kdlens.data import load_task

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"},
    {"question": "Weng earns $12 an hour. How much for 50 minutes?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nShe earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
]


def test_missing_datasets_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="need the Hugging Face `datasets` package: pip install datasets"):
        load_task("hf:openai/gsm8k:main")


def test_saved_dataset_dict_gives_gsm8k_records(tmp_path):
    datasets = pytest.importorskip("datasets")
    local = tmp_path / "gsm8k"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(GSM8K_ROWS[:1]),
        "test": datasets.Dataset.from_list(GSM8K_ROWS),
    }).save_to_disk(str(local))
    test = load_task(f"hf:{local}")
    assert [r.answer for r in test] == ["72", "10"]
    assert test[0].prompt == GSM8K_ROWS[0]["question"]
    # calculator annotations are dropped; the "#### N" line stays
    assert test[0].rationale == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72"
    assert [r.id for r in test] == ["gsm8k-test-0", "gsm8k-test-1"] and test[0].task == "gsm8k"
    assert test[1].meta["source"] == "hf" and test[1].meta["index"] == 1 and test[1].meta["answer_kind"] == "numeric"
    train = load_task(f"hf:{local}", split="train")
    assert len(train) == 1 and train[0].split == "train"
    with pytest.raises(ValueError, match=r"has no split 'validation'; available splits: \['test', 'train'\]"):
        load_task(f"hf:{local}", split="validation")


def test_local_data_files_directory_matches_the_json_file(tmp_path, kd_data):
    pytest.importorskip("datasets")
    raw = json.loads((kd_data / "math-test" / "AQuA.json").read_text())[:5]
    local = tmp_path / "aqua"
    local.mkdir()
    (local / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    from_hf = load_task(f"hf:{local}")
    from_file = load_task(str(kd_data / "math-test" / "AQuA.json"), n=5)
    assert [(r.prompt, r.rationale, r.answer) for r in from_hf] == [(r.prompt, r.rationale, r.answer) for r in from_file]
    assert all(r.meta["answer_kind"] == "choice" for r in from_hf)


def test_unreachable_dataset_says_how_to_work_offline(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="could not load hf:kdlens-test/no-such-dataset.*save_to_disk"):
        load_task("hf:kdlens-test/no-such-dataset")


def test_bad_hf_spec():
    with pytest.raises(ValueError, match="names no dataset"):
        load_task("hf:")
