"""A run's identity and lifecycle: no-op, changed settings, overwrite, finishing kill points, bad inputs, lock, modes.

Each test reproduces a way kdlens used to return a wrong run in silence or strand a run directory
(issue 12), on the tiny model (CPU, about a second per run).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from kdlens.config import load_config
from kdlens.distill import RunDir, distill

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _records(offset: int = 0) -> str:
    rows = []
    for i in range(8):
        a, b = 3 + i + offset, 7 + 2 * i
        rows.append({"instruction": f"What is {a} + {b}?", "input": "",
                     "output": f"{a} plus {b} is {a + b}. The answer is {a + b}", "answer": str(a + b)})
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    path.write_text(_records())
    return str(path)


def config(out, data, **kw):
    base = dict(teacher="tiny", student="prune:1", tasks=[str(data)], method="word_kd", loss="forward_kl", steps=4,
                batch_size=4, lr=1e-2, seed=0, device="cpu", save_every=2, output_dir=str(out))
    base.update(kw)
    return load_config(None, base)


def weights(run: RunDir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run.checkpoint_path / "model.safetensors"))


def snapshot(root) -> dict:
    """Every file under ``root`` with its bytes and mtime: equal snapshots = nothing was touched."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def save_tiny(path, seed=0, extra_token=None):
    from kdlens.models import tiny_model

    model, tok = tiny_model(seed=seed)
    if extra_token is not None:
        tok.add_tokens([extra_token])
        model.resize_token_embeddings(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tasks_file):
    """An uninterrupted run (4 steps, states at step 2); tests copy it before changing anything."""
    return distill(config(tmp_path_factory.mktemp("finished") / "run", tasks_file))


def copy_run(run: RunDir, dest) -> RunDir:
    shutil.copytree(run.path, dest)
    return RunDir(dest)


# --------------------------------------------------------------------------- identity


def test_the_manifest_records_the_identity_and_its_parts(finished, tasks_file, tmp_path):
    from kdlens.distill import run_identity, weights_fingerprint

    recorded = finished.manifest()["identity"]
    cfg = config(finished.path, tasks_file)
    identity = run_identity(cfg)
    assert recorded == identity.to_dict()
    assert set(recorded) == {"hash", "config", "data", "teacher_weights", "student_weights"}
    assert "output_dir" not in recorded["config"] and "cache_dir" not in recorded["config"]
    assert recorded["config"]["lr"] == 1e-2 and recorded["teacher_weights"] == weights_fingerprint("tiny")
    # where a run lives is not what it is
    assert run_identity(config(tmp_path / "elsewhere", tasks_file, cache_dir=str(tmp_path))).hash == identity.hash
    assert run_identity(config(tmp_path, tasks_file, lr=2e-2)).hash != identity.hash


def test_rerunning_the_same_identity_touches_no_file_even_with_overwrite(finished, tasks_file):
    before = snapshot(finished.path)
    assert distill(config(finished.path, tasks_file)).path == finished.path
    assert distill(config(finished.path, tasks_file), overwrite=True).path == finished.path
    assert snapshot(finished.path) == before


@pytest.mark.parametrize("change, named", [
    ({"lr": 2e-2}, "lr"),
    ({"sigma": 2.0}, "sigma"),
    ({"loss": "reverse_kl", "sigma": 2.0}, "loss, sigma"),
    ({"feature": {"kind": "cosine"}}, "feature.kind"),
])
def test_a_finished_run_with_other_settings_is_an_error_naming_them(finished, tasks_file, tmp_path, change, named):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run.path)
    with pytest.raises(ValueError, match=rf"finished run with different settings \(changed: {named}\).*overwrite=True"):
        distill(config(run.path, tasks_file, **change))
    assert snapshot(run.path) == before  # nothing returned, nothing written


def test_changed_data_or_teacher_weights_at_the_same_paths_are_errors(tmp_path):
    data = tmp_path / "arith.jsonl"
    data.write_text(_records())
    teacher = save_tiny(tmp_path / "teacher", seed=0)
    cfg = config(tmp_path / "run", data, teacher=teacher, steps=2)
    distill(cfg)
    data.write_text(_records(offset=1))  # the same file, other records
    with pytest.raises(ValueError, match=r"\(changed: data\)"):
        distill(cfg)
    data.write_text(_records())
    save_tiny(tmp_path / "teacher", seed=1)  # the teacher retrained in place
    with pytest.raises(ValueError, match=r"\(changed: teacher weights, student weights\)"):
        distill(cfg)
    save_tiny(tmp_path / "teacher", seed=0)  # the same weights again: the same run
    assert distill(cfg).done


