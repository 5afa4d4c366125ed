"""reasoning-gym tasks: the TASKS table, deterministic splits, scoring with the task's own scorer."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest

from kdlens.data import DEFAULT_SIZE, TASKS, Record, answers_equal, gym_seed, load_task, load_tasks, score


def test_tasks_is_built_from_the_registry():
    from reasoning_gym.factory import DATASETS

    from kdlens.data._lab import LAB_TASKS

    assert sorted(TASKS) == sorted([*DATASETS, *LAB_TASKS]) and len(TASKS) > 100
    for name in ("chain_sum", "basic_arithmetic", "leg_counting", "gsm_symbolic"):
        info = TASKS[name]
        assert (info.name, info.answer_kind, info.scorer, info.source) == (name, "numeric", "reasoning_gym", "reasoning_gym")
    assert TASKS["family_relationships"].answer_kind == "exact"
    assert TASKS["chain_sum"].description.startswith("Generates simple arithmetic")
    import kdlens

    assert kdlens.TASKS is TASKS


@pytest.mark.parametrize("name", ["aiw", "count_bits", "decimal_chain_sum", "gcd", "products", "simple_equations"])
def test_numeric_kind_tasks_have_numeric_answers(name):
    records = load_task(f"{name}:10", seed=3)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", r.answer) for r in records)


def test_importing_kdlens_data_does_not_import_reasoning_gym_or_torch():
    code = (
        "import sys, kdlens.data;"
        "print(','.join(m for m in ('reasoning_gym', 'torch', 'transformers', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_generation_is_deterministic_and_ids_are_stable():
    a = load_task("chain_sum:20", seed=7)
    assert a == load_task("chain_sum:20", seed=7)
    assert [r.id for r in a[:2]] == ["chain_sum-test-7-0", "chain_sum-test-7-1"]
    assert load_task("chain_sum:20", seed=7, n=5) == a[:5]

    def content(records):
        return [(r.id, r.prompt, r.answer) for r in records]

    # chain_sum items don't depend on the dataset size (meta["gym_size"] records it for tasks that do)
    assert content(load_task("chain_sum:5", seed=7)) == content(a[:5])
    assert [r.prompt for r in load_task("chain_sum:20", seed=8)] != [r.prompt for r in a]
    assert len(load_task("leg_counting")) == DEFAULT_SIZE and len(load_task("leg_counting", n=4)) == 4
    first = a[0]
    assert first.task == "chain_sum" and first.split == "test" and first.rationale is None
    assert eval(first.meta["gym_metadata"]["expression"]) == int(first.answer)  # noqa: S307 - "4 - 1 - 7"


def test_splits_and_seeds_do_not_share_generator_items():
    # reasoning-gym item i comes from Random(seed + i): raw seeds 0 and 1 would share 19 of 20 items
    seeds = {gym_seed(s, split) for s in range(50) for split in ("train", "validation", "test")}
    assert len(seeds) == 150
    starts = sorted(seeds)
    assert min(b - a for a, b in itertools.pairwise(starts)) > 10_000
    test = load_task("basic_arithmetic:30", seed=0)
    train = load_task("basic_arithmetic:30", seed=0, split="train")
    assert {r.meta["gym_seed"] for r in train} != {r.meta["gym_seed"] for r in test}
    assert not {r.id for r in train} & {r.id for r in test}


def test_exclude_removes_repeated_questions_and_tops_up():
    # one-digit two-term sums have a tiny item space, so train repeats test questions by chance
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    test = load_task("chain_sum:40", config=config)
    plain = load_task("chain_sum:40", split="train", config=config)
    assert {r.prompt for r in plain} & {r.prompt for r in test}
    clean = load_task("chain_sum:40", split="train", config=config, exclude=test)
    assert len(clean) == 40 and not {r.prompt for r in clean} & {r.prompt for r in test}
    # survivors keep their generator index in the id and score with the regenerated entry
    assert clean[-1].meta["gym_index"] >= 40
    assert score(f"<answer>{clean[-1].answer}</answer>", clean[-1]) == (clean[-1].answer, True)
    with pytest.raises(ValueError, match="produced only .* items outside `exclude`"):
        load_task("chain_sum:40", split="train", config={**config, "allow_negation": False},
                  exclude=load_task("chain_sum:2000", config=config))


def test_gsm_symbolic_has_a_gsm8k_rationale_that_scores_correct():
    records = load_task("gsm_symbolic:5", split="train")
    for r in records:
        assert r.rationale.rstrip().endswith(f"#### {r.answer}")
        assert score(r.rationale, r) == (r.answer, True)


def test_scoring_uses_the_tasks_own_scorer():
    record = load_task("fraction_simplification:1")[0]
    assert record.meta["scorer"] == "reasoning_gym" and record.meta["answer_kind"] == "exact"
    numerator, denominator = record.meta["gym_metadata"]["simplified_numerator"], record.meta["gym_metadata"]["simplified_denominator"]
    # the gold answer is LaTeX ("$\\dfrac{79}{173}$"); reasoning-gym's scorer also accepts "79/173",
    # which a plain string comparison would reject
    plain = f"{numerator}/{denominator}"
    assert not answers_equal(plain, record.answer, "exact")
    assert score(f"It reduces to <answer>{plain}</answer>", record) == (plain, True)
    assert score(f"<answer>{numerator + 1}/{denominator}</answer>", record)[1] is False
    family = load_task("family_relationships:3")[0]
    assert score(f"Think...\n<answer>{family.answer.upper()}</answer>", family)[1] is True
    assert score("Think...\n<answer>cousin-of-nobody</answer>", family)[1] is False
    arithmetic = load_task("basic_arithmetic:3")[0]
    assert score(f"Working it out, the answer is {arithmetic.answer}.", arithmetic) == (arithmetic.answer, True)


def test_scoring_records_that_lost_their_gym_entry():
    record = load_task("chain_sum:1")[0]
    broken = Record(**{**record.to_dict(), "meta": {"scorer": "reasoning_gym"}})
    with pytest.raises(ValueError, match="its meta lacks 'gym_seed'"):
        score("<answer>1</answer>", broken)
    edited = Record(**{**record.to_dict(), "prompt": "something else"})
    with pytest.raises(ValueError, match="no longer matches reasoning-gym's item 0"):
        score("<answer>1</answer>", edited)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'chain_sums'.* Did you mean chain_sum.*Known tasks: ab, acre, .*leg_counting"):
        load_task("chain_sums:10")


@pytest.mark.parametrize(("spec", "message"), [
    ("chain_sum:ten", "size 'ten' is not an integer"),
    ("chain_sum:0", "size must be positive"),
])
def test_bad_sizes(spec, message):
    with pytest.raises(ValueError, match=message):
        load_task(spec)


def test_bad_config_and_tasks_without_one_answer():
    with pytest.raises(ValueError, match=r"reasoning-gym could not build task 'chain_sum' with config \{'max_terms': 'x'\}"):
        load_task("chain_sum:2", config={"max_terms": "x"})
    with pytest.raises(ValueError, match="'rush_hour' has no single gold answer"):
        load_task("rush_hour:1")


def test_load_tasks_mixes_sources(kd_data):
    records = load_tasks(["chain_sum:3", str(kd_data / "math-test" / "SingleEq.json")], n=3)
    assert [r.task for r in records] == ["chain_sum"] * 3 + ["SingleEq"] * 3
