"""``minillm``: reverse-KL distillation (Gu et al., ICLR 2024), token-level and policy-gradient forms.

``minillm.form=token``
    Reverse KL ``KL(q_S || p_T)`` per token on the fixed (gold) sequences — ``word_kd`` with
    ``loss=reverse_kl``, kept under this name so the two forms share one switch.
``minillm.form=pg`` (default)
    Every step the student samples continuations of the batch's prompts from the teacher-mixed
    distribution ``mix * p_T + (1 - mix) * q_S`` (``minillm.mix`` = 0.2), under ``no_grad``; the
    loss is :func:`policy_gradient_loss` on them.

The run's ``loss`` is ``reverse_kl`` (the default for this method; another is refused): it is the
token-level form's divergence and names what the policy-gradient form minimises.

Teacher signal, both forms: the objective is the reverse KL of the distributions at temperature
tau, ``KL(q_S^tau || p_T^tau)`` with ``softmax(z / tau)``, where the teacher's raw logits carry the
run's noise ``sigma`` (drawn per example and position, :func:`kdlens.teacher.teacher_noise`), times
tau^2 when ``scale_by_temperature_squared``. In the policy-gradient form the student samples at
temperature tau from ``mix * p_T^tau + (1 - mix) * q_S^tau`` (the clean teacher: the proposal), the
importance weights use that proposal exactly, and the rewards and the single-step term use the
noisy teacher signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdlens.distill._heads import final_hidden, output_head
from kdlens.distill._methods import RunContext, StepContext, StepData, _student_forward
from kdlens.distill._onpolicy import kd_loss, sample_rows, step_seed
from kdlens.losses._fused import LMHead, fused_head_values
from kdlens.teacher import NoiseKey, add_noise, response_mask, teacher_noise

__all__ = ["MiniLLM", "policy_gradient_loss"]


def policy_gradient_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: torch.Tensor,
                         mask: torch.Tensor, *, mix: float = 0.2, temperature: float = 1.0,
                         proposal_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-token MiniLLM policy-gradient loss on sampled sequences.

    Parameters
    ----------
    student_logits : Tensor, float [B, T, V]
        Student logits at the positions that predict ``tokens`` (with gradient).
    teacher_logits : Tensor, float [B, T, V]
        The teacher signal at the same positions (raw logits, noise included; no gradient needed).
    tokens : Tensor, long [B, T]
        The sampled tokens ``y_t`` (any value where masked).
    mask : Tensor, bool [B, T]
        Generated positions; within a row they must be contiguous (one continuation).
    mix : float in [0, 1)
        Teacher share of the sampling distribution, for the importance weights.
    temperature : float > 0
        tau: every distribution is ``softmax(z / tau)``; the samples must come from the mixture at
        the same tau.
    proposal_logits : Tensor [B, T, V] or None
        The teacher logits the samples were drawn with (the clean teacher when ``teacher_logits``
        carries noise); None = ``teacher_logits``.

    Returns
    -------
    dict of Tensor [B, T]
        ``"loss"`` (= ``pg + single``), ``"pg"``, ``"single"``, ``"reward"``, ``"weight"``;
        0 at masked positions. Sum and divide by the token count for the batch loss.

    Notes
    -----
    Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models", eq. 5-7. With
    ``q`` the student, ``p`` the teacher signal (both at temperature tau), per-token reward
    ``r_t = log p(y_t) - log q(y_t)`` (detached) and the length-normalised return of the *later*
    tokens ``R_{t+1} = mean_{t' > t} r_t'`` (0 for the last token)::

        pg_t     = -w_t * R_{t+1} * log q(y_t)              (long-term term, REINFORCE)
        single_t =  w_t * KL(q(.|y_<t) || p(.|y_<t))        (single-step term, full vocabulary)

    ``w_t = q(y_t) / (mix * p'(y_t) + (1 - mix) * q(y_t))`` (detached, ``p'`` the proposal teacher)
    corrects for sampling from the teacher-mixed distribution (MiniLLM's per-token approximation,
    without clipping). The single-step term is the exact expectation of ``-r_t`` over ``y_t ~ q``, so
    the reward of the current token enters only there. Minimising ``pg`` raises ``log q(y_t)`` when
    the later tokens are rewarded (``R_{t+1} > 0``: the teacher likes them more than the student does).
    """
    _check_pg(mix, temperature)
    stats = _token_stats(student_logits, teacher_logits.detach(), tokens, temperature,
                         None if proposal_logits is None else proposal_logits.detach())
    return _pg_terms(*stats.unbind(-1), mask, mix)