def test_overwrite_replaces_a_changed_run_with_exactly_a_fresh_one(finished, tasks_file, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run.path / "eval").mkdir()
    (run.path / "eval" / "examples.parquet").write_text("results of the old weights")
    redone = distill(config(run.path, tasks_file, sigma=2.0), overwrite=True)
    fresh = distill(config(tmp_path / "fresh", tasks_file, sigma=2.0))
    assert redone.done and redone.manifest()["sigma"] == 2.0 and redone.config().sigma == 2.0
    assert not (run.path / "eval").exists()  # the old run's results went with it
    assert redone.manifest()["identity"]["hash"] == fresh.manifest()["identity"]["hash"]
    want, got = weights(fresh), weights(redone)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [r["loss"] for r in redone.log()] == [r["loss"] for r in fresh.log()]


def test_a_run_made_before_identities_were_recorded_is_never_reused(finished, tasks_file, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    manifest = run.manifest()
    del manifest["identity"]
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="older kdlens.*cannot be checked.*overwrite=True"):
        distill(config(run.path, tasks_file))
    assert distill(config(run.path, tasks_file), overwrite=True).manifest()["identity"]


def test_a_setting_added_to_kdlens_since_a_run_was_made_changes_nothing_at_its_default(finished, tasks_file,
                                                                                        tmp_path):
    run = copy_run(finished, tmp_path / "run")
    manifest = run.manifest()
    del manifest["identity"]["config"]["scale_by_temperature_squared"]  # as if recorded before it existed
    del manifest["identity"]["config"]["gkd"]["lambda_"]
    run.manifest_path.write_text(json.dumps(manifest))
    before = snapshot(run.path)
    assert distill(config(run.path, tasks_file)).done and snapshot(run.path) == before
    with pytest.raises(ValueError, match=r"\(changed: scale_by_temperature_squared\)"):
        distill(config(run.path, tasks_file, scale_by_temperature_squared=True))
    del manifest["identity"]["config"]["lr"]  # a missing setting that is not at its default is a change
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"\(changed: lr\)"):
        distill(config(run.path, tasks_file))


def test_fingerprints_prune_run_dirs_and_the_memo(tmp_path, monkeypatch, tasks_file):
    import kdlens.distill._identity as identity_module
    from kdlens.distill import run_identity, weights_fingerprint

    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    model_dir = save_tiny(tmp_path / "model", seed=3)
    reads = []
    real = identity_module.sha256_file
    monkeypatch.setattr(identity_module, "sha256_file", lambda p: reads.append(p) or real(p))
    first = weights_fingerprint(model_dir)
    assert weights_fingerprint(model_dir) == first and len(reads) == 1  # the second call reads no weights
    assert list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    # a run directory is its checkpoint; prune:N is the teacher's fingerprint and N
    run = distill(config(tmp_path / "run", tasks_file, teacher=model_dir, steps=2))
    assert weights_fingerprint(run.path) == weights_fingerprint(run.checkpoint_path) != first
    ids = [run_identity(config(tmp_path, tasks_file, teacher=model_dir, student=s)) for s in ("prune:1", "prune:2")]
    assert ids[0].teacher_weights == first and ids[0].student_weights != ids[1].student_weights
    time.sleep(0.01)
    save_tiny(tmp_path / "model", seed=4)  # rewritten in place: read again, new fingerprint
    assert weights_fingerprint(model_dir) != first and len(reads) >= 2
    with pytest.raises(FileNotFoundError, match="check the path"):
        weights_fingerprint(tmp_path / "missing" / "model")


def test_a_built_in_name_is_fingerprinted_by_its_converted_directory(tmp_path, monkeypatch):
    import kdlens.models
    from kdlens.distill import weights_fingerprint

    converted = save_tiny(tmp_path / "converted", seed=5)
    monkeypatch.setattr(kdlens.models, "prepare_builtin", lambda name: tmp_path / "converted")
    assert weights_fingerprint("smollm2-135m-instruct") == weights_fingerprint(converted)


def test_a_teacher_retrained_in_place_gets_its_own_logit_cache(tmp_path, tasks_file):
    teacher = save_tiny(tmp_path / "teacher", seed=0)
    common = dict(teacher=teacher, steps=2, cache_dir=str(tmp_path / "cache"), top_k=260)  # k = V: exact
    distill(config(tmp_path / "a", tasks_file, teacher_source="cache", **common))
    save_tiny(tmp_path / "teacher", seed=1)  # retrained at the same path
    cached = distill(config(tmp_path / "b", tasks_file, teacher_source="cache", **common))
    online = distill(config(tmp_path / "c", tasks_file, teacher_source="online", **common))
    assert [r["loss"] for r in cached.log()] == pytest.approx([r["loss"] for r in online.log()], abs=1e-5)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2  # one cache per teacher's weights
    assert cached.manifest()["teacher_cache"] != RunDir(tmp_path / "a").manifest()["teacher_cache"]


