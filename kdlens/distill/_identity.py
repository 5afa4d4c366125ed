"""A run's identity: its resolved config, its training data and its models' weights.

Two runs with the same identity train the same model, so rerunning one is a no-op; a run directory
that holds another identity is never reused in silence (:func:`check_run_dir`). The identity is
the hash of three parts, recorded in the run's ``manifest.json`` under ``"identity"``:

* ``config`` — the resolved :class:`kdlens.config.DistillConfig` without the keys that say where
  things live (``LOCATION_KEYS``); a teacher or student given as a local path is identified
  by its weights, and a task file by its records, not by the path, so a moved sweep directory
  keeps its runs; a loss parameter at its default counts as the default; how often the run
  saves and logs and where it reports (``OPERATIONAL_KEYS``) are left out: they change no weight;
* ``data`` — the hash of the training records (:func:`data_fingerprint`), read before anything
  is written;
* ``teacher_weights`` / ``student_weights`` — :func:`weights_fingerprint` of the teacher (when the
  run uses one) and of the student it starts from (``prune:N`` is the teacher's fingerprint and N;
  None when the trained model is the teacher itself).

Fingerprinting hashes the weight files (sha256), memoised in the kdlens cache
(``<cache>/fingerprints/``) by the file's resolved path, size, inode and modification time, so only
the first use of a model (or its first use after it changed) reads it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlens._io import atomic_write_json, sha256_file, sha256_json

__all__ = [
    "LOCATION_KEYS",
    "OPERATIONAL_KEYS",
    "RunIdentity",
    "RunCheck",
    "run_identity",
    "weights_fingerprint",
    "data_fingerprint",
    "inspect_run",
    "check_run_dir",
    "refuse_foreign",
    "mismatch_message",
]

#: config keys that say where a run lives, not what it is (left out of its identity)
LOCATION_KEYS = ("output_dir", "cache_dir")
#: config keys that say how often a run saves and logs and where it reports, not what it trains: they change
#: no weight (tested), so a finished run is not refused for them and an interrupted one resumes under new ones
OPERATIONAL_KEYS = ("save_every", "log_every", "report_to")
#: a local teacher or student path in the identity's config: its weights identify it
LOCAL_MODEL = "<local model: see its weights fingerprint>"
#: a task file or directory in the identity's config: its records identify it
LOCAL_DATA = "<local data: see the data fingerprint>"
#: files whose bytes are a model's weights (an adapter's config says which base it adapts)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_ALSO_HASHED = ("adapter_config.json",)
_MEMO_LIMIT = 2000


@dataclass(frozen=True)
class RunIdentity:
    """What a run is (see the module docstring).

    Attributes
    ----------
    config : dict
        The resolved config without ``LOCATION_KEYS`` (local model paths replaced by
        ``LOCAL_MODEL``).
    data : str
        sha256 of the training records.
    teacher_weights, student_weights : str or None
        Weight fingerprints (None when the run uses no teacher / trains the teacher itself).
    """

    config: Mapping[str, Any]
    data: str
    teacher_weights: str | None
    student_weights: str | None

    @property
    def hash(self) -> str:
        return sha256_json({"config": self.config, "data": self.data, "teacher_weights": self.teacher_weights,
                            "student_weights": self.student_weights})

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "config": dict(self.config), "data": self.data,
                "teacher_weights": self.teacher_weights, "student_weights": self.student_weights}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunIdentity:
        return cls(config=dict(data["config"]), data=data["data"], teacher_weights=data.get("teacher_weights"),
                   student_weights=data.get("student_weights"))

    def changes(self, previous: RunIdentity) -> list[str]:
        """What differs from ``previous``: dotted config keys, then ``data``, ``teacher weights``,
        ``student weights``."""
        out = _changed_keys(_normalized(previous.config), self.config)
        if previous.data != self.data:
            out.append("data")
        if previous.teacher_weights != self.teacher_weights:
            out.append("teacher weights")
        if previous.student_weights != self.student_weights:
            out.append("student weights")
        return out


_MISSING = object()


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                  prefix: str = "") -> list[str]:
    """Dotted keys whose values differ. A key only one side has counts as unchanged when the other
    side holds its default: a setting kdlens added since a run was recorded, left as it was."""
    defaults = _config_defaults() if defaults is None else defaults
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, default = old.get(key, _MISSING), new.get(key, _MISSING), defaults.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _changed_keys(a, b, default if isinstance(default, Mapping) else {}, f"{prefix}{key}.")
        elif a is _MISSING or b is _MISSING:
            if (b if a is _MISSING else a) != default:
                out.append(f"{prefix}{key}")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


@functools.cache
def _config_defaults() -> dict[str, Any]:
    """Every :class:`kdlens.config.DistillConfig` field's default (nested sections as dicts), as JSON stores it."""
    import dataclasses

    from kdlens.config import DistillConfig

    def defaults(cls) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(cls):
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f.name] = defaults(type(value)) if dataclasses.is_dataclass(value) else value
        return out

    return json.loads(json.dumps(defaults(DistillConfig), default=str))


