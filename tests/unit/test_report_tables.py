"""Paper-ready report tables: one rounding, significance marks, complete captions, and a References section."""

from __future__ import annotations

import math
import re

import _report_data as data
import bibtexparser
import numpy as np
import pandas as pd
import pytest

from kdlens.report import build_report
from kdlens.report._format import format_cell, format_number, significance_mark, table_notes
from kdlens.report._render import latex_escape, render
from kdlens.report._sections import Section, Table

NUMBER_COLUMNS = {"statistic": "num", "p_val": "p", "p_adj": "p", "effect_size": "num", "n": "int"}


@pytest.fixture(scope="module")
def run_text(run_dir):
    """The run report in each text format, built once (figures are drawn for every build)."""
    return {fmt: build_report(run_dir, format=fmt) for fmt in ("md", "latex")}


def _md_table(md: str, caption: str) -> tuple[str, list[str], list[list[str]]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"**{caption}"))
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    rows = []
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return lines[start], header, rows


def _tex_table(tex: str, caption: str) -> tuple[str, list[str], list[list[str]]]:
    start = tex.index(f"\\caption{{{latex_escape(caption)}")
    block = tex[start:tex.index("\\bottomrule", start)]
    cap = block.splitlines()[0]
    head, body = block.split("\\midrule")
    header = [c.strip() for c in head.split("\\toprule")[1].strip().removesuffix("\\\\").split(" & ")]
    rows = [[c.strip() for c in line.strip().removesuffix("\\\\").split(" & ")] for line in body.strip().splitlines()]
    return cap, header, rows


def _expected_mcnemar() -> pd.DataFrame:
    from kdlens.analysis import mcnemar, pair_models

    paired = pair_models(data.examples(("teacher", "kd")), model_a="kd", model_b="teacher")
    per_task = mcnemar(paired, a="kd", b="teacher", by="task")
    return pd.concat([per_task, mcnemar(paired, a="kd", b="teacher").assign(task="all")[per_task.columns]],
                     ignore_index=True)


def test_numbers_are_rounded_by_one_function_the_same_way_everywhere():
    assert format_number(0.12345, "pct") == "12.3" and format_number(0.98765, "num") == "0.988"
    assert format_number(0.0004, "p") == "<0.001" and format_number(0.01234, "p") == "0.012"
    assert format_number(math.inf, "num") == "∞" and format_number(-math.inf, "pct") == "-∞"
    assert format_number(None, "num") == format_number(float("nan"), "pct") == format_number(pd.NA) == "–"
    assert format_number(20.0, "int") == "20" and format_number(0.123456, "text") == "0.1235"
    assert format_cell((0.6, 0.4, 0.8), "pct") == "60.0 [40.0, 80.0]"
    assert format_cell((0.6, float("nan"), 0.8), "pct") == "60.0"  # no half interval
    marks = [significance_mark(p) for p in (0.0009, 0.001, 0.0099, 0.01, 0.0499, 0.05, 0.7, float("nan"), None)]
    assert marks == ["***", "**", "**", "*", "*", "", "", "", ""]


@pytest.mark.parametrize("fmt", ["md", "latex"])
def test_the_test_table_shows_the_dataframe_rounded_and_marked(run_text, fmt):
    expected = _expected_mcnemar()
    text = run_text[fmt]
    caption, header, rows = (_md_table if fmt == "md" else _tex_table)(text, "McNemar: kd vs teacher")
    assert [r[0] for r in rows] == ["alpha", "beta", "all"] and len(rows) == len(expected)
    escape = (lambda s: s) if fmt == "md" else latex_escape
    for row, (_, want) in zip(rows, expected.iterrows(), strict=True):
        cells = dict(zip(header, row, strict=True))
        for column, kind in NUMBER_COLUMNS.items():
            mark = significance_mark(want["p_adj"]) if column == "effect_size" else ""
            assert cells[escape(column)] == escape(format_number(want[column], kind) + mark), (column, cells)
    # the caption says which test, how many of what, and what the marks mean
    for words in ("Test: McNemar's exact test.", "n = 10 to 20 paired examples per row.",
                  "* p_adj < 0.05, ** p_adj < 0.01, *** p_adj < 0.001"):
        assert escape(words) in caption
    if fmt == "latex":
        assert "\\label{tab:kdlens-tests-1}" in caption


def test_estimates_show_their_bootstrap_interval_as_computed(run_text):
    from kdlens.analysis import run_metrics

    acc = run_metrics(data.examples(("teacher", "kd")), model_id="kd", teacher=None, n_boot=1000)
    md = run_text["md"]
    _, header, rows = _md_table(md, "Accuracy per task")
    by_task = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    for task in ("alpha", "beta", "all"):
        want = acc.set_index("task").loc[task]
        assert by_task[task]["kd"] == format_cell((want["accuracy"], want["accuracy_ci_low"],
                                                   want["accuracy_ci_high"]), "pct")
    assert by_task["alpha"]["kd"].startswith("60.0 [")


