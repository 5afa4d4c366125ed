"""Load any causal LM, build tiny test models, and initialize layer-pruned students.

``load_model`` accepts a Hugging Face hub id or local directory, a kdlens run directory, a
``.gguf`` file, or a built-in name (:data:`BUILTINS`). ``tiny_model`` builds the deterministic
2-layer test models (``tiny_model``; ``tiny_b_model`` with another tokenizer), ``prune_layers`` a
student from a teacher's layers, and ``check_compatible`` checks that teacher and student share the
one vocabulary logit KD needs (``same_vocabulary`` tells when they do not, for cross-tokenizer KD).
"""

from kdlens.models._builtin import (
    BUILTINS,
    Builtin,
    cache_root,
    find_gemma3_gguf,
    find_smollm2_gguf,
    prepare_builtin,
)
from kdlens.models._compat import check_compatible, same_vocabulary
from kdlens.models._encoder import ENCODERS, is_encoder, load_encoder_classifier, prune_encoder
from kdlens.models._gguf import convert_gguf
from kdlens.models._load import ModelNotFoundError, load_model, model_vocab_size
from kdlens.models._prune import evenly_spaced, prune_layers
from kdlens.models._tiny import tiny_b_model, tiny_b_tokenizer, tiny_config, tiny_model, tiny_tokenizer

__all__ = [
    "BUILTINS",
    "Builtin",
    "ENCODERS",
    "ModelNotFoundError",
    "cache_root",
    "check_compatible",
    "convert_gguf",
    "evenly_spaced",
    "find_gemma3_gguf",
    "find_smollm2_gguf",
    "is_encoder",
    "load_encoder_classifier",
    "load_model",
    "model_vocab_size",
    "prepare_builtin",
    "prune_encoder",
    "prune_layers",
    "same_vocabulary",
    "tiny_b_model",
    "tiny_b_tokenizer",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
]