def _check_pg(mix: float, temperature: float) -> None:
    if not 0.0 <= mix < 1.0:
        raise ValueError(f"mix must be in [0, 1), got {mix}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _token_stats(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                 proposal_logits: torch.Tensor | None) -> torch.Tensor:
    """``[..., 4]``: log q(y), KL(q || p) over the vocabulary (both with the student's graph), log p(y), log p'(y)."""
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    index = tokens.clamp_min(0).unsqueeze(-1)
    log_q_y = log_q.gather(-1, index).squeeze(-1)
    log_p_y = log_p.gather(-1, index).squeeze(-1)
    if proposal_logits is None:
        proposal_y = log_p_y
    else:
        proposal = torch.log_softmax(proposal_logits.float() / temperature, dim=-1)
        proposal_y = proposal.gather(-1, index).squeeze(-1)
    rkl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return torch.stack([log_q_y, rkl, log_p_y, proposal_y], -1)


def fused_policy_gradient_loss(student_hidden: torch.Tensor, student_head: LMHead, teacher_hidden: torch.Tensor,
                               teacher_head: LMHead, tokens: torch.Tensor, mask: torch.Tensor, *, mix: float = 0.2,
                               temperature: float = 1.0, sigma: float = 0.0, noise: NoiseKey | None = None,
                               chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """:func:`policy_gradient_loss` from final hidden states and lm heads, never holding ``[B, T, V]`` logits.

    The teacher signal is the head's logits plus ``sigma * teacher_noise(...)`` at each row (the draw
    :func:`kdlens.teacher.add_noise` adds), the proposal the clean logits. The four per-token
    statistics (``log q(y)``, the full-vocabulary reverse KL, ``log p(y)``, ``log p'(y)``) come from
    one chunk of rows at a time, recomputed in the backward pass
    (``kdlens.losses._fused.fused_head_values`` with ``weights=None``: the importance weights and
    returns depend on later tokens, so the objective's weights are not known before the chunks run).

    Parameters
    ----------
    student_hidden, teacher_hidden : Tensor [B, T, H]
        Final hidden states at the positions that predict ``tokens``.
    student_head, teacher_head : LMHead
    tokens, mask, mix, temperature
        As :func:`policy_gradient_loss`.
    sigma : float
        Teacher-logit noise std; ``noise`` (a NoiseKey) is needed when > 0.
    chunk_size : int or None
        Token rows per chunk.

    Returns
    -------
    dict of Tensor [B, T]
        As :func:`policy_gradient_loss`.
    """
    _check_pg(mix, temperature)
    if sigma > 0 and noise is None:
        raise ValueError("sigma > 0 needs a NoiseKey (seed, step, example ids) to draw the teacher noise from")
    b, t = mask.shape
    device = student_hidden.device
    flat = mask.to(device).reshape(-1).nonzero().squeeze(-1)
    y = tokens.to(device).reshape(-1)[flat]
    if sigma > 0:
        ids = torch.as_tensor(list(noise.example_ids), dtype=torch.long, device=device)[flat // t]
        positions = flat % t

    def per_chunk(zs: torch.Tensor, zt: torch.Tensor, rows: slice) -> torch.Tensor:
        clean = zt.float()
        noisy = clean
        if sigma > 0:
            noisy = clean + teacher_noise(noise.seed, noise.step, ids[rows], positions[rows], clean.shape[-1],
                                          device=device).mul_(sigma)
        return _token_stats(zs, noisy, y[rows], temperature, clean if sigma > 0 else None)

    values, _ = fused_head_values(per_chunk, student_hidden.reshape(b * t, -1).index_select(0, flat), student_head,
                                  teacher_hidden.detach().reshape(b * t, -1).index_select(0, flat), teacher_head,
                                  width=4, chunk_size=chunk_size)
    stats = torch.zeros(b * t, 4, dtype=values.dtype, device=device).index_put((flat,), values).reshape(b, t, 4)
    return _pg_terms(*stats.unbind(-1), mask, mix)


def _pg_terms(log_q_y: torch.Tensor, rkl: torch.Tensor, log_p_y: torch.Tensor, proposal_y: torch.Tensor,
              mask: torch.Tensor, mix: float) -> dict[str, torch.Tensor]:
    """The MiniLLM terms from the per-token statistics [B, T] (see :func:`policy_gradient_loss`)."""
    mask = mask.bool().to(log_q_y.device)
    log_p_y, proposal_y = log_p_y.detach(), proposal_y.detach()
    m = mask.float()
    reward = ((log_p_y - log_q_y).detach()) * m
    # suffix sums over later tokens: R_{t+1} = (sum_{t'>t} r) / (number of later tokens)
    later_sum = reward.flip(-1).cumsum(-1).flip(-1) - reward
    later_n = m.flip(-1).cumsum(-1).flip(-1) - m
    ret = torch.where(later_n > 0, later_sum / later_n.clamp_min(1.0), torch.zeros_like(later_sum))
    q_y = log_q_y.detach().exp()
    weight = q_y / (mix * proposal_y.exp() + (1.0 - mix) * q_y) * m
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
        # at tau: the samples must come from the mixture of the tempered distributions the loss compares
        rows, generated = sample_rows(student, self.ctx.tokenizer, features, max_new_tokens=mcfg.max_new_tokens,
                                      temperature=cfg.temperature, seed=step_seed(cfg.seed, step, "sample"),
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
    default_loss: str | None = "reverse_kl"
    without_kd_term: str = ""

    def begin(self, ctx: RunContext) -> _MiniLLMRun:
        return _MiniLLMRun(ctx, ctx.features)

    def fused_kd_problem(self, cfg: Any) -> str | None:
        return None  # the token form is word_kd's term; the pg form has fused_policy_gradient_loss

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.batch_source == "gold":  # the token-level form
            return kd_loss(ctx)
        cfg = ctx.config
        labels = ctx.batch["labels"]
        mask = response_mask(labels)
        teacher = ctx.teacher(ctx.batch, ctx.example_indices)
        if teacher.fused:  # the kd_path default: no [B, T, V] logits
            _, hidden, amp = final_hidden(ctx.student, input_ids=ctx.batch["input_ids"],
                                          attention_mask=ctx.batch["attention_mask"])
            parts = fused_policy_gradient_loss(hidden[:, :-1], output_head(ctx.student, ctx.vocab_size, amp),
                                               teacher.last_hidden, teacher.head, labels[:, 1:], mask,
                                               mix=cfg.minillm.mix, temperature=cfg.temperature, sigma=cfg.sigma,
                                               noise=ctx.noise_key)
        else:
            _, logits = _student_forward(ctx)
            signal = add_noise(teacher.logits, cfg.sigma, key=ctx.noise_key, mask=mask)
            parts = policy_gradient_loss(logits, signal, labels[:, 1:], mask, mix=cfg.minillm.mix,
                                         temperature=cfg.temperature, proposal_logits=teacher.logits)
        scale = cfg.temperature**2 if cfg.scale_by_temperature_squared else 1.0
        pg, single = scale * parts["pg"].sum() / ctx.n_tokens, scale * parts["single"].sum() / ctx.n_tokens
        reward = parts["reward"].sum() / ctx.n_tokens
        return {"loss": pg + single, "pg": pg.detach(), "single": single.detach(), "reward": reward.detach()}