# ----------------------------------------------------------------------------- weights


def _cache_dir() -> Path:
    from kdlens.models import cache_root

    return cache_root() / "fingerprints"


def _prune_memo(folder: Path) -> None:
    """Drop memo entries of files that no longer exist once the memo grows past a limit."""
    entries = list(folder.glob("*.json"))
    if len(entries) <= _MEMO_LIMIT:
        return
    for entry in entries:
        try:
            gone = not Path(json.loads(entry.read_text(encoding="utf-8"))["stamp"]["path"]).exists()
        except (OSError, ValueError, KeyError, TypeError):
            gone = True
        if gone:
            entry.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised by (resolved path, size, inode, mtime_ns) in the kdlens cache."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    stamp = {"path": str(resolved), "size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}
    memo = _cache_dir() / f"{hashlib.sha256(str(resolved).encode('utf-8')).hexdigest()[:32]}.json"
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved.get("stamp") == stamp:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(resolved)
    try:  # a read-only cache only costs the next call a re-read
        atomic_write_json(memo, {"stamp": stamp, "sha256": digest})
        _prune_memo(memo.parent)
    except OSError:
        pass
    return digest


def _directory_fingerprint(directory: Path) -> str:
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
                   and (p.name.endswith(_WEIGHT_SUFFIXES) or p.name in _ALSO_HASHED))
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in files):
        raise FileNotFoundError(f"{directory} holds no weight files ({', '.join('*' + s for s in _WEIGHT_SUFFIXES)}); "
                                "pass a model directory written by save_pretrained")
    return sha256_json({p.name: file_sha256(p) for p in files})


@functools.cache
def _in_memory_fingerprint(builtin: str) -> str:
    """The hash of the tensors of a built-in model that is built in memory (``tiny``, ``tiny-b``)."""
    from kdlens.models import BUILTINS

    digest = hashlib.sha256()
    for name, tensor in sorted(BUILTINS[builtin].build()[0].state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _hub_directory(name: str) -> Path:
    """The local snapshot of hub model ``name`` (downloaded first when online and not cached)."""
    from huggingface_hub import snapshot_download

    from kdlens.models import ModelNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - the hub library raises several types for "not cached"
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise ModelNotFoundError(f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                                     "pass a local directory or a built-in name") from err
    try:  # what from_pretrained would fetch: configs, tokenizer, safetensors weights
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                            "*.jinja"]))
    except Exception as err:  # noqa: BLE001
        raise ModelNotFoundError(f"could not fetch {name!r} from the Hugging Face hub: {str(err).splitlines()[0]}; "
                                 "pass a local directory or a built-in name") from err


