"""The lab tasks: deterministic generators, disjoint splits by construction, rationales that score correct."""

from __future__ import annotations

import re

import pytest

from kdlens.data import TASKS, load_task, load_tasks, score
from kdlens.data._lab import HELD_OUT_OPERANDS, LAB_TASKS, expression_split, lab_number

NAMES = sorted(LAB_TASKS)
SPLITS = ("train", "validation", "test", "gen")


def _expressions(records):
    return {(tuple(r.meta["operands"]), tuple(r.meta["ops"])) for r in records}


def _read(text: str, order: str) -> int:
    return int(text[::-1] if order == "lsd" else text)


def test_lab_notation_writes_the_least_significant_digit_first():
    assert [lab_number(v) for v in (81, 7, 70, 100, 0)] == ["18", "7", "07", "001", "0"]
    assert lab_number(81, "msd") == "81"


def test_exact_scoring_tells_70_from_7_in_lab_notation():
    # "07" is seventy: a numeric comparison would take it for 7
    record = load_task("lab_pair:1", seed=0)[0]
    seventy = type(record)(id="x", task="lab_pair", split="test", prompt="53+71", answer="07",
                           rationale="53+71=07\n07", meta=record.meta)
    assert score("53+71=07\n07", seventy) == ("07", True)
    assert score("53+71=7\n7", seventy) == ("7", False)


@pytest.mark.parametrize("name", NAMES)
def test_generation_is_deterministic_and_seeded(name):
    a = load_task(f"{name}:40", split="train", seed=3)
    assert a == load_task(f"{name}:40", split="train", seed=3)
    assert [r.prompt for r in load_task(f"{name}:40", split="train", seed=4)] != [r.prompt for r in a]
    # a smaller draw is a prefix of a larger one, and n= keeps a prefix
    assert load_task(f"{name}:10", split="train", seed=3) == a[:10] == load_task(f"{name}:40", split="train", seed=3,
                                                                                n=10)
    assert [r.id for r in a[:2]] == [f"{name}-train-3-0", f"{name}-train-3-1"]
    assert len({r.prompt for r in a}) == len(a)


def test_the_first_items_are_pinned():
    # a change of the generator must bump LAB_VERSION (these strings are what published results used)
    second = load_task("lab_chain:2", split="train", seed=0)[1]
    assert (second.prompt, second.rationale, second.answer) == ("64-3-3-2", "64-3=34;34-3=04;04-2=83\n83", "83")
    assert second.meta["value"] == 46 - 3 - 3 - 2 and second.meta["digit_order"] == "lsd"
    word = load_task("lab_word:1", split="gen", seed=0)[0]
    assert (word.prompt, word.rationale) == ("Eva has 68 pens. She drops 11. How many pens does Eva have now?",
                                             "68-11=57\n57")


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint_whatever_the_seed(name):
    drawn = {split: [_expressions(load_task(f"{name}:300", split=split, seed=s)) for s in (0, 1)] for split in SPLITS}
    expressions = {split: set().union(*sets) for split, sets in drawn.items()}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            assert not expressions[first] & expressions[second], (first, second)
    for split, found in expressions.items():
        held = [sum(v in HELD_OUT_OPERANDS for v in operands) for operands, _ in found]
        assert set(held) == ({1} if split == "gen" else {0})
        assert {expression_split(*e) for e in found} == {split}


def test_no_test_expression_of_the_target_is_a_training_expression_of_a_related_task():
    test = _expressions(load_task("lab_chain:1000", split="test", seed=0))
    for related in ("lab_add", "lab_pair", "lab_word"):
        assert not test & _expressions(load_task(f"{related}:1000", split="train", seed=0))
    # the split of an expression is a property of the expression alone
    assert expression_split((23, 58, 7), ("+", "-")) == expression_split([23, 58, 7], ["+", "-"])
    assert expression_split((13, 5), ("+",)) == "gen" and expression_split((5, 13), ("-",)) == "gen"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", SPLITS)
def test_every_rationale_is_right_and_scores_correct(name, split):
    task = LAB_TASKS[name]
    order = task.digit_order
    for record in load_task(f"{name}:200", split=split, seed=5):
        assert score(record.rationale, record) == (record.answer, True)
        steps, answer_line = record.rationale.split("\n")
        operands, ops = record.meta["operands"], record.meta["ops"]
        assert task.min_terms <= len(operands) <= task.max_terms and set(ops) <= set(task.ops)
        assert all(1 <= v <= 99 for v in operands)
        value = operands[0]
        for step, op, operand in zip(steps.split(";"), ops, operands[1:], strict=True):
            left, right, result = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", step).group(1, 3, 4)
            assert (_read(left, order), step[len(left)], _read(right, order)) == (value, op, operand)
            value = value + operand if op == "+" else value - operand
            assert value >= 0 and _read(result, order) == value
        assert answer_line == record.answer == lab_number(value, order) and record.meta["value"] == value
        # the prompt writes the same numbers in the same notation
        assert [_read(n, order) for n in re.findall(r"\d+", record.prompt)] == operands


def test_word_problems_say_each_operation_in_words():
    for record in load_task("lab_word:100", split="test", seed=0):
        sentences = record.prompt.split(". ")
        assert sentences[0].startswith(record.meta["name"] + " has ") and record.prompt.endswith("?")
        gains = [s for s in sentences if re.search(r"\b(buys|finds|gets|wins) \d+ more", s)]
        losses = [s for s in sentences if re.search(r"\b(loses|gives away|sells|drops) \d+", s)]
        assert len(gains) == record.meta["ops"].count("+") and len(losses) == record.meta["ops"].count("-")


def test_the_registry_serves_lab_tasks():
    assert {"lab_chain", "lab_add", "lab_pair", "lab_word", "lab_chain_msd"} <= set(TASKS)
    info = TASKS["lab_chain"]
    assert (info.answer_kind, info.scorer, info.source) == ("exact", "exact", "kdlens_lab")
    both = load_tasks(["lab_chain:5", "lab_add:5"], split="test", seed=0)
    assert [r.task for r in both] == ["lab_chain"] * 5 + ["lab_add"] * 5
    msd = load_task("lab_chain:5", split="test", seed=0, config={"digit_order": "msd"})
    assert {r.meta["digit_order"] for r in msd} == {"msd"}
    short = load_task("lab_chain:50", split="test", seed=0, config={"max_terms": 2})
    assert {r.meta["n_terms"] for r in short} == {2}


def test_exclude_drops_prompts_and_keeps_the_size():
    train = load_task("lab_pair:30", split="train", seed=0)
    kept = load_task("lab_pair:30", split="train", seed=0, exclude=train[:10])
    assert len(kept) == 30 and not {r.prompt for r in kept} & {r.prompt for r in train[:10]}
    assert [r.prompt for r in kept[:20]] == [r.prompt for r in train[10:]]


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "holdout"}, "unknown split"),
    ({"config": {"min_terms": 1}}, "2 <= min_terms"),
    ({"config": {"colour": "red"}}, "unknown config key"),
    ({"config": {"digit_order": "big"}}, "digit_order"),
])
def test_bad_arguments_fail_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_task("lab_chain:5", **kwargs)


def test_gen_split_is_for_lab_tasks_only():
    with pytest.raises(ValueError, match="lab tasks only"):
        load_task("chain_sum:5", split="gen")


def test_a_too_small_item_space_is_an_error_not_a_hang():
    # the validation region of additions of two numbers holds about 400 expressions
    with pytest.raises(ValueError, match="too small"):
        load_task("lab_pair:2000", split="validation", seed=0, config={"ops": "+"})
