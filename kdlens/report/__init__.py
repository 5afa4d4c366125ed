"""Reports: run and sweep directories in, HTML, Markdown or LaTeX out.

``build_report(path)`` reads a run directory (``eval/examples.parquet`` and, when present,
``eval/tokens.parquet``, ``config.yaml``, ``manifest.json``, ``train_log.jsonl``) or a sweep
directory (``results.parquet`` and, when present, ``spec.yaml``, ``manifest.json``,
``examples.parquet``, ``tokens.parquet``) and returns one document with the sections of
:data:`SECTION_TITLES`: setup, per-task accuracy, agreement, fidelity, statistical tests (in
words and numbers) and provenance (config, seed, versions, git commit, n per cell), then
References: the papers behind the method, losses, data, metrics and tests the results used
(:mod:`kdlens.citations`), as text and BibTeX.

Reports are pure functions of those files: they never load a model (the sentence-embedding
fidelity, which needs an encoder, is left to ``kdlens analyze``). The HTML is one
self-contained file with its figures embedded as base64 PNG; Markdown and LaTeX hold the
tables and the text, ready for a paper: LaTeX tables use booktabs, estimates show their CI in
brackets, test tables carry significance marks from the adjusted p-values, and each caption
names the test, n and its unit. Numbers are rounded once, by :mod:`kdlens.report._format`.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdlens.report._render import FORMATS
from kdlens.report._sections import SECTION_TITLES
from kdlens.report._source import ReportSource, load_source

__all__ = ["FORMATS", "SECTION_TITLES", "ReportSource", "build_report", "load_source", "write_report"]


def build_report(path: str | os.PathLike, *, format: str = "html", teacher: str | None = None,
                 title: str | None = None) -> str:
    """The report of a run or sweep directory as text.

    Parameters
    ----------
    path : path
        A run directory, an evaluation directory or a sweep directory (see the module docstring).
    format : {"html", "md", "latex"}
    teacher : str, optional
        The teacher's ``model_id`` in a run's examples table (default ``"teacher"``).
    title : str, optional
        Default: "kdlens report: <directory name>".

    Raises
    ------
    FileNotFoundError
        ``path`` holds no table a report can use (the message says what to run first).
    ValueError
        An unknown format, or a table that does not match its schema.
    """
    from kdlens.report._references import references_section
    from kdlens.report._render import render
    from kdlens.report._sections import build_sections

    if format not in FORMATS:
        raise ValueError(f"unknown report format {format!r}; known: {sorted(FORMATS)}")
    src = load_source(path, teacher=teacher)
    sections = build_sections(src)
    sections.append(references_section(src, sections))
    return render(title or f"kdlens report: {Path(path).resolve().name}", sections, format)


def write_report(path: str | os.PathLike, output: str | os.PathLike, *, format: str | None = None,
                 teacher: str | None = None, title: str | None = None) -> Path:
    """Build the report of ``path`` and write it atomically to ``output``.

    ``format`` defaults to the suffix of ``output`` (``.html``, ``.md``, ``.tex``), else HTML.
    Returns the written path.
    """
    from kdlens._io import atomic_write_text

    output = Path(output)
    if format is None:
        by_suffix = {suffix: name for name, suffix in FORMATS.items()}
        format = by_suffix.get(output.suffix.lower(), "html")
    text = build_report(path, format=format, teacher=teacher, title=title)
    return atomic_write_text(output, text)
