"""Typed, validated configuration of a distillation run, loaded from YAML with dotted overrides.

A :class:`DistillConfig` is a plain dataclass validated in ``__post_init__`` (ranges, names,
combinations), so a bad value fails before any model is loaded. It is built from an optional
YAML file plus ``key=value`` overrides::

    cfg = load_config("kdlens/configs/word_kd_tiny.yaml", ["sigma=1.0", "lora.r=16"])
    cfg = load_config(None, ["teacher=tiny", "student=prune:1", "tasks=chain_sum:64"])

Override values are parsed with ``yaml.safe_load`` (never ``eval``/``exec``) and then coerced to the
field's type, so ``lr=1e-4`` is a float and ``tasks=a,b`` a list. Unknown keys raise an error
that lists the closest known keys.
"""

from kdlens.config._distill import DistillConfig, cache_is_faithful, config_to_yaml, load_config
from kdlens.config._endpoint import REPORT_TO, EndpointConfig
from kdlens.config._overrides import apply_overrides, parse_overrides
from kdlens.config._sections import (
    BlackboxConfig,
    DistiLLMConfig,
    FeatureConfig,
    GKDConfig,
    LoraConfig,
    MetaDistilConfig,
    MiniLLMConfig,
    MPDistilConfig,
    SeqKDConfig,
)

__all__ = [
    "DistillConfig",
    "FeatureConfig",
    "LoraConfig",
    "SeqKDConfig",
    "GKDConfig",
    "DistiLLMConfig",
    "MiniLLMConfig",
    "BlackboxConfig",
    "MetaDistilConfig",
    "MPDistilConfig",
    "EndpointConfig",
    "REPORT_TO",
    "load_config",
    "apply_overrides",
    "parse_overrides",
    "config_to_yaml",
    "cache_is_faithful",
]
