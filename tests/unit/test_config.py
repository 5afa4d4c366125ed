"""DistillConfig: YAML + dotted overrides, typed parsing, validation, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlens.config import DistillConfig, LoraConfig, config_to_yaml, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "kdlens" / "configs").glob("*.yaml"))
BASE = ["teacher=tiny", "student=prune:1", "tasks=chain_sum:8"]


def test_bare_overrides_build_a_config_with_typed_values():
    cfg = load_config(None, [*BASE, "method=word_kd", "loss=reverse_kl", "steps=4", "lr=1e-4",
                             "sigma=2", "kd_weight=0.5", "output_dir=runs/x", "scale_by_temperature_squared=true"])
    assert cfg.loss == "reverse_kl" and cfg.steps == 4 and cfg.output_dir == "runs/x"
    # YAML reads "1e-4" as a string and "2" as an int: both must become floats
    assert isinstance(cfg.lr, float) and cfg.lr == 1e-4
    assert isinstance(cfg.sigma, float) and cfg.sigma == 2.0
    assert cfg.kd_weight == 0.5 and cfg.scale_by_temperature_squared is True
    assert cfg.tasks == ["chain_sum:8"]


def test_comma_separated_tasks_and_nested_dotted_overrides():
    cfg = load_config(None, [*BASE[:2], "tasks=chain_sum:8,basic_arithmetic:4", "lora.r=16",
                             "lora.targets=q_proj,k_proj", "loss=jsd", "loss_params.beta=0.9",
                             "method=feature_kd", "feature_weight=2", "feature.layer_map=skip"])
    assert cfg.tasks == ["chain_sum:8", "basic_arithmetic:4"]
    assert isinstance(cfg.lora, LoraConfig) and cfg.lora.r == 16 and cfg.lora.targets == ["q_proj", "k_proj"]
    assert cfg.lora.alpha == 16.0  # untouched defaults survive a partial section
    assert cfg.loss_params == {"beta": 0.9}
    assert cfg.feature.layer_map == "skip" and cfg.feature_weight == 2.0


def test_yaml_file_then_overrides_and_yaml_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher: tiny\nstudent: prune:1\ntasks: [chain_sum:8]\nsigma: 1.0\nlora:\n  r: 4\n")
    cfg = load_config(path, ["sigma=0.5", "temperature=2"])
    assert cfg.sigma == 0.5 and cfg.temperature == 2.0 and cfg.lora.r == 4
    back = tmp_path / "back.yaml"
    back.write_text(config_to_yaml(cfg))
    assert load_config(back) == cfg


def test_yes_no_on_off_stay_strings_as_in_yaml_1_2(tmp_path):
    """YAML 1.1 reads no/yes/on/off as booleans: `mixed_precision=no` became False and was refused (seen on a
    GPU). Only true/false are booleans, in overrides and in config files alike; a boolean setting given
    `no` is refused by name."""
    cfg = load_config(None, [*BASE, "mixed_precision=no"])
    assert cfg.mixed_precision == "no"
    assert parse_overrides(["a=yes", "b=off", "c=True", "d=false"]) == {"a": "yes", "b": "off", "c": True, "d": False}
    path = tmp_path / "c.yaml"
    path.write_text("teacher: tiny\nstudent: prune:1\ntasks: [chain_sum:8]\nmixed_precision: no\n")
    cfg = load_config(path)
    assert cfg.mixed_precision == "no"
    back = tmp_path / "back.yaml"
    back.write_text(config_to_yaml(cfg))
    assert load_config(back).mixed_precision == "no"
    with pytest.raises(ValueError, match=r"scale_by_temperature_squared='no' is not a boolean \(use true/false\)"):
        load_config(None, [*BASE, "scale_by_temperature_squared=no"])


def test_lora_switch_on_and_off():
    assert load_config(None, [*BASE, "lora=true"]).lora == LoraConfig()
    assert load_config(None, [*BASE, "lora=false"]).lora is None


@pytest.mark.parametrize(("override", "match"), [
    ("sigma=-1", "sigma must be >= 0"),
    ("temperature=0", "temperature must be > 0"),
    ("temperature=-2", "temperature must be > 0"),
    ("kd_weight=1.5", r"kd_weight must be in \[0, 1\]"),
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
        load_config(None, [*BASE, "method=feature_kd", "feature_weight=1", "teacher_source=cache"])
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


def test_top_level_beta_and_alpha_are_the_chosen_losss_parameters():
    """``loss=jsd beta=0.9`` is JSD(0.9), as a TRL user expects (issue 12, item 5)."""
    assert load_config(None, [*BASE, "loss=jsd", "beta=0.9"]).loss_params == {"beta": 0.9}
    assert load_config(None, [*BASE, "loss=skew_forward_kl", "alpha=0.2"]).loss_params == {"alpha": 0.2}
    both = load_config(None, [*BASE, "loss=ab_divergence", "alpha=0.5", "beta=0.3"])
    assert both.loss_params == {"alpha": 0.5, "beta": 0.3}
    assert DistillConfig(teacher="tiny", student="prune:1", tasks=["x"], loss="jsd", beta=0.25).loss_params == \
        {"beta": 0.25}
    # consistent with loss_params is fine; conflicting is an error
    assert load_config(None, [*BASE, "loss=jsd", "beta=0.9", "loss_params.beta=0.9"]).loss_params == {"beta": 0.9}
    with pytest.raises(ValueError, match="disagree"):
        load_config(None, [*BASE, "loss=jsd", "beta=0.9", "loss_params.beta=0.5"])


@pytest.mark.parametrize(("items", "match"), [
    (["alpha=0.5"], "alpha=0.5 is not a parameter of loss=forward_kl .*set kd_weight=0.5"),
    (["beta=2"], "beta=2.0 is not a parameter of loss=forward_kl .*set feature_weight=2.0"),
    (["loss=jsd", "alpha=0.5"], "alpha=0.5 is not a parameter of loss=jsd"),
    (["loss=jsd", "beta=1.5"], r"beta must be a number in \[0, 1\]"),
    (["loss=jsd", "loss_params.gamma=1"], "jsd does not take gamma"),
    (["beta=fast"], "beta='fast' is not a number"),
    (["feature_weight=1"], "feature_weight=1.0 weighs the feature terms of method=feature_kd"),
])
def test_shorthands_without_a_loss_parameter_name_the_new_keys(items, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [*BASE, *items])


def test_no_top_level_key_shadows_a_loss_parameter():
    from dataclasses import fields

    from kdlens.losses import LOSSES

    loss_params = {p for entry in LOSSES.values() for p in entry.params}
    assert {"alpha", "beta"} <= loss_params  # the JSD, skew-KL and AB parameters, and those of newer losses
    assert not loss_params & {f.name for f in fields(DistillConfig)}


@pytest.mark.parametrize(("override", "match"), [
    ("max_grad_norm=nan", "max_grad_norm=nan is not a finite number"),
    ("max_grad_norm=.inf", "max_grad_norm=inf is not a finite number"),
    ("sigma=.nan", "sigma=nan is not a finite number"),
    ("sigma=.inf", "sigma=inf is not a finite number"),
    ("temperature=.inf", "temperature=inf is not a finite number"),
    ("lr=.inf", "lr=inf is not a finite number"),
    ("lr=inf", "lr=inf is not a finite number"),
    ("kd_weight=nan", "kd_weight=nan is not a finite number"),
    ("steps=1.5", "steps=1.5 must be an integer"),
    ("batch_size=true", "batch_size=True must be an integer"),
    ("seed=abc", "seed='abc' is not an integer"),
    ("lora=5", "lora=5 must be true, false or a section"),
    ("tasks=", "no training data: set tasks="),
    ("scale_by_temperature_squared=2", "scale_by_temperature_squared=2 is not a boolean"),
    ("loss_params=3", "loss_params=3 must be a mapping"),
])
def test_non_finite_and_mistyped_values_fail_at_config_time_naming_the_setting(override, match):
    """Issue 12: nan/inf and wrong types fail here, naming the key (not at step 1 naming logits)."""
    with pytest.raises(ValueError, match=match) as err:
        load_config(None, [*BASE, override])
    assert "\n" not in str(err.value)
