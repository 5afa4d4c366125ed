"""Experiment trackers (report_to=...): what a run's tracker holds, read back with the tracker's own reader."""

from __future__ import annotations

import importlib.util
import json

import pytest

from kdlens.config import load_config
from kdlens.distill import distill
from kdlens.distill._trackers import Trackers, tracker_settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rows = [{"instruction": f"What is {3 + i} + {7 + 2 * i}?", "input": "",
             "output": f"{3 + i} plus {7 + 2 * i} is {10 + 3 * i}.", "answer": str(10 + 3 * i)} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(tmp_path, tasks_file, **kw):
    base = dict(teacher="tiny", student="prune:1", tasks=[tasks_file], method="word_kd", loss="jsd",
                loss_params={"beta": 0.3}, sigma=0.5, temperature=2.0, kd_weight=0.7, steps=3, batch_size=4, lr=1e-2,
                seed=0, device="cpu", output_dir=str(tmp_path / "run"))
    return load_config(None, {**base, **kw})


def test_tensorboard_holds_the_train_log_and_the_teacher_signal_settings(tmp_path, tasks_file):
    pytest.importorskip("tensorboard", reason="report_to=tensorboard needs the tensorboard package (kdlens[track])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = distill(_config(tmp_path, tasks_file, report_to="tensorboard", log_every=1))
    rows = run.log()
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss", "ce", "kd", "lr", "tokens_per_s", "grad_norm", "target_tokens"} <= scalars
    for tag in ("loss", "kd", "lr", "tokens_per_s"):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [r["step"] for r in rows]
        assert [e.value for e in logged] == pytest.approx([r[tag] for r in rows], rel=1e-6)
    # the settings, once, as TensorBoard hparams (written to a sub-run, plus accelerate's hparams.yml copy)
    [sub] = [p for p in (run.path / "tensorboard").iterdir() if p.is_dir() and list(p.glob("events.*"))]
    hparams_events = EventAccumulator(str(sub))
    hparams_events.Reload()
    content = hparams_events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert info["loss"].string_value == "jsd" and info["loss_params.beta"].number_value == pytest.approx(0.3)
    assert info["sigma"].number_value == pytest.approx(0.5) and info["temperature"].number_value == pytest.approx(2.0)
    assert info["teacher_source"].string_value == "online" and info["teacher"].string_value == "tiny"


def test_no_tracker_by_default_and_the_train_log_is_always_written(tmp_path, tasks_file):
    run = distill(_config(tmp_path, tasks_file, steps=1))
    assert run.log_path.is_file() and not (run.path / "tensorboard").exists() and not (run.path / "mlruns").exists()


def test_a_missing_tracker_package_fails_before_anything_is_written(tmp_path, tasks_file, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match="report_to=wandb needs the wandb package: pip install wandb"):
        distill(_config(tmp_path, tasks_file, report_to="wandb"))
    assert not (tmp_path / "run" / "config.yaml").exists()
    with pytest.raises(ValueError, match="report_to='comet' is not one of"):
        _config(tmp_path, tasks_file, report_to="comet")


def test_tracker_settings_are_scalars_and_name_the_endpoint_without_its_key(tmp_path, tasks_file):
    cfg = _config(tmp_path, tasks_file)
    settings = tracker_settings(cfg)
    assert settings["loss"] == "jsd" and settings["sigma"] == 0.5 and settings["kd_weight"] == 0.7
    assert all(isinstance(v, bool | int | float | str) for v in settings.values())
    served = _config(tmp_path, tasks_file, teacher=None, student="tiny", loss="forward_kl", loss_params={},
                     teacher_source="endpoint", endpoint={"url": "http://127.0.0.1:8000/v1", "model": "big"})
    assert tracker_settings(served)["endpoint"] == "http://127.0.0.1:8000/v1#big"
    assert Trackers("none", tmp_path).tracker is None


def test_mlflow_offline_file_store(tmp_path, tasks_file):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (heavy: Flask, SQLAlchemy, alembic, ...)")
    run = distill(_config(tmp_path, tasks_file, report_to="mlflow"))
    client = mlflow.tracking.MlflowClient((run.path / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "kdlens"]
    [logged] = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(logged.info.run_id, "loss")
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in run.log()], rel=1e-6)
    assert logged.data.params["loss"] == "jsd"


def test_wandb_offline_run_directory(tmp_path, tasks_file, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (heavy: a service binary and its dependencies)")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = distill(_config(tmp_path, tasks_file, report_to="wandb"))
    assert list((run.path / "wandb").glob("offline-run-*"))
