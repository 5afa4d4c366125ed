"""Shared fixtures: tiny offline models and paths to the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two xdist workers share two cores: a second torch thread per worker makes small ops far slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KD_DATA = SHARED / "data" / "kd-generalization"


@pytest.fixture(scope="session")
def kd_data() -> Path:
    """../shared/data/kd-generalization (skips when the checkout has no shared/ beside it)."""
    if not KD_DATA.is_dir():
        pytest.skip(f"{KD_DATA} is not present")
    return KD_DATA


@pytest.fixture(scope="session")
def arith_tasks(tmp_path_factory) -> str:
    """A JSONL task of 16 additions with short rationales (the tiny tokenizer is byte-level)."""
    import json

    path = tmp_path_factory.mktemp("arith") / "arith.jsonl"
    rows = [{"instruction": f"What is {3 + i} + {7 + 2 * i}?", "input": "",
             "output": f"{3 + i} plus {7 + 2 * i} is {10 + 3 * i}. The answer is {10 + 3 * i}",
             "answer": str(10 + 3 * i)} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def tiny():
    """``(model, tokenizer)`` of the built-in tiny model (seed 0). Shared: do not modify it in place."""
    from kdlens.models import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of the embedded SmolLM2-135M-Instruct (integration tests only)."""
    from kdlens.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture
def counted(monkeypatch):
    """The ``output_dir`` of every run ``kdlens.distill.distill`` trains from now on (e.g. inside a sweep)."""
    import kdlens.distill

    calls, real = [], kdlens.distill.distill

    def counting(config, **kw):
        calls.append(config.output_dir)
        return real(config, **kw)

    monkeypatch.setattr(kdlens.distill, "distill", counting)
    return calls
