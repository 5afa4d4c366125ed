"""Published result tables: a sweep goes on across machines that keep only the repository.

Each "session" below is a fresh sweep directory (a bare machine) sharing one published folder, as a
lent GPU does between sessions; the merged tables must equal those of one uninterrupted sweep.
"""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from kdlens.config import DistillConfig, cache_is_faithful
from kdlens.sweep import expand_sweep, load_sweep_spec, run_config

BASE = {"teacher": "tiny", "student": "prune:1", "tasks": ["chain_sum:4"], "method": "word_kd", "steps": 2,
        "batch_size": 4, "device": "cpu"}
SWEEP = {"name": "tiny", "base": BASE, "axes": {"sigma": [0.0, 3.0]}, "baseline": "sft",
         "eval": {"tasks": ["chain_sum:3", "basic_arithmetic:3"], "n": 3, "max_new_tokens": 6, "batch_size": 4,
                  "n_boot": 50}}
METRICS = ["accuracy", "agreement", "bleu", "token_forward_kl", "accuracy_gain", "agreement_gain", "bleu_gain"]


@pytest.fixture(scope="module")
def one_session(tmp_path_factory):
    from kdlens.sweep import run_sweep

    return run_sweep(SWEEP, output_dir=tmp_path_factory.mktemp("whole"))


def _sorted(results: pd.DataFrame) -> pd.DataFrame:
    return results.sort_values(["run_id", "task"]).reset_index(drop=True)


def test_two_sessions_through_a_published_folder_equal_one_sweep(tmp_path, counted, one_session):
    from kdlens.sweep import published_run_ids, read_results, run_sweep, schedule

    runs = schedule(expand_sweep(SWEEP), load_sweep_spec(SWEEP))  # the SFT baseline first
    assert runs["method"].iloc[0] == "sft"
    published = tmp_path / "analyses" / "results" / "tiny"
    first = run_sweep(SWEEP, output_dir=tmp_path / "machine1", max_runs=2, publish_dir=published)
    assert len(counted) == 2 and set(first["run_id"]) == set(runs["run_id"][:2])
    assert published_run_ids(published, SWEEP) == set(runs["run_id"][:2])

    second = run_sweep(SWEEP, output_dir=tmp_path / "machine2", publish_dir=published)
    # the fresh machine trained only the run the folder lacked
    assert len(counted) == 3 and counted[2].endswith(runs["run_id"].iloc[2])
    assert sorted(p.name for p in (tmp_path / "machine2" / "runs").iterdir()) == [runs["run_id"].iloc[2]]

    merged = _sorted(read_results(published))
    assert merged.equals(_sorted(second))
    whole = _sorted(one_session)
    assert merged["run_id"].tolist() == whole["run_id"].tolist() and merged["task"].tolist() == whole["task"].tolist()
    # the SFT baseline ran in another session than a KD run: gains still match one sweep's
    assert merged["accuracy_gain"].notna().sum() == whole["accuracy_gain"].notna().sum() > 0
    pd.testing.assert_frame_equal(merged[METRICS], whole[METRICS], check_exact=False, atol=1e-9)
    assert set(merged["status"]) == {"published"}
    status = read_results(published / "runs.parquet")
    assert set(status["status"]) == {"published"} and len(status) == len(runs)

    manifest = json.loads((published / "manifest.json").read_text())
    assert [s["runs"] for s in manifest["sessions"]] == [sorted(runs["run_id"][:2]), [runs["run_id"].iloc[2]]]
    assert manifest["n_published"] == manifest["n_runs"] == 3 and manifest["sessions"][1]["device"] == "cpu"
    from kdlens.distill import RunDir

    for rid in runs["run_id"][:2]:  # each published run names its identity (config, data, teacher weights)
        assert manifest["sessions"][0]["identities"][rid] == \
            RunDir(tmp_path / "machine1" / "runs" / rid).manifest()["identity"]["hash"]
    # CPU is deterministic: the second session's teacher wrote the published teacher's outputs exactly
    assert manifest["sessions"][1]["teachers"]["teacher"]["same_output_as_published"] == 1.0
    examples = pd.read_parquet(published / "examples.parquet")
    assert sorted(examples["model_id"].unique()) == sorted(["teacher", *runs["run_id"]])
    assert not examples.duplicated(["model_id", "task", "example_id", "sample"]).any()

    # nothing left: a third machine trains nothing and the tables stay as they are
    again = run_sweep(SWEEP, output_dir=tmp_path / "machine3", publish_dir=published)
    assert len(counted) == 3 and _sorted(again).equals(merged)
    assert _sorted(read_results(published)).equals(merged)
    assert len(json.loads((published / "manifest.json").read_text())["sessions"]) == 2


