"""The kdlens lab tasks: small arithmetic tasks with written rationales, generated deterministically.

The lab runs the lecture's experiments on micro models (:mod:`kdlens.models`, ``lab-*``) on a CPU,
so its tasks are short, exactly checkable, and come as a *family* of related tasks (a task-unaware
teacher is trained on one, the target is another; a curriculum moves between them).

Tasks (:data:`LAB_TASKS`)
-------------------------
``lab_chain``  (the target)  2-4 numbers with ``+`` and ``-``: ``32+85-7``
``lab_add``    2-4 numbers, ``+`` only (the task-unaware teacher's related task)
``lab_pair``   2 numbers, ``+`` or ``-`` (the easiest member, for curricula)
``lab_word``   templated word problems with 2-3 numbers: ``Tom has 32 apples. He buys 85 more. ...``
``lab_chain_msd``  ``lab_chain`` with numbers written most-significant digit first (the control of
               the digit-order choice below)

Operands are one- or two-digit numbers (1-9 or 10-99, each length with probability 1/2); a running
value never goes below 0 (a ``-`` takes an operand no larger than the value so far, or becomes a
``+`` when the value is 0).

Format and digit order
----------------------
The rationale writes one step per operation, then the answer on its own line::

    prompt     32+85-7
    rationale  32+85=18;18-7=47
               47
    answer     47

Numbers are written **least-significant digit first** (``23 + 58 = 81`` is ``32+85=18``) in the
prompt, the rationale and the answer of every lab task except ``lab_chain_msd``: a left-to-right
model then produces each digit after the digits its carry depends on. A throwaway prototype of the
lab learned that way about 3x faster than in the usual order (``lab_chain_msd`` lets anyone measure
it again). ``meta["digit_order"]`` records the order, ``meta["value"]`` the answer's true value.

Answers are scored as ``exact`` strings (:func:`kdlens.data.score` takes the last non-empty line):
in least-significant-first notation ``"07"`` (70) and ``"7"`` (7) are different answers that a
numeric comparison would call equal.

Splits, by construction
-----------------------
Every item is an arithmetic expression (operands and operators, whatever the task or wording).

* ``gen`` items hold **exactly one held-out operand** from :data:`HELD_OUT_OPERANDS` (nine two-digit
  numbers, each digit 1-9 once as tens and once as units digit). No other split ever contains one,
  as a prompt operand, so ``gen`` measures generalization to unseen numbers built from known digits.
* the other items are assigned to ``train`` / ``validation`` / ``test`` by a hash of the
  expression alone (80 / 5 / 15 %), so no seed, size or task can put one expression in two
  splits: a ``lab_chain`` test expression is never a ``lab_add`` or ``lab_word`` training one.

Each ``(task, split, seed)`` draws its items from its own random stream (rejecting expressions of
other splits and duplicates), so the same arguments give the same records on every machine, and
the first ``n`` records of a larger draw are the records of a smaller one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdlens.data._records import Record

__all__ = [
    "HELD_OUT_OPERANDS",
    "LAB_SPLITS",
    "LAB_TASKS",
    "LAB_VERSION",
    "LabTask",
    "expression_split",
    "lab_number",
    "load_lab",
]

#: bump when a change alters any generated item (it is part of every record's meta)
LAB_VERSION = 1

#: operands only ``gen`` items contain: tens digits 1..9 and units digits 3,5,7,9,1,2,4,6,8, each once
HELD_OUT_OPERANDS: frozenset[int] = frozenset({13, 25, 37, 49, 51, 62, 74, 86, 98})

#: splits a lab task can be loaded as
LAB_SPLITS = ("train", "validation", "test", "gen")

_DIGIT_ORDERS = ("lsd", "msd")
_STYLES = ("chain", "word")
# hash buckets (of 20) of non-gen expressions: 0 validation, 1-3 test, 4-19 train
_BUCKETS = {"validation": range(0, 1), "test": range(1, 4), "train": range(4, 20)}
_ONE_DIGIT = tuple(range(1, 10))
_TWO_DIGIT = tuple(v for v in range(10, 100) if v not in HELD_OUT_OPERANDS)
_HELD = tuple(sorted(HELD_OUT_OPERANDS))
# consecutive draws without a new item before a split counts as exhausted (the rarest split, validation,
# takes one draw in 20 while plenty of items are left)
_MAX_MISSES = 5_000

# word problems: a start sentence, one event per further number, a question
_NAMES = (("Tom", "He"), ("Ann", "She"), ("Sam", "He"), ("Mia", "She"), ("Ben", "He"), ("Eva", "She"),
          ("Max", "He"), ("Zoe", "She"))
_OBJECTS = ("apples", "pens", "cards", "coins", "books", "stamps", "marbles", "shells")
_GAINS = ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more.", "{p} wins {n} more.")
_LOSSES = ("{p} loses {n}.", "{p} gives away {n}.", "{p} sells {n}.", "{p} drops {n}.")
_QUESTIONS = ("How many {o} does {name} have now?", "How many {o} does {name} have?")


@dataclass(frozen=True)
class LabTask:
    """One lab task: which expressions it draws and how it writes them.

    Attributes
    ----------
    name : str
    description : str
    min_terms, max_terms : int
        Numbers per expression (uniform between them), 2 <= min_terms <= max_terms <= 4.
    ops : str
        Operators it uses: ``"+-"`` or ``"+"``.
    style : {"chain", "word"}
        The prompt is the expression itself, or a templated word problem.
    digit_order : {"lsd", "msd"}
        Least- or most-significant digit first, in prompt, rationale and answer.
    """

    name: str
    description: str
    min_terms: int = 2
    max_terms: int = 4
    ops: str = "+-"
    style: str = "chain"
    digit_order: str = "lsd"

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms <= 4:
            raise ValueError(f"lab task {self.name!r}: need 2 <= min_terms <= max_terms <= 4, got "
                             f"{self.min_terms}, {self.max_terms}")
        if self.ops not in ("+-", "+"):
            raise ValueError(f"lab task {self.name!r}: ops must be '+-' or '+', got {self.ops!r}")
        if self.style not in _STYLES:
            raise ValueError(f"lab task {self.name!r}: style must be one of {list(_STYLES)}, got {self.style!r}")
        if self.digit_order not in _DIGIT_ORDERS:
            raise ValueError(f"lab task {self.name!r}: digit_order must be one of {list(_DIGIT_ORDERS)}, "
                             f"got {self.digit_order!r}")


#: lab task name -> definition (``kdlens.data.TASKS`` lists them too)
LAB_TASKS: dict[str, LabTask] = {task.name: task for task in (
    LabTask("lab_chain", "chains of 2-4 one- and two-digit numbers with + and -, step-by-step rationale"),
    LabTask("lab_add", "chains of 2-4 one- and two-digit numbers with + only (related task of lab_chain)",
            ops="+"),
    LabTask("lab_pair", "one + or - of two one- and two-digit numbers", max_terms=2),
    LabTask("lab_word", "templated word problems ('Tom has 32 apples. ...') with 2-3 numbers, + and -",
            max_terms=3, style="word"),
    LabTask("lab_chain_msd", "lab_chain with numbers written most-significant digit first", digit_order="msd"),
)}

_CONFIG_KEYS = ("min_terms", "max_terms", "ops", "digit_order")


def lab_number(value: int, digit_order: str = "lsd") -> str:
    """A non-negative integer in lab notation: ``lab_number(81) == "18"``, ``lab_number(70) == "07"``."""
    text = str(int(value))
    return text[::-1] if digit_order == "lsd" else text


def _expression_key(operands: tuple[int, ...], ops: tuple[str, ...]) -> str:
    return str(operands[0]) + "".join(f"{op}{v}" for op, v in zip(ops, operands[1:], strict=True))


def expression_split(operands: tuple[int, ...] | list[int], ops: tuple[str, ...] | list[str]) -> str:
    """The split an expression belongs to: ``"gen"`` when it holds a held-out operand, else its hash bucket.

    ``expression_split((23, 58, 7), ("+", "-"))`` is the same whatever task, wording or seed drew it.
    """
    if any(v in HELD_OUT_OPERANDS for v in operands):
        return "gen"
    digest = hashlib.sha256(f"kdlens-lab/{_expression_key(tuple(operands), tuple(ops))}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 20
    return next(name for name, buckets in _BUCKETS.items() if bucket in buckets)


def _draw_operand(rng: random.Random, held: bool, limit: int | None) -> int | None:
    """An operand (at most ``limit``), from the held-out set or from the ordinary numbers; None if none fits."""
    if held:
        pool = [v for v in _HELD if limit is None or v <= limit]
    elif limit is None or limit >= 99:
        pool = list(_ONE_DIGIT if rng.random() < 0.5 else _TWO_DIGIT)
    else:
        ones = [v for v in _ONE_DIGIT if v <= limit]
        twos = [v for v in _TWO_DIGIT if v <= limit]
        pool = ones if not twos or rng.random() < 0.5 else twos
    return rng.choice(pool) if pool else None


def _draw_expression(rng: random.Random, task: LabTask, gen: bool) -> tuple[tuple[int, ...], tuple[str, ...]]:
    n_terms = rng.randint(task.min_terms, task.max_terms)
    held_at = rng.randrange(n_terms) if gen else -1
    operands: list[int] = []
    ops: list[str] = []
    value = 0
    for position in range(n_terms):
        held = position == held_at
        if position == 0:
            operand = _draw_operand(rng, held, None)
            op = "+"
        else:
            op = rng.choice(task.ops)
            operand = _draw_operand(rng, held, value) if op == "-" else None
            if operand is None:  # nothing small enough to subtract (or a + drawn): add instead
                op = "+"
                operand = _draw_operand(rng, held, None)
            ops.append(op)
        operands.append(operand)
        value = value + operand if op == "+" else value - operand
    return tuple(operands), tuple(ops)


def _steps(operands: tuple[int, ...], ops: tuple[str, ...], digit_order: str) -> tuple[str, int]:
    """The rationale (``"32+85=18;18-7=47\\n47"``) and the true value of an expression."""
    value = operands[0]
    steps = []
    for op, operand in zip(ops, operands[1:], strict=True):
        result = value + operand if op == "+" else value - operand
        steps.append(f"{lab_number(value, digit_order)}{op}{lab_number(operand, digit_order)}="
                     f"{lab_number(result, digit_order)}")
        value = result
    return ";".join(steps) + "\n" + lab_number(value, digit_order), value


def _prompt(rng: random.Random, task: LabTask, operands: tuple[int, ...], ops: tuple[str, ...]) -> tuple[str, dict]:
    numbers = [lab_number(v, task.digit_order) for v in operands]
    if task.style == "chain":
        return numbers[0] + "".join(op + n for op, n in zip(ops, numbers[1:], strict=True)), {}
    name, pronoun = rng.choice(_NAMES)
    obj = rng.choice(_OBJECTS)
    sentences = [f"{name} has {numbers[0]} {obj}."]
    phrasings = []
    for op, number in zip(ops, numbers[1:], strict=True):
        templates = _GAINS if op == "+" else _LOSSES
        index = rng.randrange(len(templates))
        phrasings.append(f"{op}{index}")
        sentences.append(templates[index].format(p=pronoun, n=number))
    question = rng.randrange(len(_QUESTIONS))
    sentences.append(_QUESTIONS[question].format(o=obj, name=name))
    return " ".join(sentences), {"name": name, "object": obj, "phrasings": phrasings, "question": question}


def _configured(task: LabTask, config: Mapping[str, Any] | None) -> LabTask:
    if not config:
        return task
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"lab task {task.name!r}: unknown config key(s) {unknown}; known: {list(_CONFIG_KEYS)}")
    return dataclasses.replace(task, **dict(config))


def _stream(task: LabTask, split: str, seed: int, config: Mapping[str, Any] | None) -> random.Random:
    settings = {k: getattr(task, k) for k in _CONFIG_KEYS} if config else {}
    text = f"kdlens-lab/v{LAB_VERSION}/{task.name}/{split}/{seed}/{sorted(settings.items())}"
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def load_lab(name: str, *, size: int, split: str, seed: int, config: Mapping[str, Any] | None = None,
             exclude_prompts: frozenset[str] = frozenset()) -> list[Record]:
    """Generate ``size`` records of the lab task ``name`` (see the module docstring).

    Parameters
    ----------
    name : str
        A key of :data:`LAB_TASKS`.
    size : int
    split : {"train", "validation", "test", "gen"}
    seed : int
    config : mapping, optional
        Overrides of ``min_terms``, ``max_terms``, ``ops`` or ``digit_order``.
    exclude_prompts : frozenset of str
        Prompts to skip (generation continues, so ``size`` records still come back).

    Returns
    -------
    list of Record
        Ids ``"{name}-{split}-{seed}-{i}"``; ``meta`` holds ``answer_kind="exact"``, ``digit_order``,
        ``value`` (the answer as an int), ``operands``, ``ops``, ``n_terms``, ``held_out_operands``
        and ``lab_version`` (word problems also ``name``, ``object``, ``phrasings``, ``question``).

    Raises
    ------
    ValueError
        An unknown split or config key, or an item space too small for ``size``.
    """
    if split not in LAB_SPLITS:
        raise ValueError(f"unknown split {split!r} for lab task {name!r}; use one of {', '.join(LAB_SPLITS)}")
    task = _configured(LAB_TASKS[name], config)
    rng = _stream(task, split, seed, config)
    records: list[Record] = []
    seen: set[str] = set()
    misses = 0
    while len(records) < size:
        if misses > _MAX_MISSES:
            raise ValueError(f"lab task {name!r} found no new {split} item in {_MAX_MISSES} draws after "
                             f"{len(records)}; its item space is too small for size={size}")
        operands, ops = _draw_expression(rng, task, gen=split == "gen")
        misses += 1
        if expression_split(operands, ops) != split:
            continue
        prompt, extra = _prompt(rng, task, operands, ops)
        if prompt in seen or prompt in exclude_prompts:
            continue
        misses = 0
        seen.add(prompt)
        rationale, value = _steps(operands, ops, task.digit_order)
        records.append(Record(
            id=f"{name}-{split}-{seed}-{len(records)}",
            task=name,
            split=split,
            prompt=prompt,
            answer=lab_number(value, task.digit_order),
            rationale=rationale,
            meta={
                "source": "kdlens_lab",
                "answer_kind": "exact",
                "scorer": "exact",
                "digit_order": task.digit_order,
                "value": value,
                "operands": list(operands),
                "ops": list(ops),
                "n_terms": len(operands),
                "held_out_operands": sum(v in HELD_OUT_OPERANDS for v in operands),
                "lab_version": LAB_VERSION,
                **extra,
            },
        ))
    return records