def weights_fingerprint(name_or_path: str | os.PathLike) -> str:
    """A fingerprint of a model's weights, for every name :func:`kdlens.models.load_model` takes.

    Parameters
    ----------
    name_or_path : str or path
        A built-in model built in memory such as ``"tiny"`` (the hash of its tensors), a built-in
        name (its converted directory in the cache), a local Hugging Face directory or a kdlens run directory (its ``checkpoint/``), a
        ``.gguf`` file, or a hub id (its local snapshot). ``prune:N`` needs the teacher: see
        :func:`run_identity`.

    Returns
    -------
    str
        sha256 over the sha256 of each weight file (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``,
        ``*.gguf``, and a LoRA adapter's ``adapter_config.json``), keyed by file name. Config and
        tokenizer files are left out: they carry versions that differ between machines.

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a directory without weight files.
    """
    from kdlens.models import BUILTINS, prepare_builtin
    from kdlens.models._load import _HUB_ID, _local_directory

    name = os.fspath(name_or_path)
    if name in BUILTINS and BUILTINS[name].build is not None:
        return _in_memory_fingerprint(name)
    if name in BUILTINS:
        return _directory_fingerprint(prepare_builtin(name))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist; check the path")
        return sha256_json({path.name: file_sha256(path)})
    if path.is_dir():
        return _directory_fingerprint(_local_directory(path))
    if path.exists() or not _HUB_ID.match(name):
        raise FileNotFoundError(f"{name} is not a model directory, .gguf file, hub id or built-in name "
                                f"({', '.join(BUILTINS)}); check the path")
    return _directory_fingerprint(_hub_directory(name))


# ----------------------------------------------------------------------------- data and the identity


def data_fingerprint(config: Any, *, memo: MutableMapping[str, str] | None = None) -> str:
    """sha256 of the training records ``config`` asks for (tasks, split, seed, n_examples).

    ``memo`` (a dict) keeps the hashes of one caller's calls, e.g. a sweep checking its runs.
    """
    from kdlens.data import load_tasks

    key = json.dumps([config.tasks, config.split, config.seed, config.n_examples], default=str)
    if memo is not None and key in memo:
        return memo[key]
    records = load_tasks(config.tasks, split=config.split, seed=config.seed, n=config.n_examples)
    digest = sha256_json([record.to_dict() for record in records])
    if memo is not None:
        memo[key] = digest
    return digest


def _is_local(name: str | None) -> bool:
    from kdlens.models import BUILTINS

    return name is not None and name not in BUILTINS and not name.startswith("prune:") \
        and Path(name).expanduser().exists()


def _identity_config(config: Any) -> dict[str, Any]:
    """The config part of an identity: no location keys, local models by weights, as JSON stores it."""
    # through JSON, as the manifest stores it: a tuple and a list of the same values are one setting
    out = json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in LOCATION_KEYS}, default=str))
    for key in ("teacher", "student"):
        if _is_local(out.get(key)):
            out[key] = LOCAL_MODEL
    return _normalized(out)


def _normalized(config: Mapping[str, Any]) -> dict[str, Any]:
    """One spelling for one setting, without :data:`OPERATIONAL_KEYS` (also applied to identities recorded
    before these rules).

    A task file or directory is identified by its records (the ``data`` part), not by how its
    path is written (``data.jsonl``, ``./data.jsonl``, an absolute path); a loss parameter given
    at its default is the default.
    """
    from kdlens.data._registry import _is_path
    from kdlens.losses import LOSSES

    out = {k: v for k, v in config.items() if k not in OPERATIONAL_KEYS}
    tasks = out.get("tasks")
    if isinstance(tasks, list):
        out["tasks"] = [LOCAL_DATA if isinstance(t, str) and not t.startswith("hf:") and _is_path(t) else t
                        for t in tasks]
    loss, params = out.get("loss"), out.get("loss_params")
    if loss in LOSSES and isinstance(params, Mapping):
        out["loss_params"] = json.loads(json.dumps({**LOSSES[loss].params, **params}, default=str))
    return out


def run_identity(config: Any, *, memo: MutableMapping[str, str] | None = None) -> RunIdentity:
    """The identity of the run ``config`` describes; reads the data and the weights, writes nothing
    but the fingerprint memo.

    Raises
    ------
    FileNotFoundError, ValueError
        A teacher or student that does not exist, data that cannot be read: the run cannot start.
    """
    from kdlens.distill._registry import METHODS

    student = config.student
    pruned = student is not None and student.startswith("prune:")
    uses_teacher = bool(config.teacher) and (METHODS[config.method].needs_teacher or student is None or pruned)
    teacher_weights = weights_fingerprint(config.teacher) if uses_teacher else None
    if student is None:
        student_weights = None  # the teacher itself is trained
    elif pruned:
        student_weights = sha256_json({"pruned_from": teacher_weights, "keep": student.split(":", 1)[1]})
    else:
        student_weights = weights_fingerprint(student)
    return RunIdentity(config=_identity_config(config), data=data_fingerprint(config, memo=memo),
                       teacher_weights=teacher_weights, student_weights=student_weights)


