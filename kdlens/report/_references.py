"""The References section of a report: the papers behind exactly what the report's results used.

Two sources, joined:

* the run or sweep itself: the ``references`` of its ``manifest.json`` (training method, divergence,
  data, and for a sweep its evaluation), via :func:`kdlens.citations.directory_references`;
* what the report shows: the tests named in its tables' ``test`` columns, and the metrics,
  intervals and corrections its table captions and sentences name (:data:`CAPTION_USES`,
  :data:`SENTENCE_USES`), so a section that adds a test or a metric cites it without an edit here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kdlens.citations import USES, directory_references, references, to_bibtex
from kdlens.report._sections import Code, Section, Table
from kdlens.report._source import ReportSource

__all__ = ["CAPTION_USES", "REFERENCES_TITLE", "SENTENCE_USES", "TEST_COLUMN_USES", "references_section",
           "report_uses"]

REFERENCES_TITLE = "References"

#: value of a test table's ``test`` column -> use (kdlens.citations.USES)
TEST_COLUMN_USES: dict[str, str] = {
    "mcnemar_exact": "test:mcnemar", "mcnemar_chi2": "test:mcnemar", "ttest_1samp": "test:ttest",
    "ttest_paired": "test:paired_ttest", "wilcoxon": "test:wilcoxon", "spearman": "test:spearman",
    "pearson": "test:pearson", "kendall": "test:kendall", "gee": "test:gee", "tost": "test:tost",
    "friedman": "test:friedman", "mixedlm": "test:mixedlm", "mean_t": "test:ttest",
    "paired_mean_t": "test:paired_ttest", "partial_spearman": "test:spearman", "partial_pearson": "test:pearson",
    "spearman_clustered": "test:spearman", "pearson_clustered": "test:pearson",
    "partial_spearman_clustered": "test:spearman", "partial_pearson_clustered": "test:pearson",
}

#: word in a table caption (case-insensitive, whole word) -> use
CAPTION_USES: dict[str, str] = {
    "bootstrap": "test:bootstrap", "agreement": "metric:agreement", "fidelity": "metric:fidelity",
    "BLEU": "metric:bleu", "ROUGE-L": "metric:rouge_l", "embedding": "metric:embedding_cosine",
    "KL": "metric:token_kl", "McNemar": "test:mcnemar", "Spearman": "test:spearman", "Wilcoxon": "test:wilcoxon",
    "t-test": "test:ttest", "paradox": "test:paradox", "TOST": "test:tost", "equivalence": "test:tost",
    "GEE": "test:gee", "Friedman": "test:friedman", "Holm": "test:holm", "Benjamini": "test:bh",
}

#: word in a sentence of the report -> use (only the corrections: sentences also say what is *not* computed)
SENTENCE_USES: dict[str, str] = {"Holm": "test:holm", "Benjamini": "test:bh"}


def _found(text: str, words: dict[str, str]) -> list[str]:
    return [use for word, use in words.items()
            if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w])", text, flags=re.IGNORECASE)]


def report_uses(src: ReportSource, sections: Sequence[Section]) -> list[str]:
    """The uses (:data:`kdlens.citations.USES` keys) behind a report's results, each once.

    Parameters
    ----------
    src : ReportSource
        The loaded run or sweep directory.
    sections : list of Section
        The report's sections as built.
    """
    try:
        uses = list(directory_references(src.path))
    except FileNotFoundError:  # an evaluation directory: no training to cite
        uses = ["software:kdlens"]
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Table):
                if "test" in block.frame.columns:
                    uses += [TEST_COLUMN_USES[t] for t in map(str, block.frame["test"].dropna().unique())
                             if t in TEST_COLUMN_USES]
                uses += _found(block.caption, CAPTION_USES)
            elif isinstance(block, str):
                uses += _found(block, SENTENCE_USES)
    return [u for u in dict.fromkeys(uses) if u in USES]


def references_section(src: ReportSource, sections: Sequence[Section]) -> Section:
    """The report's last section: one line per reference, then all of them as BibTeX."""
    entries = references(report_uses(src, sections))
    sec = Section("references", REFERENCES_TITLE)
    sec.text("The methods, losses, metrics, statistical tests and data sources these results used "
             "(the same as `kdlens cite` on this directory, plus the tests and metrics of this report):")
    for entry in entries:
        sec.text(entry.text())
    sec.blocks.append(Code("BibTeX", to_bibtex(entries), language="bibtex"))
    return sec
