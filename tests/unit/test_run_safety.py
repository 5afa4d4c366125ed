"""A hostile user's run directories (review of issue 12): kdlens never deletes or overwrites files it did
not write, a run that failed before training leaves nothing behind, and equal settings are one identity.

Each test failed on the main branch it was written against.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdlens.config import load_config
from kdlens.distill import RunDir, distill, run_identity

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def config(out, data, **kw):
    base = dict(teacher="tiny", student="prune:1", tasks=[str(data)], method="word_kd", steps=2, batch_size=4,
                lr=1e-2, seed=0, device="cpu", output_dir=str(out))
    base.update(kw)
    return load_config(None, base)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"What is {3 + i} + {7 + 2 * i}?", "input": "",
                                        "output": f"The answer is {10 + 3 * i}", "answer": str(10 + 3 * i)}) + "\n"
                            for i in range(8)))
    return path


# --------------------------------------------------------------------------- a directory kdlens did not make


@pytest.fixture
def project(tmp_path):
    """A user's directory: sources, notes, their own config.yaml and another tool's manifest.json and done file."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('precious')\n")
    (root / "notes.txt").write_text("three months of notes\n")
    (root / "config.yaml").write_text("# my commented kdlens config\nteacher: tiny\n")
    (root / "manifest.json").write_text('{"tool": "another pipeline"}\n')
    (root / "done").write_text("")  # a pipeline's marker, not kdlens's
    return root


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_that_holds_no_kdlens_run_is_never_written_or_deleted(project, data, overwrite):
    before = tree(project)
    with pytest.raises(ValueError, match=r"holds no kdlens run \(config.yaml, done, manifest.json, notes.txt, src\)"
                                         r".*choose a new or empty output_dir") as err:
        distill(config(project, data), overwrite=overwrite)
    assert "overwrite" not in str(err.value)  # never advise deleting what kdlens did not make
    assert tree(project) == before and not (project / ".kdlens.lock").exists()


@pytest.mark.parametrize("name", ["config.yaml", "manifest.json", "notes.txt"])
def test_one_foreign_file_is_enough_to_refuse(tmp_path, data, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("# mine\n" if name != "manifest.json" else "[1, 2]\n")
    with pytest.raises(ValueError, match=rf"holds no kdlens run \({name}\)"):
        distill(config(out, data))
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_overwrite_refuses_to_empty_the_home_directory_or_a_parent_of_the_working_directory(tmp_path, data,
                                                                                            monkeypatch):
    """A run an older kdlens let train into ``~`` (or ``.`` one level up) is a kdlens run, but
    ``--overwrite`` deleting it would empty the home directory."""
    home = tmp_path / "home"
    distill(config(home, data))
    (home / "thesis.tex").write_text("\\begin{document}")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ValueError, match="home directory"):
        distill(config(home, data, lr=2e-2), overwrite=True)
    assert (home / "thesis.tex").exists() and RunDir(home).done
    work = home / "code"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ValueError, match="working directory"):
        distill(config(home, data, lr=2e-2), overwrite=True)
    assert (home / "thesis.tex").exists() and work.is_dir()


def test_a_kdlens_temporary_and_the_lock_alone_do_not_make_a_directory_foreign(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".kdlens.lock").write_text("")
    (out / ".manifest.json.tmp-999999999-abc").write_text("{")  # a dead writer's
    assert distill(config(out, data)).done
    assert not (out / ".manifest.json.tmp-999999999-abc").exists()


@pytest.mark.parametrize("contents", [{"notes.txt": "mine"}, {"manifest.json": '{"tool": "another pipeline"}'},
                                      {"runs": None, "paper.tex": "draft"}])
def test_a_sweep_directory_that_holds_something_else_is_never_written(tmp_path, contents):
    from kdlens.sweep import run_sweep

    root = tmp_path / "project"
    root.mkdir()
    for name, text in contents.items():
        (root / name).mkdir() if text is None else (root / name).write_text(text)
    before = tree(root)
    spec = {"name": "s", "base": {"teacher": "tiny", "student": "prune:1", "tasks": ["chain_sum:8"], "steps": 1,
                                  "batch_size": 4, "device": "cpu"}, "axes": {"sigma": [0.0]}}
    with pytest.raises(ValueError, match="holds what is not a kdlens sweep .*choose a new or empty output directory"):
        run_sweep(spec, output_dir=root, evaluate=False)
    assert tree(root) == before and sorted(p.name for p in root.iterdir()) == sorted(contents)



