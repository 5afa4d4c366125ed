"""The repository itself: what a fresh clone gets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_no_tracked_file_lies_under_an_ignored_path():
    """A run's output committed by mistake breaks a fresh clone (``make demo`` found a stale sweep there)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [], f"tracked files under ignored paths (git rm --cached them): {out}"
