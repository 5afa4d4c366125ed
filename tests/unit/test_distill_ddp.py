"""Two CPU processes (gloo) end with the same weights as one process at the same global batch: DDP, and
FSDP2 with the teacher sharded too; the manifest records how the run was spread."""

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
    cfg = dict(teacher="tiny", student="prune:1", tasks=[str(data)], method="word_kd", loss="forward_kl",
               steps=3, batch_size=8, lr=1e-2, device="cpu")
    return cfg, distill(dict(cfg, output_dir=str(root / "single")))


def _two_processes(tmp_path, cfg, *, prelude: str = "", env: dict[str, str] | None = None) -> RunDir:
    """``cfg`` on two processes; its global batch 8 = 2 micro-batches x 2 processes x 2 examples."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(prelude) + textwrap.dedent(f"""
        from kdlens.distill import distill
        distill({dict(cfg, grad_accum=2, output_dir=str(tmp_path / "run"))!r})
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return RunDir(tmp_path / "run")


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
    """The shipped fsdp.yaml, as `accelerate launch` turns it into FSDP_* settings, on 2 CPU processes.

    accelerate selects FSDP only on accelerators (its state keeps MULTI_CPU on CPUs), while torch's
    FSDP2 runs on gloo: the script sets the distributed type accelerate would set on GPUs, and the rest
    (preparing, sharding the student and the frozen teacher, gathering the checkpoint) is the real path.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / "fsdp.yaml"), "x.py"])
    args, _, _ = _validate_launch_command(args)
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}
    prelude = """
        import kdlens.distill._loop as loop
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        def fsdp_on_cpu(cfg, make=loop._accelerator):
            accelerator = make(cfg)
            PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
            accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment
            return accelerator

        loop._accelerator = fsdp_on_cpu
    """
    cfg, single = setting
    fsdp = _two_processes(tmp_path, cfg, prelude=prelude, env=env)
    _assert_same_run(fsdp, single, weights_atol=1e-5)  # measured: 3e-7 (reduce-scatter order)
    assert fsdp.manifest()["distributed"] == {"type": "FSDP", "process_group": "gloo", "world_size": 2,
                                              "sharding": "fsdp2:FULL_SHARD", "cpu_offload": False,
                                              "mixed_precision": "no", "teacher": "sharded"}
    config = json.loads((fsdp.checkpoint_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # the gathered copy, not the FSDP wrapper class
