"""The LaTeX report compiles with pdflatex (booktabs) where a TeX engine is installed (``-m slow``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

import _report_data as data  # noqa: E402

from kdlens.report import build_report  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex (apt-get install "
                                 "texlive-latex-base texlive-latex-recommended)")]

DOCUMENT = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\begin{document}
\input{tables.tex}
\end{document}
"""


@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_latex_report_compiles(kind, tmp_path):
    root = data.write_run_dir(tmp_path / "run") if kind == "run" else data.write_sweep_dir(tmp_path / "sweep")[0]
    (tmp_path / "tables.tex").write_text(build_report(root, format="latex"), encoding="utf-8")
    (tmp_path / "doc.tex").write_text(DOCUMENT, encoding="utf-8")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    log = (tmp_path / "doc.log").read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 10_000
    assert "Missing character" not in log and "Undefined control sequence" not in log
