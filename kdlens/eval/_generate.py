"""Batched, seeded generation with a KV cache, and teacher-forced likelihood of gold responses.

kdlens decodes with its own short loop instead of ``model.generate`` for two reasons: every
sampled row draws from its *own* random stream (seeded per task, example and sample), so a
sample does not depend on which other prompts share its batch; and the log-probability of each
generated token is read from the very logits that chose it, with no second pass.

What is deterministic
---------------------
* Greedy decoding is a pure function of the model and the prompt. Batched with left padding it
  equals unbatched greedy decoding (padding changes activations only by float rounding, ~1e-7,
  which would matter only for an exact tie between the two best tokens).
* Sampling draws one uniform number per row and step from a CPU generator seeded by
  ``(decoding.seed, task, example_id, sample)`` and inverts the (top-p truncated) CDF with it. The
  same seed gives the same samples on any machine, batch size or batch composition, up to the
  same float rounding. The model id is *not* part of the seed: every model sees the same random
  numbers on the same example (common random numbers make paired model comparisons less noisy).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kdlens._io import sha256_json

__all__ = ["Decoding", "Generation", "generate", "sample_seed", "stop_token_ids", "gold_nll", "model_device",
           "logits_from"]

_STRATEGIES = ("greedy", "sample")


@dataclass(frozen=True)
class Decoding:
    """How to decode.

    Parameters
    ----------
    strategy : "greedy" or "sample"
    temperature : float, > 0
        Softmax temperature for sampling (ignored by greedy decoding).
    top_p : float in (0, 1]
        Nucleus sampling: sample from the smallest set of tokens whose probability is >= top_p.
    num_samples : int, >= 1
        Samples per prompt (rows ``sample = 0 .. num_samples - 1``); must be 1 for greedy.
    seed : int
        Base seed of every per-example random stream.
    """

    strategy: str = "greedy"
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"unknown decoding strategy {self.strategy!r}; known: {', '.join(_STRATEGIES)}")
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {self.num_samples!r}")
        if self.strategy == "greedy" and self.num_samples != 1:
            raise ValueError("greedy decoding gives one output per prompt; use strategy='sample' for num_samples > 1")

    @classmethod
    def coerce(cls, value: Decoding | str | Mapping[str, Any] | None) -> Decoding:
        """Accept a Decoding, a strategy name ("greedy", "sample") or a mapping of fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(strategy=value)
        if isinstance(value, Mapping):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown decoding fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
            return cls(**value)
        raise TypeError(f"decoding must be a Decoding, 'greedy'/'sample' or a mapping, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """One decoded continuation.

    ``token_ids`` are the generated tokens, including the stop token when one was generated
    (``finish_reason == "eos"``); ``logprobs[i]`` is ``log p(token_ids[i] | prefix)`` under the
    model at temperature 1 (the model's own likelihood, independent of the decoding temperature
    and of top-p truncation); ``text`` is the decoded output without the stop token.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = field(default="")

    @property
    def mean_logprob(self) -> float:
        return float(sum(self.logprobs) / len(self.logprobs)) if self.logprobs else float("nan")


def sample_seed(seed: int, task: str, example_id: str, sample: int) -> int:
    """Seed of the random stream for one (task, example, sample): a stable 63-bit hash."""
    return int(sha256_json([int(seed), str(task), str(example_id), int(sample)])[:15], 16)


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Token ids that end a generation: the tokenizer's EOS plus the model's generation-config EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update(int(i) for i in (config_eos if isinstance(config_eos, list | tuple) else [config_eos]))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token; "
                         "set tokenizer.eos_token so generation can stop")
    return sorted(ids)


