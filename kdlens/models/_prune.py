"""``prune_layers``: initialize a student from a subset of a teacher's decoder layers."""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

__all__ = ["PER_LAYER_CONFIG_ATTRIBUTES", "evenly_spaced", "prune_layers"]

#: config attributes holding one entry per decoder layer; subset along with the layers
PER_LAYER_CONFIG_ATTRIBUTES: tuple[str, ...] = ("layer_types", "no_rope_layers")


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """``keep`` indices spread evenly over ``range(n_layers)``, first and last included.

    Index ``i`` of the result is ``round(i * (n_layers - 1) / (keep - 1))``, e.g. 30 layers,
    keep 6 -> ``[0, 6, 12, 17, 23, 29]``; ``keep=1`` keeps layer 0.
    """
    if not 1 <= keep <= n_layers:
        raise ValueError(f"keep={keep} must be between 1 and the teacher's {n_layers} layers")
    if keep == 1:
        return [0]
    # exact rational rounding (half up) so that the result does not depend on float error
    return [(2 * i * (n_layers - 1) + (keep - 1)) // (2 * (keep - 1)) for i in range(keep)]


def _decoder_layers(model):
    import torch.nn as nn

    layers = getattr(getattr(model, "model", None), "layers", None)
    n_config = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) != n_config:
        raise ValueError(
            f"prune_layers cannot find the decoder layers of {type(model).__name__}: it supports causal LMs "
            "whose layers are `model.model.layers` with config.num_hidden_layers entries (Llama, Mistral, "
            "Qwen2/3, Gemma/Gemma2/Gemma3 text, Phi3, SmolLM)"
        )
    return layers


def _check_indices(keep: Sequence[int], n_layers: int) -> list[int]:
    try:
        indices = [operator.index(i) for i in keep]
    except TypeError as err:
        raise TypeError(f"keep must hold integer layer indices, got {list(keep)!r}") from err
    if not indices:
        raise ValueError("keep is empty; give at least one layer index")
    bad = [i for i in indices if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for a teacher with {n_layers} layers (0..{n_layers - 1})")
    if len(set(indices)) != len(indices):
        raise ValueError(f"keep {indices} repeats a layer; each layer can be kept once")
    if indices != sorted(indices):
        raise ValueError(f"keep {indices} is not increasing; layers keep their teacher order")
    return indices


def prune_layers(model, keep: int | Sequence[int]):
    """A new model made of a subset of ``model``'s decoder layers (the teacher is not modified).

    Embeddings, final norm, LM head (and their tying), rotary embeddings, tokenizer vocabulary
    and generation config are copied unchanged; kept layers are deep copies, renumbered so that
    the KV cache indexes them ``0..k-1``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM whose decoder layers are ``model.model.layers`` (Llama family, Qwen2, Gemma3 text).
    keep : int or sequence of int
        A count ``k`` (layers evenly spaced, first and last included, see :func:`evenly_spaced`) or
        increasing, distinct layer indices.

    Returns
    -------
    transformers.PreTrainedModel
        Same class as ``model``, ``config.num_hidden_layers == k``, per-layer config lists (e.g.
        Gemma3's ``layer_types``) subset accordingly, every parameter trainable (``requires_grad``),
        in the teacher's train/eval mode. It saves and reloads with plain ``save_pretrained`` /
        ``from_pretrained``; ``config.kdlens_kept_layers`` records the teacher layer indices.
    """
    layers = _decoder_layers(model)
    n_layers = len(layers)
    if isinstance(keep, bool) or not isinstance(keep, (int, Sequence)):
        raise TypeError(f"keep must be a layer count or a sequence of layer indices, got {type(keep).__name__}")
    indices = evenly_spaced(n_layers, keep) if isinstance(keep, int) else _check_indices(keep, n_layers)

    import torch.nn as nn

    # copy everything but the layers: seeding deepcopy's memo maps the teacher's layer list to an
    # empty one without touching the teacher; the memo also keeps tied weights and the shared config tied
    memo = {id(layers): nn.ModuleList()}
    student = copy.deepcopy(model, memo)
    student_base = student.model
    # the same memo makes the kept layers point at the student's config, not a private copy of the
    # teacher's (otherwise e.g. set_attn_implementation on the student would not reach them)
    student_base.layers = nn.ModuleList(copy.deepcopy(layers[i], memo) for i in indices)
    for new_index, layer in enumerate(student_base.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index

    configs = {id(c): c for c in (student.config, getattr(student_base, "config", student.config))}
    for config in configs.values():
        for attribute in PER_LAYER_CONFIG_ATTRIBUTES:
            values = getattr(config, attribute, None)
            if isinstance(values, (list, tuple)) and len(values) == n_layers:
                setattr(config, attribute, [values[i] for i in indices])
        config.num_hidden_layers = len(indices)
        config.kdlens_kept_layers = list(indices)
    # a student exists to be trained: a frozen teacher must not hand over frozen parameters
    return student.requires_grad_(True)
