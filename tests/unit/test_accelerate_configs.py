"""The shipped accelerate configs name only options accelerate reads, and mean what their comments say;
the loop's DeepSpeed and sharding settings (no GPU or DeepSpeed needed)."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
import yaml

from kdlens.config import DistillConfig

CONFIGS = Path(__file__).resolve().parents[2] / "kdlens" / "configs" / "accelerate"
EXPECTED = {  # file -> (distributed_type, what the plugin built from it must hold)
    "ddp.yaml": ("MULTI_GPU", {}),
    "fsdp.yaml": ("FSDP", {"fsdp_version": 2, "reshard_after_forward": True, "offload": False}),
    "fsdp_offload.yaml": ("FSDP", {"fsdp_version": 2, "reshard_after_forward": True, "offload": True}),
    "deepspeed_zero2.yaml": ("DEEPSPEED", {"zero_stage": 2}),
    "deepspeed_zero3.yaml": ("DEEPSPEED", {"zero_stage": 3, "stage3_gather_16bit_weights_on_model_save": True}),
}


def test_every_shipped_accelerate_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


def _launch_args(path: Path):
    """What `accelerate launch --config_file PATH` makes of the file (its own parser and validation)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(path),
                                                                                      "x.py"]))
    return args, defaults


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_keys_are_options_accelerate_reads(name):
    """accelerate copies fsdp_config / deepspeed_config entries onto its launch arguments without checking
    them: a misspelt key would be ignored silently, so each must be a launch option."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert set(raw) <= {f.name for f in dataclasses.fields(ClusterConfig)}, name
    options = {action.dest for action in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        assert set(raw.get(section, {})) <= options, (name, sorted(set(raw.get(section, {})) - options))
    assert raw["distributed_type"] == EXPECTED[name][0]
    # mixed precision is the kdlens config's (mixed_precision=auto): a value here would be overridden
    assert "mixed_precision" not in raw


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configs_build_the_plugin_they_describe(name, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args, defaults = _launch_args(CONFIGS / name)
    kind, wanted = EXPECTED[name]
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (kind == "MULTI_GPU", kind == "FSDP",
                                                                   kind == "DEEPSPEED")
    if kind == "DEEPSPEED":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch does
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if kind == "FSDP":
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == wanted["fsdp_version"]
        assert plugin.reshard_after_forward is wanted["reshard_after_forward"]
        assert (type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy") is wanted["offload"]
        assert str(plugin.state_dict_type) == "StateDictType.FULL_STATE_DICT"
        assert plugin.cpu_ram_efficient_loading is False  # kdlens loads models itself, on every process
    elif kind == "DEEPSPEED":
        plugin = DeepSpeedPlugin()
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == wanted["zero_stage"]
        assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == wanted.get(
            "stage3_gather_16bit_weights_on_model_save", False)
        # left to kdlens (the loop fills them from the run config)
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert plugin.deepspeed_config[key] == "auto", key


def _fake_accelerator(kind: str, plugin=None, num_processes: int = 2):
    from accelerate.utils import DistributedType

    state = types.SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=plugin)
    return types.SimpleNamespace(distributed_type=DistributedType[kind], state=state, num_processes=num_processes,
                                 is_fsdp2=kind == "FSDP", mixed_precision="bf16")


def _zero_plugin(monkeypatch, name="deepspeed_zero2.yaml", **extra):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults = _launch_args(CONFIGS / name)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    for key, value in prepare_deepspeed_cmd_env(args)[1].items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    plugin.deepspeed_config.update(extra)
    return plugin


def test_deepspeed_gets_the_loops_batch_accumulation_and_clipping(monkeypatch):
    from kdlens.distill._loop import _configure_sharding, _distributed

    cfg = DistillConfig(teacher="tiny", student="prune:1", tasks=["chain_sum:8"], batch_size=16, grad_accum=2,
                        max_grad_norm=0.5)
    accelerator = _fake_accelerator("DEEPSPEED", _zero_plugin(monkeypatch), num_processes=4)
    _configure_sharding(accelerator, cfg, {"student": None}, micro_size=2)  # 16 = 2 x 4 processes x 2
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    # the loop ends each accumulation window itself: DeepSpeed must neither accumulate nor rescale
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (2, 1, 8)
    assert ds["gradient_clipping"] == 0.5
    info = _distributed(accelerator, cfg)
    assert (info["sharding"], info["cpu_offload"], info["teacher"]) == ("zero2", False, "replicated")

    clashing = _fake_accelerator("DEEPSPEED", _zero_plugin(monkeypatch, gradient_accumulation_steps=4))
    with pytest.raises(ValueError, match=r"sets gradient_accumulation_steps=4; kdlens sets it from the run "
                                         r"config \(grad_accum\)"):
        _configure_sharding(clashing, cfg, {"student": None}, micro_size=2)


def test_sharded_training_refuses_what_it_cannot_do_in_one_line():
    from kdlens.distill._loop import _check_sharded, _configure_sharding
    from kdlens.distill._registry import METHODS

    base = dict(teacher="tiny", student="prune:1", tasks=["chain_sum:8"])
    fsdp = _fake_accelerator("FSDP", types.SimpleNamespace(fsdp_version=2))
    assert _check_sharded(fsdp, DistillConfig(**base), METHODS["word_kd"]) is True  # online teacher: sharded
    assert _check_sharded(fsdp, DistillConfig(**base, teacher_source="cache"), METHODS["word_kd"]) is False
    assert _check_sharded(_fake_accelerator("MULTI_GPU"), DistillConfig(**base, save_every=5),
                          METHODS["word_kd"]) is False  # DDP keeps everything
    with pytest.raises(ValueError, match="save_every=5: resumable states are not written under fsdp"):
        _check_sharded(fsdp, DistillConfig(**base, save_every=5), METHODS["word_kd"])
    with pytest.raises(ValueError, match="LoRA is not supported under deepspeed"):
        _check_sharded(_fake_accelerator("DEEPSPEED"), DistillConfig(**base, lora={"r": 4}), METHODS["word_kd"])
    with pytest.raises(ValueError, match="method=gkd generates with the student, which fsdp shards"):
        _check_sharded(fsdp, DistillConfig(**base, method="gkd"), METHODS["gkd"])
    fsdp1 = _fake_accelerator("FSDP", types.SimpleNamespace(fsdp_version=1))
    fsdp1.is_fsdp2 = False
    with pytest.raises(ValueError, match="FSDP version 1 is not supported: set fsdp_version: 2"):
        _check_sharded(fsdp1, DistillConfig(**base), METHODS["word_kd"])
    with pytest.raises(ValueError, match=r"FSDP2 trains one module, but this run trains \['projection', 'student'\]"):
        _configure_sharding(fsdp, DistillConfig(**base), {"student": None, "projection": None}, micro_size=1)


def test_slurm_example_starts_one_accelerate_launch_per_node_with_its_rank(tmp_path):
    """With stand-ins for scontrol, srun (two nodes) and accelerate, the launch lines the script makes."""
    import os
    import stat
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shims = {
        "scontrol": 'printf "gpu-a\\ngpu-b\\n"\n',
        # srun: drop its options, run the command once per node as SLURM would
        "srun": 'while [[ $1 == --* ]]; do shift; done\nfor n in 0 1; do SLURM_NODEID=$n "$@"; done\n',
        "accelerate": f'printf "%s\\n" "$@" > {tmp_path}/node$SLURM_NODEID.args\n',
    }
    for name, body in shims.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\nset -eu\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4"}
    env.pop("ACCELERATE_CONFIG", None)
    proc = subprocess.run(["bash", str(CONFIGS / "slurm_example.sh"), "cfg.yaml", "output_dir=runs/x y",
                           "save_every=0"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        args = (tmp_path / f"node{rank}.args").read_text().splitlines()
        assert args == ["launch", "--config_file", "kdlens/configs/accelerate/fsdp.yaml", "--num_machines", "2",
                        "--machine_rank", str(rank), "--num_processes", "8", "--main_process_ip", "gpu-a",
                        "--main_process_port", "29500", "-m", "kdlens", "distill", "cfg.yaml",
                        "output_dir=runs/x y", "save_every=0"]
