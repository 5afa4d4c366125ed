"""Render report sections as one self-contained HTML file, Markdown or LaTeX.

Cells are rounded by :mod:`kdlens.report._format` only; LaTeX tables use booktabs.
"""

from __future__ import annotations

import base64
import html
import re
from importlib import resources
from string import Template
from typing import Any

from kdlens.report._format import format_cell, marked_column, significance_mark, table_notes
from kdlens.report._sections import Code, Figure, Section, Table

__all__ = ["FORMATS", "latex_escape", "render"]

#: output format -> file suffix
FORMATS: dict[str, str] = {"html": ".html", "md": ".md", "latex": ".tex"}


def _cells(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows; a test table's marked column carries the significance marks."""
    header = [str(c) for c in table.frame.columns]
    marked = marked_column(header)
    p_adj = table.frame["p_adj"].tolist() if marked else []
    rows = []
    for i, row in enumerate(table.frame.itertuples(index=False)):
        cells = [format_cell(v, table.formats.get(c, "text")) for c, v in zip(table.frame.columns, row, strict=True)]
        if marked:
            j = header.index(marked)
            cells[j] += significance_mark(p_adj[i])
        rows.append(cells)
    return header, rows


def _caption(table: Table) -> str:
    """The caption as built, plus what a reader needs to use the table alone: the unit of rates
    and, for a test table, the test, n and unit, and the marks' thresholds."""
    caption = table.caption.rstrip()
    if any(k == "pct" for k in table.formats.values()):
        caption = caption.rstrip(".") + ". Rates in %."
    notes = table_notes(table.frame, table.unit)
    return f"{caption.rstrip('.')}. {notes}" if notes else caption


# --------------------------------------------------------------------------- HTML


def _html_table(table: Table) -> str:
    header, rows = _cells(table)
    numeric = [table.formats.get(c, "text") != "text" for c in table.frame.columns]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"{'num' if n else 'txt'}\">{html.escape(v)}</td>"
                                    for v, n in zip(row, numeric, strict=True)) + "</tr>" for row in rows)
    return (f"<figure class=\"table\"><figcaption>{html.escape(_caption(table))}</figcaption>"
            f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></figure>")


def _html_block(block: Any) -> str:
    if isinstance(block, str):
        return f"<p>{html.escape(block)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f"<figure class=\"plot\"><img alt=\"{html.escape(block.caption)}\" src=\"data:image/png;base64,{data}\">"
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    if isinstance(block, Code):
        return f"<details open><summary>{html.escape(block.caption)}</summary><pre>{html.escape(block.text)}</pre></details>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def _html(title: str, sections: list[Section]) -> str:
    nav = "".join(f"<li><a href=\"#{s.id}\">{html.escape(s.title)}</a></li>" for s in sections)
    body = "".join(f"<section id=\"{s.id}\"><h2>{html.escape(s.title)}</h2>"
                   + "".join(_html_block(b) for b in s.blocks) + "</section>" for s in sections)
    package = resources.files("kdlens.report")
    template = Template(package.joinpath("report.html").read_text(encoding="utf-8"))
    css = package.joinpath("report.css").read_text(encoding="utf-8")
    return template.substitute(title=html.escape(title), css=css, nav=nav, body=body)


# --------------------------------------------------------------------------- Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Table):
        header, rows = _cells(block)
        align = ["---:" if block.formats.get(c, "text") != "text" else ":---" for c in block.frame.columns]
        lines = [f"**{_md_escape(_caption(block))}**", "",
                 "| " + " | ".join(map(_md_escape, header)) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(map(_md_escape, row)) + " |" for row in rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"*Figure: {block.caption} (embedded in the HTML report).*"
    if isinstance(block, Code):
        return f"**{block.caption}**\n\n```{block.language}\n{block.text.rstrip()}\n```"
    raise TypeError(f"unknown report block {type(block).__name__}")


def _markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}")
        parts += [_md_block(b) for b in s.blocks]
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- LaTeX

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "σ": r"$\sigma$", "τ": r"$\tau$", "ρ": r"$\rho$", "‖": r"$\|$", "–": "--", "−": "--",
                  "∞": r"$\infty$", "<": r"$<$", ">": r"$>$", "α": r"$\alpha$", "β": r"$\beta$",
                  "λ": r"$\lambda$", "φ": r"$\phi$", "≥": r"$\geq$", "≤": r"$\leq$", "±": r"$\pm$",
                  "×": r"$\times$", "→": r"$\to$", "≈": r"$\approx$"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (and the Greek letters reports use)."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], text)


def _latex_block(block: Any, label: str = "") -> str:
    if isinstance(block, str):
        return latex_escape(block)
    if isinstance(block, Table):
        header, rows = _cells(block)
        spec = "".join("r" if block.formats.get(c, "text") != "text" else "l" for c in block.frame.columns)
        caption = latex_escape(_caption(block)) + (f"\\label{{{label}}}" if label else "")
        lines = [r"\begin{table}[ht]", r"\centering", r"\small", f"\\caption{{{caption}}}",
                 f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"% Figure: {block.caption} (embedded in the HTML report)"
    if isinstance(block, Code):
        return f"% {block.caption}:\n" + "\n".join(f"% {line}" for line in block.text.rstrip().splitlines())
    raise TypeError(f"unknown report block {type(block).__name__}")


def _latex(title: str, sections: list[Section]) -> str:
    parts = [f"% {latex_escape(title)}: tables for \\input{{}} (needs \\usepackage{{booktabs}})"]
    for s in sections:
        parts.append(f"\\section*{{{latex_escape(s.title)}}}")
        tables = iter(range(1, len(s.blocks) + 1))
        parts += [_latex_block(b, f"tab:kdlens-{s.id}-{next(tables)}" if isinstance(b, Table) else "")
                  for b in s.blocks]
    return "\n\n".join(parts) + "\n"


def render(title: str, sections: list[Section], format: str) -> str:
    """The report text in ``format`` (one of :data:`FORMATS`)."""
    if format == "html":
        return _html(title, sections)
    if format == "md":
        return _markdown(title, sections)
    if format == "latex":
        return _latex(title, sections)
    raise ValueError(f"unknown report format {format!r}; known: {sorted(FORMATS)}")