def test_the_lock_holder_is_one_line_on_the_command_line(tmp_path, data, capsys):
    from kdlens._lock import exclusive_lock
    from kdlens.cli import main

    out = tmp_path / "run"
    with exclusive_lock(out, what="run"):
        status = main(["distill", "teacher=tiny", "student=prune:1", f"tasks={data}", "steps=1", "batch_size=4",
                       "device=cpu", f"output_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1
    assert err.startswith("kdlens distill: error:") and f"pid {os.getpid()}" in err


# --------------------------------------------------------------------------- a run that fails before training


def test_a_run_that_fails_at_its_first_step_leaves_nothing_and_the_corrected_rerun_just_works(tmp_path, data):
    """The feature layer map is checked at the first forward; distillm's held-out size when the method begins:
    both after the first write, which used to strand a manifest that refused the corrected config."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="teacher index 5"):
        distill(config(out, data, method="feature_kd", feature_weight=1.0, feature={"layer_map": [5]}))
    assert not out.exists()
    with pytest.raises(ValueError, match="leave none"):
        distill(config(out, data, method="distillm", batch_size=8))
    assert not out.exists()
    out.mkdir()
    with pytest.raises(ValueError, match="leave none"):
        distill(config(out, data, method="distillm", batch_size=8))
    assert list(out.iterdir()) == []
    assert distill(config(out, data, method="distillm", batch_size=4)).done


def test_a_failure_after_training_started_keeps_what_can_resume(tmp_path, data):
    class Stop(Exception):
        pass

    def stop(step, logs):
        if step == 2:
            raise Stop

    cfg = config(tmp_path / "run", data, steps=3, save_every=1)
    with pytest.raises(Stop):
        distill(cfg, callbacks=[stop])
    run = RunDir(cfg.output_dir)
    assert run.latest_state() is not None and run.manifest()["status"] == "running"
    assert distill(cfg).done


# --------------------------------------------------------------------------- one identity for one run


def test_a_data_file_named_another_way_is_the_same_run(tmp_path, data, monkeypatch):
    monkeypatch.chdir(data.parent)
    first = distill(config(tmp_path / "run", data.name))
    before = tree(first.path)
    for spelling in (f"./{data.name}", str(data), str(data.parent / ".." / data.parent.name / data.name)):
        assert distill(config(tmp_path / "run", spelling)).path == first.path
    assert tree(first.path) == before
    manifest = first.manifest()  # as recorded before paths were normalised: the path as it was written
    manifest["identity"]["config"].update(tasks=[f"./{data.name}"], loss_params={})
    first.manifest_path.write_text(json.dumps(manifest))
    assert distill(config(tmp_path / "run", str(data))).path == first.path
    other = data.parent / "copy.jsonl"  # the same records under another file name: another task name
    other.write_text(data.read_text())
    with pytest.raises(ValueError, match=r"\(changed: data\)"):
        distill(config(tmp_path / "run", other))


def test_a_loss_parameter_given_at_its_default_is_the_same_run(tmp_path, data):
    plain = run_identity(config(tmp_path, data, loss="jsd"))
    explicit = run_identity(config(tmp_path, data, loss="jsd", loss_params={"beta": 0.5}))
    assert explicit.hash == plain.hash and explicit.changes(plain) == []
    assert run_identity(config(tmp_path, data, loss="jsd", beta=0.9)).changes(plain) == ["loss_params.beta"]


def test_how_often_a_run_saves_logs_or_reports_is_not_what_it_is(tmp_path, data):
    """save_every, log_every and report_to change no weight (checked here): a finished run is not refused for
    them, and an interrupted run resumes under new ones."""
    from safetensors.torch import load_file

    class Stop(Exception):
        pass

    def stop(step, logs):
        if step == 2:
            raise Stop

    plain = distill(config(tmp_path / "plain", data, steps=4))
    cfg = config(tmp_path / "run", data, steps=4, save_every=1)
    with pytest.raises(Stop):
        distill(cfg, callbacks=[stop])
    resumed = distill(config(tmp_path / "run", data, steps=4, save_every=3, log_every=2))
    want, got = (load_file(str(r.checkpoint_path / "model.safetensors")) for r in (plain, resumed))
    assert all(bool((want[k] == got[k]).all()) for k in want)
    assert distill(config(plain.path, data, steps=4, save_every=2, log_every=3)).path == plain.path
    assert "save_every" not in resumed.manifest()["identity"]["config"]
    assert resumed.config().save_every == 3  # config.yaml says how the last call ran


def test_an_identity_recorded_with_the_operational_keys_still_matches(tmp_path, data):
    """Runs recorded before these keys left the identity keep being the same run."""
    run = distill(config(tmp_path / "run", data, save_every=1, log_every=2))
    manifest = run.manifest()
    manifest["identity"]["config"].update(save_every=1, log_every=2, report_to="none")
    run.manifest_path.write_text(json.dumps(manifest))
    before = tree(run.path)
    assert distill(config(tmp_path / "run", data)).done and tree(run.path) == before


def test_a_run_started_in_another_precision_is_not_resumed_in_this_one(tmp_path, data):
    """``mixed_precision=auto`` is bf16 on a GPU and none on a CPU: a run killed on a GPU and resumed on a CPU
    (a shared file system, a lent GPU gone) would train its second half in another precision without a word."""
    class Stop(Exception):
        pass

    def stop(step, logs):
        if step == 2:
            raise Stop

    cfg = config(tmp_path / "run", data, steps=4, save_every=1)
    with pytest.raises(Stop):
        distill(cfg, callbacks=[stop])
    run = RunDir(cfg.output_dir)
    manifest = run.manifest()
    assert manifest["mixed_precision"] == "no"
    manifest.update(mixed_precision="bf16", device="cuda:0")  # as the GPU that started it recorded
    run.manifest_path.write_text(json.dumps(manifest))
    before = tree(run.path)
    with pytest.raises(ValueError, match=r"started with mixed precision bf16 on cuda:0.*now no on cpu"):
        distill(cfg)
    assert tree(run.path) == before
    manifest.update(mixed_precision="no", device="cpu")
    run.manifest_path.write_text(json.dumps(manifest))
    assert distill(cfg).done
