"""Records, JSON/JSONL task files and their errors (kdlens.data._records, kdlens.data._files)."""

from __future__ import annotations

import json

import pytest

from kdlens.data import Record, load_task, load_tasks, save_records


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_record_round_trip_and_validation():
    record = Record(id="x-1", task="x", split="test", prompt="p", answer="4", rationale="r", meta={"k": [1]})
    assert Record.from_dict(record.to_dict()) == record
    assert len({record, Record.from_dict(record.to_dict())}) == 1  # hashable despite the dict meta
    assert record.to_dict() == {"id": "x-1", "task": "x", "split": "test", "prompt": "p", "answer": "4",
                                "rationale": "r", "meta": {"k": [1]}}
    with pytest.raises(ValueError, match=r"missing keys \['answer'\], unknown keys \['extra'\]"):
        Record.from_dict({"id": "a", "task": "t", "split": "test", "prompt": "p", "extra": 1})
    with pytest.raises(ValueError, match="record 'a' of task 't' has an empty answer"):
        Record(id="a", task="t", split="test", prompt="p", answer="  ")
    with pytest.raises(TypeError, match=r"Record.answer must be a str, got int \(4\)"):
        Record(id="a", task="t", split="test", prompt="p", answer=4)


def test_kd_generalization_test_sets(kd_data):
    records = load_task(str(kd_data / "math-test"))
    counts = {}
    for r in records:
        counts[r.task] = counts.get(r.task, 0) + 1
    assert counts == {"AQuA": 254, "AddSub": 395, "MultiArith": 600, "SVAMP": 1000, "SingleEq": 508, "gsm8k": 1319}
    raw = json.loads((kd_data / "math-test" / "SVAMP.json").read_text())
    svamp = [r for r in records if r.task == "SVAMP"]
    assert [r.prompt for r in svamp] == [row["instruction"] for row in raw]  # inputs are all empty
    assert [r.rationale for r in svamp] == [row["output"] for row in raw]
    assert [r.answer for r in svamp] == [row["answer"] for row in raw]
    assert svamp[3].id == "SVAMP-3" and svamp[3].split == "test"
    assert dict(svamp[3].meta) == {"source": "file", "file": "SVAMP.json", "index": 3,
                                   "answer_kind": "numeric", "scorer": "numeric"}


def test_train_file_mixes_numeric_and_letter_answers(kd_data):
    records = load_task(str(kd_data / "train" / "math_data.json"), split="train", n=10)
    assert len(records) == 10 and {r.split for r in records} == {"train"}
    assert [r.meta["answer_kind"] for r in records][6:8] == ["numeric", "choice"]
    assert records[7].answer == "C"


def test_instruction_input_and_gsm8k_hash_answers(tmp_path):
    path = _write_jsonl(tmp_path / "mini.jsonl", [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5", "answer": "5"},
        {"question": "Natalia sold 48 clips...", "answer": "She sold 48/2 = <<48/2=24>>24 more.\n#### 1,072"},
        {"instruction": "Q", "input": "", "output": "So 6 * 7 = 42.\n#### 42"},
        {"problem": "Find x.", "solution": "Thus $x = \\boxed{\\frac{1}{2}}$.", "level": "Level 2"},
    ])
    first, second, third, fourth = load_task(str(path))
    assert first.prompt == "Add the numbers.\n\n2 and 3" and first.rationale == "2 + 3 = 5" and first.answer == "5"
    assert second.rationale == "She sold 48/2 = 24 more.\n#### 1,072" and second.answer == "1072"
    assert third.answer == "42" and third.rationale == "So 6 * 7 = 42.\n#### 42"
    assert fourth.answer == "\\frac{1}{2}" and fourth.meta["answer_kind"] == "exact"
    assert fourth.meta["extra"] == {"level": "Level 2"}
    assert [r.id for r in (first, second)] == ["mini-0", "mini-1"] and first.task == "mini"


def test_save_records_round_trips_through_load_task(tmp_path, kd_data):
    records = load_task(str(kd_data / "math-test" / "AQuA.json"), n=5)
    path = save_records(records, tmp_path / "cache" / "aqua.jsonl")
    assert load_task(str(path)) == records
    assert not [p for p in path.parent.iterdir() if p.name != "aqua.jsonl"]  # no temporary left


def test_json_file_holding_json_lines(tmp_path):
    path = _write_jsonl(tmp_path / "lines.json", [{"question": "q1", "answer": "1"}, {"question": "q2", "answer": "2"}])
    assert [r.answer for r in load_task(str(path))] == ["1", "2"]


def test_n_takes_a_prefix_and_exclude_drops_prompts(kd_data):
    path = str(kd_data / "math-test" / "AddSub.json")
    every = load_task(path)
    assert load_task(path, n=7) == every[:7]
    kept = load_task(path, exclude=every[:3], n=2)
    assert kept == every[3:5]


def test_load_tasks_concatenates_and_rejects_duplicates(kd_data):
    a, b = str(kd_data / "math-test" / "AddSub.json"), str(kd_data / "math-test" / "SingleEq.json")
    both = load_tasks([a, b], n=2)
    assert [r.id for r in both] == ["AddSub-0", "AddSub-1", "SingleEq-0", "SingleEq-1"]
    with pytest.raises(ValueError, match="duplicate record id 'AddSub-0' in task 'AddSub'"):
        load_tasks([a, a], n=1)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl does not exist; pass a JSON/JSONL file"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_malformed_jsonl_line_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": 2,\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON line"):
        load_task(str(path))


def test_malformed_json_names_its_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"question": "a", "answer": "1"},\n  {"question": "b" "answer": "2"}\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json:3: malformed JSON"):
        load_task(str(path))


def test_record_without_answer_names_its_index_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "noans.jsonl", [
        {"instruction": "a", "input": "", "output": "x", "answer": "1"},
        {"instruction": "b", "input": "", "output": "no final answer here"},
    ])
    with pytest.raises(ValueError, match=r"noans\.jsonl:2 \(record 1\) has no answer"):
        load_task(str(path))
    array = tmp_path / "noans.json"
    array.write_text(json.dumps([{"question": "q", "answer": ""}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"noans\.json: record 0 has no answer"):
        load_task(str(array))


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("  \n", "is empty"),
    ("[]", "holds an empty array"),
    ('{"question": "q", "answer": "1"}', "expected a JSON array of records, got a dict"),
    ('[{"text": "hi"}]', r"record 0: unrecognized fields \['text'\]; expected one of: \{instruction, input, output, answer\}"),
    ('[{"question": ["q"], "answer": "1"}]', "field 'question' must be a string or number, got list"),
    ('[{"question": "  ", "answer": "1"}]', "record 0 has an empty prompt"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_task(str(path))


def test_bad_specs(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        load_task(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="is a directory without .json/.jsonl files"):
        load_task(str(tmp_path))
    with pytest.raises(ValueError, match="unknown split 'dev'; use one of train, validation, test"):
        load_task(str(tmp_path / "x.json"), split="dev")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        load_task(str(tmp_path / "x.json"), n=0)
    with pytest.raises(ValueError, match="config= applies to reasoning-gym tasks only"):
        load_task(str(tmp_path / "x.json"), config={"a": 1})
    with pytest.raises(ValueError, match="a task spec must be a non-empty string"):
        load_task("")
