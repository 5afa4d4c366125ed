"""Atomic file writes, hashing and the version manifest shared by every stage.

Nothing kdlens writes is ever half-written: files go to a temporary sibling and are moved into
place with :func:`os.replace`, directories are built under a temporary name and renamed. Every
temporary name carries its writer's pid (``.<name>.tmp-<pid>-<random>``), so
:func:`remove_stale_temporaries` can tell a killed writer's leftovers from a live writer's files.
Written files and directories get the modes a plain ``open``/``mkdir`` would give (0666/0777 less
the umask), not the private modes of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_directory",
    "unwritable",
    "remove_stale_temporaries",
    "stale_temporaries",
    "is_temporary",
    "read_json",
    "read_yaml",
    "sha256_file",
    "sha256_json",
    "versions",
    "git_sha",
]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_prefix(path: Path, kind: str = "tmp") -> str:
    """``.<name>.<kind>-<pid>-``: the pid lets :func:`remove_stale_temporaries` spare a live writer."""
    return f".{path.name}.{kind}-{os.getpid()}-"


def _give_umask_modes(root: Path) -> None:
    """Give ``root`` and everything under it the modes ``mkdir``/``open`` would (0777/0666 less the umask).

    :func:`tempfile.mkdtemp` makes a 0700 directory and some writers (``safetensors``) create 0600
    files: renamed into place as they are, other users could not read a trained model.
    """
    mask = _umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)


def unwritable(path: str | os.PathLike, err: OSError) -> ValueError | None:
    """The one-line error for a path kdlens cannot write because of where it points, or None.

    A path through a file (``-o`` naming an existing file), a directory without write permission or
    a read-only file system is the user's to fix, not a bug: say which, and what to do.
    """
    path = Path(path)
    if isinstance(err, FileExistsError | NotADirectoryError) or err.errno in (errno.EEXIST, errno.ENOTDIR):
        blocking = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), path)
        return ValueError(f"cannot write {path}: {blocking} is a file, not a directory; choose another path")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = next((p for p in [path, *path.parents] if p.exists()), path)
        why = "is on a read-only file system" if err.errno == errno.EROFS else "is not writable (permission denied)"
        return ValueError(f"cannot write {path}: {where} {why}; choose a directory you can write to")
    return None


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        friendly = unwritable(path, err)
        if friendly is None:
            raise
        raise friendly from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    Raises
    ------
    ValueError
        ``path`` cannot be written where it points (:func:`unwritable`).
    """
    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 less the umask)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}") from err


def read_yaml(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Load a YAML file with ``yaml.safe_load`` (never arbitrary objects); an empty file gives ``{}``.

    ``what`` names the file in the errors (e.g. ``"config file"``): a missing path raises
    FileNotFoundError, malformed YAML a ValueError that names the file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte at offset {err.start}); re-save it as UTF-8") from None
    return {} if data is None else data


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to ``path`` on success.

    A run killed inside the ``with`` block leaves only a ``.<name>.tmp-<pid>-*`` sibling (see
    :func:`remove_stale_temporaries`), never a partial ``path`` that later loads would trust. The
    directory and its files get the umask's modes before the rename.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=path.parent))
    try:
        yield tmp
        _give_umask_modes(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path, "old"), dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: kdlens temporaries: ``.<name>.tmp-<pid>-<random>`` (files and directories being written) and
#: ``.<name>.old-<pid>-<random>`` (a replaced directory being deleted)
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)-[^/]+$")
#: names from kdlens versions whose temporaries did not carry a pid
_LEGACY_TEMPORARY = re.compile(r"^\..+(?:\.tmp-[A-Za-z0-9_]{8}|\.[A-Za-z0-9_]{8}\.tmp|\.old-\d+|\.tmp)$")
#: a legacy temporary this old was left by a killed writer (no kdlens write takes an hour)
LEGACY_TEMPORARY_AGE_S = 3600.0


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a kdlens temporary (``.<name>.tmp-<pid>-*`` or ``.<name>.old-<pid>-*``), live or stale."""
    return _TEMPORARY.match(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(path: Path) -> bool:
    import time

    match = _TEMPORARY.match(path.name)
    if match is not None:
        return not _pid_alive(int(match["pid"]))
    if _LEGACY_TEMPORARY.match(path.name):
        try:
            return time.time() - path.lstat().st_mtime > LEGACY_TEMPORARY_AGE_S
        except FileNotFoundError:
            return False
    return False


def stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """The temporaries under ``root`` that killed kdlens writers left (see :func:`remove_stale_temporaries`)."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if _is_stale(Path(folder) / name):
                found.append(Path(folder) / name)
                if name in dirs:
                    dirs.remove(name)
    return found


def remove_stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed kdlens writers left under ``root``; return what was deleted.

    A temporary (see the module docstring) is stale when the process that made it is gone: its pid
    names no live process on this machine. A live writer's temporaries are kept, and so is anything
    that is not a kdlens temporary. Names from kdlens versions without the pid count as stale once
    older than :data:`LEGACY_TEMPORARY_AGE_S`. Call it while holding the directory's lock
    (:mod:`kdlens._lock`), so that no other kdlens process writes there meanwhile.
    """
    found = stale_temporaries(root)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (used for data hashes in manifests)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of Python and the packages a result depends on, for manifests."""
    names = ["kdlens", "torch", "transformers", "accelerate", "peft", "numpy", "pandas", "scipy",
             "statsmodels", "reasoning-gym", "sacrebleu"]
    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    out.update({name: _version(name) for name in names})
    return out


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """The current commit of the kdlens checkout (or ``cwd``), or None outside a git repository.

    A copy of the working tree without ``.git`` (a lent GPU's) names its commit in ``$KDLENS_GIT_SHA``.
    """
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return os.environ.get("KDLENS_GIT_SHA") or None
