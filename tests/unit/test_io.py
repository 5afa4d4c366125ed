import os
import stat

import pytest

from kdlens._io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_yaml,
    sha256_json,
)


def test_atomic_write_replaces_whole_file_with_umask_mode(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temp files left


def test_atomic_write_json_roundtrip_and_bad_json_names_line(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert read_json(path) == {"a": [1, 2], "b": 1}
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(ValueError, match="line 3"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")


def test_atomic_directory_leaves_nothing_when_killed(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("whole")
    assert (target / "weights").read_text() == "whole"
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass


def test_sha256_json_is_key_order_independent():
    assert sha256_json({"a": 1, "b": 2}) == sha256_json({"b": 2, "a": 1})
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})


def test_read_yaml_loads_mappings_empty_files_and_names_bad_input(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("a: 1\nb: [x, y]\n")
    assert read_yaml(good) == {"a": 1, "b": ["x", "y"]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        read_yaml(bad)
    with pytest.raises(FileNotFoundError, match="sweep spec .*nope.yaml does not exist; check the path"):
        read_yaml(tmp_path / "nope.yaml", what="sweep spec")


def test_git_sha_outside_a_repository_comes_from_the_environment(tmp_path, monkeypatch):
    from kdlens._io import git_sha

    monkeypatch.delenv("KDLENS_GIT_SHA", raising=False)
    assert git_sha(tmp_path) is None  # a copy of the tree without .git (a lent GPU's)
    monkeypatch.setenv("KDLENS_GIT_SHA", "abc123-dirty")
    assert git_sha(tmp_path) == "abc123-dirty"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_directory_gives_the_umask_modes_not_tempfiles_private_ones(tmp_path, umask):
    import tempfile

    old = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
            fd, private = tempfile.mkstemp(dir=tmp)  # 0600, as safetensors writes its files
            os.close(fd)
            os.rename(private, tmp / "model.safetensors")
            (tmp / "sub").mkdir()
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "model", *(tmp_path / "model").iterdir()]}
    assert mode == {"model": 0o777 & ~umask, "sub": 0o777 & ~umask, "config.json": 0o666 & ~umask,
                    "model.safetensors": 0o666 & ~umask, "run.sh": 0o777 & ~umask}


def test_only_the_temporaries_of_dead_writers_are_stale(tmp_path):
    import subprocess
    import sys
    import time

    from kdlens._io import LEGACY_TEMPORARY_AGE_S, remove_stale_temporaries, stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "eval").mkdir()
    dead_file = tmp_path / "eval" / f".manifest.json.tmp-{dead_pid}-ab12cd34"
    dead_dir = tmp_path / f".checkpoint.tmp-{dead_pid}-x9y8z7w6"
    live_file = tmp_path / "eval" / f".manifest.json.tmp-{os.getpid()}-ab12cd34"
    old_legacy = tmp_path / ".checkpoint.tmp-k3j4h5g6"
    new_legacy = tmp_path / "eval" / ".shard.parquet.q1w2e3r4.tmp"
    mine = tmp_path / ".notes.tmp-by-hand"
    for path in (dead_file, live_file, new_legacy, mine):
        path.write_text("x")
    for path in (dead_dir, old_legacy):
        path.mkdir()
        (path / "model.safetensors").write_text("half")
    past = time.time() - LEGACY_TEMPORARY_AGE_S - 60
    os.utime(old_legacy, (past, past))
    assert sorted(stale_temporaries(tmp_path)) == sorted([dead_file, dead_dir, old_legacy])
    assert dead_file.exists()  # only listed
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead_file, dead_dir, old_legacy])
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["eval", live_file.name, new_legacy.name, mine.name])


def test_atomic_writes_name_their_temporaries_with_the_writers_pid(tmp_path, monkeypatch):
    import kdlens._io as io

    seen = []
    real = io.os.replace
    monkeypatch.setattr(io.os, "replace", lambda a, b: seen.append(os.path.basename(a)) or real(a, b))
    atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("")
    assert [name.split("-")[:2] for name in seen] == [[".a.json.tmp", str(os.getpid())],
                                                      [".d.tmp", str(os.getpid())]]


def test_a_path_through_a_file_or_a_read_only_place_is_one_clear_error(tmp_path, monkeypatch):
    import errno
    import tempfile

    (tmp_path / "afile").write_text("mine")
    for target in (tmp_path / "afile" / "manifest.json", tmp_path / "afile" / "sub" / "x.json"):
        with pytest.raises(ValueError, match=f"{tmp_path / 'afile'} is a file, not a directory; choose another path"):
            atomic_write_text(target, "{}")
        with pytest.raises(ValueError, match="is a file, not a directory"), atomic_directory(target):
            pass
    assert (tmp_path / "afile").read_text() == "mine"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ValueError, match=f"{tmp_path} is on a read-only file system; choose a directory"):
        atomic_write_text(tmp_path / "x.json", "{}")
