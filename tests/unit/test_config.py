"""DistillConfig: YAML + dotted overrides, typed parsing, validation, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlens.config import DistillConfig, LoraConfig, config_to_yaml, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "kdlens" / "configs").glob("*.yaml"))
BASE = ["teacher=tiny", "student=prune:1", "tasks=chain_sum:8"]


def test_bare_overrides_build_a_config_with_typed_values():
    cfg = load_config(None, [*BASE, "method=word_kd", "loss=reverse_kl", "steps=4", "lr=1e-4",
                             "sigma=2", "alpha=0.5", "output_dir=runs/x", "scale_by_temperature_squared=true"])
    assert cfg.loss == "reverse_kl" and cfg.steps == 4 and cfg.output_dir == "runs/x"
    # YAML reads "1e-4" as a string and "2" as an int: both must become floats
    assert isinstance(cfg.lr, float) and cfg.lr == 1e-4
    assert isinstance(cfg.sigma, float) and cfg.sigma == 2.0
    assert cfg.alpha == 0.5 and cfg.scale_by_temperature_squared is True
    assert cfg.tasks == ["chain_sum:8"]


def test_comma_separated_tasks_and_nested_dotted_overrides():
    cfg = load_config(None, [*BASE[:2], "tasks=chain_sum:8,basic_arithmetic:4", "lora.r=16",
                             "lora.targets=q_proj,k_proj", "loss=jsd", "loss_params.beta=0.9",
                             "method=feature_kd", "beta=2", "feature.layer_map=skip"])
    assert cfg.tasks == ["chain_sum:8", "basic_arithmetic:4"]
    assert isinstance(cfg.lora, LoraConfig) and cfg.lora.r == 16 and cfg.lora.targets == ["q_proj", "k_proj"]
    assert cfg.lora.alpha == 16.0  # untouched defaults survive a partial section
    assert cfg.loss_params == {"beta": 0.9}
    assert cfg.feature.layer_map == "skip" and cfg.beta == 2.0


def test_yaml_file_then_overrides_and_yaml_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher: tiny\nstudent: prune:1\ntasks: [chain_sum:8]\nsigma: 1.0\nlora:\n  r: 4\n")
    cfg = load_config(path, ["sigma=0.5", "temperature=2"])
    assert cfg.sigma == 0.5 and cfg.temperature == 2.0 and cfg.lora.r == 4
    back = tmp_path / "back.yaml"
    back.write_text(config_to_yaml(cfg))
    assert load_config(back) == cfg


def test_lora_switch_on_and_off():
    assert load_config(None, [*BASE, "lora=true"]).lora == LoraConfig()
    assert load_config(None, [*BASE, "lora=false"]).lora is None


@pytest.mark.parametrize(("override", "match"), [
    ("sigma=-1", "sigma must be >= 0"),
    ("temperature=0", "temperature must be > 0"),
    ("temperature=-2", "temperature must be > 0"),
    ("alpha=1.5", r"alpha must be in \[0, 1\]"),
    ("method=wordkd", "did you mean 'word_kd'"),
    ("loss=revers_kl", "did you mean 'reverse_kl'"),
    ("teacher_source=disk", "teacher_source='disk' is not one of"),
    ("lora.r=0", "lora.r must be > 0"),
    ("grad_accum=3", "not divisible by grad_accum=3"),
    ("stepz=3", "did you mean steps"),
    ("lora.rank=3", "did you mean lora.r"),
    ("feature.kind=l3", "feature.kind='l3' is not one of"),
    ("lr=fast", "lr='fast' is not a number"),
    ("student=prune:x", "prune:N"),
    ("cache_tail=spread", "cache_tail='spread' is not one of"),
])
def test_invalid_values_are_errors_naming_the_problem(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [*BASE, override])


def test_kd_without_teacher_and_runs_without_data_are_errors():
    with pytest.raises(ValueError, match="set teacher="):
        load_config(None, ["student=tiny", "tasks=chain_sum:8", "method=word_kd"])
    with pytest.raises(ValueError, match="no training data"):
        load_config(None, ["teacher=tiny", "student=tiny"])
    with pytest.raises(ValueError, match="logit cache"):
        load_config(None, [*BASE, "method=feature_kd", "beta=1", "teacher_source=cache"])
    with pytest.raises(ValueError, match="steps or epochs, not both"):
        load_config(None, [*BASE, "steps=3", "epochs=1"])
    # sft needs no teacher; without a student it trains the teacher itself
    cfg = load_config(None, ["teacher=tiny", "tasks=chain_sum:8", "method=sft"])
    assert cfg.trained_model == "tiny"


def test_malformed_items_and_files():
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["sigma"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("/no/such/config.yaml")


def test_unsafe_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("teacher: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(path)


def test_default_steps_and_replace():
    cfg = load_config(None, BASE)
    assert cfg.steps == 100 and cfg.epochs is None
    assert cfg.replace(sigma=3.0).sigma == 3.0
    with pytest.raises(ValueError):
        cfg.replace(sigma=-3.0)
    assert isinstance(cfg, DistillConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path, ["output_dir=runs/x"])
    assert cfg.tasks and cfg.method


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 4
