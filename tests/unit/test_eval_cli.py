"""``kdlens eval`` in-process on tiny models saved as a checkpoint directory and a run directory."""

from __future__ import annotations

import json

import pytest
from test_eval_doubles import varied_tiny

from kdlens.cli import main
from kdlens.eval import read_examples, read_tokens


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A teacher checkpoint directory, a student run directory and a JSON task of two records."""
    root = tmp_path_factory.mktemp("eval_cli")
    for seed, where in ((0, root / "teacher"), (1, root / "run" / "checkpoint")):
        model, tokenizer = varied_tiny(seed)
        model.save_pretrained(where)
        tokenizer.save_pretrained(where)
    task = root / "arith.json"
    task.write_text(json.dumps([
        {"instruction": "What is 2 + 3?", "input": "", "output": "2 + 3 = 5. The answer is 5.", "answer": "5"},
        {"instruction": "What is 4 - 1?", "input": "", "output": "4 - 1 = 3. The answer is 3.", "answer": "3"},
    ]))
    return {"teacher": root / "teacher", "student": root / "run", "task": task}


def _args(saved, out, *extra):
    return ["eval", "--model", f"teacher={saved['teacher']}", "--model", f"student={saved['student']}",
            "--task", str(saved["task"]), "--task", "chain_sum:2", "-o", str(out),
            "--max-new-tokens", "4", "--batch-size", "2", *extra]


def test_eval_writes_examples_tokens_and_manifest(saved, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(saved, out, "--tokens")) == 0
    examples = read_examples(out)
    assert len(examples) == 2 * (2 + 2)
    assert examples.groupby("model_id", sort=False).size().to_dict() == {"teacher": 4, "student": 4}
    assert examples["task"].unique().tolist() == ["arith", "chain_sum"]
    arith = examples[examples["task"] == "arith"]
    assert arith["gold_rationale"].iloc[0] == "2 + 3 = 5. The answer is 5." and arith["gold_nll"].notna().all()
    assert examples.loc[examples["task"] == "chain_sum", "gold_nll"].isna().all()  # reasoning-gym has no rationale
    tokens = read_tokens(out)
    assert (tokens["model_id"] == "student").all() and (tokens["teacher_id"] == "teacher").all()
    # one row per token of each teacher output (re-tokenized), plus EOS when the teacher stopped
    from kdlens.models import load_model

    _, tokenizer = load_model(str(saved["teacher"]))
    teacher = examples[examples["model_id"] == "teacher"]
    expected = {(r.task, r.example_id): len(tokenizer.encode(r.output)) + (r.finish_reason == "eos")
                for r in teacher.itertuples()}
    assert tokens.groupby(["task", "example_id"]).size().to_dict() == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["student"] == str(saved["student"].resolve())
    assert manifest["tasks"] == [str(saved["task"]), "chain_sum:2"]
    assert set(manifest["tables"]) == {"examples.parquet", "tokens.parquet"}
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and "tokens.parquet" in captured.out
    assert "kdlens eval: teacher / chain_sum:2: 2 rows in" in captured.err  # progress on stderr
    # a rerun reuses every shard and gives the same table
    assert main(_args(saved, out)) == 0
    assert "finished shard found, skipped" in capsys.readouterr().err
    assert read_examples(out).equals(examples)


def test_eval_sampling_options_reach_the_manifest(saved, tmp_path):
    out = tmp_path / "sampled"
    args = _args(saved, out, "--decoding", "sample", "--num-samples", "2", "--seed", "3", "--top-p", "0.9",
                 "--temperature", "0.7", "--n", "1")
    assert main(args) == 0
    examples = read_examples(out)
    assert len(examples) == 2 * 2 * 2 and sorted(examples["sample"].unique()) == [0, 1]
    decoding = json.loads((out / "manifest.json").read_text())["decoding"]
    assert decoding == {"strategy": "sample", "num_samples": 2, "seed": 3, "top_p": 0.9, "temperature": 0.7}


@pytest.mark.parametrize(("change", "message"), [
    (("--model", "student=/no/such/run"), "/no/such/run does not exist"),
    (("--model", "student"), "must look like ID=PATH"),
    (("--task", "chain_summ:2"), "unknown task 'chain_summ'"),
    (("--task", "EMPTY"), "empty|no records"),
    (("--tokens", "--teacher-id", "boss"), "no --model is named 'boss'"),
    (("--num-samples", "2"), "--num-samples needs --decoding sample"),
])
def test_bad_input_exits_1_with_a_clear_message(saved, tmp_path, capsys, change, message):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    flag, value = change if len(change) == 2 else (change[0], None)
    args = ["eval", "--model", f"teacher={saved['teacher']}", "-o", str(tmp_path / "out"), "--max-new-tokens", "2"]
    if flag == "--model":
        args += [flag, value, "--task", str(saved["task"])]
    elif flag == "--task":
        args += [flag, str(empty) if value == "EMPTY" else value]
    else:
        args += ["--model", f"student={saved['student']}", "--task", str(saved["task"]), *change]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "kdlens eval: error:" in err
    assert __import__("re").search(message, err), err
