"""A few steps of every generation-based method: SmolLM2-135M-Instruct into its 6-layer prune (CPU)."""

from __future__ import annotations

import json
import math

import pytest

from kdlens.config import load_config
from kdlens.distill import distill

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]

BASE = dict(teacher="smollm2-135m-instruct", student="prune:6", n_examples=6, steps=2, batch_size=2,
            max_length=128, lr=3e-4, device="cpu")

METHODS = {
    "gkd": dict(loss="jsd", loss_params={"beta": 0.5}, gkd={"lambda_": 1.0, "max_new_tokens": 8}),
    "distillm": dict(loss="skew_forward_kl", distillm={"val_size": 2, "eval_every": 2, "max_new_tokens": 8}),
    "minillm": dict(loss="reverse_kl", minillm={"max_new_tokens": 8}),
    "seq_kd": dict(seq_kd={"num_beams": 2, "interpolated": True, "max_new_tokens": 8, "batch_size": 6}),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_generation_method_on_smollm2(method, tmp_path, kd_data):
    cfg = load_config(None, dict(BASE, tasks=[str(kd_data / "train" / "math_data.json")], method=method,
                                 output_dir=str(tmp_path / method), **METHODS[method]))
    run = distill(cfg)
    rows = run.log()
    assert run.done and [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    if method in ("gkd", "minillm"):
        assert all(r["batch_source"] == "fresh" and 0 < r["target_tokens"] == r["gen_tokens"] <= 2 * 8 for r in rows)
    if method == "distillm":
        assert all(r["phi"] == 0.0 and r["batch_source"] == "gold" for r in rows)  # one validation: no rise yet
        assert rows[0]["val_loss"] > 0 and "val_loss" not in rows[1]
    if method == "seq_kd":
        lines = [json.loads(x) for x in (run.path / "seq_kd_teacher.jsonl").read_text().splitlines()]
        assert len(lines) == 6 and all(0 < len(x["tokens"]) <= 8 and len(x["bleu"]) == 2 for x in lines)


def test_blackbox_into_a_pruned_smollm2_student(tmp_path, kd_data, monkeypatch):
    (tmp_path / "bb_teacher.py").write_text(
        "def generate(prompts):\n"
        "    return ['Let me think step by step. The answer is 42.' for _ in prompts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # teacher= only names the model the student is pruned from; the text teacher is the callable
    cfg = load_config(None, dict(BASE, method="blackbox",
                                 tasks=[str(kd_data / "train" / "math_data.json")],
                                 blackbox={"teacher": "bb_teacher:generate"}, output_dir=str(tmp_path / "bb")))
    rows = distill(cfg).log()
    assert all(math.isfinite(r["ce"]) and r["ce"] > 0 for r in rows)
    assert rows[-1]["ce"] < rows[0]["ce"]  # every answer is the same text: one step on it lowers the next CE
