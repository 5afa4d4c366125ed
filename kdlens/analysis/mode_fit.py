"""Mode covering against mode seeking: fit one Gaussian to a bimodal teacher by FKL and by RKL.

The lecture's intuition for why the direction of the KL matters: a student too simple to
represent both modes of its teacher spreads over both when it minimises the forward KL
``KL(p || q)`` (mode covering: every place the teacher has mass must get student mass), and
settles on one mode when it minimises the reverse KL ``KL(q || p)`` (mode seeking: the student
must put no mass where the teacher has none). Both losses are kdlens's own
(:func:`kdlens.losses.forward_kl`, :func:`kdlens.losses.reverse_kl`), applied to distributions
over a grid of points, i.e. a softmax over ``V`` = grid points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["fit_to_bimodal"]


def fit_to_bimodal(
    *,
    means: Sequence[float] = (-2.0, 2.0),
    stds: Sequence[float] = (0.5, 0.5),
    weights: Sequence[float] = (0.5, 0.5),
    grid: Sequence[float] | None = None,
    init_mean: float = 0.5,
    init_std: float = 0.5,
    steps: int = 400,
    lr: float = 0.05,
) -> pd.DataFrame:
    """Fit a single-Gaussian student to a Gaussian-mixture teacher by forward and by reverse KL.

    Parameters
    ----------
    means, stds, weights : sequences of float, length K
        The teacher's mixture components (``stds > 0``, ``weights > 0``; weights are normalised).
    grid : sequence of float, shape [V], optional
        Points the distributions live on (default 401 points over ``[min(means) - pad,
        max(means) + pad]`` with ``pad = max(4 max(stds), max(means) - min(means))``).
    init_mean, init_std : float
        Student initialisation, shared by both fits. The default mean is slightly off the centre:
        exactly between two equal modes the reverse-KL gradient is zero by symmetry. The reverse
        KL is not convex in ``(mean, std)``: started much wider than a mode (e.g. ``init_std=1``
        with the default teacher) it settles in a broad local optimum instead of on a mode, so the
        default starts at a mode's width.
    steps, lr : int, float
        Adam steps and learning rate on ``(mean, log std)``.

    Returns
    -------
    DataFrame
        One row per grid point: ``x, teacher, forward_kl, reverse_kl`` where the last three are
        probability masses on the grid (each column sums to 1): the teacher and the student fitted
        by each divergence. ``attrs["fits"]`` maps ``"forward_kl"``/``"reverse_kl"`` to the fitted
        ``{"mean", "std", "loss"}``; ``attrs["teacher"]`` holds the mixture.

    Notes
    -----
    Teacher logits ``z_p(x) = logsumexp_k [log w_k + log N(x; m_k, s_k)]`` and student logits
    ``z_q(x) = -(x - mu)^2 / (2 sigma^2)``; both are normalised over the grid by a softmax inside
    the divergence, so the fit minimises exactly the training loss kdlens distils with.
    """
    import torch

    from kdlens.losses import forward_kl, reverse_kl

    means_a, stds_a, weights_a = (np.asarray(v, dtype=float) for v in (means, stds, weights))
    if not (means_a.ndim == stds_a.ndim == weights_a.ndim == 1 and len(means_a) == len(stds_a) == len(weights_a) > 0):
        raise ValueError(f"means, stds and weights must be 1-D of equal non-zero length, got "
                         f"{len(means_a)}, {len(stds_a)}, {len(weights_a)}")
    if (stds_a <= 0).any() or (weights_a <= 0).any():
        raise ValueError(f"stds and weights must be > 0, got stds={list(stds_a)} weights={list(weights_a)}")
    if init_std <= 0:
        raise ValueError(f"init_std must be > 0, got {init_std}")
    if steps < 1 or not lr > 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if grid is None:
        # wide enough that a mode-covering student (std ~ half the spread of the modes) is not cut off
        pad = max(4 * stds_a.max(), float(means_a.max() - means_a.min()))
        grid_a = np.linspace(means_a.min() - pad, means_a.max() + pad, 401)
    else:
        grid_a = np.asarray(grid, dtype=float)
        if grid_a.ndim != 1 or len(grid_a) < 3:
            raise ValueError("grid must be a 1-D sequence of at least 3 points")
    weights_a = weights_a / weights_a.sum()

    x = torch.tensor(grid_a, dtype=torch.float64)
    comp = (torch.log(torch.tensor(weights_a))[:, None] - torch.log(torch.tensor(stds_a))[:, None]
            - 0.5 * ((x[None, :] - torch.tensor(means_a)[:, None]) / torch.tensor(stds_a)[:, None]) ** 2)
    teacher_logits = torch.logsumexp(comp, dim=0)[None, :].float()  # [1, V]

    def student_logits(mu: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
        return (-0.5 * ((x.float() - mu) / log_s.exp()) ** 2)[None, :]  # [1, V]

    out = {"x": grid_a, "teacher": torch.softmax(teacher_logits[0].double(), -1).numpy()}
    fits = {}
    for name, loss_fn in (("forward_kl", forward_kl), ("reverse_kl", reverse_kl)):
        mu = torch.tensor(float(init_mean), requires_grad=True)
        log_s = torch.tensor(float(np.log(init_std)), requires_grad=True)
        optimizer = torch.optim.Adam([mu, log_s], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_fn(student_logits(mu, log_s), teacher_logits)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = student_logits(mu, log_s)
            final = float(loss_fn(logits, teacher_logits))
            out[name] = torch.softmax(logits[0].double(), -1).numpy()
        fits[name] = {"mean": float(mu.detach()), "std": float(log_s.detach().exp()), "loss": final}
    frame = pd.DataFrame(out)
    frame.attrs["fits"] = fits
    frame.attrs["teacher"] = {"means": means_a.tolist(), "stds": stds_a.tolist(), "weights": weights_a.tolist()}
    return frame