def test_cli_names_the_change_in_one_line_and_overwrite_redoes(finished, tasks_file, tmp_path, capsys):
    from kdlens.cli import main

    out = copy_run(finished, tmp_path / "run").path
    items = ["teacher=tiny", "student=prune:1", f"tasks={tasks_file}", "steps=4", "batch_size=4", "lr=0.01",
             "save_every=2", "device=cpu", f"output_dir={out}"]
    assert main(["distill", *items]) == 0  # the same run: a no-op
    assert main(["distill", *items, "sigma=1.5"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(changed: sigma)" in err and "--overwrite" in err
    assert main(["distill", "--overwrite", *items, "sigma=1.5"]) == 0
    assert RunDir(out).manifest()["sigma"] == 1.5


def test_a_hub_id_is_fingerprinted_by_its_local_snapshot(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from kdlens.distill import weights_fingerprint
    from kdlens.models import ModelNotFoundError

    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c0ffee")
    snapshot = save_tiny(repo / "snapshots" / "c0ffee")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights_fingerprint("org/tiny") == weights_fingerprint(snapshot)
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        weights_fingerprint("org/absent")


# --------------------------------------------------------------------------- finishing


class Killed(Exception):
    pass


def _kill_at(monkeypatch, point):
    """Raise ``Killed`` at one step of finishing (``point``), as a kill there would stop the run."""
    import kdlens.distill._loop as loop
    import kdlens.distill._rundir as rundir

    if point == "checkpoint":
        monkeypatch.setattr(loop, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    elif point == "manifest":
        real = rundir.atomic_write_json

        def manifest(path, obj):
            if obj.get("status") == "done":
                raise Killed
            return real(path, obj)

        monkeypatch.setattr(rundir, "atomic_write_json", manifest)
    elif point == "done marker":
        real_text = rundir.atomic_write_text

        def marker(path, text):
            if path.name == "done":
                raise Killed
            return real_text(path, text)

        monkeypatch.setattr(rundir, "atomic_write_text", marker)
    elif point == "state removal":
        def half(self):  # a kill in the middle of deleting state/: some of its files are gone
            state = self.latest_state()
            (state / "trainable.safetensors").unlink()
            raise Killed

        monkeypatch.setattr(rundir.RunDir, "_remove_state", half)


@pytest.mark.parametrize("point", ["checkpoint", "manifest", "done marker", "state removal"])
def test_a_kill_at_every_step_of_finishing_resumes_or_completes(finished, tasks_file, tmp_path, monkeypatch, point):
    cfg = config(tmp_path / "run", tasks_file)
    with monkeypatch.context() as patch:
        _kill_at(patch, point)
        with pytest.raises(Killed):
            distill(cfg)
    run = RunDir(cfg.output_dir)
    if point == "state removal":
        assert run.done and run.state_root.exists()  # finished, with a half-deleted state/ left
    else:
        assert not run.done
    again = distill(cfg)
    assert again.done and again.manifest()["status"] == "done" and not again.state_root.exists()
    assert [r["step"] for r in again.log()] == [1, 2, 3, 4]
    assert [r["loss"] for r in again.log()] == [r["loss"] for r in finished.log()]
    want, got = weights(finished), weights(again)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert again.manifest()["final"]["loss"] == finished.manifest()["final"]["loss"]
    before = snapshot(again.path)
    distill(cfg)
    assert snapshot(again.path) == before


# --------------------------------------------------------------------------- bad inputs leave nothing


@pytest.mark.parametrize("bad, error, message", [
    ({"teacher": "/no/such/teacher"}, FileNotFoundError, "check the path"),
    ({"tasks": ["/no/such/data.jsonl"]}, FileNotFoundError, "data.jsonl"),
    ({"student": "prune:99"}, ValueError, "99"),
    ({"student": "VOCAB"}, ValueError, "tokenizers differ"),
    ({"batch_size": 64}, ValueError, "only 8 training examples"),
    ({"lora": {"targets": ["nope"]}}, ValueError, "nope"),
])
def test_a_failed_input_leaves_nothing_and_the_corrected_rerun_just_works(tmp_path, tasks_file, bad, error,
                                                                          message):
    if bad.get("student") == "VOCAB":
        bad = {"student": save_tiny(tmp_path / "other_vocab", extra_token="<extra>")}
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        distill(config(out, tasks_file, steps=2, **bad))
    assert not out.exists()
    out.mkdir()  # an existing (empty) directory stays as it was too
    with pytest.raises(error, match=message):
        distill(config(out, tasks_file, steps=2, **bad))
    assert list(out.iterdir()) == []
    assert distill(config(out, tasks_file, steps=2)).done


def test_a_resumed_run_whose_input_went_missing_is_left_as_it_was(tmp_path, tasks_file):
    teacher = save_tiny(tmp_path / "teacher")
    cfg = config(tmp_path / "run", tasks_file, teacher=teacher)
    with pytest.raises(Killed):
        distill(cfg, callbacks=[lambda step, logs: (_ for _ in ()).throw(Killed()) if step == 3 else None])
    before = snapshot(tmp_path / "run")
    os.rename(teacher, tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="check the path"):
        distill(cfg)
    assert snapshot(tmp_path / "run") == before
    os.rename(tmp_path / "moved", teacher)
    assert distill(cfg).done


def test_output_dir_that_is_a_file_or_not_writable_is_one_clear_error(tmp_path, tasks_file, monkeypatch):
    import errno

    import kdlens._lock

    afile = tmp_path / "file"
    afile.write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        distill(config(afile, tasks_file))
    assert afile.read_text() == "mine"

    def denied(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(kdlens._lock, "_open_locked", denied)
    with pytest.raises(ValueError, match="read-only file system; choose a directory you can write to"):
        distill(config(tmp_path / "ro", tasks_file))
    assert not (tmp_path / "ro").exists()


def test_eval_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    from kdlens.cli import main

    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["eval", "--model", "m=tiny", "--task", "chain_sum:2", "--max-new-tokens", "2", "-o", str(afile)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{afile} is a file, not a directory" in err
    assert afile.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission")
def test_an_unwritable_output_dir_is_refused_before_training(tmp_path, tasks_file):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ValueError, match="not writable"):
        distill(config(locked / "run", tasks_file))


# --------------------------------------------------------------------------- the lock


_HOLDER = """
import sys, time
from kdlens._lock import exclusive_lock
with exclusive_lock(sys.argv[1], what="run"):
    print("holding", flush=True)
    time.sleep(120)
"""


def _hold(directory):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLDER), str(directory)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_process_is_refused_with_the_holder_named_and_a_dead_holders_lock_is_taken_over(tmp_path,
                                                                                               tasks_file):
    import socket

    from kdlens._lock import DirectoryInUseError

    cfg = config(tmp_path / "run", tasks_file, steps=2)
    holder = _hold(tmp_path / "run")
    try:
        with pytest.raises(DirectoryInUseError, match=rf"in use by another kdlens run \(pid {holder.pid} on "
                                                      rf"{socket.gethostname()}, running since .*: .*-c"):
            distill(cfg)
        assert not (tmp_path / "run" / "manifest.json").exists()
    finally:
        holder.kill()  # kill -9: the kernel releases its lock
        holder.wait()
    assert distill(cfg).done


def test_a_finished_run_is_read_under_a_shared_lock_and_a_writer_is_refused(finished, tasks_file, tmp_path):
    from kdlens._lock import DirectoryInUseError, exclusive_lock, shared_lock

    run = copy_run(finished, tmp_path / "run")
    with shared_lock(run.path), shared_lock(run.path):  # readers share
        with pytest.raises(DirectoryInUseError, match="retry in a moment"), exclusive_lock(run.path):
            pass
    with exclusive_lock(run.path, what="run"):
        with pytest.raises(DirectoryInUseError, match=f"pid {os.getpid()}"):
            distill(config(run.path, tasks_file))


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_file_of_a_run_follows_the_umask(tmp_path, tasks_file, umask, file_mode, dir_mode):
    seen = {}

    def modes(root):
        return {p.relative_to(root): (p.is_dir(), stat.S_IMODE(p.stat().st_mode)) for p in root.rglob("*")}

    def during(step, logs):  # the resumable state of step 2 is written by now
        if step == 2:
            seen.update(modes(tmp_path / "run"))

    old = os.umask(umask)
    try:
        run = distill(config(tmp_path / "run", tasks_file, steps=3, save_every=1), callbacks=[during])
    finally:
        os.umask(old)
    seen.update(modes(run.path))
    names = {p.name for p in seen}
    assert {"model.safetensors", "trainable.safetensors", "optimizer.pt", "step-00000002", "checkpoint"} <= names
    assert {p: oct(m) for p, (is_dir, m) in seen.items() if m != (dir_mode if is_dir else file_mode)} == {}
