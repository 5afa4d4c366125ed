"""``evaluate``: the examples table, scoring on real records, determinism, resuming, bad input."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from test_eval_doubles import ScriptedLM, scripted_logprob, varied_tiny

import kdlens.eval._evaluate as evaluate_module
from kdlens._schema import EXAMPLES_COLUMNS, EXAMPLES_DTYPES
from kdlens.data import Record, encode_for_generation, load_task, response_text
from kdlens.eval import Decoding, evaluate, gold_nll, read_examples


def _records(task="arith", n=3, rationale=True):
    return [Record(id=f"{task}-{i}", task=task, split="test", prompt=f"What is {i} + {i + 1}?",
                   answer=str(2 * i + 1), rationale=f"{i} + {i + 1} = {2 * i + 1}. The answer is {2 * i + 1}."
                   if rationale else None) for i in range(n)]


@pytest.fixture(scope="module")
def pair():
    """Two different tiny models sharing the tokenizer."""
    return {"teacher": varied_tiny(0), "student": varied_tiny(1)}


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the generation loop and of model loading inside evaluate."""
    calls = {"generate": 0, "load": 0}
    real_generate, real_load = evaluate_module.generate, evaluate_module.load

    def generate(*args, **kwargs):
        calls["generate"] += 1
        return real_generate(*args, **kwargs)

    def load(*args, **kwargs):
        calls["load"] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate", generate)
    monkeypatch.setattr(evaluate_module, "load", load)
    return calls


def test_examples_table_has_the_schema_and_consistent_values(pair):
    tasks = {"arith": _records(n=2), "plain": _records("plain", n=1, rationale=False)}
    table = evaluate(pair, tasks, max_new_tokens=5, batch_size=2)
    assert tuple(table.columns) == EXAMPLES_COLUMNS
    assert {c: str(t) for c, t in table.dtypes.items()} == EXAMPLES_DTYPES
    # ordered by model as given, task as given, record
    assert list(table["model_id"]) == ["teacher"] * 3 + ["student"] * 3
    assert list(table["example_id"][:3]) == ["arith-0", "arith-1", "plain-0"]
    assert (table["sample"] == 0).all() and (table["split"] == "test").all()
    assert table["n_output_tokens"].between(1, 5).all()
    # without a stop token a row runs to the budget; a stopped row may stop anywhere up to it
    assert (table.loc[table["finish_reason"] == "length", "n_output_tokens"] == 5).all()
    assert (table["mean_logprob"] < 0).all() and table["mean_logprob"].notna().all()
    # gold NLL: finite exactly where there is a rationale, and equal to the teacher-forced value
    assert table.loc[table["task"] == "plain", "gold_nll"].isna().all()
    assert table.loc[table["task"] == "plain", "gold_rationale"].isna().all()
    teacher_arith = table[(table["model_id"] == "teacher") & (table["task"] == "arith")]
    model, tokenizer = pair["teacher"]
    assert teacher_arith["gold_nll"].tolist() == pytest.approx(gold_nll(model, tokenizer, tasks["arith"]), abs=1e-6)
    assert teacher_arith["gold_rationale"].iloc[0] == "0 + 1 = 1. The answer is 1."
    # the two models are different, so their outputs are too
    assert table["output"][:3].tolist() != table["output"][3:].tolist()


