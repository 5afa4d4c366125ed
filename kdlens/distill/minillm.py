"""``minillm``: reverse-KL distillation (Gu et al., ICLR 2024), token-level and policy-gradient forms.

``minillm.form=token``
    Reverse KL ``KL(q_S || p_T)`` per token on the fixed (gold) sequences — ``word_kd`` with
    ``loss=reverse_kl``, kept under this name so the two forms share one switch.
``minillm.form=pg`` (default)
    Every step the student samples continuations of the batch's prompts from the teacher-mixed
    distribution ``mix * p_T + (1 - mix) * q_S`` (``minillm.mix`` = 0.2), under ``no_grad``; the
    loss is :func:`policy_gradient_loss` on them.

The run's ``loss`` must be ``reverse_kl`` (validated): it is the token-level form's divergence and
names what the policy-gradient form minimises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdlens.distill._methods import RunContext, StepContext, StepData, _student_forward
from kdlens.distill._onpolicy import kd_loss, sample_rows, step_seed
from kdlens.teacher import response_mask

__all__ = ["MiniLLM", "policy_gradient_loss"]


def policy_gradient_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: torch.Tensor,
                         mask: torch.Tensor, *, mix: float = 0.2) -> dict[str, torch.Tensor]:
    """Per-token MiniLLM policy-gradient loss on sampled sequences.

    Parameters
    ----------
    student_logits : Tensor, float [B, T, V]
        Student logits at the positions that predict ``tokens`` (with gradient).
    teacher_logits : Tensor, float [B, T, V]
        Teacher logits at the same positions (no gradient needed).
    tokens : Tensor, long [B, T]
        The sampled tokens ``y_t`` (any value where masked).
    mask : Tensor, bool [B, T]
        Generated positions; within a row they must be contiguous (one continuation).
    mix : float in [0, 1)
        Teacher share of the sampling distribution, for the importance weights.

    Returns
    -------
    dict of Tensor [B, T]
        ``"loss"`` (= ``pg + single``), ``"pg"``, ``"single"``, ``"reward"``, ``"weight"``;
        0 at masked positions. Sum and divide by the token count for the batch loss.

    Notes
    -----
    Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models", eq. 5-7. With
    ``q`` the student, ``p`` the teacher, per-token reward ``r_t = log p(y_t) - log q(y_t)``
    (detached) and the length-normalised return of the *later* tokens
    ``R_{t+1} = mean_{t' > t} r_t'`` (0 for the last token)::

        pg_t     = -w_t * R_{t+1} * log q(y_t)              (long-term term, REINFORCE)
        single_t =  w_t * KL(q(.|y_<t) || p(.|y_<t))        (single-step term, full vocabulary)

    ``w_t = q(y_t) / (mix * p(y_t) + (1 - mix) * q(y_t))`` (detached) corrects for sampling from
    the teacher-mixed distribution (MiniLLM's per-token approximation, without clipping). The
    single-step term is the exact expectation of ``-r_t`` over ``y_t ~ q``, so the reward of the
    current token enters only there. Minimising ``pg`` raises ``log q(y_t)`` when the later
    tokens are rewarded (``R_{t+1} > 0``: the teacher likes them more than the student does).
    """
    if not 0.0 <= mix < 1.0:
        raise ValueError(f"mix must be in [0, 1), got {mix}")
    mask = mask.bool()
    log_q = torch.log_softmax(student_logits.float(), dim=-1)
    log_p = torch.log_softmax(teacher_logits.float(), dim=-1).detach()
    index = tokens.clamp_min(0).unsqueeze(-1)
    log_q_y = log_q.gather(-1, index).squeeze(-1)
    log_p_y = log_p.gather(-1, index).squeeze(-1)
    m = mask.float()
    reward = ((log_p_y - log_q_y).detach()) * m
    # suffix sums over later tokens: R_{t+1} = (sum_{t'>t} r) / (number of later tokens)
    later_sum = reward.flip(-1).cumsum(-1).flip(-1) - reward
    later_n = m.flip(-1).cumsum(-1).flip(-1) - m
    ret = torch.where(later_n > 0, later_sum / later_n.clamp_min(1.0), torch.zeros_like(later_sum))
    q_y = log_q_y.detach().exp()
    weight = q_y / (mix * log_p_y.exp() + (1.0 - mix) * q_y) * m
    rkl = (log_q.exp() * (log_q - log_p)).sum(-1)
    pg = -weight * ret * log_q_y * m
    single = weight * rkl * m
    return {"loss": pg + single, "pg": pg, "single": single, "reward": reward, "weight": weight}


@dataclass
class _MiniLLMRun:
    ctx: RunContext
    features: list[dict[str, list[int]]]

    def prepare_step(self, *, step: int, total_steps: int, example_indices: Sequence[int],
                     features: list[dict[str, list[int]]], student: torch.nn.Module) -> StepData:
        cfg, mcfg = self.ctx.config, self.ctx.config.minillm
        if mcfg.form == "token":
            return StepData(features, "gold")
        rows, generated = sample_rows(student, self.ctx.tokenizer, features, max_new_tokens=mcfg.max_new_tokens,
                                      temperature=1.0, seed=step_seed(cfg.seed, step, "sample"),
                                      vocab_size=self.ctx.vocab_size, mix_model=self.ctx.teacher, mix=mcfg.mix)
        return StepData(rows, "fresh", {"gen_tokens_per_s": generated.tokens_per_s,
                                        "gen_tokens": generated.n_generated})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class MiniLLM:
    """Reverse-KL distillation: token-level on gold data, or policy gradient on mixed samples.

    Notes
    -----
    Gu et al. 2024, "MiniLLM". Per-token terms are summed and divided by the global batch's
    generated-token count (length normalisation of the batch objective). MiniLLM's extra
    pre-training language-modelling loss is not included.
    """

    name: str = "minillm"
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    description: str = "reverse KL: token-level on gold, or policy gradient on teacher-mixed student samples"

    def begin(self, ctx: RunContext) -> _MiniLLMRun:
        return _MiniLLMRun(ctx, ctx.features)

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.batch_source == "gold":  # the token-level form
            return kd_loss(ctx)
        labels = ctx.batch["labels"]
        mask = response_mask(labels)
        teacher = ctx.teacher(ctx.batch, ctx.example_indices)
        _, logits = _student_forward(ctx)
        parts = policy_gradient_loss(logits, teacher.logits, labels[:, 1:], mask, mix=ctx.config.minillm.mix)
        pg, single = parts["pg"].sum() / ctx.n_tokens, parts["single"].sum() / ctx.n_tokens
        reward = parts["reward"].sum() / ctx.n_tokens
        return {"loss": pg + single, "pg": pg.detach(), "single": single.detach(), "reward": reward.detach()}
