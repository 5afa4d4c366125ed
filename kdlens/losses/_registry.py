"""The ``LOSSES`` catalogue of output-distribution divergences and :func:`get_loss`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import _cross_vocab as X
from . import _divergences as D
from ._common import check_finite_param, check_reduction, check_temperature, check_unit_interval

__all__ = ["LossEntry", "LOSSES", "CROSS_VOCABULARY_LOSSES", "get_loss"]

@dataclass(frozen=True)
class LossEntry:
    """One divergence in :data:`LOSSES` with the facts that callers and tests rely on.

    Attributes
    ----------
    name : str
        Key in :data:`LOSSES`.
    fn : Callable
        ``fn(student_logits, teacher_logits, *, mask=None, temperature=1.0,
        scale_by_temperature_squared=False, reduction="token_mean", **params)``.
    params : Mapping[str, float]
        Loss-specific parameters and their defaults (e.g. ``{"beta": 0.5}`` for ``jsd``).
    param_ranges : Mapping[str, str]
        Human-readable valid range of each parameter.
    zero_at_equality : bool
        Whether the loss is 0 when student and teacher distributions are equal (False only for
        ``soft_cross_entropy``, which is then the teacher entropy).
    symmetric : bool
        Whether swapping student and teacher leaves the value unchanged (at default parameters).
    upper_bound : float or None
        A finite upper bound when one exists (``tvd`` <= 1, ``l1_soft`` <= 2, ...).
    reference : str
        The paper the definition follows.
    higher_is_better : bool
        Always False: these are losses.
    cross_vocabulary : bool
        Whether teacher and student logits may have different vocabularies (``uld``,
        ``span_aligned``); only these can distill across tokenizers.
    """

    name: str
    fn: Callable
    params: Mapping[str, float] = field(default_factory=dict)
    param_ranges: Mapping[str, str] = field(default_factory=dict)
    zero_at_equality: bool = True
    symmetric: bool = False
    upper_bound: float | None = None
    reference: str = ""
    higher_is_better: bool = False
    cross_vocabulary: bool = False


def _entry(name: str, fn: Callable, **kwargs) -> tuple[str, LossEntry]:
    return name, LossEntry(name=name, fn=fn, **kwargs)


#: divergence name -> :class:`LossEntry` (function, parameters and their ranges, properties, paper);
#: read-only, see :func:`get_loss`
LOSSES: Mapping[str, LossEntry] = MappingProxyType(
    dict(
        [
            _entry("forward_kl", D.forward_kl, reference="Hinton et al. 2015"),
            _entry("reverse_kl", D.reverse_kl, reference="Gu et al. 2023 (MiniLLM, token level)"),
            _entry(
                "jsd", D.jsd, params={"beta": 0.5}, param_ranges={"beta": "[0, 1]"},
                symmetric=True, reference="Agarwal et al. 2024 (GKD)",
            ),
            _entry("tvd", D.tvd, symmetric=True, upper_bound=1.0, reference="Wen et al. 2023 (f-distill)"),
            _entry(
                "skew_forward_kl", D.skew_forward_kl, params={"alpha": 0.1}, param_ranges={"alpha": "[0, 1]"},
                reference="Ko et al. 2024 (DistiLLM)",
            ),
            _entry(
                "skew_reverse_kl", D.skew_reverse_kl, params={"alpha": 0.1}, param_ranges={"alpha": "[0, 1]"},
                reference="Ko et al. 2024 (DistiLLM)",
            ),
            _entry(
                "ab_divergence", D.ab_divergence, params={"alpha": 0.2, "beta": 0.7},
                param_ranges={"alpha": "finite real", "beta": "finite real"},
                reference="Cichocki, Cruces & Amari 2011; Wang et al. 2025 (ABKD)",
            ),
            _entry(
                "soft_cross_entropy", D.soft_cross_entropy, zero_at_equality=False,
                reference="Hinton et al. 2015 (soft targets)",
            ),
            _entry("mse_soft", D.mse_soft, symmetric=True, upper_bound=1.0, reference="Sengupta et al. 2024 (MPDistil)"),
            _entry("l1_soft", D.l1_soft, symmetric=True, upper_bound=2.0, reference="lecture: ||Phi_T - Phi_S||_1"),
            _entry(
                "l2_soft", D.l2_soft, symmetric=True, upper_bound=2.0**0.5, reference="lecture: ||Phi_T - Phi_S||_2"
            ),
            _entry(
                "uld", X.uld, symmetric=True, upper_bound=2.0, cross_vocabulary=True,
                reference="Boizard et al. 2024 (Universal Logit Distillation)",
            ),
            _entry(
                "span_aligned", X.span_aligned, params={"divergence": "forward_kl", "uld_weight": 1.0},
                param_ranges={"divergence": "a same-vocabulary loss of LOSSES", "uld_weight": ">= 0"},
                cross_vocabulary=True,
                reference="shared-vocabulary KD + ULD on the rest (TRL GOLD hybrid ULD; Zhang et al. 2024, DSKD)",
            ),
        ]
    )
)

#: names of the losses that compare different vocabularies (distillation across tokenizers)
CROSS_VOCABULARY_LOSSES: tuple[str, ...] = tuple(name for name, entry in LOSSES.items() if entry.cross_vocabulary)


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


_VALIDATORS: dict[str, dict[str, Callable[[str, float], float]]] = {
    "jsd": {"beta": check_unit_interval},
    "skew_forward_kl": {"alpha": check_unit_interval},
    "skew_reverse_kl": {"alpha": check_unit_interval},
    "ab_divergence": {"alpha": check_finite_param, "beta": check_finite_param},
    "span_aligned": {"divergence": lambda _, value: X.check_same_vocabulary_divergence(value),
                     "uld_weight": _check_weight},
}


def get_loss(name: str, **params) -> Callable:
    """A divergence from :data:`LOSSES` with some keyword arguments fixed.

    Parameters
    ----------
    name : str
        A key of :data:`LOSSES`.
    **params
        Loss parameters (``beta=0.9``) and/or shared keywords (``temperature``, ``reduction``,
        ``scale_by_temperature_squared``, ``mask``); validated now, not at the first call.

    Returns
    -------
    Callable
        ``loss(student_logits, teacher_logits, **overrides) -> torch.Tensor`` (a
        :class:`functools.partial`, so later keywords override the fixed ones).

    Raises
    ------
    ValueError
        For an unknown name (listing the known ones), an unknown parameter (listing the accepted
        ones) or a parameter outside its range (naming it).
    """
    entry = LOSSES.get(name)
    if entry is None:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    accepted = [p for p in inspect.signature(entry.fn).parameters if p not in ("student_logits", "teacher_logits")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not take {', '.join(unknown)}; it accepts {', '.join(accepted)}")
    for param, value in params.items():
        if param in _VALIDATORS.get(name, {}):
            _VALIDATORS[name][param](param, value)
    if "temperature" in params:
        check_temperature(params["temperature"])
    if "reduction" in params:
        check_reduction(params["reduction"])
    if "scale_by_temperature_squared" in params and not isinstance(params["scale_by_temperature_squared"], bool):
        raise ValueError("scale_by_temperature_squared must be True or False")
    return functools.partial(entry.fn, **params)


def resolve(loss: str | Callable, params: Mapping[str, object]) -> Callable:
    """``get_loss(loss, **params)`` for a name, ``partial(loss, **params)`` for a callable."""
    if isinstance(loss, str):
        return get_loss(loss, **params)
    if not callable(loss):
        raise ValueError(f"loss must be a name from LOSSES or a callable, got {type(loss).__name__}")
    return functools.partial(loss, **params) if params else loss
