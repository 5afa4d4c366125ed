"""Hostile inputs to every subcommand: each is one line ``kdlens CMD: error: ...`` naming the problem, and
exit status 1 (2 for a malformed command line, argparse's convention), never a traceback (issue 12).

Output-directory problems (a file, unwritable or read-only) belong to the run-lifecycle tests."""

from __future__ import annotations

import json

import pytest

from kdlens.cli import error_message, main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs on disk, by name."""
    root = tmp_path_factory.mktemp("hostile")
    good = root / "arith.jsonl"
    good.write_text("".join(json.dumps({"instruction": f"What is {i} + 1?", "input": "",
                                        "output": f"{i} plus 1 is {i + 1}. The answer is {i + 1}",
                                        "answer": str(i + 1)}) + "\n" for i in range(8)))
    (root / "latin1.jsonl").write_bytes('{"instruction": "caf\xe9", "output": "1", "answer": "1"}\n'.encode("latin-1"))
    (root / "empty.jsonl").write_text("")
    (root / "broken.json").write_text('[{"instruction": "x", "output": "1"')
    (root / "data.txt").write_text("what is 1 + 1?")
    (root / "bad.yaml").write_text("teacher: [tiny\n")
    (root / "list.yaml").write_text("- teacher\n- tiny\n")
    (root / "spec_bad_axis.yaml").write_text("name: x\nbase: {teacher: tiny, student: prune:1, tasks: [chain_sum:4]}\n"
                                             "axes: {sigmaa: [0.0, 1.0]}\n")
    (root / "spec_nan.yaml").write_text("name: x\nbase: {teacher: tiny, student: prune:1, tasks: [chain_sum:4]}\n"
                                        "axes: {sigma: [.nan]}\n")
    (root / "spec_ok.yaml").write_text("name: x\nbase: {teacher: tiny, student: prune:1, tasks: [chain_sum:4], "
                                       "steps: 1, batch_size: 4, device: cpu}\naxes: {sigma: [0.0]}\n")
    (root / "table.csv").write_text("model_id,task\nt,a\n")
    (root / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    (root / "results").mkdir()
    (root / "results" / "math_results_main.csv").write_text("nothing,useful\n1,2\n")
    (root / "emptydir").mkdir()
    # a model directory whose weights file was cut in half (a killed copy)
    from kdlens.models import tiny_model

    model, tok = tiny_model(seed=0)
    for name in ("corrupt", "garbled"):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    weights = (root / "corrupt" / "model.safetensors").read_bytes()
    (root / "corrupt" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / "garbled" / "config.json").write_text("{not json")
    return root


RUN = ["teacher=tiny", "student=prune:1", "steps=1", "batch_size=4", "device=cpu"]

#: (id, argv with {root} for the fixture directory, expected exit status, words the one line must contain)
CATALOGUE = [
    # distill: config values
    ("steps-float", ["distill", *RUN, "tasks={root}/arith.jsonl", "steps=1.5"], 1, "steps=1.5 must be an integer"),
    ("lora-int", ["distill", *RUN, "tasks={root}/arith.jsonl", "lora=5"], 1, "lora=5 must be true, false"),
    ("sigma-nan", ["distill", *RUN, "tasks={root}/arith.jsonl", "sigma=.nan"], 1, "sigma=nan is not a finite"),
    ("sigma-inf", ["distill", *RUN, "tasks={root}/arith.jsonl", "sigma=inf"], 1, "sigma=inf is not a finite"),
    ("lr-inf", ["distill", *RUN, "tasks={root}/arith.jsonl", "lr=inf"], 1, "lr=inf is not a finite"),
    ("grad-norm-nan", ["distill", *RUN, "tasks={root}/arith.jsonl", "max_grad_norm=nan"], 1, "max_grad_norm=nan"),
    ("tasks-empty", ["distill", *RUN, "tasks="], 1, "no training data: set tasks="),
    ("no-args", ["distill"], 1, "set teacher="),
    ("minillm-other-loss", ["distill", *RUN, "tasks={root}/arith.jsonl", "method=minillm", "loss=forward_kl"], 1,
     "set loss=reverse_kl"),
    ("unknown-method", ["distill", *RUN, "tasks={root}/arith.jsonl", "method=wordkd"], 1, "did you mean 'word_kd'"),
    ("unknown-loss", ["distill", *RUN, "tasks={root}/arith.jsonl", "loss=kl"], 1, "unknown loss 'kl'"),
    ("unknown-key", ["distill", *RUN, "tasks={root}/arith.jsonl", "stepz=3"], 1, "unknown config key 'stepz'"),
    ("old-alpha", ["distill", *RUN, "tasks={root}/arith.jsonl", "alpha=0.5"], 1, "set kd_weight=0.5"),
    ("old-beta", ["distill", *RUN, "tasks={root}/arith.jsonl", "beta=2"], 1, "set feature_weight=2.0"),
    ("jsd-beta-range", ["distill", *RUN, "tasks={root}/arith.jsonl", "loss=jsd", "beta=1.5"], 1, "beta must be"),
    ("sft-sigma", ["distill", *RUN, "tasks={root}/arith.jsonl", "method=sft", "sigma=2"], 1, "would be ignored"),
    ("seq-kd-tau", ["distill", *RUN, "tasks={root}/arith.jsonl", "method=seq_kd", "temperature=2"], 1,
     "seq_kd.do_sample=true"),
    ("batch-zero", ["distill", *RUN, "tasks={root}/arith.jsonl", "batch_size=0"], 1, "batch_size must be >= 1"),
    ("accum-indivisible", ["distill", *RUN, "tasks={root}/arith.jsonl", "grad_accum=3"], 1, "grad_accum=3"),
    ("prune-bad", ["distill", *RUN, "tasks={root}/arith.jsonl", "student=prune:x"], 1, "prune:N"),
    ("blackbox-no-teacher", ["distill", *RUN, "tasks={root}/arith.jsonl", "method=blackbox"], 1,
     "needs exactly one text-only teacher"),
    ("no-output-dir", ["distill", *RUN, "tasks={root}/arith.jsonl"], 1, "output_dir is not set"),
    ("not-key-value", ["distill", "{root}/arith.jsonl", "sigma"], 1, "'sigma' is not key=value"),
    # distill: files
    ("config-missing", ["distill", "{root}/nope.yaml"], 1, "does not exist"),
    ("config-bad-yaml", ["distill", "{root}/bad.yaml"], 1, "is not valid YAML"),
    ("config-list", ["distill", "{root}/list.yaml"], 1, "must hold a mapping"),
    ("data-missing", ["distill", *RUN, "tasks={root}/nope.jsonl", "output_dir={root}/o1"], 1, "does not exist"),
    ("data-latin1", ["distill", *RUN, "tasks={root}/latin1.jsonl", "output_dir={root}/o2"], 1,
     "latin1.jsonl is not UTF-8"),
    ("data-empty", ["distill", *RUN, "tasks={root}/empty.jsonl", "output_dir={root}/o3"], 1, "empty.jsonl is empty"),
    ("data-broken-json", ["distill", *RUN, "tasks={root}/broken.json", "output_dir={root}/o4"], 1, "malformed JSON"),
    ("data-wrong-type", ["distill", *RUN, "tasks={root}/data.txt", "output_dir={root}/o5"], 1, "unsupported file type"),
    ("unknown-task", ["distill", *RUN, "tasks=chain_summ:4", "output_dir={root}/o6"], 1, "chain_summ"),
    ("max-length-5", ["distill", *RUN, "tasks={root}/arith.jsonl", "max_length=5", "output_dir={root}/o7"], 1,
     "max_length=5"),
    ("teacher-missing", ["distill", "teacher={root}/no-model", "student=prune:1", "tasks={root}/arith.jsonl",
                         "output_dir={root}/o8"], 1, "no-model is not a model directory"),
    ("teacher-corrupt", ["distill", "teacher={root}/corrupt", "student=prune:1", "tasks={root}/arith.jsonl",
                         "output_dir={root}/o9"], 1, "corrupt or incomplete"),
    ("teacher-bad-config", ["distill", "teacher={root}/garbled", "student=prune:1", "tasks={root}/arith.jsonl",
                            "output_dir={root}/o10"], 1, "garbled are corrupt or incomplete"),
    ("distillm-8-examples", ["distill", *RUN, "batch_size=8", "tasks={root}/arith.jsonl", "method=distillm",
                             "output_dir={root}/o11"], 1, "distillm.val_size"),
    ("blackbox-bad-callable", ["distill", "student=tiny", "tasks={root}/arith.jsonl", "method=blackbox",
                               "blackbox.teacher=no_such_module:fn", "steps=1", "batch_size=4", "device=cpu",
                               "output_dir={root}/o12"], 1, "is not an importable"),
    ("blackbox-unreachable", ["distill", "student=tiny", "tasks={root}/arith.jsonl", "method=blackbox",
                              "blackbox.url=http://127.0.0.1:9/v1", "blackbox.retries=0", "blackbox.timeout=2",
                              "steps=1", "batch_size=4", "device=cpu", "output_dir={root}/o13"], 1,
     "failed after 1 attempts"),
    # finetune
    ("finetune-method", ["finetune", "student=tiny", "tasks={root}/arith.jsonl", "method=word_kd"], 1,
     "this command trains with method=sft"),
    ("finetune-no-model", ["finetune", "tasks={root}/arith.jsonl"], 1, "no model to train"),
    ("finetune-tau", ["finetune", "student=tiny", "tasks={root}/arith.jsonl", "temperature=2"], 1,
     "would be ignored"),
    # eval
    ("eval-model-shape", ["eval", "--model", "tiny", "-t", "chain_sum:2", "-o", "{root}/e1"], 1, "ID=PATH"),
    ("eval-model-twice", ["eval", "-m", "a=tiny", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e2"], 1,
     "given twice"),
    ("eval-model-missing", ["eval", "-m", "a={root}/no-model", "-t", "chain_sum:2", "-o", "{root}/e3"], 1,
     "no-model does not exist"),
    ("eval-model-corrupt", ["eval", "-m", "a={root}/corrupt", "-t", "chain_sum:2", "-o", "{root}/e4"], 1,
     "corrupt or incomplete"),
    ("eval-task-missing", ["eval", "-m", "a=tiny", "-t", "{root}/nope.json", "-o", "{root}/e5"], 1, "does not exist"),
    ("eval-task-latin1", ["eval", "-m", "a=tiny", "-t", "{root}/latin1.jsonl", "-o", "{root}/e6"], 1,
     "is not UTF-8"),
    ("eval-samples-greedy", ["eval", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e7", "--num-samples", "2"],
     1, "--num-samples needs --decoding sample"),
    ("eval-tokens-no-teacher", ["eval", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e8", "--tokens"], 1,
     "--tokens compares"),
    ("eval-cuda", ["eval", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e9", "--device", "cuda"], 1, "CUDA"),
    ("eval-dtype", ["eval", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e10", "--dtype", "int8"], 1, "dtype"),
    ("eval-batch-zero", ["eval", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e11", "--batch-size", "0"], 1,
     "batch_size"),
    ("eval-new-tokens-zero", ["eval", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e12", "--max-new-tokens",
                              "0"], 1, "max_new_tokens"),
    ("eval-temperature", ["eval", "-m", "a=tiny", "-t", "chain_sum:2", "-o", "{root}/e13", "--decoding", "sample",
                          "--temperature", "-1"], 1, "temperature"),
    ("eval-no-model-flag", ["eval", "-t", "chain_sum:2", "-o", "{root}/e14"], 2, "--model"),
    # sweep
    ("sweep-missing", ["sweep", "{root}/nope.yaml", "-o", "{root}/s1"], 1, "does not exist"),
    ("sweep-bad-yaml", ["sweep", "{root}/bad.yaml", "-o", "{root}/s2"], 1, "is not valid YAML"),
    ("sweep-bad-axis", ["sweep", "{root}/spec_bad_axis.yaml", "-o", "{root}/s3", "--dry-run"], 1, "sigmaa"),
    ("sweep-nan-axis", ["sweep", "{root}/spec_nan.yaml", "-o", "{root}/s4", "--dry-run"], 1, "sigma=nan"),
    ("sweep-publish-no-eval", ["sweep", "{root}/spec_ok.yaml", "-o", "{root}/s5", "--publish", "{root}/p",
                               "--no-eval"], 1, "--publish needs evaluated runs"),
    ("sweep-workers-zero", ["sweep", "{root}/spec_ok.yaml", "-o", "{root}/s6", "--workers", "0"], 1, "workers"),
    ("sweep-max-runs", ["sweep", "{root}/spec_ok.yaml", "-o", "{root}/s7", "--max-runs", "-1"], 1,
     "max_runs must be >= 0"),
    ("sweep-time-budget", ["sweep", "{root}/spec_ok.yaml", "-o", "{root}/s8", "--time-budget", "-5"], 1,
     "time_budget_s must be > 0"),
    # report
    ("report-missing", ["report", "{root}/nope", "-o", "{root}/r.html"], 1, "nope"),
    ("report-empty", ["report", "{root}/emptydir", "-o", "{root}/r.html"], 1, "emptydir"),
    ("report-format", ["report", "{root}/emptydir", "-o", "{root}/r.html", "--format", "pdf"], 2, "--format"),
    # analyze
    ("analyze-missing", ["analyze", "{root}/nope.parquet", "--teacher", "t", "-o", "{root}/a1"], 1, "does not exist"),
    ("analyze-format", ["analyze", "{root}/data.txt", "--teacher", "t", "-o", "{root}/a2"], 1,
     "unknown table format"),
    ("analyze-columns", ["analyze", "{root}/table.csv", "--teacher", "t", "-o", "{root}/a3"], 1, "example"),
    ("analyze-garbage", ["analyze", "{root}/garbage.parquet", "--teacher", "t", "-o", "{root}/a4"], 1,
     "garbage.parquet"),
    ("analyze-n-boot", ["analyze", "{root}/table.csv", "--teacher", "t", "-o", "{root}/a5", "--n-boot", "-1"], 1,
     "--n-boot must be >= 0"),
    # paper-stats
    ("paper-missing", ["paper-stats", "{root}/nope"], 1, "nope"),
    ("paper-empty", ["paper-stats", "{root}/emptydir"], 1, "emptydir"),
    ("paper-garbage", ["paper-stats", "{root}/results"], 1, "math_results_main.csv"),
    ("paper-domain", ["paper-stats", "{root}/results", "--domain", "law"], 2, "--domain"),
    # demo
    ("demo-steps", ["demo", "--smoke", "-o", "{root}/d1", "--steps", "0"], 1, "steps must be a positive integer"),
    ("demo-model", ["demo", "--smoke", "-o", "{root}/d2", "--model", "{root}/no-model"], 1, "no-model"),
    ("demo-shared", ["demo", "--smoke", "-o", "{root}/d3", "--shared-data", "{root}/emptydir"], 1, "emptydir"),
    ("demo-threads", ["demo", "--smoke", "-o", "{root}/d4", "--threads", "0"], 1, "threads"),
    # models
    ("models-unknown", ["models", "--convert", "nope"], 1, "unknown built-in model 'nope'"),
    ("cite-missing", ["cite", "{root}/nope"], 1, "holds no manifest.json with references"),
    ("cite-empty", ["cite", "{root}/emptydir"], 1, "give a run directory"),
    ("cite-format", ["cite", "{root}/emptydir", "--format", "xml"], 2, "invalid choice: 'xml'"),
    ("models-in-memory", ["models", "--convert", "tiny"], 1, "built in memory"),
]


@pytest.mark.parametrize(("argv", "status", "words"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_hostile_input_is_one_line_naming_the_problem(files, capsys, argv, status, words):
    argv = [a.replace("{root}", str(files)) for a in argv]
    if status == 2:  # argparse rejects the command line itself, with its usage line
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert words in capsys.readouterr().err
        return
    assert main(argv) == status
    err = capsys.readouterr().err
    # progress lines (the demo's "[  0.0 s] ...") may come first; the error is the one last line
    errors = [line for line in err.splitlines() if line.startswith("kdlens ")]
    assert "Traceback" not in err and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert errors[0].startswith(f"kdlens {argv[0]}: error: ")
    assert words in errors[0]


def test_the_catalogue_covers_every_subcommand_with_forty_inputs():
    from kdlens.cli import SUBCOMMANDS

    assert {c[1][0] for c in CATALOGUE} == set(SUBCOMMANDS)
    assert len(CATALOGUE) >= 40 and len({c[0] for c in CATALOGUE}) == len(CATALOGUE)


def test_os_errors_get_their_path_and_a_fix_and_bugs_keep_their_traceback(monkeypatch, capsys):
    err = PermissionError(13, "Permission denied", "/srv/runs/x")
    assert error_message(err) == "Permission denied: /srv/runs/x; check the permissions of that path (or choose " \
                                 "another one)"
    assert error_message(OSError(28, "No space left on device", "/d")).endswith("free some disk space or choose "
                                                                               "another output directory")
    assert error_message(ValueError("a\n  b\n")) == "a; b"

    import kdlens.cli.models as models_cli

    def boom(args):
        raise KeyError("an internal bug")

    monkeypatch.setattr(models_cli, "run", boom)
    with pytest.raises(KeyError):
        main(["models"])


def test_an_interrupt_is_one_line_saying_how_to_resume(monkeypatch, capsys):
    import kdlens.cli.models as models_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(models_cli, "run", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "kdlens models: interrupted; rerun the same command to resume " \
                                              "(finished work is kept)"
