"""Scoring that matches lm-evaluation-harness: the GSM8K filters and exact match, multiple-choice
log-likelihood (acc, acc_norm) and the harness's standard errors.

Hand cases come from the harness itself (EleutherAI/lm-evaluation-harness, commit 4e7e0d4):
lm_eval/tasks/gsm8k/gsm8k.yaml and gsm8k-cot.yaml (filters, exact_match settings, few-shot targets),
lm_eval/filters/extraction.py (RegexFilter), lm_eval/api/metrics.py (exact_match_hf_evaluate,
mean_stderr, bootstrap_stderr), lm_eval/api/task.py (multiple_choice process_results),
lm_eval/api/model.py (_encode_pair).
"""

from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest
import torch
from test_eval_doubles import ScriptedLM

from kdlens.analysis import bootstrap_stderr, harness_accuracy, mean_stderr
from kdlens.data import (
    SCORING_MODES,
    Record,
    encode_for_generation,
    harness_exact_match,
    harness_flexible_extract,
    harness_strict_match,
    harness_strict_match_cot,
    score,
    score_as,
)
from kdlens.eval import choice_predictions, evaluate, multiple_choice, read_examples, score_choices
from kdlens.eval._choices import encode_pair, loglikelihoods

# gsm8k-cot.yaml few-shot targets and their answers
COT_TARGETS = [
    ("There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6.", "6"),
    ("There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.", "5"),
    ("Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39.", "39"),
    ("There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29.", "29"),
]
# the first GSM8K training answer, the format gsm8k.yaml's strict-match reads ("#### N")
GSM8K_ANSWER = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                "altogether in April and May.\n#### 72")


@pytest.mark.parametrize("text,gold", COT_TARGETS)
def test_cot_filters_on_the_harness_few_shot_targets(text, gold):
    assert harness_strict_match_cot(text) == gold
    # flexible-extract's first alternative takes the final period with a one- or two-digit answer
    assert harness_flexible_extract(text) == gold + "."
    assert harness_strict_match(text) == "[invalid]"  # no "#### " in a CoT target
    assert harness_exact_match(harness_flexible_extract(text), gold)  # "\\.$" is ignored by exact_match


def test_gsm8k_filters_on_the_dataset_answer_format():
    assert harness_strict_match(GSM8K_ANSWER) == "72"
    assert harness_flexible_extract(GSM8K_ANSWER) == "72"
    # exact_match's "(?s).*#### " also strips a full reference down to its number
    assert harness_exact_match("72", GSM8K_ANSWER)


def test_regex_filter_semantics_by_hand():
    # strict: group_select 0 is the FIRST match; flexible: -1 is the last
    assert harness_strict_match("#### 5\nthen #### 7") == "5"
    assert harness_flexible_extract("first 12 then 34 and 56") == "56"
    # a single digit fails the 2+ characters alternative and is caught by (-?[0-9]+)
    assert harness_flexible_extract("x 5 y") == "5"
    assert harness_flexible_extract("It costs $1,000.") == "$1,000."
    assert harness_flexible_extract("it fell to -3") == "-3"
    assert harness_flexible_extract("no digits") == "[invalid]"
    assert harness_strict_match_cot("The answer is 1,234.5 apples") == "1,234.5"
    # the trailing "." of the cot pattern is any character, not a literal period
    assert harness_strict_match_cot("The answer is 7!") == "7"


def test_exact_match_is_a_string_comparison_after_the_tasks_regexes():
    assert harness_exact_match("$1,000.", "1000")
    assert harness_exact_match("ABC", "abc")  # ignore_case
    assert not harness_exact_match("5.0", "5")  # no numeric tolerance, unlike kdlens's own scoring
    assert not harness_exact_match("3/4", "0.75")
    assert not harness_exact_match(None, "5")


def _numeric(answer="72"):
    return Record(id="g-0", task="gsm8k", split="test", prompt="q", answer=answer, meta={"answer_kind": "numeric"})


