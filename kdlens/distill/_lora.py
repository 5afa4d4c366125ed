"""LoRA students via PEFT: wrap, detect, and merge for a plain-transformers checkpoint."""

from __future__ import annotations

import copy

import torch

__all__ = ["apply_lora", "is_peft_model", "merged_copy"]


def apply_lora(model: torch.nn.Module, lora) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (base weights frozen).

    Parameters
    ----------
    model : transformers.PreTrainedModel
    lora : kdlens.config.LoraConfig
        Rank, alpha, dropout and target module names.

    Raises
    ------
    ValueError
        None of ``lora.targets`` names a module of ``model``.
    """
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in lora.targets if t not in names]
    if len(missing) == len(lora.targets):
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora.targets={lora.targets} match no module of the student; "
                         f"its linear layers are: {linear}")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.targets), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters merged in (``model`` itself is untouched)."""
    return copy.deepcopy(model).merge_and_unload()
