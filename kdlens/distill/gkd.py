"""``gkd``: generalized knowledge distillation, on-policy (Agarwal et al., ICLR 2024).

At every step a uniform draw ``u`` (seeded by the run seed and the step) decides the batch: if
``u < gkd.lambda_`` the gold responses are replaced by continuations that the student samples for
the same prompts (temperature ``gkd.temperature``, at most ``gkd.max_new_tokens`` tokens, under
``no_grad``: no gradient flows through sampling); otherwise the gold batch is kept. The loss is
the run's divergence ``loss`` (GKD's default is ``loss=jsd loss_params.beta=0.5``, as in the
shipped ``gkd_tiny.yaml``) of the teacher's and the student's next-token distributions on the
response tokens, as the teacher scores them. With ``gkd.teacher_generates=true`` the teacher
samples the continuations instead (supervised KD on teacher outputs, the paper's "off-policy" arm).

``lambda_ = 0`` is exactly ``word_kd`` with the same loss; ``lambda_ = 1`` is fully on-policy.
The train log records ``gkd_draw`` (u), ``batch_source`` and ``gen_tokens_per_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdlens.distill._methods import RunContext, StepContext, StepData
from kdlens.distill._onpolicy import kd_loss, sample_rows, step_generator, step_seed

__all__ = ["GKD"]


@dataclass
class _GKDRun:
    ctx: RunContext
    features: list[dict[str, list[int]]]

    def prepare_step(self, *, step: int, total_steps: int, example_indices: Sequence[int],
                     features: list[dict[str, list[int]]], student: torch.nn.Module) -> StepData:
        cfg = self.ctx.config
        gcfg = cfg.gkd
        draw = float(torch.rand((), generator=step_generator(cfg.seed, step, "gkd_draw"), dtype=torch.float64))
        if not draw < gcfg.lambda_:
            return StepData(features, "gold", {"gkd_draw": draw})
        model = self.ctx.teacher if gcfg.teacher_generates else student
        rows, generated = sample_rows(model, self.ctx.tokenizer, features, max_new_tokens=gcfg.max_new_tokens,
                                      temperature=gcfg.temperature, seed=step_seed(cfg.seed, step, "sample"),
                                      vocab_size=self.ctx.vocab_size)
        return StepData(rows, "fresh", {"gkd_draw": draw, "gen_tokens_per_s": generated.tokens_per_s,
                                        "gen_tokens": generated.n_generated})

    def state_dict(self) -> dict[str, Any]:
        return {}  # every draw derives from (seed, step): nothing to carry over

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class GKD:
    """On-policy distillation: with probability lambda a batch is the student's own samples.

    Notes
    -----
    Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes". Loss ``D(p_T || q_S)`` on the sampled (or gold) response tokens; defaults
    lambda = 0.5 and, with ``loss=jsd``, beta = 0.5.
    """

    name: str = "gkd"
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    description: str = "on-policy KD: with probability lambda train on student samples scored by the teacher"
    default_loss: str | None = "forward_kl"
    without_kd_term: str = ""

    def begin(self, ctx: RunContext) -> _GKDRun:
        return _GKDRun(ctx, ctx.features)

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return kd_loss(ctx)

    def fused_kd_problem(self, cfg: Any) -> str | None:
        return None  # gold and generated batches alike: the KD term (and CE) run over the two lm heads
