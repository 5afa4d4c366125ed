"""MPDistil's objectives as pure functions of per-example log-probabilities, and its curriculum policy.

Every function takes ``log p(y | .)``, the log-probability of each example's true class (an
encoder: the log-softmax of the gold label over the task's labels; a causal LM: the summed
log-probabilities of the gold class tokens), so the same code serves both model kinds. Shapes: ``[N]``.

References: Sengupta, Dixit, Akhtar, Chakraborty 2024, "A Good Learner can Teach Better:
Teacher-Student Collaborative Knowledge Distillation" (ICLR), section 3 and its public code
(``trainer_superglue.py``); kdlens REFERENCE.md section 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["meta_teacher_loss", "curriculum_student_loss", "curriculum_reward", "discounted_returns",
           "reinforce_loss", "CurriculumPolicy", "summary_weight"]


def meta_teacher_loss(logp_teacher: torch.Tensor, logp_student: torch.Tensor, *, kind: str) -> torch.Tensor:
    r"""Loss of the meta-teacher ``T'`` on a quiz batch (MPDistil stage 3).

    Parameters
    ----------
    logp_teacher : Tensor [N]
        ``log p_T'(y_i | h_T(x_i))``: the meta-teacher's head on the teacher's hidden states.
    logp_student : Tensor [N]
        ``log p_T'(y_i | h_S(x_i))``: the same head on the student's hidden states.
    kind : {"collaborative", "competitive"}

    Returns
    -------
    Tensor, scalar

    Notes
    -----
    Collaborative: :math:`\tfrac12 CE(T'(h_T), y) + \tfrac12 CE(T'(h_S), y)
    = -\tfrac{1}{2N}\sum_i [\log p_T'(y_i|h_T) + \log p_T'(y_i|h_S)]`.

    Competitive (REFERENCE.md and the paper's code): :math:`CE(T'(h_T), y)
    - \tfrac1N\sum_i p_T'(y_i|h_T) + \tfrac1N\sum_i p_T'(y_i|h_S)`: the head learns to classify
    from the teacher's states and to do worse than that from the student's (a higher bar for the
    student to beat in stage 4).
    """
    if logp_teacher.shape != logp_student.shape or logp_teacher.dim() != 1:
        raise ValueError(f"expected two [N] tensors, got {tuple(logp_teacher.shape)} and {tuple(logp_student.shape)}")
    if kind == "collaborative":
        return -0.5 * logp_teacher.mean() - 0.5 * logp_student.mean()
    if kind == "competitive":
        return -logp_teacher.mean() - logp_teacher.exp().mean() + logp_student.exp().mean()
    raise ValueError(f"kind={kind!r} is not one of ['collaborative', 'competitive']")


def curriculum_student_loss(logp_student: torch.Tensor, logp_meta_on_student: torch.Tensor) -> torch.Tensor:
    r"""The student's loss on a quiz batch in MPDistil's curriculum (stage 4).

    :math:`CE(S(x), y) - \tfrac1N\sum_i p_S(y_i|x_i) + \tfrac1N\sum_i p_T'(y_i|h_S(x_i))`:
    cross-entropy plus the margin by which the student's true-class probability trails the
    meta-teacher's reading of the student's own hidden states. The last term is a constant (the
    paper computes it without gradient); it makes the value a margin to log, not a gradient.

    Parameters
    ----------
    logp_student : Tensor [N]
        ``log p_S(y_i | x_i)``, with gradient.
    logp_meta_on_student : Tensor [N]
        ``log p_T'(y_i | h_S(x_i))`` (detached here).
    """
    return -logp_student.mean() - logp_student.exp().mean() + logp_meta_on_student.detach().exp().mean()


def curriculum_reward(logp_student: torch.Tensor, logp_meta: torch.Tensor, *, kind: str) -> torch.Tensor:
    r"""Reward of one curriculum step: where the student's true-class probability beats the meta-teacher's.

    Parameters
    ----------
    logp_student, logp_meta : Tensor [N]
        ``log p_S(y_i|x_i)`` and ``log p_T'(y_i|x_i)`` on the reward batch.
    kind : {"binary", "real"}
        ``binary``: :math:`\sum_i [p_S(y_i|x_i) > p_T'(y_i|x_i)]` (a count);
        ``real``: :math:`\sum_i (p_S(y_i|x_i) - p_T'(y_i|x_i))`.

    Returns
    -------
    Tensor, scalar float (no gradient)
    """
    with torch.no_grad():
        if kind == "binary":
            return (logp_student > logp_meta).sum().to(torch.float64)
        if kind == "real":
            return (logp_student.double().exp() - logp_meta.double().exp()).sum()
    raise ValueError(f"kind={kind!r} is not one of ['binary', 'real']")


def discounted_returns(rewards: Sequence[float] | torch.Tensor, gamma: float) -> torch.Tensor:
    r"""Returns-to-go of an episode: :math:`G_t = \sum_{k \ge t} \gamma^{k-t} r_k`, float64 ``[K]``.

    Notes
    -----
    The paper's code weighs reward ``k`` by :math:`\gamma^k` from the episode's start instead of
    from ``t``; the textbook form is used here (the two differ by the factor :math:`\gamma^t`).
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    out = torch.empty_like(r)
    running = 0.0
    for t in range(len(r) - 1, -1, -1):
        running = float(r[t]) + gamma * running
        out[t] = running
    return out


def reinforce_loss(log_probs: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    r"""REINFORCE with the episode's mean return as baseline: :math:`-\tfrac1K\sum_t (G_t - \bar G)\log\pi(a_t|s_t)`.

    Parameters
    ----------
    log_probs : Tensor [K]
        ``log pi(a_t | s_t)`` of the actions taken, with gradient to the policy.
    returns : Tensor [K]
        :func:`discounted_returns` (no gradient).
    """
    advantage = (returns - returns.mean()).to(log_probs.dtype).detach()
    return -(advantage * log_probs).mean()


def summary_weight(model: nn.Module, head: nn.Module) -> torch.Tensor:
    """The weight the curriculum policy summarises: the last linear layer of ``model`` before ``head``.

    A BERT classifier's pooler (``[D, D]``, the layer the paper reads), a decoder's last MLP
    down-projection (``[D, I]``).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer besides its head for the curriculum to read")
    return linears[-1].weight


class CurriculumPolicy(nn.Module):
    """MPDistil's task-choice policy: a learned summary of the student, then one linear layer and a softmax.

    The state is ``summary(W)``: a ``Linear(d_in, 1)`` applied to every row of a student weight
    matrix ``W [d_out, d_in]`` (``summary_weight``), giving ``[d_out]``; the policy is
    ``softmax(Linear(d_out, n_tasks)(state))``. Both layers learn from REINFORCE. ``W`` enters
    detached: the student learns only from its own loss (the paper's code also let the policy
    gradient reach the student's pooler).

    Parameters
    ----------
    d_out, d_in : int
        Shape of the summarised weight.
    n_tasks : int
    """

    def __init__(self, d_out: int, d_in: int, n_tasks: int) -> None:
        super().__init__()
        if n_tasks < 2:
            raise ValueError(f"a curriculum chooses among tasks: got {n_tasks} task(s)")
        self.summary = nn.Linear(d_in, 1)
        self.policy = nn.Linear(d_out, n_tasks)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Task probabilities ``[n_tasks]`` for the student whose summarised weight is ``weight``."""
        # a copy: the student's optimizer updates the weight in place before the episode's policy step
        state = self.summary(weight.detach().to(self.summary.weight.dtype, copy=True)).squeeze(-1)
        return torch.softmax(self.policy(state), dim=-1)
