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
