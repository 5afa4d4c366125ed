"""Pieces shared by the on-policy methods (``gkd``, ``distillm``, ``minillm``).

* :func:`step_generator` — a CPU generator seeded by ``(run seed, step, purpose)``: the method's
  draws are a pure function of the step, so a resumed run draws exactly what an uninterrupted one
  did, without saving generator states.
* :func:`sample_rows` — generated training rows for the prompts of a gold global batch.
* :func:`kd_loss` — the loss of one micro-batch: on gold rows the ``word_kd`` objective
  ``(1 - kd_weight) * CE + kd_weight * D``; on generated rows only ``D`` (the teacher scores the sampled
  tokens; a cross-entropy on a model's own samples would be self-training, not distillation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kdlens.distill._generation import GeneratedBatch, generate_continuations, prompt_ids, stop_ids
from kdlens.distill._methods import StepContext, _logit_terms
from kdlens.teacher import noise_seed, response_mask

__all__ = ["step_generator", "step_seed", "sample_rows", "kd_loss"]

# purposes of the per-step random streams; distinct so that, e.g., the GKD draw and the sampling
# seed of the same step are independent
PURPOSES = {"gkd_draw": 1, "sample": 2, "distillm_draw": 3, "replay": 4, "holdout": 5, "quiz": 6, "curriculum": 7,
            "order": 8, "reward": 9}


def step_seed(seed: int, step: int, purpose: str) -> int:
    """A 63-bit seed derived from the run seed, the step and a named purpose."""
    return noise_seed(seed, step, 1000 + PURPOSES[purpose])


def step_generator(seed: int, step: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded by :func:`step_seed`."""
    return torch.Generator().manual_seed(step_seed(seed, step, purpose))


def sample_rows(model: torch.nn.Module, tokenizer: Any, features: Sequence[dict[str, list[int]]], *,
                max_new_tokens: int, temperature: float, seed: int, vocab_size: int,
                mix_model: torch.nn.Module | None = None, mix: float = 0.0
                ) -> tuple[list[dict[str, list[int]]], GeneratedBatch]:
    """Sample a continuation of each feature's prompt; return the training rows and the batch.

    The prompt of a feature is everything before its first label (the chat-formatted question),
    so the generated rows share the exact prompt tokens of the gold rows.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generated = generate_continuations(model, [prompt_ids(f) for f in features], max_new_tokens=max_new_tokens,
                                       pad_token_id=pad, stop_token_ids=stop_ids(model, tokenizer), seed=seed,
                                       temperature=temperature, vocab_size=vocab_size, mix_model=mix_model,
                                       mix=mix)
    return generated.rows(), generated


def kd_loss(ctx: StepContext) -> dict[str, torch.Tensor]:
    """Loss parts of one micro-batch: ``word_kd`` on gold rows, the divergence alone on generated rows.

    The teacher scores the whole micro-batch in one forward pass; on the fused path (the default)
    it keeps only its last hidden states and the divergence runs over the two lm heads
    (:func:`kdlens.distill._methods._logit_terms`).
    """
    mask = response_mask(ctx.batch["labels"])
    gold = ctx.batch_source == "gold"
    terms = _logit_terms(ctx, ctx.teacher(ctx.batch, ctx.example_indices), mask, gold=gold)
    if not gold:
        return {"loss": terms.loss, "kd": terms.kd}
    return {"loss": terms.loss, "ce": terms.ce, "kd": terms.kd}
