"""Convert a GGUF file into a plain (not quantized) Hugging Face directory, once, atomically.

transformers reads GGUF files but marks the result quantized, so it can be neither saved nor
trained. We load it once (transformers dequantizes every tensor to float32), rebuild a plain model
of the same architecture from the cleaned config, and save it with safetensors, the tokenizer and
the generation config. Later loads read that directory, which is fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from kdlens._io import atomic_directory, atomic_write_json, read_json, sha256_file, versions

__all__ = ["PROVENANCE_FILE", "convert_gguf", "ensure_converted", "is_converted"]

#: written last inside a converted directory; records where the weights came from
PROVENANCE_FILE = "kdlens.json"

# config keys that describe the GGUF source, not the model
_SOURCE_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype")


def is_converted(directory: Path, *, source_sha256: str | None = None) -> bool:
    """True when ``directory`` is a finished conversion (of the file with ``source_sha256``, if given)."""
    provenance = directory / PROVENANCE_FILE
    if not (provenance.is_file() and (directory / "config.json").is_file()):
        return False
    if source_sha256 is None:
        return True
    try:
        return read_json(provenance).get("source_sha256") == source_sha256
    except ValueError:
        return False


def convert_gguf(gguf_path: str | os.PathLike, output_dir: str | os.PathLike, *, source_sha256: str | None = None,
                 overwrite: bool = False) -> Path:
    """Dequantize ``gguf_path`` into a plain float32 Hugging Face directory at ``output_dir``.

    Parameters
    ----------
    gguf_path : path
        A GGUF file of an architecture that transformers can read (llama, qwen2, gemma3, ...).
    output_dir : path
        Created atomically: a run killed midway leaves only a ``.<name>.tmp-*`` sibling.
    source_sha256 : str, optional
        The file's sha256 when the caller already computed it (recorded in ``kdlens.json``).
    overwrite : bool
        Replace an existing ``output_dir``.

    Returns
    -------
    pathlib.Path
        ``output_dir``, holding ``config.json``, ``model.safetensors``, the tokenizer files,
        ``generation_config.json`` and ``kdlens.json`` (source path and sha256, versions).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist; check the path")
    output_dir = Path(output_dir)
    started = time.perf_counter()
    source_sha256 = source_sha256 or sha256_file(gguf_path)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"transformers cannot read the GGUF file {gguf_path}: {err}") from err

    config_dict = quantized.config.to_dict()
    for key in _SOURCE_KEYS:
        config_dict.pop(key, None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config.architectures = [type(quantized).__name__]
    state = quantized.state_dict()
    generation_config = quantized.generation_config
    del quantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every tensor of the plain architecture must come from the file
    model.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # the provenance file goes last: its presence marks a finished conversion
        atomic_write_json(tmp / PROVENANCE_FILE, {
            "source": str(gguf_path),
            "source_sha256": source_sha256,
            "architecture": type(model).__name__,
            "dtype": "float32",
            "conversion_seconds": round(time.perf_counter() - started, 2),
            "versions": versions(),
        })
        # temporary names are created private (0700/0600); a cache is readable like pip's
        for entry in (tmp, *tmp.iterdir()):
            entry.chmod(0o755 if entry.is_dir() else 0o644)
    return output_dir


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (e.g. pytest-xdist workers converting the same file)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: conversions are still atomic, only not deduplicated
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_converted(gguf_path: str | os.PathLike, output_dir: str | os.PathLike, *,
                     source_sha256: str | None = None) -> Path:
    """Return ``output_dir``, converting ``gguf_path`` into it first unless a finished conversion is there.

    Holds a lock next to ``output_dir`` so that concurrent callers convert once; removes temporary
    siblings left by killed conversions; replaces a directory that lacks ``kdlens.json`` or whose
    recorded source differs from ``source_sha256``.
    """
    output_dir = Path(output_dir)
    if is_converted(output_dir, source_sha256=source_sha256):
        return output_dir
    with _lock(output_dir.parent / f".{output_dir.name}.lock"):
        if is_converted(output_dir, source_sha256=source_sha256):  # another process finished meanwhile
            return output_dir
        for stale in output_dir.parent.glob(f".{output_dir.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return convert_gguf(gguf_path, output_dir, source_sha256=source_sha256, overwrite=True)
