"""``distillm``: skew divergences with adaptive student-generated outputs (Ko et al., ICML 2024).

The loss is the run's divergence, meant to be a skew one (``loss=skew_forward_kl`` or
``loss=skew_reverse_kl`` with ``loss_params.alpha``, DistiLLM's default 0.1). What the student
trains on is chosen each step by the adaptive off-policy schedule (REFERENCE.md section 3):

* ``phi`` starts at 0 and rises by ``distillm.phi_increment`` (0.1, at most ``phi_max`` = 1)
  whenever the validation loss rises by at least ``distillm.threshold`` (0.1) over the last
  recorded value. The validation loss is the run's divergence, token mean, of the student against
  the teacher on ``distillm.val_size`` gold examples held out of the training data, measured
  before steps 0, ``eval_every``, ``2 * eval_every``, ...
* each step draws ``r ~ U(0, 1)``; if ``r < phi * (1 - step / total)`` (or ``r < phi`` while the
  replay buffer is not full) the student generates fresh outputs for the batch's prompts, which
  are pushed to the replay buffer (``distillm.replay_capacity`` = 1000, oldest evicted); else if
  ``r < phi`` the batch is sampled from the buffer; else the gold batch is used.

Fresh and replayed batches are scored by the teacher with the divergence alone; gold batches use
``(1 - kd_weight) * CE + kd_weight * D`` as in ``word_kd``. The train log records ``phi``, ``distillm_draw``
(r), ``batch_source`` (gold, fresh, replay), ``replay_size``, ``val_loss`` (when measured) and
``gen_tokens_per_s`` (fresh batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kdlens.distill._heads import final_hidden, output_head
from kdlens.distill._methods import RunContext, StepContext, StepData
from kdlens.distill._onpolicy import kd_loss, sample_rows, step_generator, step_seed
from kdlens.distill._replay import ReplayBuffer
from kdlens.teacher import NoiseKey, fused_kd_token_loss, kd_token_loss, response_mask

__all__ = ["DistiLLM", "AdaptiveSchedule"]

# a rise of exactly the threshold (e.g. 2.3 - 2.2 = 0.0999999999999996 in floats) counts
_EPS = 1e-9


@dataclass
class AdaptiveSchedule:
    """DistiLLM's adaptive student-generated-output ratio ``phi`` and the per-step batch choice.

    Parameters
    ----------
    increment : float
        Added to ``phi`` when the validation loss rises by at least ``threshold``.
    threshold : float
    max_phi : float
    """

    increment: float = 0.1
    threshold: float = 0.1
    max_phi: float = 1.0
    phi: float = 0.0
    last_loss: float | None = None
    history: list[float] = field(default_factory=list)

    def update(self, val_loss: float) -> bool:
        """Record a validation loss; return whether ``phi`` rose."""
        rose = self.last_loss is not None and val_loss - self.last_loss >= self.threshold - _EPS
        if rose:
            self.phi = min(self.max_phi, round(self.phi + self.increment, 12))
        self.last_loss = float(val_loss)
        self.history.append(float(val_loss))
        return rose

    def choose(self, r: float, step: int, total_steps: int, buffer_full: bool) -> str:
        """``"fresh"``, ``"replay"`` or ``"gold"`` for a draw ``r`` in [0, 1) at 0-based ``step``."""
        fresh_p = self.phi * (1.0 - step / total_steps)
        if r < fresh_p or (not buffer_full and r < self.phi):
            return "fresh"
        if r < self.phi:
            return "replay"
        return "gold"

    def state_dict(self) -> dict[str, Any]:
        return {"phi": self.phi, "last_loss": self.last_loss, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phi, self.last_loss = float(state["phi"]), state["last_loss"]
        self.history = [float(x) for x in state["history"]]


def _holdout(n: int, size: int | None, seed: int, batch_size: int) -> tuple[list[int], list[int]]:
    """(train positions, validation positions), a seeded split of ``range(n)``.

    ``size=None`` holds out ``min(16, n // 5)`` examples, at most ``n - batch_size``.
    """
    if size is None:
        size = min(16, n // 5, n - batch_size)
        if size < 1:
            raise ValueError(f"method=distillm holds out examples for the validation loss that drives phi, but "
                             f"{n} training examples with batch_size={batch_size} leave none: add data, lower "
                             "batch_size, or set distillm.val_size=0 (phi then stays 0: gold batches only)")
    if size == 0:
        return list(range(n)), []
    if size >= n:
        raise ValueError(f"distillm.val_size={size} holds out all {n} training examples; lower it")
    order = torch.randperm(n, generator=step_generator(seed, 0, "holdout")).tolist()
    return sorted(order[size:]), sorted(order[:size])


@dataclass
class _DistiLLMRun:
    ctx: RunContext
    features: list[dict[str, list[int]]]
    val: list[dict[str, list[int]]]
    schedule: AdaptiveSchedule
    buffer: ReplayBuffer

    @torch.no_grad()
    def validation_loss(self, student: torch.nn.Module, step: int) -> float:
        """Token-mean divergence of student vs teacher on the held-out gold examples.

        The teacher signal is the training one (noise sigma, temperature tau, the tau^2 factor): the
        schedule reacts to the loss the student is trained on. Validation example ``j`` draws its
        noise as example ``len(train) + j`` of step ``step``, apart from every training example.
        """
        from kdlens.data import collate
        from kdlens.losses import get_loss

        cfg, teacher, vocab = self.ctx.config, self.ctx.teacher, self.ctx.vocab_size
        loss_fn = get_loss(cfg.loss, **cfg.loss_params)
        pad = self.ctx.tokenizer.pad_token_id
        device = next(student.parameters()).device
        total, count = 0.0, 0
        mode = student.training
        student.eval()
        try:
            for start in range(0, len(self.val), cfg.batch_size):
                batch = collate(self.val[start:start + cfg.batch_size], pad_token_id=pad, padding_side="right")
                batch = {k: v.to(device) for k, v in batch.items()}
                kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
                mask = response_mask(batch["labels"])
                ids = [len(self.features) + start + j for j in range(batch["input_ids"].shape[0])]
                signal = {"temperature": cfg.temperature, "sigma": cfg.sigma, "noise": NoiseKey(cfg.seed, step, ids),
                          "scale_by_temperature_squared": cfg.scale_by_temperature_squared}
                if self.ctx.kd_path == "fused":  # as the training steps: no [B, T, V] logits
                    _, hs, amp = final_hidden(student, **kw)
                    _, ht, _ = final_hidden(teacher, **kw)
                    loss = fused_kd_token_loss(loss_fn, hs[:, :-1], output_head(student, vocab, amp), ht[:, :-1],
                                               output_head(teacher, vocab, amp), mask=mask, **signal).kd
                else:
                    s = student(**kw).logits[:, :-1, :vocab]
                    t = teacher(**kw).logits[:, :-1, :vocab]
                    loss = kd_token_loss(loss_fn, s, t, mask=mask, **signal)
                total += float(loss.sum())
                count += int(mask.sum())
        finally:
            student.train(mode)
        return total / max(count, 1)

    def prepare_step(self, *, step: int, total_steps: int, example_indices: Sequence[int],
                     features: list[dict[str, list[int]]], student: torch.nn.Module) -> StepData:
        cfg, dcfg = self.ctx.config, self.ctx.config.distillm
        logs: dict[str, Any] = {}
        if self.val and step % dcfg.eval_every == 0:
            logs["val_loss"] = self.validation_loss(student, step)
            self.schedule.update(logs["val_loss"])
        r = float(torch.rand((), generator=step_generator(cfg.seed, step, "distillm_draw"), dtype=torch.float64))
        source = self.schedule.choose(r, step, total_steps, self.buffer.full)
        logs.update(phi=self.schedule.phi, distillm_draw=r)
        if source == "fresh":
            rows, generated = sample_rows(student, self.ctx.tokenizer, features, max_new_tokens=dcfg.max_new_tokens,
                                          temperature=dcfg.temperature, seed=step_seed(cfg.seed, step, "sample"),
                                          vocab_size=self.ctx.vocab_size)
            self.buffer.push(rows)
            logs.update(gen_tokens_per_s=generated.tokens_per_s, gen_tokens=generated.n_generated)
        elif source == "replay":
            rows = self.buffer.sample(len(features), step_generator(cfg.seed, step, "replay"))
        else:
            rows = features
        logs["replay_size"] = len(self.buffer)
        return StepData(rows, source, logs)

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.buffer.load_state_dict(state["buffer"])


@dataclass(frozen=True)
class DistiLLM:
    """Skew KL/RKL with adaptive student-generated outputs and a replay buffer.

    Notes
    -----
    Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models".
    """

    name: str = "distillm"
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    description: str = "skew KL/RKL with an adaptive share of student outputs and a replay buffer"
    default_loss: str | None = "forward_kl"
    without_kd_term: str = ""

    def begin(self, ctx: RunContext) -> _DistiLLMRun:
        dcfg = ctx.config.distillm
        train, val = _holdout(len(ctx.features), dcfg.val_size, ctx.config.seed, ctx.config.batch_size)
        schedule = AdaptiveSchedule(increment=dcfg.phi_increment, threshold=dcfg.threshold, max_phi=dcfg.phi_max)
        return _DistiLLMRun(ctx, [ctx.features[i] for i in train], [ctx.features[i] for i in val], schedule,
                            ReplayBuffer(dcfg.replay_capacity))

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return kd_loss(ctx)

    def fused_kd_problem(self, cfg: Any) -> str | None:
        return None  # gold and generated batches alike: the KD term (and CE) run over the two lm heads