def test_the_sft_baseline_of_a_task_aware_sweep_is_measured_against_the_task_aware_teacher(tmp_path):
    from kdlens.sweep import run_sweep

    aware = {**SWEEP, "axes": {"teacher_aware": [True]}, "teacher_sft": {"steps": 2}}
    results = run_sweep(aware, output_dir=tmp_path / "s")
    pooled = results.loc[results["task"] == "all"].set_index("method")
    assert set(pooled["teacher_id"]) == {"teacher_sft"}  # the baseline too: before and after KD, one teacher
    assert pooled["agreement_gain"].notna().sum() == 1 and pd.notna(pooled.loc["word_kd", "bleu_gain"])
    examples = pd.read_parquet(tmp_path / "s" / "examples.parquet")
    assert set(examples["model_id"]) == {"teacher_sft", *results["run_id"]}  # the base teacher was not needed
    sft_dir = tmp_path / "s" / "runs" / pooled.loc["sft", "run_id"] / "eval"
    sft_teacher = pd.read_parquet(sft_dir / "examples.parquet").query("model_id == 'teacher'")
    aware_teacher = examples.query("model_id == 'teacher_sft'")
    assert sorted(sft_teacher["output"]) == sorted(aware_teacher["output"])


def test_a_published_folder_refuses_another_spec(tmp_path):
    from kdlens.sweep import published_run_ids, run_sweep

    published = tmp_path / "pub"
    small = {**SWEEP, "axes": {"sigma": [0.0]}, "baseline": None}
    run_sweep(small, output_dir=tmp_path / "m1", publish_dir=published)
    other = {**small, "axes": {"sigma": [0.0, 1.0]}}
    with pytest.raises(ValueError, match="different sweep spec.*new folder"):
        published_run_ids(published, other)
    with pytest.raises(ValueError, match="different sweep spec"):
        run_sweep(other, output_dir=tmp_path / "m2", publish_dir=published)


def test_published_tokens_keep_whole_first_examples_up_to_the_cap(tmp_path):
    from kdlens._tables import read_tokens
    from kdlens.sweep import publish_sweep, run_sweep

    small = {**SWEEP, "axes": {"sigma": [0.0]}, "baseline": None}
    sweep_dir = tmp_path / "sweep"
    run_sweep(small, output_dir=sweep_dir)
    full = read_tokens(sweep_dir / "tokens.parquet")
    sizes = full.groupby(["task", "example_id"], sort=False).size()
    cap = int(sizes.iloc[0]) + 1  # just over one example: one example of each task, in turn
    publish_sweep(sweep_dir, tmp_path / "pub", token_rows_per_run=cap)
    kept = read_tokens(tmp_path / "pub" / "tokens.parquet")
    kept_examples = kept.groupby(["task", "example_id"], sort=False).size()
    for key, n in kept_examples.items():  # whole examples only
        assert n == sizes[key]
    first_of_each = {task: part["example_id"].iloc[0] for task, part in full.groupby("task", sort=True)}
    assert set(kept_examples.index) <= set(first_of_each.items())
    assert len(kept) >= cap or set(kept_examples.index) == set(first_of_each.items())
    with pytest.raises(ValueError, match="token_rows_per_run"):
        publish_sweep(sweep_dir, tmp_path / "pub", token_rows_per_run=-1)
    with pytest.raises(FileNotFoundError, match="kdlens sweep"):
        publish_sweep(tmp_path / "nothing", tmp_path / "pub")


