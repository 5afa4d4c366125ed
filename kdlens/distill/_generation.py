"""Batched, seeded, KV-cached generation of training continuations (on-policy distillation).

The on-policy methods (``gkd``, ``distillm``, ``minillm``) replace gold responses by continuations
that a model samples for the same prompts. :func:`generate_continuations` decodes a batch of
prompts with left padding and a KV cache, under ``no_grad`` (no gradient flows through sampling),
and returns the result in two layouts:

* tensors in the decoding layout, ``[B, P + N]`` (``P`` = longest prompt, left padded; ``N`` =
  longest continuation, right padded), with ``attention_mask`` and ``labels`` (``-100`` on prompt
  and padding, the token id on every generated token, the stop token included);
* :meth:`GeneratedBatch.rows`: one training feature per row (``input_ids``, ``attention_mask``,
  ``labels`` as lists, no padding), the layout of :func:`kdlens.data.encode_for_training`, so
  a generated batch goes through the training loop exactly like a gold one.

Sampling stays on the model's device: logits, probabilities, the chosen tokens and the stopping
state never leave it while decoding (one boolean per step comes back, to stop early); only ``B``
uniform numbers per step go to the device. Sampling is reproducible: those uniforms come from one
CPU generator seeded with ``seed`` and pick the token by inverse transform of the row's cumulative
distribution (:func:`sample_from`), so the same seed, weights and prompts give the same
continuations on every device (up to the device's rounding of the probabilities); the loop derives
the seed from the run seed and the step, so a resumed run samples what the uninterrupted one did. With
``mix_model`` and ``mix > 0`` tokens are drawn from ``mix * p_mix + (1 - mix) * q`` (MiniLLM's
teacher-mixed sampling); both models then decode in lockstep, each with its own KV cache.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["GeneratedBatch", "generate_continuations", "prompt_ids", "stop_ids", "sample_from"]


@dataclass
class GeneratedBatch:
    """Continuations of a batch of prompts.

    Attributes
    ----------
    input_ids : Tensor, long [B, P + N]
        Left-padded prompts followed by right-padded continuations.
    attention_mask : Tensor, long [B, P + N]
        1 on real prompt tokens and generated tokens, 0 on padding.
    labels : Tensor, long [B, P + N]
        Generated token ids (stop token included), ``-100`` elsewhere.
    prompt_width : int
        ``P``: the continuation of every row starts at this column.
    lengths : Tensor, long [B]
        Generated tokens per row (the stop token included when one was generated).
    finished : Tensor, bool [B]
        Whether the row ended with a stop token (else it hit ``max_new_tokens``).
    seconds : float
        Wall time of the decoding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_width: int
    lengths: torch.Tensor
    finished: torch.Tensor
    seconds: float

    @property
    def n_generated(self) -> int:
        """Generated tokens over all rows."""
        return int(self.lengths.sum())

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of decoding wall time."""
        return self.n_generated / max(self.seconds, 1e-9)

    def continuations(self) -> list[list[int]]:
        """Generated token ids of each row (stop token included when generated)."""
        p = self.prompt_width
        return [self.input_ids[i, p:p + int(n)].tolist() for i, n in enumerate(self.lengths)]

    def rows(self) -> list[dict[str, list[int]]]:
        """One unpadded training feature per row: ``input_ids``, ``attention_mask``, ``labels``."""
        out = []
        for i in range(self.input_ids.shape[0]):
            keep = self.attention_mask[i].bool()
            ids = self.input_ids[i][keep].tolist()
            labels = self.labels[i][keep].tolist()
            out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        return out


def prompt_ids(feature: dict[str, Sequence[int]]) -> list[int]:
    """The prompt of a training feature: its tokens before the first target label."""
    labels = feature["labels"]
    start = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    return list(feature["input_ids"][:start])


def stop_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Token ids that end a continuation: the tokenizer's EOS plus the generation config's EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update(int(i) for i in (config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token; "
                         "set tokenizer.eos_token so generation can stop")
    return sorted(ids)


def _forward_keywords(model: torch.nn.Module) -> tuple[str, bool]:
    """(name of the KV-cache argument, whether ``logits_to_keep`` is accepted).

    transformers 5.x renamed ``past_key_values`` to ``cache`` in recent releases; a PEFT wrapper
    forwards ``**kwargs``, so the signature is read from the model it wraps.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def sample_from(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-transform sampling: for each row the first token whose cumulative probability exceeds ``u``.

    Parameters
    ----------
    probs : Tensor, float [B, V]
        Non-negative weights per row (normalised or not), on any device.
    uniforms : Tensor, float [B]
        Draws from U[0, 1), one per row (moved to ``probs``'s device).

    Returns
    -------
    Tensor, long [B]
        Token ``v`` with ``c_{v-1} <= u * c_V < c_v``, ``c`` the running sum of the row (float64):
        token ``v`` is drawn with probability ``probs[v] / sum(probs)``, and a zero-probability token never.
    """
    cdf = probs.double().cumsum(-1)
    target = uniforms.to(device=probs.device, dtype=torch.float64) * cdf[:, -1]
    chosen = torch.searchsorted(cdf, target[:, None], right=True).squeeze(-1)
    return chosen.clamp_max(probs.shape[-1] - 1)


class _Decoder:
    """One model stepping through a left-padded batch with its KV cache."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor, vocab: int) -> None:
        self.model, self.vocab = model, vocab
        self.device = next(model.parameters()).device
        self.keyword, keep = _forward_keywords(model)
        # only the last position's logits are needed: skips a [B, P, V] tensor on the prompt pass
        self.extra = {"logits_to_keep": 1} if keep else {}
        self.cache = None
        self.attention = attention.to(self.device)
        # positions count real tokens only, so a left-padded row sees the positions it would alone
        self.positions = (self.attention.cumsum(-1) - 1).clamp(min=0)
        self.ids = ids.to(self.device)

    def logits(self) -> torch.Tensor:
        """Next-token logits [B, vocab] (float32, on the model's device) after the tokens fed so far."""
        out = self.model(input_ids=self.ids, attention_mask=self.attention, position_ids=self.positions,
                         use_cache=True, **{self.keyword: self.cache}, **self.extra)
        cache = getattr(out, "cache", None)
        self.cache = cache if cache is not None else out.past_key_values
        return out.logits[:, -1, : self.vocab].float()

    def feed(self, tokens: torch.Tensor) -> None:
        self.ids = tokens.to(self.device)[:, None]
        ones = torch.ones((tokens.shape[0], 1), dtype=self.attention.dtype, device=self.device)
        self.attention = torch.cat([self.attention, ones], dim=1)
        self.positions = self.positions[:, -1:] + 1


@torch.no_grad()
def generate_continuations(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                           pad_token_id: int, stop_token_ids: Sequence[int], seed: int,
                           temperature: float = 1.0, do_sample: bool = True, vocab_size: int | None = None,
                           mix_model: torch.nn.Module | None = None, mix: float = 0.0) -> GeneratedBatch:
    """Decode continuations of tokenized prompts (left padding, KV cache, seeded sampling).

    Parameters
    ----------
    model : causal LM
        The policy (the student for on-policy methods, or the teacher). Its train/eval mode is
        kept; dropout is disabled while decoding and restored afterwards.
    prompts : B sequences of int
        Chat-formatted prompt ids, each non-empty.
    max_new_tokens : int >= 1
    pad_token_id : int
        Written on padding positions (masked by ``attention_mask``).
    stop_token_ids : sequence of int
        A row ends after generating one of these (it is kept and labelled, like EOS in training).
    seed : int
        Seed of the CPU generator of all draws.
    temperature : float > 0
        Sampling temperature (ignored when ``do_sample`` is False: greedy).
    do_sample : bool
    vocab_size : int or None
        Logit width to sample from (the common width of teacher and student); None = full width.
    mix_model : causal LM or None
        Second model of teacher-mixed sampling (MiniLLM): tokens are drawn from
        ``mix * softmax(z_mix / T) + (1 - mix) * softmax(z / T)``.
    mix : float in [0, 1]

    Returns
    -------
    GeneratedBatch
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    if mix > 0 and mix_model is None:
        raise ValueError("mix > 0 needs mix_model (the model mixed into the sampling distribution)")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate_continuations needs at least one prompt, each with at least one token")
    if not stop_token_ids:
        raise ValueError("stop_token_ids is empty; pass the tokenizer's EOS id")
    started = time.perf_counter()
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention[row, width - len(prompt):] = 1
    vocab = vocab_size or int(model.get_output_embeddings().weight.shape[0])
    models = [model] + ([mix_model] if mix > 0 else [])
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        decoders = [_Decoder(m, ids, attention, vocab) for m in models]
        device = decoders[0].device
        generator = torch.Generator().manual_seed(int(seed))  # CPU: the same uniforms on every device
        stops = torch.as_tensor(list(stop_token_ids), dtype=torch.long, device=device)
        pad = torch.tensor(pad_token_id, dtype=torch.long, device=device)
        tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            logits = [d.logits().to(device) for d in decoders]
            if do_sample:
                probs = torch.softmax(logits[0] / temperature, dim=-1)
                if mix > 0:
                    probs = mix * torch.softmax(logits[1] / temperature, dim=-1) + (1.0 - mix) * probs
                chosen = sample_from(probs, torch.rand(batch, generator=generator, dtype=torch.float64))
            else:
                chosen = logits[0].argmax(dim=-1)
            active = ~finished
            tokens[:, step] = torch.where(active, chosen, tokens[:, step])
            lengths += active.long()
            finished |= active & torch.isin(chosen, stops)
            if bool(finished.all()):  # the one value that leaves the device per step
                break
            # finished rows keep feeding padding; what they produce afterwards is discarded
            fed = torch.where(finished, pad, chosen)
            for d in decoders:
                d.feed(fed)
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    tokens, lengths, finished = tokens.cpu(), lengths.cpu(), finished.cpu()
    n = int(lengths.max())
    tokens = tokens[:, :n]
    generated = torch.arange(n)[None, :] < lengths[:, None]
    tokens = torch.where(generated, tokens, torch.tensor(pad_token_id))
    return GeneratedBatch(
        input_ids=torch.cat([ids, tokens], dim=1),
        attention_mask=torch.cat([attention, generated.long()], dim=1),
        labels=torch.cat([torch.full_like(ids, -100), torch.where(generated, tokens, torch.tensor(-100))], dim=1),
        prompt_width=width,
        lengths=lengths,
        finished=finished,
        seconds=time.perf_counter() - started,
    )
