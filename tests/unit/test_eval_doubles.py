"""Scripted language models for the eval tests, and tests that they behave as scripted.

``ScriptedLM`` stands in for a causal LM where the eval code's bookkeeping (stop tokens, counts,
log-probabilities, scoring) must be checked against hand-computed values: given a prompt it
emits a fixed continuation, putting logit ``high`` on the scripted token and 0 on every other
one, so each generated token has log-probability ``high - log(exp(high) + V - 1)``. Called
without a cache (teacher forcing) it returns all-zero logits: every token has probability 1/V.
It supports the same KV-cache calling convention as transformers models (``cache=`` in,
``.cache`` out), so it exercises the real decoding loop.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

__all__ = ["ScriptedLM", "FixedLM", "scripted_logprob", "varied_tiny"]


def varied_tiny(seed: int = 0):
    """The tiny model with an untied random output head: ``(model, tokenizer)``.

    The tiny model ties its head to its small embeddings, so greedy decoding just repeats the
    last prompt token; tests of decoding need outputs that depend on the context. A random
    ``N(0, 0.5^2)`` head (seeded) gives varied, prompt-dependent greedy outputs.
    """
    from kdlens.models import tiny_model

    model, tokenizer = tiny_model(seed=seed)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1000 + seed)) * 0.5)
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model.eval(), tokenizer


def scripted_logprob(high: float, vocab_size: int) -> float:
    """log-probability of the scripted token: logit ``high`` against ``V - 1`` zeros."""
    return high - math.log(math.exp(high) + vocab_size - 1)


class ScriptedLM(torch.nn.Module):
    """Emits ``scripts[prompt_ids]`` token by token (then keeps repeating ``filler``)."""

    def __init__(self, scripts: dict[tuple[int, ...], list[int]], vocab_size: int, *, high: float = 10.0,
                 filler: int = 0) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.scripts = {tuple(k): list(v) for k, v in scripts.items()}
        self.vocab_size, self.high, self.filler = vocab_size, high, filler
        self.prompts_seen: list[tuple[int, ...]] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab_size)
        if not use_cache:
            return SimpleNamespace(logits=logits, cache=None)
        if cache is None:  # the first call holds the whole left-padded prompt
            mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            prompts = [tuple(ids[m].tolist()) for ids, m in zip(input_ids, mask, strict=True)]
            self.prompts_seen.extend(prompts)
            cache = {"scripts": [self.scripts[p] for p in prompts], "step": 0}
        else:
            cache = {**cache, "step": cache["step"] + 1}
        for row, script in enumerate(cache["scripts"]):
            token = script[cache["step"]] if cache["step"] < len(script) else self.filler
            logits[row, -1, token] = self.high
        return SimpleNamespace(logits=logits, cache=cache)


class FixedLM(torch.nn.Module):
    """Every next-token distribution is ``softmax(logits)``, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("fixed", logits.float())
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        logits = self.fixed.expand(*input_ids.shape, -1).clone()
        return SimpleNamespace(logits=logits, cache={} if use_cache else None)


def test_varied_tiny_decodes_context_dependent_text():
    from kdlens.eval import generate

    model, tokenizer = varied_tiny(0)
    outs = generate(model, tokenizer, [tokenizer.encode("What is 2 + 3?"), tokenizer.encode("Hi")], max_new_tokens=6)
    assert outs[0].token_ids != outs[1].token_ids
    assert len(set(outs[0].token_ids)) > 1  # not one token repeated
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_scripted_lm_follows_its_script_then_the_filler():
    model = ScriptedLM({(5, 6): [7, 8]}, vocab_size=10, filler=9)
    out = model(torch.tensor([[0, 5, 6]]), attention_mask=torch.tensor([[0, 1, 1]]), use_cache=True)
    assert out.logits[0, -1].argmax() == 7 and model.prompts_seen == [(5, 6)]
    out = model(torch.tensor([[7]]), cache=out.cache, use_cache=True)
    assert out.logits[0, -1].argmax() == 8
    out = model(torch.tensor([[8]]), cache=out.cache, use_cache=True)
    assert out.logits[0, -1].argmax() == 9
    lp = torch.log_softmax(out.logits[0, -1], -1)[9].item()
    assert math.isclose(lp, scripted_logprob(10.0, 10), abs_tol=1e-6)