def test_time_budget_starts_no_run_that_would_overrun(tmp_path, counted, monkeypatch):
    import kdlens.sweep._session
    from kdlens.sweep import run_sweep

    now = [0.0]
    monkeypatch.setattr(kdlens.sweep._session, "_clock", lambda: now[0])
    real = kdlens.distill.distill

    def fifty_seconds(config, **kw):
        now[0] += 50.0
        return real(config, **kw)

    monkeypatch.setattr(kdlens.distill, "distill", fifty_seconds)
    lines = []
    # runs take 50 s: after two (100 s) a third would end at 150 s > 120 s, so it is not started
    results = run_sweep(SWEEP, output_dir=tmp_path / "s", time_budget_s=120, progress=lines.append)
    assert len(counted) == 2 and results["run_id"].nunique() == 2
    assert any("would likely overrun the time budget of 120 s" in line for line in lines)
    # the next call goes on with the missing run
    run_sweep(SWEEP, output_dir=tmp_path / "s", time_budget_s=120)
    assert len(counted) == 3
    with pytest.raises(ValueError, match="time_budget_s must be > 0"):
        run_sweep(SWEEP, output_dir=tmp_path / "s", time_budget_s=0)


def test_the_sweep_reads_a_cache_only_where_it_is_faithful():
    assert cache_is_faithful("forward_kl", 1.0)
    assert not cache_is_faithful("forward_kl", 2.0) and not cache_is_faithful("reverse_kl", 1.0)
    assert not cache_is_faithful("jsd", 1.0)  # not measured: not trusted
    spec = load_sweep_spec({**SWEEP, "axes": {"sigma": [0.0, 5.0], "temperature": [1.0, 2.0],
                                              "loss": ["forward_kl", "reverse_kl"]}})
    for overrides in ({"sigma": 5.0, "temperature": 1.0, "loss": "forward_kl"},
                      {"sigma": 0.0, "temperature": 2.0, "loss": "forward_kl"},
                      {"sigma": 0.0, "temperature": 1.0, "loss": "reverse_kl"}):
        cfg = run_config(spec, overrides, output_dir="o", teacher_dir=None, cache_dir="/c")
        expected = "cache" if overrides["temperature"] == 1.0 and overrides["loss"] == "forward_kl" else "online"
        assert cfg.teacher_source == expected, overrides


