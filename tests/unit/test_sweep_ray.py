"""Sweeps on Ray: the same results as the local backend, killed tasks retried, finished runs never redone.

The Ray tests share one local Ray (2 CPUs, no dashboard, no network) for the module; they are skipped,
saying why, when ray is not installed (``pip install -e .[ray]``; the ``dev`` extra includes it). The
option, default and error tests need no Ray.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from kdlens.sweep import expand_sweep, read_results, run_sweep

BASE = {"teacher": "tiny", "student": "prune:1", "tasks": ["chain_sum:4"], "method": "word_kd", "steps": 3,
        "batch_size": 4, "device": "cpu", "save_every": 1}
SWEEP = {"name": "tiny", "base": BASE, "axes": {"sigma": [0.0, 3.0]}, "baseline": "sft",
         "eval": {"tasks": ["chain_sum:3"], "n": 3, "max_new_tokens": 6, "batch_size": 4, "n_boot": 20}}
CRASHING = expand_sweep(SWEEP).set_index("sigma").loc[3.0, "run_id"]  # the run whose worker is killed

# one xdist worker holds the module's Ray session
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


# --------------------------------------------------------------------------- without Ray


def test_ray_backend_options_are_checked_before_anything_is_written(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(ValueError, match="options of the Ray backend: add backend='ray'"):
        run_sweep(SWEEP, output_dir=out, task_options={"num_cpus": 2})
    with pytest.raises(ValueError, match="options of the Ray backend"):
        run_sweep(SWEEP, output_dir=out, address="auto")
    with pytest.raises(ValueError, match="unknown backend 'slurm'"):
        run_sweep(SWEEP, output_dir=out, backend="slurm")
    with pytest.raises(ValueError, match=r"unknown Ray task option\(s\) \['gpus'\]; known: num_cpus, num_gpus"):
        run_sweep(SWEEP, output_dir=out, backend="ray", task_options={"gpus": 1})
    with pytest.raises(ValueError, match="num_gpus must be a number >= 0"):
        run_sweep(SWEEP, output_dir=out, backend="ray", task_options={"num_gpus": -1})
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        run_sweep(SWEEP, output_dir=out, backend="ray", task_options={"max_retries": 1.5})
    assert not out.exists()


def test_without_ray_installed_the_ray_backend_fails_in_one_line(tmp_path, monkeypatch, capsys):
    import yaml

    from kdlens.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"needs ray: pip install -e \.\[ray\]"):
        run_sweep(SWEEP, output_dir=tmp_path / "s", backend="ray")
    assert not (tmp_path / "s").exists()
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    assert main(["sweep", str(spec), "-o", str(tmp_path / "s"), "--backend", "ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kdlens sweep: error: the Ray backend needs ray: pip install -e .[ray] (or pip install "
                   "'kdlens[ray]')"]


def test_default_gpus_and_how_many_runs_a_cluster_holds():
    from kdlens.sweep._ray import _capacity, _default_gpus

    assert _default_gpus("cuda", {}) == 1.0  # asked for CUDA: a GPU each, whatever the cluster says
    assert _default_gpus("auto", {"CPU": 8.0, "GPU": 2.0}) == 1.0
    assert _default_gpus("auto", {"CPU": 8.0}) == 0.0
    assert _default_gpus("cpu", {"CPU": 8.0, "GPU": 2.0}) == 0.0
    cluster = {"CPU": 16.0, "GPU": 2.0, "memory": 64 * 2**30}
    assert _capacity({"num_cpus": 1, "num_gpus": 0.25}, cluster) == 8  # four runs share each GPU
    assert _capacity({"num_cpus": 3, "num_gpus": 0}, cluster) == 5
    assert _capacity({"num_cpus": 1, "num_gpus": 0, "memory": 24 * 2**30}, cluster) == 2
    assert _capacity({"num_cpus": 0.1, "num_gpus": 0.1}, {"CPU": 0.3, "GPU": 0.3}) == 3  # no float floor error
    assert _capacity({"num_cpus": 1, "num_gpus": 1}, {"CPU": 16.0}) == 0


def test_cli_passes_the_ray_flags_as_task_options(tmp_path, monkeypatch):
    import kdlens.sweep
    from kdlens.cli import main

    seen = {}

    def fake_run_sweep(spec, **kwargs):
        seen.update(kwargs)
        return pd.DataFrame()

    monkeypatch.setattr(kdlens.sweep, "run_sweep", fake_run_sweep)
    argv = ["sweep", "s.yaml", "-o", str(tmp_path), "--backend", "ray", "--address", "auto", "--num-cpus", "2",
            "--num-gpus", "0.5", "--memory", "1.5", "--max-retries", "4", "--retry-exceptions", "--workers", "3"]
    assert main(argv) == 0
    assert seen["backend"] == "ray" and seen["address"] == "auto" and seen["workers"] == 3
    assert seen["task_options"] == {"num_cpus": 2.0, "num_gpus": 0.5, "memory": 1.5 * 2**30, "max_retries": 4,
                                    "retry_exceptions": True}
    assert main(["sweep", "s.yaml", "-o", str(tmp_path)]) == 0
    assert seen["backend"] == "local" and seen["task_options"] == {} and seen["workers"] is None


# --------------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e .[ray] (the dev extra has it)")
    for attempt in range(2):  # on a loaded machine Ray's agents may start too late for its raylet, once
        try:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - "The current node timed out during startup"
            ray.shutdown()
            if attempt:
                raise
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, run_sweep(SWEEP, output_dir=out)


def _crashing(target: str, marker: str, *, every_attempt: bool):
    """A stand-in for the task's function whose worker process dies (``os._exit``) on ``target``'s run.

    Once (``every_attempt=False``: at step 2, after the state of step 2 is saved, so the retry resumes)
    or at the start of every attempt. Each crash appends a line to ``marker``. Defined in a closure so
    that Ray ships it by value to its workers, which do not import this test module.
    """

    def train_and_evaluate(cfg, *, evaluation, overwrite=False):
        import os
        from pathlib import Path

        from kdlens.distill import distill
        from kdlens.sweep import _session

        def crash(step=0, logs=None):
            with open(marker, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "step": step}) + "\n")
            os._exit(1)

        if Path(cfg.output_dir).name == target:
            if every_attempt:
                crash()
            elif not Path(marker).exists():
                distill(cfg, callbacks=[lambda step, logs: step == 2 and crash(step)])
        return _session._train_and_evaluate(cfg, evaluation=evaluation, overwrite=overwrite)

    return train_and_evaluate


@pytest.fixture(scope="module")
def ray_sweep(ray_session, tmp_path_factory):
    """The sweep on Ray, the worker of one run killed at step 2 of its first attempt."""
    from kdlens.sweep import _session

    out = tmp_path_factory.mktemp("ray")
    marker = out / "crashed.jsonl"
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_session, "_train_and_evaluate", _crashing(CRASHING, str(marker), every_attempt=False))
        results = run_sweep(SWEEP, output_dir=out / "sweep", backend="ray", progress=lines.append)
    return out / "sweep", results, marker, lines


def _sorted(results: pd.DataFrame) -> pd.DataFrame:
    return results.sort_values(["run_id", "task"]).reset_index(drop=True)


def test_a_sweep_on_ray_gives_the_results_and_weights_of_the_local_backend(ray_sweep, local_sweep):
    from safetensors.torch import load_file

    out, results, _marker, lines = ray_sweep
    local_out, local = local_sweep
    assert results["run_id"].nunique() == 3
    pd.testing.assert_frame_equal(_sorted(results), _sorted(local), check_exact=True)
    pd.testing.assert_frame_equal(_sorted(read_results(out)), _sorted(read_results(local_out)), check_exact=True)
    for table in ("examples.parquet", "tokens.parquet"):
        ours = pd.read_parquet(out / table)
        theirs = pd.read_parquet(local_out / table)
        keys = [c for c in ("model_id", "task", "example_id", "sample", "position") if c in ours.columns]
        pd.testing.assert_frame_equal(ours.sort_values(keys).reset_index(drop=True),
                                      theirs.sort_values(keys).reset_index(drop=True), check_exact=True)
    for rid in results["run_id"].unique():
        ours = load_file(str(out / "runs" / rid / "checkpoint" / "model.safetensors"))
        theirs = load_file(str(local_out / "runs" / rid / "checkpoint" / "model.safetensors"))
        assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in theirs), rid
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "ray" and manifest["workers"] == 2  # 2 CPUs, 1 CPU per run
    assert set(manifest["runs"]) == set(results["run_id"])
    assert all(entry["node"] for entry in manifest["runs"].values())  # where each run ran
    assert any(line.startswith("Ray: each run is a task with 1 CPU") for line in lines)



def test_a_task_whose_worker_was_killed_is_retried_and_resumes(ray_sweep):
    out, _results, marker, lines = ray_sweep
    crashes = [json.loads(line) for line in marker.read_text().splitlines()]
    assert [c["step"] for c in crashes] == [2]  # killed once, mid-run
    run = out / "runs" / CRASHING
    assert (run / "done").is_file() and not (run / "state").exists()
    assert [r["step"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())] == [1, 2, 3]
    assert sum(f"training {CRASHING}" in line for line in lines) == 1  # one submission; Ray retried it
    # equal weights to the uninterrupted local run: the previous test


def test_rerunning_a_finished_sweep_on_ray_redoes_nothing(ray_sweep):
    out, results, _marker, _lines = ray_sweep
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    manifest = json.loads((out / "manifest.json").read_text())["runs"]
    lines = []
    again = run_sweep(SWEEP, output_dir=out, backend="ray", progress=lines.append)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == before
    assert json.loads((out / "manifest.json").read_text())["runs"] == manifest  # no run timed again
    assert not any("training" in line or line.startswith("Ray:") for line in lines)  # no task, no Ray start
    pd.testing.assert_frame_equal(_sorted(again), _sorted(results), check_exact=True)


def test_a_run_that_keeps_failing_is_reported_by_name_and_the_others_tables_are_written(ray_session, tmp_path,
                                                                                        monkeypatch):
    from kdlens.sweep import _session

    marker = tmp_path / "crashed.jsonl"
    monkeypatch.setattr(_session, "_train_and_evaluate", _crashing(CRASHING, str(marker), every_attempt=True))
    sweep = {**SWEEP, "baseline": None}
    with pytest.raises(ChildProcessError, match=rf"1 run\(s\) failed in their workers .*{CRASHING}: "
                                           r"RayWorkerDied: WorkerCrashedError on each of 2 attempt\(s\) \(max_retries=1\)"):
        run_sweep(sweep, output_dir=tmp_path / "s", backend="ray", task_options={"max_retries": 1})
    assert len(marker.read_text().splitlines()) == 2  # the first attempt and one retry
    kept = read_results(tmp_path / "s")
    assert kept["sigma"].unique().tolist() == [0.0] and kept["accuracy"].notna().all()
    assert not (tmp_path / "s" / "runs" / CRASHING / "done").exists()


def test_a_run_asking_for_more_than_the_cluster_has_is_refused(ray_session):
    from kdlens.sweep._ray import RayBackend

    with pytest.raises(ValueError, match="each run asks for 1 CPU, 1 GPU but the Ray cluster has 2 CPU"):
        RayBackend(num_gpus=1).start(device="cpu", workers=None, say=print)
    with pytest.raises(ValueError, match="already connected to Ray, so address='auto' cannot be used"):
        RayBackend(address="auto").start(device="cpu", workers=None, say=print)
    assert ray_session.is_initialized()  # a session the caller started is left running
