"""Generation and collection into tidy tables: the only analysis code that loads models.

* :func:`evaluate` generates with every model on every task, scores the answers and writes the
  examples table (one row per model, task, example and sample), resumably, per (model, task).
* :func:`collect_tokens` teacher-forces a student and a teacher on given sequences and returns one
  row per response token (agreement, KL both ways, entropies, token probabilities);
  :func:`compare_to_teacher` does it for every student on the teacher's own outputs.
* :class:`Decoding` says how to decode (greedy or seeded sampling).

Tables follow :mod:`kdlens._schema` (``EXAMPLES_COLUMNS``, ``TOKENS_COLUMNS``); :func:`read_examples`
and :func:`read_tokens` load them back with their schema checked.
"""

from __future__ import annotations

from kdlens.eval._evaluate import evaluate
from kdlens.eval._generate import Decoding, Generation, generate, gold_nll
from kdlens.eval._store import read_examples, read_tokens
from kdlens.eval._tokens import collect_tokens, compare_to_teacher

__all__ = [
    "Decoding",
    "Generation",
    "collect_tokens",
    "compare_to_teacher",
    "evaluate",
    "generate",
    "gold_nll",
    "read_examples",
    "read_tokens",
]
