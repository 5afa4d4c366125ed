"""Prompt formatting, tokenization for training and generation, and batch collation.

Token layout of one training example (``P`` prompt tokens, ``C`` completion tokens)::

    input_ids  = [ prompt (chat template + generation prompt) | response ... EOS ]
    labels     = [ -100 ... -100                              | response ... EOS ]

The prompt is tokenized on its own and the completion appended as token ids, so the boundary is
exact whatever the tokenizer merges, and the prompt ids are identical to
:func:`encode_for_generation`'s — the model is trained on exactly the context it generates from.

Truncation policies (``max_length`` tokens in all):

``"left"`` (default)
    Drop prompt tokens from the left (the template header and the start of the question go first:
    the end of the prompt and the whole response matter most); if the response alone is still too
    long, cut its end (losing EOS).
``"right"``
    Keep the first ``max_length`` tokens (the usual Hugging Face policy: cuts the response end).
``"error"``
    Raise ``ValueError`` naming the record and its length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kdlens.data._records import Record

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALPACA_PREAMBLE",
    "TRUNCATION_POLICIES",
    "IGNORE_INDEX",
    "response_text",
    "format_prompt",
    "encode_for_training",
    "encode_for_generation",
    "collate",
]

#: Label value that the cross-entropy and every kdlens loss ignore.
IGNORE_INDEX = -100

#: Instruction line of the Alpaca template, used when the tokenizer has no chat template and no
#: ``system`` text is given (the kd-generalization data was built for this template).
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

#: ``truncation=`` policies of :func:`encode_for_training` for examples longer than ``max_length``
TRUNCATION_POLICIES = ("left", "right", "error")


def response_text(record: Record) -> str:
    """The training target of a record: its rationale when it has one, else its answer.

    Surrounding whitespace is stripped (the kd-generalization rationales start with a newline that
    chat templates would otherwise make the model learn to emit).
    """
    if record.rationale is not None and record.rationale.strip():
        return record.rationale.strip()
    return record.answer.strip()


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # jinja raises its own exception types (e.g. "System role not supported")
        raise ValueError(
            f"the tokenizer's chat template failed on roles {[m['role'] for m in messages]}: {err}"
        ) from err


def format_prompt(tokenizer: Any, prompt: str, *, system: str | None = None) -> str:
    """The prompt text a model sees before it answers.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
    prompt : str
        The user turn.
    system : str, optional
        A system message (chat template) or the preamble line (Alpaca template).

    Returns
    -------
    str
        ``apply_chat_template([system?, user], add_generation_prompt=True)`` when the tokenizer has
        a chat template; otherwise the Alpaca template
        ``"{preamble}\\n\\n### Instruction:\\n{prompt}\\n\\n### Response:\\n"``.
    """
    if _has_chat_template(tokenizer):
        return _render(tokenizer, _messages(prompt, system), add_generation_prompt=True)
    preamble = system if system is not None else ALPACA_PREAMBLE
    head = f"{preamble}\n\n" if preamble else ""
    return f"{head}### Instruction:\n{prompt}\n\n### Response:\n"


def _ids(tokenizer: Any, text: str, *, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _prompt_ids(tokenizer: Any, prompt_text: str) -> list[int]:
    # a chat template already writes BOS and other special tokens as text; adding them again
    # would double them
    return _ids(tokenizer, prompt_text, add_special_tokens=not _has_chat_template(tokenizer))


def _completion_ids(tokenizer: Any, record: Record, prompt_text: str, system: str | None) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token, which ends every training target; set tokenizer.eos_token")
    response = response_text(record)
    completion = response
    if _has_chat_template(tokenizer):
        full = _render(tokenizer, [*_messages(record.prompt, system), {"role": "assistant", "content": response}],
                       add_generation_prompt=False)
        # use the template's own rendering of the assistant turn (end-of-turn marker included) when
        # it extends the generation prompt, as well-formed templates do
        if full.startswith(prompt_text):
            completion = full[len(prompt_text):]
    ids = _ids(tokenizer, completion, add_special_tokens=False)
    if eos in ids:
        return ids[: ids.index(eos) + 1]  # drop what a template writes after EOS (e.g. a newline)
    return [*ids, eos]


def _truncate(prompt: list[int], completion: list[int], max_length: int | None, policy: str,
              record_id: str) -> tuple[list[int], list[int]]:
    total = len(prompt) + len(completion)
    if max_length is None or total <= max_length:
        return prompt, completion
    if policy == "error":
        raise ValueError(
            f"record {record_id!r} has {total} tokens ({len(prompt)} prompt + {len(completion)} response), "
            f"more than max_length={max_length}; raise max_length or use truncation='left' or 'right'"
        )
    if policy == "right":
        kept_prompt = prompt[:max_length]
        return kept_prompt, completion[: max_length - len(kept_prompt)]
    drop = min(len(prompt), total - max_length)
    prompt = prompt[drop:]
    return prompt, completion[: max_length - len(prompt)]


def encode_for_training(
    tokenizer: Any,
    record: Record,
    *,
    max_length: int | None = 256,
    truncation: str = "left",
    system: str | None = None,
) -> dict[str, list[int]]:
    """Tokenize a record for teacher-forced training (layout in the module docstring).

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        Must have an EOS token.
    record : Record
    max_length : int or None
        Maximum total tokens; None disables truncation.
    truncation : {"left", "right", "error"}
        See the module docstring.
    system : str, optional
        Passed to :func:`format_prompt`.

    Returns
    -------
    dict
        ``input_ids``, ``attention_mask`` (all 1) and ``labels`` (``-100`` on prompt tokens, the
        token id on response tokens and EOS), lists of int of equal length ``P + C <= max_length``.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"unknown truncation {truncation!r}; use one of {', '.join(TRUNCATION_POLICIES)}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    prompt_text = format_prompt(tokenizer, record.prompt, system=system)
    prompt = _prompt_ids(tokenizer, prompt_text)
    completion = _completion_ids(tokenizer, record, prompt_text, system)
    prompt, completion = _truncate(prompt, completion, max_length, truncation, record.id)
    input_ids = prompt + completion
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt) + completion,
    }