def test_scoring_modes_registry_and_score_as():
    assert list(SCORING_MODES) == ["kdlens", "strict-match", "strict-match-cot", "flexible-extract"]
    text = "So 5 * 4 = 20 computers. The answer is 29."
    assert score_as(text, _numeric("29")) == score(text, _numeric("29")) == ("29", True)
    assert score_as(text, _numeric("29"), "strict-match") == (None, False)  # "[invalid]" is no answer
    assert score_as(text, _numeric("29"), "strict-match-cot") == ("29", True)
    assert score_as("The answer is 29.0", _numeric("29"), "flexible-extract") == ("29.0", False)
    assert score_as("The answer is 29.0", _numeric("29"), "kdlens") == ("29.0", True)  # |29.0 - 29| <= 1e-3
    choice = Record(id="c", task="aqua", split="test", prompt="q", answer="B")
    with pytest.raises(ValueError, match="numeric answers; task 'aqua' has choice answers.*scoring='kdlens'"):
        score_as("(B)", choice, "flexible-extract")
    with pytest.raises(ValueError, match="unknown scoring mode 'lenient'; known: kdlens, strict-match"):
        score_as("x", choice, "lenient")


def test_evaluate_records_the_mode_and_rescores_finished_shards_without_generating(tmp_path, tiny, monkeypatch):
    import kdlens.eval._evaluate as evaluate_module

    _, tokenizer = tiny
    records = [Record(id=f"g-{i}", task="gsm8k", split="test", prompt=f"What is {i} + 10?", answer=str(i + 10),
                      rationale=f"{i} + 10 = {i + 10}.\n#### {i + 10}") for i in range(3)]
    outputs = ["So 0 + 10 = 10.\n#### 10", "1 + 10 is 11.0, so 11.0", "I do not know: 12 or 13"]
    eos = tokenizer.eos_token_id
    scripts = {tuple(encode_for_generation(tokenizer, r)): tokenizer.encode(o) + [eos] for r, o in zip(records, outputs,
                                                                                                     strict=True)}
    model = ScriptedLM(scripts, vocab_size=len(tokenizer))
    calls = []
    real = evaluate_module.generate
    monkeypatch.setattr(evaluate_module, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    strict = evaluate({"m": (model, tokenizer)}, {"gsm8k": records}, scoring="strict-match", output_dir=tmp_path,
                      max_new_tokens=40)
    assert strict["pred_answer"].fillna("-").tolist() == ["10", "-", "-"]
    assert strict["correct"].tolist() == [True, False, False]
    assert strict.attrs["scoring"] == "strict-match"
    flexible = evaluate({"m": (model, tokenizer)}, {"gsm8k": records}, scoring="flexible-extract",
                        output_dir=tmp_path, max_new_tokens=40)
    assert len(calls) == 1  # the second mode re-scored the stored outputs
    assert flexible["pred_answer"].tolist() == ["10", "11.0", "13"]
    assert flexible["correct"].tolist() == [True, False, False]
    kdlens_mode = evaluate({"m": (model, tokenizer)}, {"gsm8k": records}, output_dir=tmp_path, max_new_tokens=40)
    assert kdlens_mode["correct"].tolist() == [True, True, False]
    assert read_examples(tmp_path)["correct"].tolist() == [True, True, False]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["settings"]["scoring"] == "kdlens" and manifest["tables"]["examples.parquet"]["scoring"] == "kdlens"
    with pytest.raises(ValueError, match="scoring='acc' does not apply to mode='generate'"):
        evaluate({"m": (model, tokenizer)}, {"gsm8k": records}, scoring="acc")


# --------------------------------------------------------------------------- multiple choice


def _arc(i=0, answer="2"):
    return Record(id=f"arc-{i}", task="arc", split="test", prompt="Question: Which is a planet?\nAnswer:", answer=answer,
                  meta={"choices": {"text": ["the Moon", "Mars", "the Sun"], "label": ["1", "2", "3"]}})


def _wino():
    return Record(id="w-0", task="wino", split="test", prompt="", answer="1",
                  meta={"contexts": ["The trophy did not fit in the suitcase because the trophy",
                                     "The trophy did not fit in the suitcase because the suitcase"],
                        "continuation": "was too big.", "gold": 0})


def test_multiple_choice_requests_like_the_harness():
    arc = multiple_choice(_arc())
    assert arc.pairs == [("Question: Which is a planet?\nAnswer:", " the Moon"),
                         ("Question: Which is a planet?\nAnswer:", " Mars"),
                         ("Question: Which is a planet?\nAnswer:", " the Sun")]
    assert arc.labels == ["1", "2", "3"] and arc.gold == 1 and arc.texts == ["the Moon", "Mars", "the Sun"]
    wino = multiple_choice(_wino())
    # Winogrande: the options are in the contexts, the continuation is shared, acc_norm divides by the context
    assert [c for c, _ in wino.pairs] == wino.texts and {x for _, x in wino.pairs} == {" was too big."}
    assert wino.gold == 0 and wino.labels == ["A", "B"]
    lettered = Record(id="l", task="t", split="test", prompt="Q:", answer="C", meta={"extra": {"choices": ["a", "b", "c"]}})
    assert multiple_choice(lettered).gold == 2
    with pytest.raises(ValueError, match="is not multiple-choice"):
        multiple_choice(Record(id="x", task="t", split="test", prompt="Q", answer="1"))
    with pytest.raises(ValueError, match="neither a label"):
        multiple_choice(_arc(answer="Pluto"))


def test_encode_pair_moves_the_contexts_trailing_space_and_splits_the_whole_encoding(tiny):
    _, tok = tiny  # byte-level: one token per byte
    ctx, cont = encode_pair(tok, "Answer: ", "B")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " B"
    from kdlens.models import tiny_b_tokenizer

    tok_b = tiny_b_tokenizer()
    # "The" + " answer": the whole string is encoded, then split at the context's length
    ctx, cont = encode_pair(tok_b, "The", " answer is")
    assert tok_b.convert_ids_to_tokens(cont) == ["▁answer", "▁is"]
    # an empty context is the prefix token (tiny has no BOS: EOS)
    ctx, cont = encode_pair(tok, "", " was too big.")
    assert ctx == [tok.eos_token_id] and tok.decode(cont) == " was too big."


def test_loglikelihoods_equal_a_naive_one_sequence_at_a_time_sum(tiny):
    from test_eval_doubles import varied_tiny

    model, tok = varied_tiny(0)
    pairs = multiple_choice(_arc()).pairs + multiple_choice(_wino()).pairs
    got = loglikelihoods(model, tok, pairs, batch_size=2)
    for (context, continuation), (ll, greedy, n) in zip(pairs, got, strict=True):
        ctx = tok(context.rstrip(), add_special_tokens=False)["input_ids"] if context else [tok.eos_token_id]
        full = ctx + tok(context[len(context.rstrip()):] + continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
        positions = range(len(ctx), len(full))
        assert n == len(full) - len(ctx)
        assert ll == pytest.approx(sum(float(logprobs[p - 1, full[p]]) for p in positions), abs=1e-4)
        assert greedy == all(int(logprobs[p - 1].argmax()) == full[p] for p in positions)


def test_acc_and_acc_norm_by_hand():
    rows = [{"task": "t", "example_id": "e0", "choice": j, "label": "ABC"[j], "text": text, "loglik": ll,
             "n_tokens": 1, "n_chars": len(text), "n_bytes": len(text), "is_greedy": False, "is_gold": j == 2}
            for j, (text, ll) in enumerate([("0123456789", -5.0), ("ab", -4.0), ("x" * 20, -6.0)])]
    rows += [{**r, "example_id": "e1", "loglik": -1.0, "is_gold": r["choice"] == 0} for r in rows]
    choices = pd.DataFrame(rows)
    acc = choice_predictions(choices, "acc")
    # e0: argmax(-5, -4, -6) = 1 (wrong); e1: a three-way tie goes to the first choice (np.argmax), the gold
    assert acc["choice"].tolist() == [1, 0] and acc["correct"].tolist() == [False, True]
    norm = choice_predictions(choices, "acc_norm")
    # e0: -5/10 = -0.5, -4/2 = -2, -6/20 = -0.3 -> 2 (right); e1: -1/10, -1/2, -1/20 -> 2 (wrong)
    assert norm["choice"].tolist() == [2, 2] and norm["correct"].tolist() == [True, False]
    with pytest.raises(ValueError, match="unknown multiple-choice scoring"):
        choice_predictions(choices, "acc_bytes")


def test_evaluate_in_loglikelihood_mode(tmp_path):
    from test_eval_doubles import varied_tiny

    pair = varied_tiny(0)
    records = [_arc(i) for i in range(2)] + [_wino()]
    tasks = {"arc": records[:2], "wino": records[2:]}
    choices = score_choices(*pair, records)
    assert len(choices) == 3 + 3 + 2 and choices["is_gold"].sum() == 3
    for scoring in ("acc", "acc_norm"):
        table = evaluate({"m": pair}, tasks, mode="loglikelihood", scoring=scoring, output_dir=tmp_path / scoring)
        expected = choice_predictions(choices, scoring)
        assert table["output"].tolist() == expected["text"].tolist()
        assert table["pred_answer"].tolist() == expected["label"].tolist()
        assert table["correct"].tolist() == expected["correct"].tolist()
        assert (table["finish_reason"] == "loglikelihood").all() and table.attrs["scoring"] == scoring
        gold = choices[choices["is_gold"]]
        assert table["gold_nll"].tolist() == pytest.approx((-gold["loglik"] / gold["n_tokens"]).tolist())
    with pytest.raises(ValueError, match="scoring='flexible-extract' does not apply to mode='loglikelihood'"):
        evaluate({"m": pair}, tasks, mode="loglikelihood", scoring="flexible-extract")


# --------------------------------------------------------------------------- standard errors


def test_mean_stderr_is_the_harness_formula():
    # [1, 0, 1, 1]: mean 3/4, sample variance ((3 * 1/16) + 9/16) / 3 = 1/4, stderr sqrt(1/4) / sqrt(4) = 1/4
    assert mean_stderr([1, 0, 1, 1]) == pytest.approx(0.25)
    from scipy import stats

    values = [random.Random(3).random() for _ in range(50)]
    assert mean_stderr(values) == pytest.approx(float(stats.sem(values, ddof=1)))
    assert math.isnan(mean_stderr([1.0]))


def test_bootstrap_stderr_follows_the_harness_scheme():
    values = [1.0] * 30 + [0.0] * 20
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    a = bootstrap_stderr(mean, values, iters=4000)
    assert a == bootstrap_stderr(mean, values, iters=4000)  # seeded by chunk index, as random.Random(i)
    # for a mean the harness notes its bootstrap estimates the stderr without Bessel's correction
    expected = mean_stderr(values) * math.sqrt(49 / 50)
    assert a == pytest.approx(expected, rel=0.05)
    # iters is cut to whole chunks of 1000 replicates: 2500 draws the same 2000 as iters=2000
    assert bootstrap_stderr(mean, values, iters=2500) == bootstrap_stderr(mean, values, iters=2000)


def test_harness_accuracy_table():
    table = pd.DataFrame({"model_id": ["a"] * 4 + ["b"] * 2, "task": ["t"] * 6,
                          "correct": [True, False, True, True, False, False]})
    table.attrs["scoring"] = "flexible-extract"
    out = harness_accuracy(table)
    assert out.columns.tolist() == ["model_id", "task", "metric", "value", "stderr", "n"]
    assert out["metric"].tolist() == ["flexible-extract"] * 2
    assert out["value"].tolist() == [0.75, 0.0] and out["stderr"].tolist() == pytest.approx([0.25, 0.0])
    assert out["n"].tolist() == [4, 2]
    with pytest.raises(ValueError, match="needs columns"):
        harness_accuracy(table, by=("run",))


def test_eval_cli_scoring_and_mode_options(tmp_path, capsys):
    from test_eval_doubles import varied_tiny

    from kdlens.cli import main
    from kdlens.data import save_records

    model, tokenizer = varied_tiny(0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    math_task = save_records([_numeric("5")], tmp_path / "gsm.jsonl")
    arc_task = save_records([_arc(0), _arc(1)], tmp_path / "arc.jsonl")
    base = ["eval", "--model", f"m={tmp_path / 'm'}", "--max-new-tokens", "3"]
    assert main([*base, "--task", str(math_task), "-o", str(tmp_path / "g"), "--scoring", "flexible-extract"]) == 0
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["settings"]["scoring"] == "flexible-extract"
    assert main([*base, "--task", str(arc_task), "-o", str(tmp_path / "mc"), "--mode", "loglikelihood",
                 "--scoring", "acc_norm"]) == 0
    table = read_examples(tmp_path / "mc")
    assert (table["finish_reason"] == "loglikelihood").all() and set(table["output"]) <= {"the Moon", "Mars", "the Sun"}
    assert main([*base, "--task", str(arc_task), "-o", str(tmp_path / "bad"), "--scoring", "acc"]) == 1
    assert "scoring='acc' does not apply to mode='generate'" in capsys.readouterr().err
