"""reasoning-gym tasks as kdlens records, the ``TASKS`` table built from its registry, and its scorers.

reasoning-gym is imported only here and only on first use: it takes about a second and pulls in
matplotlib, which code that reads JSON files never needs.

Splits and seeds
----------------
reasoning-gym generates item ``i`` of a dataset from ``Random(seed + i)``, so seeds ``0`` and ``1``
share all but one item. kdlens therefore never passes the user's seed directly: the generator seed is
a hash of ``(split, seed)`` (:func:`gym_seed`), which places every (split, seed) pair on its own
stretch of the generator, and train and test never share a generator item. Small item spaces can
still repeat a *question* by chance (about 1.6% of 5,000 ``chain_sum`` train items equal one of 1,000
test items); pass ``exclude=test_records`` to :func:`kdlens.data.load_task` to drop those and top the
split back up to its size.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdlens.data._records import Record

__all__ = ["TaskInfo", "build_tasks", "gym_seed", "load_gym", "gym_score", "DEFAULT_SIZE"]

#: Items generated for a task spec that gives no size (``"chain_sum"`` == ``"chain_sum:100"``).
DEFAULT_SIZE = 100

# Tasks whose gold answers are plain numbers: every answer of 20 items at seed 0 parses as a number
# under reasoning-gym 0.1.25 (tests/unit/test_data_gym.py re-checks a sample). Every other task is
# "exact" — its own scorer judges the string.
_NUMERIC_TASKS = frozenset({
    "aiw", "basic_arithmetic", "binary_alternation", "chain_sum", "circuit_logic", "count_bits",
    "count_primes", "decimal_arithmetic", "decimal_chain_sum", "gcd", "gsm_symbolic",
    "largest_island", "lcm", "leg_counting", "letter_counting", "maze", "number_format",
    "number_sequence", "products", "rectangle_count", "rotten_oranges", "self_reference",
    "simple_equations", "simple_geometry",
})

# metadata fields that hold a worked solution in the gold format (gsm_symbolic: "...\n#### 288")
_RATIONALE_FIELDS = ("answer_cot",)


@dataclass(frozen=True)
class TaskInfo:
    """Metadata of one named task in :data:`kdlens.data.TASKS`.

    Attributes
    ----------
    name : str
        The name, as used in a task spec (``"chain_sum:200"``, ``"lab_chain:1000"``).
    answer_kind : {"numeric", "exact"}
        Which extractor pulls a prediction out of generated text when it has no ``<answer>`` tag.
    scorer : str
        ``"reasoning_gym"``: correctness is the task's own ``score_answer(...) == 1.0``; ``"exact"``
        (lab tasks): the extracted answer equals the gold string.
    description : str
        First line of the reasoning-gym dataset's docstring, or the lab task's description.
    source : str
        ``"reasoning_gym"`` or ``"kdlens_lab"``.
    """

    name: str
    answer_kind: str
    scorer: str = "reasoning_gym"
    description: str = ""
    source: str = "reasoning_gym"


def _registry() -> Mapping[str, Any]:
    from reasoning_gym.factory import DATASETS

    return DATASETS


def build_tasks() -> dict[str, TaskInfo]:
    """One :class:`TaskInfo` per registered reasoning-gym dataset, sorted by name."""
    tasks = {}
    for name, (dataset_cls, _config_cls) in sorted(_registry().items()):
        doc = (dataset_cls.__doc__ or "").strip().splitlines()
        tasks[name] = TaskInfo(
            name=name,
            answer_kind="numeric" if name in _NUMERIC_TASKS else "exact",
            description=doc[0].strip() if doc else "",
        )
    return tasks


def gym_seed(seed: int, split: str) -> int:
    """The reasoning-gym generator seed for a user seed and split: a 31-bit hash of both."""
    digest = hashlib.sha256(f"kdlens/{split}/{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@functools.lru_cache(maxsize=64)
def _dataset(name: str, seed: int, size: int, config_json: str) -> Any:
    import reasoning_gym

    config = json.loads(config_json)
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(
            f"reasoning-gym could not build task {name!r} with config {config}: {err}. "
            f"Pass config={{...}} with the fields of its config class"
        ) from err


@functools.lru_cache(maxsize=8192)
def _entry(name: str, seed: int, size: int, config_json: str, index: int) -> dict[str, Any]:
    # cached so that scoring (often several samples per item) doesn't regenerate items, some of
    # which take a second (sokoban, knight_swap); callers must not modify the entry
    return _dataset(name, seed, size, config_json)[index]


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def load_gym(
    name: str,
    *,
    size: int,
    split: str,
    seed: int,
    config: Mapping[str, Any] | None = None,
    exclude_prompts: frozenset[str] = frozenset(),
) -> list[Record]:
    """Generate ``size`` records of a reasoning-gym task.

    Items whose question is in ``exclude_prompts`` are skipped and generation continues, so the
    result still has ``size`` records (ids keep the generator index, so they stay stable).
    """
    config_json = json.dumps(dict(config or {}), sort_keys=True)
    seed_ = gym_seed(seed, split)
    # generate past ``size`` only as far as exclusions require; give up when a task's item space is
    # clearly exhausted rather than loop forever
    limit = 10 * size + len(exclude_prompts)
    dataset = _dataset(name, seed_, limit if exclude_prompts else size, config_json)
    records: list[Record] = []
    index = 0
    while len(records) < size:
        if index >= limit:
            raise ValueError(
                f"reasoning-gym task {name!r} produced only {len(records)} items outside `exclude` in "
                f"{limit} tries; its item space is too small for size={size}"
            )
        item = _entry(name, seed_, dataset.size, config_json, index)
        index += 1
        if item["question"] in exclude_prompts:
            continue
        if item.get("answer") is None:
            raise ValueError(
                f"reasoning-gym task {name!r} has no single gold answer (its scorer checks solutions), "
                f"which kdlens records require; choose another task"
            )
        metadata = item.get("metadata") or {}
        rationale = next((metadata[k] for k in _RATIONALE_FIELDS if isinstance(metadata.get(k), str)), None)
        records.append(Record(
            id=f"{name}-{split}-{seed}-{index - 1}",
            task=name,
            split=split,
            prompt=item["question"],
            answer=str(item["answer"]),
            rationale=rationale,
            meta={
                "source": "reasoning_gym",
                "answer_kind": "numeric" if name in _NUMERIC_TASKS else "exact",
                "scorer": "reasoning_gym",
                "gym_seed": seed_,
                "gym_size": dataset.size,
                "gym_index": index - 1,
                "gym_config": json.loads(config_json),
                "gym_metadata": _json_safe(metadata),
            },
        ))
    return records


def gym_score(record: Record, prediction: str) -> float:
    """The reasoning-gym task's own score (0..1) of ``prediction`` for ``record``.

    The original entry (with its unsanitized metadata, which many scorers need) is regenerated
    from the seed, size, config and index kept in ``record.meta``.
    """
    meta = record.meta
    try:
        key = (record.task, meta["gym_seed"], meta["gym_size"], json.dumps(dict(meta["gym_config"]), sort_keys=True))
        entry = _entry(*key, meta["gym_index"])
    except KeyError as err:
        raise ValueError(
            f"record {record.id!r} says scorer='reasoning_gym' but its meta lacks {err}; "
            f"load it with kdlens.data.load_task"
        ) from None
    dataset = _dataset(*key)
    if entry["question"] != record.prompt:
        raise ValueError(
            f"record {record.id!r} no longer matches reasoning-gym's item {meta['gym_index']} "
            f"(a different reasoning-gym version?); regenerate the records"
        )
    try:
        return float(dataset.score_answer(prediction, entry))
    except Exception:  # a malformed prediction is a wrong one, whatever the task's scorer raises
        return 0.0