def test_marks_and_notes_of_any_test_table_in_every_format():
    frame = pd.DataFrame({"test": ["spearman", "spearman"], "statistic": [0.9, 0.1], "p_val": [0.001, 0.5],
                          "p_adj": [0.004, 0.6], "effect_size": [0.9, 0.1], "n": [12, 12]})
    table = Table("Correlations.", frame, {"statistic": "num", "p_val": "p", "p_adj": "p", "effect_size": "num",
                                           "n": "int"})
    md = render("t", [Section("tests", "Tests", [table])], "md")
    assert "| spearman | 0.900 | 0.001 | 0.004 | 0.900** | 12 |" in md
    assert "| spearman | 0.100 | 0.500 | 0.600 | 0.100 | 12 |" in md
    assert "**Correlations. Test: Spearman correlation. n = 12 runs per row. Marks on effect_size" in md
    html = render("t", [Section("tests", "Tests", [table])], "html")
    assert "0.900**</td>" in html
    assert table_notes(frame, unit="seeds").startswith("Test: Spearman correlation. n = 12 seeds per row.")
    assert table_notes(pd.DataFrame({"value": [1.0]})) == ""  # not a test table: caption left as built


def test_the_report_ends_with_the_references_of_what_it_used(run_text, sweep_dir):
    def keys(text: str) -> set[str]:
        block = text[text.index("```bibtex") + len("```bibtex"):]
        library = bibtexparser.parse_string(block[:block.index("```")])
        assert not library.failed_blocks
        return {e.key for e in library.entries}

    run = run_text["md"]
    assert run.index("## References") > run.index("## Provenance")
    # the run (word_kd, forward KL, tau 2) and the report's own bootstrap CIs, agreement, BLEU/ROUGE, McNemar + Holm
    assert keys(run) == {"kdlens", "hinton2015distilling", "kim2016sequence", "kullback1951information",
                         "stojanovski2025reasoning", "efron1979bootstrap", "ramesh2025generalization",
                         "papineni2002bleu", "post2018call", "lin2004rouge", "mcnemar1947note", "holm1979simple"}
    assert "Holm (1979). A Simple Sequentially Rejective Multiple Test Procedure." in run
    sweep = keys(build_report(sweep_dir, format="md"))
    assert {"spearman1904proof", "fisher1915frequency", "student1908probable", "mcnemar1947note", "holm1979simple",
            "ouyang2022training"} <= sweep  # Spearman with Fisher-z CIs, the paradox t-test, the SFT baseline
    assert "gu2024minillm" not in sweep and "benjamini1995controlling" not in sweep
    assert re.search(r"\\section\*\{References\}", run_text["latex"])


def test_seed_summary_is_the_mean_and_t_interval_over_seeds_and_renders_as_plus_minus():
    from scipy import stats as sps

    from kdlens.analysis import seed_summary

    acc = {("kd", 0): 0.50, ("kd", 1): 0.56, ("kd", 2): 0.59, ("sft", 0): 0.40, ("sft", 1): 0.44, ("sft", 2): 0.42}
    results = pd.DataFrame([{"run_id": f"{m}{s}", "status": "evaluated", "method": m, "seed": s, "task": task,
                             "accuracy": a + (0.1 if task == "x" else 0.0)}
                            for (m, s), a in acc.items() for task in ("x", "all")])
    out = seed_summary(results, metric="accuracy").set_index("method")
    assert list(out.columns) == ["mean", "ci_low", "ci_high", "sd", "n_seeds"] and set(out.index) == {"kd", "sft"}
    kd = np.array([0.50, 0.56, 0.59])
    half = sps.t.ppf(0.975, 2) * kd.std(ddof=1) / np.sqrt(3)
    assert out.loc["kd", "mean"] == pytest.approx(kd.mean()) and out.loc["kd", "n_seeds"] == 3
    assert out.loc["kd", "ci_high"] - out.loc["kd", "mean"] == pytest.approx(half)
    one = seed_summary(results.loc[results["seed"] == 0], metric="accuracy")
    assert one["n_seeds"].tolist() == [1, 1] and one["ci_low"].isna().all()
    cell = (out.loc["kd", "mean"], out.loc["kd", "ci_low"], out.loc["kd", "ci_high"])
    assert format_cell(cell, "pct±") == f"{100 * kd.mean():.1f} ± {100 * half:.1f}"
    assert format_cell(cell, "pct") == f"{100 * kd.mean():.1f} [{100 * (kd.mean() - half):.1f}, {100 * (kd.mean() + half):.1f}]"