# ----------------------------------------------------------------------------- a run directory against an identity


@dataclass(frozen=True)
class RunCheck:
    """What a run directory holds, compared with an identity (:func:`inspect_run`).

    Attributes
    ----------
    state : {"new", "unfinished", "finished", "foreign"}
        Nothing to resume; a run killed before its end; a finished run (``done`` marker); a directory
        that holds files but no kdlens run (:meth:`kdlens.distill.RunDir.foreign`).
    changes : list of str
        What differs from the run recorded there (empty when it is the same run); for a foreign
        directory, its entries.
    recorded : bool
        Whether the directory records an identity (runs made before kdlens recorded one do not).
    """

    state: str
    changes: list[str]
    recorded: bool

    @property
    def same(self) -> bool:
        return self.state == "new" or (self.recorded and not self.changes)


def inspect_run(run: Any, identity: RunIdentity) -> RunCheck:
    """Compare the run recorded in ``run`` (a :class:`kdlens.distill.RunDir`) with ``identity``."""
    foreign = run.foreign()
    if foreign:
        return RunCheck("foreign", foreign, False)
    previous = run.identity()
    if run.done:
        state = "finished"
    elif previous is not None or run.has_progress():
        state = "unfinished"
    else:  # at most a config.yaml from a start that failed before training: nothing to keep
        return RunCheck("new", [], False)
    if previous is None:
        old = _recorded_config(run)
        return RunCheck(state, _changed_keys(old, identity.config) if old is not None else [], False)
    return RunCheck(state, identity.changes(previous), True)


def _recorded_config(run: Any) -> dict[str, Any] | None:
    try:
        return _identity_config(run.config())
    except (OSError, ValueError, TypeError):
        return None


def mismatch_message(run: Any, check: RunCheck) -> str:
    """Why ``run`` cannot be reused for an identity (``check`` is not :attr:`RunCheck.same`)."""
    if check.state == "foreign":
        return (f"{run.path} holds no kdlens run ({', '.join(check.changes)}): kdlens neither trains into nor "
                "deletes a directory it did not make; choose a new or empty output_dir")
    what = "an unfinished run" if check.state == "unfinished" else "a finished run"
    if not check.recorded:
        changed = f"; its config differs in: {', '.join(check.changes)}" if check.changes else ""
        return (f"{run.path} holds {what} made by an older kdlens, which did not record the run's identity "
                f"(config, data, teacher weights), so it cannot be checked against this config{changed}")
    return f"{run.path} holds {what} with different settings (changed: {', '.join(check.changes)})"


_REDO = ("; rerun with overwrite=True (`kdlens distill --overwrite`) to delete it and train this config, or choose "
         "another output_dir")


def check_run_dir(run: Any, identity: RunIdentity, *, overwrite: bool = False) -> str:
    """What to do with ``run`` to train ``identity``: ``"new"``, ``"resume"``, ``"finished"`` (a no-op)
    or ``"replace"`` (``overwrite`` and a different run is there).

    Raises
    ------
    ValueError
        A different run (or one without a recorded identity) is there and ``overwrite`` is False: the
        message names what changed and how to redo. Whatever ``overwrite`` says: the directory holds
        files but no kdlens run (never written into nor deleted), or replacing the run would delete
        more than the run (:meth:`kdlens.distill.RunDir.check_deletable`).
    """
    check = inspect_run(run, identity)
    if check.same:
        return {"new": "new", "unfinished": "resume", "finished": "finished"}[check.state]
    if check.state == "foreign":
        raise ValueError(mismatch_message(run, check))
    if overwrite:
        run.check_deletable()
        return "replace"
    raise ValueError(mismatch_message(run, check) + _REDO)


def refuse_foreign(run: Any) -> None:
    """Raise the error of :func:`check_run_dir` for a directory that holds files but no kdlens run.

    Called before the directory's lock is taken, so that nothing (not even a lock file) is written there.
    """
    foreign = run.foreign()
    if foreign:
        raise ValueError(mismatch_message(run, RunCheck("foreign", foreign, False)))
