"""Generation and collection into tidy tables: the only analysis code that loads models.

* :func:`evaluate` generates with every model on every task, scores the answers and writes the
  examples table (one row per model, task, example and sample), resumably, per (model, task).
* :func:`collect_tokens` teacher-forces a student and a teacher on given sequences and returns one
  row per response token (agreement, KL both ways, entropies, token probabilities);
  :func:`compare_to_teacher` does it for every student on the teacher's own outputs.
* :class:`Decoding` says how to decode (greedy or seeded sampling).
* :func:`score_choices` scores the choices of multiple-choice records by log-likelihood as
  lm-evaluation-harness does (``evaluate(..., mode="loglikelihood", scoring="acc" | "acc_norm")``);
  generated answers can be judged by the harness's GSM8K filters (``scoring="strict-match"``,
  ``"strict-match-cot"``, ``"flexible-extract"``).

Tables follow :mod:`kdlens._schema` (``EXAMPLES_COLUMNS``, ``TOKENS_COLUMNS``); :func:`read_examples`
and :func:`read_tokens` load them back with their schema checked. Names resolve lazily, so reading
a table does not import torch.
"""

from __future__ import annotations

from kdlens._lazy import lazy_exports

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "Decoding": "kdlens.eval._generate",
    "Generation": "kdlens.eval._generate",
    "generate": "kdlens.eval._generate",
    "gold_nll": "kdlens.eval._generate",
    "collect_tokens": "kdlens.eval._tokens",
    "compare_to_teacher": "kdlens.eval._tokens",
    "evaluate": "kdlens.eval._evaluate",
    "CHOICE_SCORINGS": "kdlens.eval._choices",
    "Choices": "kdlens.eval._choices",
    "multiple_choice": "kdlens.eval._choices",
    "score_choices": "kdlens.eval._choices",
    "choice_predictions": "kdlens.eval._choices",
    "read_examples": "kdlens._tables",
    "read_tokens": "kdlens._tables",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
