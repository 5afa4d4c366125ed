"""SmolLM2-135M-Instruct teacher distilled into its 6-layer prune for a few steps (CPU)."""

from __future__ import annotations

import math

import pytest

from kdlens.config import load_config
from kdlens.distill import distill

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_smollm2_teacher_to_pruned_six_layer_student(tmp_path, kd_data):
    from transformers import AutoModelForCausalLM

    cfg = load_config(None, dict(
        teacher="smollm2-135m-instruct", student="prune:6", tasks=[str(kd_data / "train" / "math_data.json")],
        n_examples=4, method="word_kd", loss="forward_kl", kd_weight=1.0, steps=3, batch_size=4, max_length=128,
        lr=3e-4, device="cpu", output_dir=str(tmp_path / "run")))
    run = distill(cfg)
    assert run.done
    rows = run.log()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["kd"]) and r["kd"] > 0 for r in rows)
    # 4 examples, batch 4: every step sees the same examples, so pure KD must pull the student in
    assert rows[-1]["kd"] < rows[0]["kd"]
    model = AutoModelForCausalLM.from_pretrained(str(run.checkpoint_path))
    assert model.config.num_hidden_layers == 6 and model.config.vocab_size == 49152
    manifest = run.manifest()
    assert manifest["teacher"] == "smollm2-135m-instruct" and manifest["student"] == "prune:6"
