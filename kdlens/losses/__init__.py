"""Divergences and feature losses: pure functions on tensors, shared by training and analysis.

Output-distribution divergences (one call shape, student first)::

    fn(student_logits, teacher_logits, *, mask=None, temperature=1.0,
       scale_by_temperature_squared=False, reduction="token_mean", **params)

``forward_kl``, ``reverse_kl``, ``jsd`` (``beta``), ``tvd``, ``skew_forward_kl`` (``alpha``),
``skew_reverse_kl`` (``alpha``), ``ab_divergence`` (``alpha``, ``beta``), ``soft_cross_entropy``,
``mse_soft``, ``l1_soft``, ``l2_soft``; across vocabularies (distillation between tokenizers):
``uld`` and ``span_aligned`` (:data:`CROSS_VOCABULARY_LOSSES`), with :func:`sorted_l1`; catalogued in
:data:`LOSSES`, configured by :func:`get_loss`.
Memory-bounded evaluation: :func:`chunked_divergence` (logits given) and :func:`fused_divergence`
(hidden states and lm heads given; the training loop's default KD path builds on the same engine). Feature losses: :func:`feature_loss`, :func:`mmd_rbf`,
:func:`layer_map`, :func:`pkd_loss`, :func:`attention_kl`, :class:`FeatureProjection`.
"""

from ._chunked import chunked_divergence
from ._common import REDUCTIONS, reduce
from ._cross_vocab import sorted_l1, span_aligned, uld
from ._divergences import (
    ab_divergence,
    forward_kl,
    jsd,
    l1_soft,
    l2_soft,
    mse_soft,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    soft_cross_entropy,
    tvd,
)
from ._features import (
    FEATURE_KINDS,
    LAYER_MAP_STRATEGIES,
    FeatureProjection,
    attention_kl,
    feature_loss,
    layer_map,
    mmd_rbf,
    pkd_loss,
)
from ._fused import fused_divergence
from ._registry import CROSS_VOCABULARY_LOSSES, LOSSES, LossEntry, get_loss

__all__ = [
    "LOSSES",
    "CROSS_VOCABULARY_LOSSES",
    "LossEntry",
    "get_loss",
    "REDUCTIONS",
    "reduce",
    "forward_kl",
    "reverse_kl",
    "jsd",
    "tvd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "ab_divergence",
    "soft_cross_entropy",
    "mse_soft",
    "l1_soft",
    "l2_soft",
    "uld",
    "span_aligned",
    "sorted_l1",
    "chunked_divergence",
    "fused_divergence",
    "FEATURE_KINDS",
    "LAYER_MAP_STRATEGIES",
    "feature_loss",
    "mmd_rbf",
    "layer_map",
    "pkd_loss",
    "attention_kl",
    "FeatureProjection",
]