def _step_keywords(model: torch.nn.Module) -> tuple[str, dict[str, Any]]:
    """The KV-cache argument's name (``cache`` in recent transformers 5.x, ``past_key_values`` before)
    and ``logits_to_keep=1`` where supported: decoding needs only the last position's logits, and
    computing ``[B, T, V]`` for the whole prompt would dominate the prefill's memory."""
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), extra


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _top_p_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Sampling distribution [B, V]: softmax(logits / T), truncated to the top-p nucleus and renormalized."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # keep a token when the mass *before* it is < top_p, so the most likely token is always kept
    keep_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = probs * keep
    return probs / probs.sum(dim=-1, keepdim=True)


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             decoding: Decoding | str = "greedy", seeds: Sequence[int] | None = None) -> list[Generation]:
    """Decode a batch of tokenized prompts with left padding and a KV cache.

    Parameters
    ----------
    model : causal LM in eval mode
    tokenizer : its tokenizer (needs ``pad_token_id`` and an EOS token)
    prompts : B lists of token ids (already chat-formatted), each non-empty
    max_new_tokens : int >= 1
    decoding : :class:`Decoding` or strategy name
    seeds : B ints, one random stream per row (required for sampling; see ``kdlens.eval._generate.sample_seed``)

    Returns
    -------
    list[Generation]
        One per prompt, in input order.
    """
    decoding = Decoding.coerce(decoding)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    sampling = decoding.strategy == "sample"
    if sampling and (seeds is None or len(seeds) != len(prompts)):
        raise ValueError("sampling needs one seed per prompt (seeds=[...] of the same length as prompts)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = torch.tensor(stop_token_ids(model, tokenizer))
    device = model_device(model)
    cache_kw, extra = _step_keywords(model)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds] if sampling else []

    ids, attention = _left_pad(prompts, pad_id, device)
    # positions count real tokens only, so a left-padded row sees the same positions as alone
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    batch = len(prompts)
    tokens = torch.zeros((batch, max_new_tokens), dtype=torch.long)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float64)
    lengths = torch.zeros(batch, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool)
    hit_stop = torch.zeros(batch, dtype=torch.bool)
    cache = None
    step_ids, step_positions = ids, positions
    for step in range(max_new_tokens):
        output = model(input_ids=step_ids, attention_mask=attention, position_ids=step_positions,
                       use_cache=True, **{cache_kw: cache}, **extra)
        cache = _output_cache(output)
        logits = output.logits[:, -1, :].float()
        if sampling:
            # float64 on the CPU: the same draw on every device
            probs = _top_p_probs(logits, decoding.temperature, decoding.top_p).double().cpu()
            uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
            cdf = probs.cumsum(dim=-1)
            # inverse-CDF sampling from the row's own uniform: batch composition cannot change it
            chosen = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
            chosen = chosen.clamp(max=logits.shape[-1] - 1)
            # a zero-probability token can only be hit through rounding at a CDF edge; step back to a real one
            chosen = torch.where(probs.gather(-1, chosen[:, None]).squeeze(-1) > 0, chosen, probs.argmax(-1))
            chosen = chosen.to(device)
        else:
            chosen = logits.argmax(dim=-1)
        chosen_logprob = torch.log_softmax(logits, dim=-1).gather(-1, chosen[:, None]).squeeze(-1)
        chosen_cpu = chosen.cpu()
        active = ~finished
        tokens[active, step] = chosen_cpu[active]
        logprobs[active, step] = chosen_logprob.cpu().double()[active]
        lengths[active] += 1
        stopped = active & torch.isin(chosen_cpu, stops)
        hit_stop |= stopped
        finished |= stopped
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        # finished rows keep feeding padding; their later outputs are discarded
        step_ids = torch.where(finished, torch.tensor(pad_id), chosen_cpu).to(device)[:, None]
        attention = torch.cat([attention, torch.ones((batch, 1), dtype=attention.dtype, device=device)], dim=1)
        step_positions = step_positions[:, -1:] + 1

    results = []
    for row in range(batch):
        n = int(lengths[row])
        row_tokens = tokens[row, :n].tolist()
        text_tokens = row_tokens[:-1] if hit_stop[row] else row_tokens
        results.append(Generation(
            token_ids=row_tokens,
            logprobs=logprobs[row, :n].tolist(),
            finish_reason="eos" if hit_stop[row] else "length",
            text=tokenizer.decode(text_tokens, skip_special_tokens=True),
        ))
    return results


def logits_from(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                first: int) -> torch.Tensor:
    """Logits of positions ``first .. T-1`` only: ``[B, T - first, V]``.

    Teacher-forced scoring needs logits only where the response is predicted; skipping the prompt
    positions (``logits_to_keep`` where the model supports it) keeps ``[B, T, V]`` out of memory.
    """
    device = model_device(model)
    keep = input_ids.shape[1] - first
    extra = {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **extra).logits
    return logits[:, -keep:]


def _first_label(labels: Sequence[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != -100), len(labels))


@torch.no_grad()
def gold_nll(model: torch.nn.Module, tokenizer: Any, records: Sequence[Any], *, batch_size: int = 8,
             max_length: int = 2048) -> list[float]:
    """Teacher-forced mean negative log-likelihood of each record's gold rationale given its prompt.

    The sequence is built by :func:`kdlens.data.encode_for_training` (the exact training format:
    chat-formatted prompt, rationale, EOS) and the NLL is averaged over its response tokens
    (rationale + EOS), in nats per token. Records without a rationale get NaN.

    Returns
    -------
    list[float]
        One value per record, in input order.
    """
    from kdlens.data import collate, encode_for_training

    out = [float("nan")] * len(records)
    # a blank rationale counts as none (kdlens.data.response_text would fall back to the answer)
    todo = [i for i, r in enumerate(records) if r.rationale is not None and r.rationale.strip()]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = {i: encode_for_training(tokenizer, records[i], max_length=max_length, truncation="left") for i in todo}
    todo.sort(key=lambda i: -len(encoded[i]["input_ids"]))  # similar lengths share a batch
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch = collate([encoded[i] for i in chunk], pad_token_id=pad_id, padding_side="right")
        # logits at t predict token t + 1: start one before the earliest response token
        first = max(0, min(_first_label(encoded[i]["labels"]) for i in chunk) - 1)
        logits = logits_from(model, batch["input_ids"], batch["attention_mask"], first)[:, :-1]
        labels = batch["labels"][:, first + 1:].to(logits.device)
        counted = labels != -100
        # cross-entropy on the [N, V] response rows only (float32), then summed back per sequence
        nll = torch.nn.functional.cross_entropy(logits[counted].float(), labels[counted], reduction="none")
        row_of_token = torch.arange(len(chunk), device=logits.device)[:, None].expand_as(labels)[counted]
        totals = torch.zeros(len(chunk), dtype=torch.float64, device=logits.device).index_add_(
            0, row_of_token, nll.double())
        counts = counted.sum(-1)
        for row, i in enumerate(chunk):
            out[i] = float(totals[row] / counts[row]) if int(counts[row]) else float("nan")
    return out
