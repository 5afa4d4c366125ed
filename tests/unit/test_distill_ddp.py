"""Two CPU processes (gloo) end with the same weights as one process at the same global batch: DDP, FSDP2
with the teacher sharded too, and DeepSpeed ZeRO-2/3 (where deepspeed is installed); the manifest records
how the run was spread. Teacher noise (sigma = 2) is on: it must not depend on the process count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdlens.distill import RunDir, distill

# ~20 s each (two interpreters import torch+transformers): runs in CI, in its own xdist group
pytestmark = [pytest.mark.xdist_group("ddp"), pytest.mark.filterwarnings("ignore::UserWarning")]

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "kdlens" / "configs" / "accelerate"


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """(config, the single-process run of it): word-level KD of a tiny prune with an online teacher."""
    root = tmp_path_factory.mktemp("arith")
    data = root / "arith.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"What is {i} + 3?", "input": "",
                                        "output": f"{i} plus 3 is {i + 3}. The answer is {i + 3}",
                                        "answer": str(i + 3)}) + "\n" for i in range(16)))
    # sigma = 2: the teacher noise too must not depend on the process count (issue 12, item 4)
    cfg = dict(teacher="tiny", student="prune:1", tasks=[str(data)], method="word_kd", loss="forward_kl",
               steps=3, batch_size=8, lr=1e-2, max_grad_norm=0.1, device="cpu",
               sigma=2.0)  # clips steps 2-3; noise drawn per (seed, step, example, position)
    return cfg, distill(dict(cfg, output_dir=str(root / "single")))


def _two_processes(tmp_path, cfg, *, prelude: str = "", env: dict[str, str] | None = None) -> RunDir:
    """``cfg`` on two processes; its global batch 8 = 2 micro-batches x 2 processes x 2 examples."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(prelude) + textwrap.dedent(f"""
        import torch.distributed
        from kdlens.distill import distill
        distill({dict(cfg, grad_accum=2, output_dir=str(tmp_path / "run"))!r})
        torch.distributed.destroy_process_group()  # DeepSpeed's CPU backend aborts at exit otherwise
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return RunDir(tmp_path / "run")


def _launch_env(name: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file kdlens/configs/accelerate/NAME` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / name), "x.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch does
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_", "ACCELERATE_DEEPSPEED_",
                                                          "ACCELERATE_CONFIG_DS_FIELDS"))}


#: accelerate selects FSDP and DeepSpeed only on accelerators (its state keeps MULTI_CPU on CPUs) while
#: torch's FSDP2 and DeepSpeed's CPU accelerator run on gloo: the scripts set the distributed type accelerate
#: would set on GPUs, with the plugin it would build from the launch environment; the rest (preparing,
#: sharding, gathering the checkpoint) is the real path.
_ON_CPU = """
    import kdlens.distill._loop as loop
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    def sharded_on_cpu(cfg, make=loop._accelerator):
        accelerator = make(cfg)
        kind = DistributedType.{kind}
        PartialState().distributed_type = accelerator.state.distributed_type = kind
        if kind == DistributedType.FSDP:
            accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        else:
            plugin = DeepSpeedPlugin()
            plugin.set_mixed_precision("no")
            plugin.select(_from_accelerator_state=True)
            accelerator.state.deepspeed_plugins = plugin
        return accelerator

    loop._accelerator = sharded_on_cpu
"""


def _assert_same_run(ours: RunDir, single: RunDir, *, weights_atol: float) -> None:
    from safetensors.torch import load_file

    for key in ("loss", "grad_norm"):  # a clipped norm over stale (pre-sharding) parameters would be 0
        assert [r[key] for r in ours.log()] == pytest.approx([r[key] for r in single.log()], abs=1e-6), key
    a = load_file(str(ours.checkpoint_path / "model.safetensors"))
    b = load_file(str(single.checkpoint_path / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in b) < weights_atol


def test_two_gloo_processes_equal_one_process(tmp_path, setting):
    cfg, single = setting
    ddp = _two_processes(tmp_path, cfg)
    assert ddp.manifest()["num_processes"] == 2 and single.manifest()["num_processes"] == 1
    _assert_same_run(ddp, single, weights_atol=1e-5)
    assert ddp.manifest()["distributed"] == {"type": "MULTI_CPU", "process_group": "gloo", "world_size": 2,
                                             "sharding": None, "cpu_offload": False, "mixed_precision": "no",
                                             "teacher": "replicated"}
    assert single.manifest()["distributed"] == {"type": "NO", "process_group": None, "world_size": 1,
                                                "sharding": None, "cpu_offload": False, "mixed_precision": "no",
                                                "teacher": "replicated"}


def test_fsdp2_on_two_gloo_processes_equals_one_process(tmp_path, setting):
    """The shipped fsdp.yaml on 2 CPU processes: the student and the frozen teacher sharded (see _ON_CPU)."""
    cfg, single = setting
    fsdp = _two_processes(tmp_path, cfg, prelude=_ON_CPU.replace("{kind}", "FSDP"), env=_launch_env("fsdp.yaml"))
    _assert_same_run(fsdp, single, weights_atol=1e-5)  # measured: 6e-7 (reduce-scatter order)
    # sharded heads: the plain KD path, against the single process's fused one
    record = fsdp.manifest()["kd_path"]
    assert record["path"] == "plain" and record["why"].startswith("sharded training (fsdp)")
    assert fsdp.manifest()["distributed"] == {"type": "FSDP", "process_group": "gloo", "world_size": 2,
                                              "sharding": "fsdp2:FULL_SHARD", "cpu_offload": False,
                                              "mixed_precision": "no", "teacher": "sharded"}
    config = json.loads((fsdp.checkpoint_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # the gathered copy, not the FSDP wrapper class


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_gloo_processes_equals_one_process(tmp_path, setting, stage):
    """The shipped deepspeed_zero{2,3}.yaml on 2 CPU processes (DeepSpeed's CPU accelerator, see _ON_CPU).

    deepspeed is not in the dev extra (PyPI has it as a source archive that builds against torch); install
    it with ``pip install --no-deps --no-build-isolation deepspeed hjson py-cpuinfo einops`` to run these.
    """
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (see this test's docstring)")
    cfg, single = setting
    run = _two_processes(tmp_path, cfg, prelude=_ON_CPU.replace("{kind}", "DEEPSPEED"),
                         env={**_launch_env(f"deepspeed_zero{stage}.yaml"), "DS_ACCELERATOR": "cpu"})
    _assert_same_run(run, single, weights_atol=1e-5)  # measured: 5.6e-7 (ZeRO-2 and ZeRO-3)
    assert run.manifest()["distributed"] == {"type": "DEEPSPEED", "process_group": "gloo", "world_size": 2,
                                             "sharding": f"zero{stage}", "cpu_offload": False,
                                             "mixed_precision": "no", "teacher": "replicated"}
