"""Two CPU processes (DDP on gloo) end with the same weights as one process at the same global batch,
teacher noise included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from kdlens.distill import RunDir, distill

# ~20 s (two interpreters import torch+transformers): runs in CI, in its own xdist group
pytestmark = [pytest.mark.xdist_group("ddp"), pytest.mark.filterwarnings("ignore::UserWarning")]


def test_two_gloo_processes_equal_one_process(tmp_path):
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"What is {i} + 3?", "input": "",
                                        "output": f"{i} plus 3 is {i + 3}. The answer is {i + 3}",
                                        "answer": str(i + 3)}) + "\n" for i in range(16)))
    # sigma = 2: the teacher noise too must not depend on the process count (issue 12, item 4)
    cfg = dict(teacher="tiny", student="prune:1", tasks=[str(data)], method="word_kd", loss="forward_kl",
               steps=3, batch_size=8, lr=1e-2, device="cpu", sigma=2.0)
    # DDP: global batch 8 = 2 micro-batches x 2 processes x 2 examples
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        from kdlens.distill import distill
        distill({dict(cfg, grad_accum=2, output_dir=str(tmp_path / "ddp"))!r})
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = RunDir(tmp_path / "ddp")
    single = distill(dict(cfg, output_dir=str(tmp_path / "single")))
    assert ddp.manifest()["num_processes"] == 2 and single.manifest()["num_processes"] == 1
    assert [r["loss"] for r in ddp.log()] == pytest.approx([r["loss"] for r in single.log()], abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(str(ddp.checkpoint_path / "model.safetensors"))
    b = load_file(str(single.checkpoint_path / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in b) < 1e-5