def test_an_explicit_cache_where_it_is_not_faithful_warns():
    common = {"teacher": "tiny", "student": "prune:1", "tasks": ["chain_sum:4"], "teacher_source": "cache"}
    with pytest.warns(UserWarning, match="measured faithful only for forward_kl at temperature 1"):
        DistillConfig.from_dict({**common, "temperature": 2.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DistillConfig.from_dict({**common, "sigma": 2.0})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny model saved as a Hugging Face directory (vocabulary 260) and as a kdlens run directory."""
    from kdlens.models import tiny_model

    root = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny_model(seed=0)
    for where in (root / "hf", root / "run" / "checkpoint"):
        model.save_pretrained(where)
        tokenizer.save_pretrained(where)
    return root


def test_a_cache_as_wide_as_the_vocabulary_is_exact_for_every_loss_and_tau(tiny_dir):
    from kdlens.models import model_vocab_size

    assert cache_is_faithful("reverse_kl", 2.0, top_k=102, vocab_size=102)
    assert cache_is_faithful("jsd", 5.0, top_k=200, vocab_size=102)
    assert not cache_is_faithful("reverse_kl", 2.0, top_k=101, vocab_size=102)
    assert not cache_is_faithful("reverse_kl", 2.0, top_k=102)  # the vocabulary unknown: only the measured case
    assert model_vocab_size(tiny_dir / "hf") == model_vocab_size(tiny_dir / "run") == 260
    assert model_vocab_size(tiny_dir / "nothing") is None and model_vocab_size("org/not-here") is None
    common = {"teacher": str(tiny_dir / "hf"), "student": "prune:1", "tasks": ["chain_sum:4"],
              "teacher_source": "cache", "loss": "reverse_kl", "temperature": 2.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # top_k = the teacher's vocabulary: nothing to warn about
        DistillConfig.from_dict({**common, "top_k": 260})
    with pytest.warns(UserWarning, match="or a top_k as large as the vocabulary"):
        DistillConfig.from_dict({**common, "top_k": 259})
    spec = load_sweep_spec({**SWEEP, "base": {**BASE, "teacher": str(tiny_dir / "hf"), "top_k": 260},
                            "axes": {"loss": ["forward_kl", "reverse_kl", "jsd"], "temperature": [1.0, 3.0]}})
    for overrides in expand_sweep(spec)["overrides"]:
        overrides = json.loads(overrides)
        cfg = run_config(spec, overrides, output_dir="o", teacher_dir=None, cache_dir="/c")
        assert cfg.teacher_source == ("online" if overrides.get("method") == "sft" else "cache"), overrides


def test_cli_sweep_publish_flags(tmp_path, capsys):
    import yaml

    from kdlens.cli import main
    from kdlens.sweep import run_sweep

    small = {**SWEEP, "axes": {"sigma": [0.0, 3.0]}, "baseline": None}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small))
    published = tmp_path / "pub"
    run_sweep(small, output_dir=tmp_path / "m1", max_runs=1, publish_dir=published)
    assert main(["sweep", str(path), "-o", str(tmp_path / "m2"), "--publish", str(published), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.count("published") == 1 and "1 not started" in out.err
    assert main(["sweep", str(path), "-o", str(tmp_path / "m2"), "--publish", str(published), "--no-eval"]) == 1
    assert "--publish needs evaluated runs" in capsys.readouterr().err


def test_agreement_gains_only_against_the_same_teacher():
    from kdlens.sweep import add_sweep_gains

    rows = [  # one student and seed: the SFT baseline was measured against the task-aware teacher
        {"run_id": "sft", "method": "sft", "teacher_aware": None, "teacher_id": "teacher_sft"},
        {"run_id": "aware", "method": "word_kd", "teacher_aware": True, "teacher_id": "teacher_sft"},
        {"run_id": "unaware", "method": "word_kd", "teacher_aware": False, "teacher_id": "teacher"},
    ]
    metrics = {"sft": (0.30, 0.50, 0.20), "aware": (0.35, 0.70, 0.40), "unaware": (0.10, 0.90, 0.60)}
    results = pd.DataFrame([{**r, "overrides": "{}", "run_dir": "", "status": "evaluated", "student": "prune:1",
                             "seed": 0, "task": "all", "n": 10,
                             **dict(zip(("accuracy", "agreement", "bleu"), metrics[r["run_id"]], strict=True))}
                            for r in rows])
    out = add_sweep_gains(results).set_index("run_id")
    assert out.loc["aware", "accuracy_gain"] == pytest.approx(0.05)
    assert out.loc["unaware", "accuracy_gain"] == pytest.approx(-0.20)  # accuracy needs no teacher
    assert out.loc["aware", "agreement_gain"] == pytest.approx(0.20)
    assert out.loc["aware", "bleu_gain"] == pytest.approx(0.20)
    # agreement with another teacher than the baseline's is not a change: missing, not +0.40
    assert pd.isna(out.loc["unaware", "agreement_gain"]) and pd.isna(out.loc["unaware", "bleu_gain"])
    assert out.loc["unaware", "baseline_run_id"] == "sft" and pd.isna(out.loc["sft", "accuracy_gain"])
    assert out.loc["unaware", "teacher_id"] == "teacher"


def test_parallel_workers_give_the_results_of_one_process(tmp_path, one_session):
    from kdlens.sweep import read_results, run_sweep

    lines = []
    parallel = run_sweep(SWEEP, output_dir=tmp_path / "p", workers=2, progress=lines.append)
    pd.testing.assert_frame_equal(_sorted(parallel)[METRICS], _sorted(one_session)[METRICS], check_exact=False,
                                  atol=1e-9)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["workers"] == 2 and set(manifest["runs"]) == set(parallel["run_id"])
    assert all(entry["total_s"] >= entry["train_s"] > 0 for entry in manifest["runs"].values())
    # the teacher was evaluated once, before the workers started, and every run reused its shards
    assert sum("evaluating the base teacher" in line for line in lines) == 1
    assert read_results(tmp_path / "p")["run_id"].nunique() == 3
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_sweep(SWEEP, output_dir=tmp_path / "p", workers=0)


def test_runs_start_seed_by_seed_with_baselines_first():
    from kdlens.sweep import schedule

    spec = load_sweep_spec({**SWEEP, "axes": {"student": ["prune:1", "prune:2"], "sigma": [0.0, 1.0],
                                              "seed": [0, 1]}})
    order = schedule(expand_sweep(spec), spec)
    overrides = [json.loads(o) for o in order["overrides"]]
    seeds = [o["seed"] for o in overrides]
    assert seeds == sorted(seeds) and seeds.count(0) == seeds.count(1) == 6
    first_seed = overrides[:6]
    assert [o.get("method") for o in first_seed[:2]] == ["sft", "sft"]  # one baseline per student
    assert all(o.get("method") != "sft" for o in first_seed[2:])


def test_a_gpu_sweep_evaluates_on_the_gpu(tmp_path, monkeypatch):
    """Training places itself (device auto); evaluation must be told, or it generates on the CPU."""
    import torch

    import kdlens.eval
    from kdlens.models._load import resolve_device
    from kdlens.sweep._run import _eval_settings
    from kdlens.sweep._session import _evaluate_teacher, eval_device

    spec = load_sweep_spec({**SWEEP, "base": {k: v for k, v in BASE.items() if k != "device"}})  # device: auto
    assert eval_device(spec) is None  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eval_device(spec) == "cuda"
    assert eval_device(load_sweep_spec(SWEEP)) is None  # device: cpu stays on the CPU
    assert resolve_device("auto") == torch.device("cuda")
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("device"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(kdlens.eval, "evaluate", recording)
    with pytest.raises(RuntimeError, match="stop here"):
        _evaluate_teacher(spec, False, tmp_path, _eval_settings(spec))
    assert seen == ["cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_a_failing_worker_run_does_not_stop_the_others(tmp_path):
    from kdlens.sweep import read_results, run_sweep

    broken = {**SWEEP, "axes": {"student": ["prune:1", "prune:9"]}, "baseline": None}  # tiny has 2 layers
    with pytest.raises(ChildProcessError, match=r"1 run\(s\) failed in their workers.*prune9"):
        run_sweep(broken, output_dir=tmp_path / "s", workers=2)
    kept = read_results(tmp_path / "s")
    assert kept["student"].unique().tolist() == ["prune:1"] and kept["accuracy"].notna().all()


def test_full_results_without_a_gpu_reads_what_is_published_or_says_how_to_run(tmp_path, monkeypatch):
    import torch

    from kdlens.sweep import full_results, grid_status, run_sweep

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FileNotFoundError, match=r"no published results.*--publish.*analyses/device/README.md"):
        full_results("analyses/x.yaml", tmp_path / "pub", work_dir=tmp_path / "work")
    assert not (tmp_path / "work").exists()  # nothing was trained
    assert "holds no runs.parquet" in grid_status(tmp_path / "pub")
    small = {**SWEEP, "axes": {"sigma": [0.0, 3.0]}, "baseline": None}
    run_sweep(small, output_dir=tmp_path / "m", max_runs=1, publish_dir=tmp_path / "pub")
    assert full_results("analyses/x.yaml", tmp_path / "pub", work_dir=tmp_path / "work") == tmp_path / "pub"
    assert grid_status(tmp_path / "pub").startswith("a partial grid: 1 of 2 runs")
    assert grid_status(tmp_path / "m") == "a partial grid: 1 of 2 runs (the rest are not run yet; the verdict " \
                                          "reads only these)"
