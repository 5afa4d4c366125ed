"""kdlens: distill language models, then explain what the distillation did.

Importing ``kdlens`` is cheap: it does not import torch, transformers or matplotlib. The public
names below are resolved lazily from their submodules on first access.
"""

from __future__ import annotations

from kdlens._lazy import lazy_exports

#: the version of this kdlens (also ``kdlens --version``)
__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "distill": "kdlens.distill",
    "RunDir": "kdlens.distill",
    "METHODS": "kdlens.distill",
    "DistillConfig": "kdlens.config",
    "load_config": "kdlens.config",
    "load_model": "kdlens.models",
    "prune_layers": "kdlens.models",
    "check_compatible": "kdlens.models",
    "tiny_model": "kdlens.models",
    "load_task": "kdlens.data",
    "TASKS": "kdlens.data",
    "load_tasks": "kdlens.data",
    "Record": "kdlens.data",
    "score": "kdlens.data",
    "evaluate": "kdlens.eval",
    "collect_tokens": "kdlens.eval",
    "LOSSES": "kdlens.losses",
    "get_loss": "kdlens.losses",
    "fused_divergence": "kdlens.losses",
    "feature_loss": "kdlens.losses",
    "agreement": "kdlens.analysis",
    "fidelity": "kdlens.analysis",
    "paradox_test": "kdlens.analysis",
    "expand_sweep": "kdlens.sweep",
    "run_sweep": "kdlens.sweep",
    "read_results": "kdlens.sweep",
    "publish_sweep": "kdlens.sweep",
    "build_report": "kdlens.report",
    "write_report": "kdlens.report",
    "run_demo": "kdlens.demo",
}

__all__ = ["__version__", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