def test_scoring_on_real_svamp_records_with_a_model_that_answers_with_the_gold_rationale(kd_data, tiny):
    _, tokenizer = tiny
    records = load_task(str(kd_data / "math-test" / "SVAMP.json"), n=4)
    eos = tokenizer.eos_token_id
    scripts = {tuple(encode_for_generation(tokenizer, r)): tokenizer.encode(response_text(r)) + [eos] for r in records}
    model = ScriptedLM(scripts, vocab_size=len(tokenizer))
    table = evaluate({"oracle": (model, tokenizer)}, {"SVAMP": records}, max_new_tokens=400, batch_size=3)
    # hand-checked against the file: the first rationale concludes 32 although the gold answer is 8
    assert table["pred_answer"].tolist() == ["32", "333", "2", "56"]
    assert table["gold_answer"].tolist() == ["8.0", "333.0", "2.0", "56.0"]
    assert table["correct"].tolist() == [False, True, True, True]
    assert table["task"].tolist() == ["SVAMP"] * 4 and table["example_id"].tolist()[0] == "SVAMP-0"
    assert table["output"].tolist() == [response_text(r) for r in records]
    assert (table["finish_reason"] == "eos").all()
    assert table["n_output_tokens"].tolist() == [len(scripts[k]) for k in scripts]  # the stop token counts
    assert table["mean_logprob"].tolist() == pytest.approx([scripted_logprob(10.0, len(tokenizer))] * 4, abs=1e-6)
    # teacher forcing on the scripted model gives uniform logits: NLL = log V per token
    assert table["gold_nll"].tolist() == pytest.approx([math.log(len(tokenizer))] * 4, abs=1e-5)


def test_greedy_results_do_not_depend_on_batch_size(pair):
    tasks = {"arith": _records(n=3)}
    models = {"teacher": pair["teacher"]}
    one = evaluate(models, tasks, max_new_tokens=5, batch_size=1)
    four = evaluate(models, tasks, max_new_tokens=5, batch_size=3)
    pd.testing.assert_frame_equal(one.drop(columns=["mean_logprob", "gold_nll"]),
                                  four.drop(columns=["mean_logprob", "gold_nll"]))
    assert one["mean_logprob"].tolist() == pytest.approx(four["mean_logprob"].tolist(), abs=1e-4)


def test_sampling_is_deterministic_under_a_seed_and_independent_of_batching(pair):
    tasks = {"arith": _records(n=2)}
    models = {"teacher": pair["teacher"]}
    decoding = {"strategy": "sample", "temperature": 1.0, "num_samples": 2, "seed": 7}
    a = evaluate(models, tasks, decoding=decoding, max_new_tokens=5, batch_size=4)
    b = evaluate(models, tasks, decoding=decoding, max_new_tokens=5, batch_size=1)
    pd.testing.assert_frame_equal(a.drop(columns=["mean_logprob", "gold_nll"]),
                                  b.drop(columns=["mean_logprob", "gold_nll"]))
    assert a["sample"].tolist() == [0, 1] * 2
    assert (a["output"].iloc[0::2].tolist() != a["output"].iloc[1::2].tolist())  # samples differ
    c = evaluate(models, tasks, decoding={**decoding, "seed": 8}, max_new_tokens=5, batch_size=4)
    assert c["output"].tolist() != a["output"].tolist()


