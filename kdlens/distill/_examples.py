"""Training examples within ``max_length``: keep the whole prompt, cut a long response at its end, and
count (never silently lose) the examples that cannot fit.

A training sequence is ``prompt + response + EOS`` (:func:`kdlens.data.encode_for_training`). Cutting
the prompt would train the student on an answer to a question it never saw (at ``max_length=5`` the
last five response tokens with no prompt at all), so the prompt is kept whole:

* the whole sequence fits: kept as is;
* the prompt fits but the response does not: kept, the response cut at ``max_length`` (it loses its
  end and EOS; counted as ``truncated``);
* the prompt alone fills ``max_length``: dropped (``prompt_too_long``);
* no token is left to predict (an empty prompt and a one-token response): dropped (``no_target``).

The run's manifest records the counts and a warning on the ``kdlens.distill`` logger says them; when
every example is dropped the run stops with one line naming ``max_length``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EncodedExamples", "encode_examples", "DROP_REASONS"]

_LOG = logging.getLogger("kdlens.distill")

#: reason -> what it means, as said in the warning
DROP_REASONS = {
    "prompt_too_long": "the prompt alone fills max_length",
    "no_target": "no response token to predict",
}


@dataclass
class EncodedExamples:
    """Encoded training examples and what became of the others.

    Attributes
    ----------
    features : list of dict
        ``input_ids``, ``attention_mask``, ``labels`` (lists of int) of the kept examples.
    records : list
        The kept records, in the same order.
    dropped : dict of str to int
        Dropped examples per reason of :data:`DROP_REASONS` (reasons with none are left out).
    truncated : int
        Kept examples whose response was cut at ``max_length``.
    longest_prompt, shortest_prompt : int
        Prompt lengths in tokens over all records (for the message when everything is dropped).
    """

    features: list[dict[str, list[int]]]
    records: list[Any]
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    longest_prompt: int = 0
    shortest_prompt: int = 0

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self, max_length: int) -> str:
        """One line: how many examples were dropped or truncated at ``max_length``, and why."""
        total = len(self.features) + self.n_dropped
        parts = [f"{n} dropped ({DROP_REASONS[reason]})" for reason, n in self.dropped.items()]
        if self.truncated:
            parts.append(f"{self.truncated} kept with the response cut at its end")
        return f"max_length={max_length}: of {total} training examples, " + ", ".join(parts)


def _prompt_length(labels: Sequence[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != -100), len(labels))


def encode_examples(tokenizer: Any, records: Sequence[Any], *, max_length: int, system: str | None = None,
                    what: str = "training examples") -> EncodedExamples:
    """Encode records for training within ``max_length`` (module docstring); warn about losses.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    records : sequence of Record
    max_length : int
        Tokens per sequence.
    system : str, optional
        System prompt (see :func:`kdlens.data.format_prompt`).
    what : str
        What the examples are, for the messages (e.g. "teacher answers").

    Raises
    ------
    ValueError
        Every example was dropped: one line naming ``max_length`` and the prompt lengths.
    """
    from kdlens.data import encode_for_training

    if not records:
        raise ValueError(f"no {what} to train on: the tasks gave no example")
    out = EncodedExamples([], [])
    prompts = []
    for record in records:
        feat = encode_for_training(tokenizer, record, max_length=None, system=system)
        prompt = _prompt_length(feat["labels"])
        prompts.append(prompt)
        if prompt >= max_length:
            out.dropped["prompt_too_long"] = out.dropped.get("prompt_too_long", 0) + 1
            continue
        if len(feat["input_ids"]) > max_length:
            out.truncated += 1
            feat = {k: list(v[:max_length]) for k, v in feat.items()}
        if not any(label != -100 for label in feat["labels"][1:]):
            out.dropped["no_target"] = out.dropped.get("no_target", 0) + 1
            continue
        out.features.append({k: list(feat[k]) for k in ("input_ids", "attention_mask", "labels")})
        out.records.append(record)
    out.longest_prompt, out.shortest_prompt = (max(prompts), min(prompts)) if prompts else (0, 0)
    if not out.features:
        raise ValueError(f"all {len(records)} {what} were dropped at max_length={max_length}: prompts have "
                         f"{out.shortest_prompt}-{out.longest_prompt} tokens and the whole prompt is kept; raise "
                         f"max_length above {out.shortest_prompt} (at least {out.longest_prompt + 1} keeps every "
                         "example)")
    if out.dropped or out.truncated:
        _LOG.warning("%s", out.summary(max_length).replace("training examples", what))
    return out