def encode_for_generation(
    tokenizer: Any,
    record_or_prompt: Record | str,
    *,
    system: str | None = None,
    max_length: int | None = None,
) -> list[int]:
    """Prompt token ids to generate from: the same ids :func:`encode_for_training` puts before the
    response.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
    record_or_prompt : Record or str
        A record (its ``prompt`` is used) or the user text itself.
    system : str, optional
    max_length : int, optional
        Keep only the last ``max_length`` tokens (left truncation, as in training).

    Returns
    -------
    list of int
    """
    prompt = record_or_prompt.prompt if isinstance(record_or_prompt, Record) else record_or_prompt
    if not isinstance(prompt, str):
        raise TypeError(f"expected a Record or a prompt string, got {type(record_or_prompt).__name__}")
    ids = _prompt_ids(tokenizer, format_prompt(tokenizer, prompt, system=system))
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        ids = ids[-max_length:]
    return ids


def collate(
    features: Sequence[Mapping[str, Sequence[int]]],
    *,
    pad_token_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad encoded examples into a batch.

    Parameters
    ----------
    features : sequence of dict
        Each with ``input_ids`` and optionally ``attention_mask`` (default all 1) and ``labels``
        (all or none of the features), as returned by :func:`encode_for_training`.
    pad_token_id : int
        Fill value of ``input_ids`` padding.
    padding_side : {"right", "left"}
        ``"right"`` for training; ``"left"`` for batched generation, so every prompt ends where
        generation starts.
    pad_to_multiple_of : int, optional
        Round the padded length up to a multiple (tensor-core friendly shapes).

    Returns
    -------
    dict of torch.Tensor
        ``input_ids`` [B, T] (long, pads = ``pad_token_id``), ``attention_mask`` [B, T] (long, 0 on
        pads), and ``labels`` [B, T] (long, -100 on pads) when the features have labels.
    """
    import torch

    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; set tokenizer.pad_token (kdlens.models tokenizers always have one)")
    if not features:
        raise ValueError("collate got no features; a batch needs at least one example")
    has_labels = ["labels" in f for f in features]
    if any(has_labels) and not all(has_labels):
        raise ValueError("some features have labels and some don't; collate training and generation batches apart")
    for i, feature in enumerate(features):
        n = len(feature["input_ids"])
        for key in ("attention_mask", "labels"):
            if key in feature and len(feature[key]) != n:
                raise ValueError(f"feature {i}: {key} has length {len(feature[key])} but input_ids has {n}")
    width = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of

    def pad(values: Sequence[int], fill: int) -> list[int]:
        padding = [fill] * (width - len(values))
        return [*values, *padding] if padding_side == "right" else [*padding, *values]

    batch = {
        "input_ids": [pad(f["input_ids"], pad_token_id) for f in features],
        "attention_mask": [pad(f.get("attention_mask", [1] * len(f["input_ids"])), 0) for f in features],
    }
    if all(has_labels):
        batch["labels"] = [pad(f["labels"], IGNORE_INDEX) for f in features]
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