def test_rerun_skips_finished_shards_without_loading_models(tmp_path, counted):
    models = {"teacher": "tiny"}
    first = evaluate(models, {"arith": _records(n=2)}, max_new_tokens=4, output_dir=tmp_path)
    assert counted == {"generate": 1, "load": 1}
    again = evaluate(models, {"arith": _records(n=2)}, max_new_tokens=4, output_dir=tmp_path)
    assert counted == {"generate": 1, "load": 1}  # nothing generated, the model not even loaded
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(read_examples(tmp_path), first)
    # a new task is the only work a rerun does
    both = evaluate(models, {"arith": _records(n=2), "more": _records("more", n=2)}, max_new_tokens=4,
                    output_dir=tmp_path)
    assert counted == {"generate": 2, "load": 2} and len(both) == 4
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["shards"]) == {"teacher/arith", "teacher/more"}
    assert manifest["models"] == {"teacher": "tiny"} and manifest["tasks"] == ["arith", "more"]
    assert manifest["decoding"]["strategy"] == "greedy" and manifest["settings"]["max_new_tokens"] == 4
    assert manifest["versions"]["transformers"] and manifest["tables"]["examples.parquet"]["rows"] == 4


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, counted):
    evaluate({"teacher": "tiny"}, {"arith": _records(n=2)}, max_new_tokens=4, output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different settings \(differs in \['max_new_tokens'\]\)"):
        evaluate({"teacher": "tiny"}, {"arith": _records(n=2)}, max_new_tokens=5, output_dir=tmp_path)
    table = evaluate({"teacher": "tiny"}, {"arith": _records(n=2)}, max_new_tokens=5, output_dir=tmp_path,
                     overwrite=True)
    assert counted["generate"] == 2 and table["n_output_tokens"].max() == 5


def test_a_killed_run_resumes_from_its_finished_shards(tmp_path, monkeypatch, counted):
    tasks = {"arith": _records(n=2), "more": _records("more", n=2)}
    counting_generate = evaluate_module.generate

    def dies_on_second_task(model, tokenizer, prompts, **kwargs):
        if counted["generate"] >= 1:
            raise KeyboardInterrupt  # the run is killed while generating for "more"
        return counting_generate(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate", dies_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        evaluate({"teacher": "tiny"}, tasks, max_new_tokens=4, output_dir=tmp_path)
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 1
    assert not (tmp_path / "examples.parquet").exists()
    monkeypatch.setattr(evaluate_module, "generate", counting_generate)
    table = evaluate({"teacher": "tiny"}, tasks, max_new_tokens=4, output_dir=tmp_path)
    assert counted["generate"] == 2 and table["task"].tolist() == ["arith", "arith", "more", "more"]


def test_a_missing_model_path_fails_before_any_work(tmp_path, counted):
    with pytest.raises(FileNotFoundError, match=r"model 'student': .*nope does not exist"):
        evaluate({"teacher": "tiny", "student": str(tmp_path / "nope")}, {"arith": _records()})
    assert counted == {"generate": 0, "load": 0}


def test_an_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'chain_summ'.*Did you mean chain_sum"):
        evaluate({"teacher": "tiny"}, ["chain_summ:3"])


def test_an_empty_task_is_an_error(tmp_path, counted):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty|no records"):
        evaluate({"teacher": "tiny"}, [str(empty)])
    with pytest.raises(ValueError, match=r"task 'arith' has no records"):
        evaluate({"teacher": "tiny"}, {"arith": []})
    assert counted["load"] == 0


def test_other_bad_arguments_are_named():
    with pytest.raises(ValueError, match="non-empty mapping"):
        evaluate({}, {"arith": _records()})
    with pytest.raises(ValueError, match="model id 'a/b'"):
        evaluate({"a/b": "tiny"}, {"arith": _records()})
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        evaluate({"teacher": "tiny"}, {"arith": _records()}, max_new_tokens=0)
    with pytest.raises(ValueError, match="two task specs give the same task name"):
        evaluate({"teacher": "tiny"}, {"a": _records(n=1), "b": _records(n=1)}, max_new_tokens=1)
    with pytest.raises(ValueError, match="unknown decoding strategy"):
        evaluate({"teacher": "tiny"}, {"a": _records(n=1)}, decoding="beam")
    assert Decoding.coerce("sample").strategy == "sample"


def test_a_model_retrained_in_place_is_not_mistaken_for_the_old_one(tmp_path):
    where = tmp_path / "run" / "checkpoint"
    for seed in (0, 1):
        model, tokenizer = varied_tiny(seed)
        model.save_pretrained(where)
        tokenizer.save_pretrained(where)
        if seed == 0:
            evaluate({"student": str(tmp_path / "run")}, {"arith": _records(n=1)}, max_new_tokens=2,
                     output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match=r"differs in \['weights'\]"):
        evaluate({"student": str(tmp_path / "run")}, {"arith": _records(n=1)}, max_new_tokens=2,
                 output_dir=tmp_path / "out")
