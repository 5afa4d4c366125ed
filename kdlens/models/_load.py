"""``load_model``: one entry point for every way a causal LM reaches kdlens."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from kdlens._io import sha256_file
from kdlens.models._builtin import BUILTINS, cache_root, prepare_builtin
from kdlens.models._gguf import ensure_converted
from kdlens.models._hf import quiet_progress

__all__ = ["ModelNotFoundError", "load_model", "model_vocab_size", "resolve_dtype", "resolve_device"]

# a Hugging Face hub id: "name" or "org/name"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a built-in, a local path, nor reachable on the hub."""


def resolve_dtype(dtype: Any = None):
    """Map ``dtype`` to what ``from_pretrained`` takes.

    ``None`` means float32 (kdlens's explicit default: reproducible and trainable on CPU),
    ``"auto"`` keeps the checkpoint's dtype, strings ``"float32"``/``"bfloat16"``/``"float16"``
    (or ``fp32``/``bf16``/``fp16``) and floating ``torch.dtype`` values are used as given.
    """
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        if dtype.lower() in _DTYPE_NAMES:
            return getattr(torch, _DTYPE_NAMES[dtype.lower()])
    raise ValueError(f"unknown dtype {dtype!r}; use a torch dtype or one of: auto, {', '.join(_DTYPE_NAMES)}")


def resolve_device(device: Any = None):
    """Map ``device`` to a ``torch.device``; ``None`` is the CPU (CUDA only when asked for), ``"auto"`` the
    first GPU when CUDA is available, else the CPU."""
    import torch

    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available; pass device='cpu'")
    return resolved


def _ensure_pad_token(model, tokenizer) -> None:
    """Give the tokenizer a pad token (eos, else unk, else bos) and the generation config its id."""
    if tokenizer.pad_token is None:
        for candidate in ("eos_token", "unk_token", "bos_token"):
            if getattr(tokenizer, candidate) is not None:
                tokenizer.pad_token = getattr(tokenizer, candidate)
                break
        else:
            raise ValueError(f"tokenizer of {model.name_or_path} has no pad, eos, unk or bos token to pad with; "
                             "set tokenizer.pad_token yourself")
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


def _local_directory(path: Path) -> Path:
    """The HF directory in ``path``: itself, or ``checkpoint/`` of a kdlens run directory."""
    if (path / "config.json").is_file():
        return path
    if (path / "checkpoint" / "config.json").is_file():
        return path / "checkpoint"
    if (path / "checkpoint").is_dir():
        raise FileNotFoundError(f"{path} is a kdlens run directory whose checkpoint/ has no config.json "
                                "(the run has not saved a checkpoint yet)")
    raise FileNotFoundError(f"{path} is neither a Hugging Face model directory (no config.json) nor a kdlens "
                            "run directory (no checkpoint/); pass the folder written by save_pretrained")


def model_vocab_size(name_or_path: str | os.PathLike) -> int | None:
    """The vocabulary size of a model (``vocab_size`` of its ``config.json``), read without loading it.

    Parameters
    ----------
    name_or_path : str or path
        A built-in name, a local Hugging Face directory or a kdlens run directory.

    Returns
    -------
    int or None
        None when it cannot be told without building, converting or downloading the model: a hub
        id, a ``.gguf`` file, a built-in made in memory (``tiny``) or not yet in the cache, a
        directory without ``config.json``.
    """
    name = os.fspath(name_or_path)
    if name in BUILTINS:
        entry = BUILTINS[name]
        if entry.cached is None or not entry.cached():
            return None
        directory = Path(prepare_builtin(name))  # already in the cache: prepare only finds it
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            return None
        try:
            directory = _local_directory(path)
        except FileNotFoundError:
            return None
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _known_names() -> str:
    return ", ".join(BUILTINS)


def load_model(name_or_path: str | os.PathLike, *, dtype: Any = None, device: Any = None):
    """Load a causal LM and its tokenizer.

    Parameters
    ----------
    name_or_path : str or path
        One of: a built-in name (``"tiny"``, ``"tiny-b"``, ``"smollm2-135m-instruct"``, ``"gemma3-270m"``;
        see ``BUILTINS``); a local
        Hugging Face directory; a kdlens run directory (its ``checkpoint/`` is loaded); a ``.gguf``
        file (dequantized once into ``<cache>/models/gguf-<sha256[:16]>``); or a hub id such as
        ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (needs the hub or its local HF cache).
    dtype : torch.dtype or str, optional
        ``None`` gives float32 (not the checkpoint's dtype: explicit and reproducible); ``"auto"``
        keeps the checkpoint's; also ``"float32"``, ``"bfloat16"``, ``"float16"``.
    device : str or torch.device, optional
        ``None`` gives the CPU; CUDA is used only when asked for (``"cuda"``, ``"cuda:1"``).

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode; logits of shape ``[batch, seq, vocab_size]``.
    tokenizer : transformers.PreTrainedTokenizerBase
        Always has a pad token (the eos token when the checkpoint defines none).

    Raises
    ------
    FileNotFoundError
        A path that does not exist or is not a model directory.
    ModelNotFoundError
        A hub id that is neither in the local HF cache nor reachable (offline): the message says how
        to pass a local path instead.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    name = os.fspath(name_or_path)

    if name in BUILTINS and BUILTINS[name].build is not None:  # tiny models, built in memory
        model, tokenizer = BUILTINS[name].build()
        if torch_dtype != "auto":
            model.to(torch_dtype)
        return model.to(torch_device).eval(), tokenizer

    is_hub_id = False
    if name in BUILTINS:
        directory: str | Path = prepare_builtin(name)
    else:
        path = Path(name).expanduser()
        if path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"GGUF file {path} does not exist; check the path")
            digest = sha256_file(path)
            directory = ensure_converted(path, cache_root() / "models" / f"gguf-{digest[:16]}",
                                         source_sha256=digest)
        elif path.is_dir():
            directory = _local_directory(path)
        elif path.exists() or not _HUB_ID.match(name):
            raise FileNotFoundError(f"{name} is not a model directory, .gguf file, hub id or built-in name "
                                    f"({_known_names()}); check the path")
        else:
            directory, is_hub_id = name, True

    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own type; anything else is re-raised
        if is_hub_id and isinstance(err, OSError):
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            reason = "HF_HUB_OFFLINE is set" if offline else "the hub can't be reached or has no such model"
            raise ModelNotFoundError(
                f"could not load {name!r} from the Hugging Face hub ({reason}); it is not in the local HF cache "
                f"and no local directory of that name exists. "
                f"Pass a local directory instead (one written by save_pretrained, e.g. "
                f"load_model('/path/to/model')), a .gguf file, or a built-in name ({_known_names()}). "
                f"Original error: {str(err).splitlines()[0]}"
            ) from err
        if is_hub_id or not _is_damaged_file_error(err):
            raise
        raise ValueError(f"the model files in {directory} are corrupt or incomplete ({_first_line(err)}): a "
                         "weights file, config.json or tokenizer file is damaged, e.g. by a killed copy; save or "
                         "download the model again") from err
    _ensure_pad_token(model, tokenizer)
    return model.to(torch_device).eval(), tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_damaged_file_error(err: BaseException) -> bool:
    """A read of a local model file that failed on its content (not a missing file, not a bug)."""
    import json

    if type(err).__name__ == "SafetensorError" or isinstance(err, (json.JSONDecodeError, UnicodeDecodeError)):
        return True
    return isinstance(err, OSError) and any(sign in str(err) for sign in ("Unable to load weights",
                                                                          "is not a valid JSON file"))
