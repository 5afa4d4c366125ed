"""One kdlens process at a time per run or sweep directory: an advisory lock that names its holder.

``<dir>/.kdlens.lock`` is locked with :func:`fcntl.flock`, which the kernel releases when the
holding process dies however it dies (kill -9, out of memory, a lost machine's NFS lease), so a
killed run never leaves a lock to delete by hand: the next process simply takes it over. While it
holds the lock, a writer records who it is in the file (pid, host, start time, command), so a
process that is refused can say who holds the directory.

* :func:`exclusive_lock` — for a process that writes into the directory (training, a sweep);
* :func:`shared_lock` — for a process that only reads a finished run (rerunning it is a no-op):
  it creates and writes nothing, and several readers may hold it at once, never with a writer.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdlens._io import unwritable

__all__ = ["LOCK_NAME", "DirectoryInUseError", "exclusive_lock", "shared_lock", "holder"]

LOCK_NAME = ".kdlens.lock"


class DirectoryInUseError(RuntimeError):
    """Another process holds the directory's lock; the message names it when it could."""


def _flock():
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows has no flock: no lock, as before
        return None
    return fcntl


def holder(directory: str | os.PathLike) -> dict[str, Any] | None:
    """What the current (or last) writer of ``directory`` recorded about itself, or None."""
    try:
        text = (Path(directory) / LOCK_NAME).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _alive_here(info: dict[str, Any]) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine's process: assume it runs
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _refusal(directory: Path) -> DirectoryInUseError:
    info = holder(directory)
    if info and _alive_here(info):
        who = (f"pid {info.get('pid')} on {info.get('host')}, running since {info.get('started')}: "
               f"{info.get('command')}")
        return DirectoryInUseError(f"{directory} is in use by another kdlens {info.get('what', 'process')} ({who}); "
                                   "wait for it to finish or stop it, or use another directory")
    return DirectoryInUseError(f"{directory} is in use by another kdlens process (one checking that the run "
                               "is finished, or one just starting); retry in a moment")


def _open_locked(path: Path) -> int:
    """A descriptor of ``path`` (created if needed) holding an exclusive flock, or raise BlockingIOError."""
    fcntl = _flock()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # a holder that removed the file (a failed first start cleans up) may have done so
            # between our open and our flock: then we locked a file nobody else sees; take the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(directory: str | os.PathLike, *, what: str = "process") -> Iterator[Path]:
    """Hold ``directory``'s lock for writing (creating the directory when missing).

    Parameters
    ----------
    directory : path
        The run or sweep directory.
    what : str
        What is running (``"run"``, ``"sweep"``), for the message of a process that is refused.

    Yields
    ------
    Path
        ``directory``.

    Raises
    ------
    DirectoryInUseError
        Another process holds the lock (the message names it: pid, host, start time, command).
    ValueError
        ``directory`` is a file, or cannot be written (permissions, a read-only file system).

    Notes
    -----
    When this call created the lock file (and maybe ``directory``) and leaves the directory holding
    nothing else (a run that failed its checks before writing anything), it removes what it created.
    """
    directory = Path(directory)
    created = not directory.exists()
    path = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        new_lock = not path.exists()
        fd = _open_locked(path)
    except BaseException as err:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(err, BlockingIOError):
            raise _refusal(directory) from None
        friendly = unwritable(directory, err) if isinstance(err, OSError) else None
        if friendly is not None:
            raise friendly from None
        raise
    try:
        record = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv) or sys.executable}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        yield directory
    finally:
        # a run that failed its checks before writing leaves the directory as it found it
        if new_lock and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
            with contextlib.suppress(OSError):
                path.unlink()
                if created:
                    directory.rmdir()
        else:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)


@contextlib.contextmanager
def shared_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold ``directory``'s lock for reading; creates and writes nothing.

    A directory without a lock file (made by a kdlens that had none) is read without a lock.

    Raises
    ------
    DirectoryInUseError
        A writer holds the lock (the message names it).
    """
    directory = Path(directory)
    fcntl = _flock()
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY)
    except OSError:
        yield directory
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _refusal(directory) from None
        yield directory
    finally:
        os.close(fd)
