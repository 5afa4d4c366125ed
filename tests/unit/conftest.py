"""Fixtures of the report tests: a run directory and a sweep directory built by hand (no training)."""

from __future__ import annotations

import _report_data as data
import pytest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return data.write_run_dir(tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root, _ = data.write_sweep_dir(tmp_path_factory.mktemp("report") / "sweep")
    return root
