"""The references behind every method, loss, metric, statistical test and data source of kdlens.

One registry, pure data and functions (no torch, no pandas):

* :data:`REFERENCES` — bibliographic entries by BibTeX key (:class:`Reference`);
* :data:`USES` — what kdlens does (``"method:word_kd"``, ``"loss:reverse_kl"``, ``"test:mcnemar"``,
  ``"dataset:svamp"``, ...) -> the keys of the papers it follows;
* :func:`run_uses` / :func:`task_uses` — the uses of a run's configuration and of its task specs;
* :func:`references` — the entries of a list of uses, each once, in order;
* :func:`to_bibtex` / :func:`to_text` — ready-to-paste BibTeX or plain text.

A run's ``manifest.json`` holds ``references``: use -> keys, computed by :func:`run_references`;
a sweep's manifest holds the union over its runs and its evaluation; a report adds the metrics and
tests it computed. ``kdlens cite RUN_OR_SWEEP_DIR`` prints them.

Every entry was checked against a public copy of the paper's record (publisher, ACL Anthology,
arXiv or the journal's index). A DOI or arXiv id appears only where that record showed it; a field
that could not be checked is left out rather than guessed.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

__all__ = [
    "KDLENS_KEY",
    "REFERENCES",
    "USES",
    "Reference",
    "cite",
    "directory_references",
    "references",
    "run_references",
    "run_uses",
    "sweep_references",
    "task_uses",
    "to_bibtex",
    "to_text",
]

#: BibTeX key of kdlens itself (the software; see ``CITATION.cff``)
KDLENS_KEY = "kdlens"


@dataclass(frozen=True)
class Reference:
    """One bibliographic entry.

    Attributes
    ----------
    key : str
        BibTeX key.
    entry_type : {"article", "inproceedings", "misc", "software"}
        BibTeX entry type (``software`` is written as ``@misc`` with ``howpublished``).
    authors : tuple of str
        ``"Last, First"`` names, in order.
    title : str
        Title; braces protect capitals in BibTeX (``"{BLEU}: a Method ..."``).
    year : int
    venue : str
        Journal (``article``) or proceedings (``inproceedings``); ``"arXiv preprint"`` for preprints.
    volume, number, pages : str
        As printed; empty when not applicable or not checked.
    doi : str
        DOI, only where the publisher's record shows one.
    arxiv : str
        arXiv identifier (``"1503.02531"``).
    url : str
        Canonical landing page (e.g. the ACL Anthology) when there is neither DOI nor arXiv id.
    publisher : str
    """

    key: str
    entry_type: str
    authors: tuple[str, ...]
    title: str
    year: int
    venue: str = ""
    volume: str = ""
    number: str = ""
    pages: str = ""
    doi: str = ""
    arxiv: str = ""
    url: str = ""
    publisher: str = ""

    def bibtex(self) -> str:
        """This entry as a BibTeX record."""
        fields: list[tuple[str, str]] = [("author", " and ".join(self.authors)), ("title", self.title)]
        if self.entry_type == "article":
            fields.append(("journal", self.venue))
        elif self.entry_type == "inproceedings":
            fields.append(("booktitle", self.venue))
        elif self.venue:
            fields.append(("howpublished", self.venue))
        fields += [("volume", self.volume), ("number", self.number), ("pages", self.pages.replace("-", "--")),
                   ("year", str(self.year)), ("publisher", self.publisher), ("doi", self.doi)]
        if self.arxiv:
            fields += [("eprint", self.arxiv), ("archivePrefix", "arXiv")]
        fields.append(("url", self.url))
        kind = "misc" if self.entry_type == "software" else self.entry_type
        body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields if value)
        return f"@{kind}{{{self.key},\n{body}\n}}"

    def text(self) -> str:
        """This entry as one line of plain text (authors, year, title, venue, identifier)."""
        names = [_plain(a.split(",")[0].strip()) for a in self.authors]
        who = names[0] if len(names) == 1 else f"{names[0]} and {names[1]}" if len(names) == 2 else f"{names[0]} et al."
        where = ", ".join(p for p in (self.venue, self._volume_text(), self.pages and f"pp. {self.pages}") if p)
        ident = (f"doi:{self.doi}" if self.doi else f"arXiv:{self.arxiv}" if self.arxiv else self.url)
        return ". ".join(p for p in (f"{who} ({self.year})", _plain(self.title), where, ident) if p) + "."

    def _volume_text(self) -> str:
        return f"{self.volume}({self.number})" if self.volume and self.number else self.volume


def _plain(text: str) -> str:
    return text.replace("{", "").replace("}", "")


def _ref(key: str, entry_type: str, authors: str, title: str, year: int, **fields: str) -> tuple[str, Reference]:
    return key, Reference(key, entry_type, tuple(a.strip() for a in authors.split(";")), title, year, **fields)


_ACL = "Association for Computational Linguistics"

#: BibTeX key -> entry
REFERENCES: dict[str, Reference] = dict([
    # ------------------------------------------------------------------ kdlens and the paper it reproduces
    _ref(KDLENS_KEY, "software", "{kdlens developers}",
         "kdlens: distill language models, then explain what the distillation did", 2026,
         venue="Python package, version 0.1.0"),
    _ref("ramesh2025generalization", "inproceedings",
         "Ramesh, Suhas Kamasetty; Sengupta, Ayan; Chakraborty, Tanmoy",
         "On the Generalization vs Fidelity Paradox in Knowledge Distillation", 2025,
         venue="Findings of the Association for Computational Linguistics: ACL 2025", pages="17930-17951",
         arxiv="2505.15442", publisher=_ACL),
    # ------------------------------------------------------------------ methods
    _ref("hinton2015distilling", "misc", "Hinton, Geoffrey; Vinyals, Oriol; Dean, Jeff",
         "Distilling the Knowledge in a Neural Network", 2015, venue="arXiv preprint", arxiv="1503.02531"),
    _ref("kim2016sequence", "inproceedings", "Kim, Yoon; Rush, Alexander M.",
         "Sequence-Level Knowledge Distillation", 2016,
         venue="Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing (EMNLP)",
         arxiv="1606.07947", publisher=_ACL),
    _ref("ouyang2022training", "inproceedings",
         "Ouyang, Long; Wu, Jeff; Jiang, Xu; Almeida, Diogo; Wainwright, Carroll L.; Mishkin, Pamela; "
         "Zhang, Chong; Agarwal, Sandhini; Slama, Katarina; Ray, Alex; Schulman, John; Hilton, Jacob; "
         "Kelton, Fraser; Miller, Luke; Simens, Maddie; Askell, Amanda; Welinder, Peter; Christiano, Paul; "
         "Leike, Jan; Lowe, Ryan",
         "Training Language Models to Follow Instructions with Human Feedback", 2022,
         venue="Advances in Neural Information Processing Systems (NeurIPS)", arxiv="2203.02155"),
    _ref("romero2015fitnets", "inproceedings",
         "Romero, Adriana; Ballas, Nicolas; Kahou, Samira Ebrahimi; Chassang, Antoine; Gatta, Carlo; Bengio, Yoshua",
         "{FitNets}: Hints for Thin Deep Nets", 2015,
         venue="International Conference on Learning Representations (ICLR)", arxiv="1412.6550"),
    _ref("sun2019patient", "inproceedings", "Sun, Siqi; Cheng, Yu; Gan, Zhe; Liu, Jingjing",
         "Patient Knowledge Distillation for {BERT} Model Compression", 2019,
         venue="Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing and the "
               "9th International Joint Conference on Natural Language Processing (EMNLP-IJCNLP)",
         pages="4323-4332", doi="10.18653/v1/D19-1441", publisher=_ACL),
    _ref("wang2020minilm", "inproceedings",
         "Wang, Wenhui; Wei, Furu; Dong, Li; Bao, Hangbo; Yang, Nan; Zhou, Ming",
         "{MiniLM}: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
         2020, venue="Advances in Neural Information Processing Systems (NeurIPS)", volume="33",
         arxiv="2002.10957"),
    _ref("agarwal2024onpolicy", "inproceedings",
         "Agarwal, Rishabh; Vieillard, Nino; Zhou, Yongchao; Stańczyk, Piotr; Ramos, Sabela; Geist, Matthieu; "
         "Bachem, Olivier",
         "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", 2024,
         venue="International Conference on Learning Representations (ICLR)", arxiv="2306.13649"),
    _ref("ko2024distillm", "inproceedings", "Ko, Jongwoo; Kim, Sungnyun; Chen, Tianyi; Yun, Se-Young",
         "{DistiLLM}: Towards Streamlined Distillation for Large Language Models", 2024,
         venue="International Conference on Machine Learning (ICML)", arxiv="2402.03898"),
    _ref("gu2024minillm", "inproceedings", "Gu, Yuxian; Dong, Li; Wei, Furu; Huang, Minlie",
         "{MiniLLM}: Knowledge Distillation of Large Language Models", 2024,
         venue="International Conference on Learning Representations (ICLR)", arxiv="2306.08543"),
    _ref("ho2023large", "inproceedings", "Ho, Namgyu; Schmid, Laura; Yun, Se-Young",
         "Large Language Models Are Reasoning Teachers", 2023,
         venue="Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics (ACL)",
         arxiv="2212.10071", publisher=_ACL),
    _ref("zhou2022bert", "inproceedings", "Zhou, Wangchunshu; Xu, Canwen; McAuley, Julian",
         "{BERT} Learns to Teach: Knowledge Distillation with Meta Learning", 2022,
         venue="Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics "
               "(Volume 1: Long Papers)",
         pages="7037-7049", doi="10.18653/v1/2022.acl-long.485", publisher=_ACL),
    _ref("sengupta2024good", "inproceedings", "Sengupta, Ayan; Dixit, Shantanu; Akhtar, Md Shad; Chakraborty, Tanmoy",
         "A Good Learner can Teach Better: Teacher-Student Collaborative Knowledge Distillation", 2024,
         venue="International Conference on Learning Representations (ICLR)"),
    _ref("hu2022lora", "inproceedings",
         "Hu, Edward J.; Shen, Yelong; Wallis, Phillip; Allen-Zhu, Zeyuan; Li, Yuanzhi; Wang, Shean; Wang, Lu; "
         "Chen, Weizhu",
         "{LoRA}: Low-Rank Adaptation of Large Language Models", 2022,
         venue="International Conference on Learning Representations (ICLR)", arxiv="2106.09685"),
    # ------------------------------------------------------------------ divergences
    _ref("kullback1951information", "article", "Kullback, Solomon; Leibler, Richard A.",
         "On Information and Sufficiency", 1951, venue="The Annals of Mathematical Statistics", volume="22",
         number="1", pages="79-86"),
    _ref("lin1991divergence", "article", "Lin, Jianhua", "Divergence Measures Based on the {Shannon} Entropy", 1991,
         venue="IEEE Transactions on Information Theory"),
    _ref("wen2023fdivergence", "inproceedings", "Wen, Yuqiao; Li, Zichao; Du, Wenyu; Mou, Lili",
         "f-Divergence Minimization for Sequence-Level Knowledge Distillation", 2023,
         venue="Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics (ACL)",
         pages="10817-10834", arxiv="2307.15190", publisher=_ACL),
    _ref("cichocki2011generalized", "article", "Cichocki, Andrzej; Cruces, Sergio; Amari, Shun-ichi",
         "Generalized Alpha-Beta Divergences and Their Application to Robust Nonnegative Matrix Factorization",
         2011, venue="Entropy", volume="13", number="1", pages="134-170", doi="10.3390/e13010134"),
    _ref("wang2025abkd", "inproceedings",
         "Wang, Guanghui; Yang, Zhiyong; Wang, Zitai; Wang, Shi; Xu, Qianqian; Huang, Qingming",
         "{ABKD}: Pursuing a Proper Allocation of the Probability Mass in Knowledge Distillation via "
         "$\\alpha$-$\\beta$-Divergence", 2025,
         venue="International Conference on Machine Learning (ICML)", arxiv="2505.04560"),
    _ref("gretton2012kernel", "article",
         "Gretton, Arthur; Borgwardt, Karsten M.; Rasch, Malte J.; Schölkopf, Bernhard; Smola, Alexander",
         "A Kernel Two-Sample Test", 2012, venue="Journal of Machine Learning Research", volume="13",
         pages="723-773"),
    # ------------------------------------------------------------------ metrics
    _ref("papineni2002bleu", "inproceedings", "Papineni, Kishore; Roukos, Salim; Ward, Todd; Zhu, Wei-Jing",
         "{BLEU}: a Method for Automatic Evaluation of Machine Translation", 2002,
         venue="Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics",
         pages="311-318", doi="10.3115/1073083.1073135", publisher=_ACL),
    _ref("post2018call", "inproceedings", "Post, Matt", "A Call for Clarity in Reporting {BLEU} Scores", 2018,
         venue="Proceedings of the Third Conference on Machine Translation: Research Papers", pages="186-191",
         doi="10.18653/v1/W18-6319", publisher=_ACL),
    _ref("lin2004rouge", "inproceedings", "Lin, Chin-Yew", "{ROUGE}: A Package for Automatic Evaluation of Summaries",
         2004, venue="Text Summarization Branches Out", pages="74-81",
         url="https://aclanthology.org/W04-1013", publisher=_ACL),
    _ref("reimers2019sentence", "inproceedings", "Reimers, Nils; Gurevych, Iryna",
         "Sentence-{BERT}: Sentence Embeddings using {Siamese} {BERT}-Networks", 2019,
         venue="Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing and the "
               "9th International Joint Conference on Natural Language Processing (EMNLP-IJCNLP)",
         pages="3982-3992", doi="10.18653/v1/D19-1410", publisher=_ACL),
    # ------------------------------------------------------------------ statistics
    _ref("student1908probable", "article", "Student", "The Probable Error of a Mean", 1908, venue="Biometrika",
         volume="6", number="1", pages="1-25"),
    _ref("wilcoxon1945individual", "article", "Wilcoxon, Frank", "Individual Comparisons by Ranking Methods", 1945,
         venue="Biometrics Bulletin", volume="1", pages="80-83"),
    _ref("mcnemar1947note", "article", "McNemar, Quinn",
         "Note on the Sampling Error of the Difference between Correlated Proportions or Percentages", 1947,
         venue="Psychometrika", volume="12", pages="153-157"),
    _ref("holm1979simple", "article", "Holm, Sture", "A Simple Sequentially Rejective Multiple Test Procedure", 1979,
         venue="Scandinavian Journal of Statistics", volume="6", pages="65-70"),
    _ref("benjamini1995controlling", "article", "Benjamini, Yoav; Hochberg, Yosef",
         "Controlling the False Discovery Rate: A Practical and Powerful Approach to Multiple Testing", 1995,
         venue="Journal of the Royal Statistical Society: Series B (Methodological)"),
    _ref("spearman1904proof", "article", "Spearman, Charles",
         "The Proof and Measurement of Association between Two Things", 1904,
         venue="The American Journal of Psychology", volume="15", number="1", pages="72-101"),
    _ref("kendall1938new", "article", "Kendall, Maurice G.", "A New Measure of Rank Correlation", 1938,
         venue="Biometrika", volume="30", pages="81-93"),
    _ref("fisher1915frequency", "article", "Fisher, Ronald A.",
         "Frequency Distribution of the Values of the Correlation Coefficient in Samples from an Indefinitely "
         "Large Population", 1915, venue="Biometrika", volume="10"),
    _ref("bonett2000sample", "article", "Bonett, Douglas G.; Wright, Thomas A.",
         "Sample Size Requirements for Estimating {Pearson}, {Kendall} and {Spearman} Correlations", 2000,
         venue="Psychometrika", volume="65", number="1", pages="23-28", doi="10.1007/BF02294183"),
    _ref("efron1979bootstrap", "article", "Efron, Bradley", "Bootstrap Methods: Another Look at the Jackknife", 1979,
         venue="The Annals of Statistics"),
    _ref("liang1986longitudinal", "article", "Liang, Kung-Yee; Zeger, Scott L.",
         "Longitudinal Data Analysis Using Generalized Linear Models", 1986, venue="Biometrika", volume="73",
         number="1", pages="13-22"),
    _ref("mancl2001covariance", "article", "Mancl, Lloyd A.; DeRouen, Timothy A.",
         "A Covariance Estimator for {GEE} with Improved Small-Sample Properties", 2001, venue="Biometrics",
         volume="57", number="1", pages="126-134", doi="10.1111/j.0006-341X.2001.00126.x"),
    _ref("laird1982random", "article", "Laird, Nan M.; Ware, James H.", "Random-Effects Models for Longitudinal Data",
         1982, venue="Biometrics", volume="38", pages="963-974"),
    _ref("schuirmann1987comparison", "article", "Schuirmann, Donald J.",
         "A Comparison of the Two One-Sided Tests Procedure and the Power Approach for Assessing the Equivalence "
         "of Average Bioavailability", 1987, venue="Journal of Pharmacokinetics and Biopharmaceutics", volume="15",
         number="6", pages="657-680", doi="10.1007/BF01068419"),
    _ref("lakens2017equivalence", "article", "Lakens, Daniël",
         "Equivalence Tests: A Practical Primer for t Tests, Correlations, and Meta-Analyses", 2017,
         venue="Social Psychological and Personality Science", volume="8", number="4", pages="355-362",
         doi="10.1177/1948550617697177"),
    _ref("friedman1937use", "article", "Friedman, Milton",
         "The Use of Ranks to Avoid the Assumption of Normality Implicit in the Analysis of Variance", 1937,
         venue="Journal of the American Statistical Association"),
    # ------------------------------------------------------------------ data
    _ref("stojanovski2025reasoning", "misc",
         "Stojanovski, Zafir; Stanley, Oliver; Sharratt, Joe; Jones, Richard; Adefioye, Abdulhakeem; "
         "Kaddour, Jean; Köpf, Andreas",
         "{REASONING GYM}: Reasoning Environments for Reinforcement Learning with Verifiable Rewards", 2025,
         venue="arXiv preprint", arxiv="2505.24760"),
    _ref("cobbe2021training", "misc",
         "Cobbe, Karl; Kosaraju, Vineet; Bavarian, Mohammad; Chen, Mark; Jun, Heewoo; Kaiser, Lukasz; "
         "Plappert, Matthias; Tworek, Jerry; Hilton, Jacob; Nakano, Reiichiro; Hesse, Christopher; Schulman, John",
         "Training Verifiers to Solve Math Word Problems", 2021, venue="arXiv preprint", arxiv="2110.14168"),
    _ref("patel2021nlp", "inproceedings", "Patel, Arkil; Bhattamishra, Satwik; Goyal, Navin",
         "Are {NLP} Models really able to Solve Simple Math Word Problems?", 2021,
         venue="Proceedings of the 2021 Conference of the North American Chapter of the Association for "
               "Computational Linguistics: Human Language Technologies (NAACL-HLT)",
         pages="2080-2094", doi="10.18653/v1/2021.naacl-main.168", publisher=_ACL),
    _ref("roy2015solving", "inproceedings", "Roy, Subhro; Roth, Dan", "Solving General Arithmetic Word Problems", 2015,
         venue="Proceedings of the 2015 Conference on Empirical Methods in Natural Language Processing (EMNLP)",
         arxiv="1608.01413", publisher=_ACL),
    _ref("hosseini2014learning", "inproceedings",
         "Hosseini, Mohammad Javad; Hajishirzi, Hannaneh; Etzioni, Oren; Kushman, Nate",
         "Learning to Solve Arithmetic Word Problems with Verb Categorization", 2014,
         venue="Proceedings of the 2014 Conference on Empirical Methods in Natural Language Processing (EMNLP)",
         url="https://aclanthology.org/D14-1058", publisher=_ACL),
    _ref("koncel2015parsing", "article",
         "Koncel-Kedziorski, Rik; Hajishirzi, Hannaneh; Sabharwal, Ashish; Etzioni, Oren; Ang, Siena Dumas",
         "Parsing Algebraic Word Problems into Equations", 2015,
         venue="Transactions of the Association for Computational Linguistics", volume="3", pages="585-597",
         doi="10.1162/tacl_a_00160"),
    _ref("ling2017program", "inproceedings", "Ling, Wang; Yogatama, Dani; Dyer, Chris; Blunsom, Phil",
         "Program Induction by Rationale Generation: Learning to Solve and Explain Algebraic Word Problems", 2017,
         venue="Proceedings of the 55th Annual Meeting of the Association for Computational Linguistics "
               "(Volume 1: Long Papers)",
         pages="158-167", doi="10.18653/v1/P17-1015", publisher=_ACL),
    # ------------------------------------------------------------------ cross-tokenizer distillation, evaluation
    _ref("boizard2025towards", "article", "Boizard, Nicolas; El Haddad, Kevin; Hudelot, C\u00e9line; Colombo, Pierre",
         "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs", 2025,
         venue="Transactions on Machine Learning Research", arxiv="2402.12030",
         url="https://openreview.net/forum?id=bwRxXiGO9A"),
    _ref("zhang2024dual", "inproceedings", "Zhang, Songming; Zhang, Xue; Sun, Zengkui; Chen, Yufeng; Xu, Jinan",
         "Dual-Space Knowledge Distillation for Large Language Models", 2024,
         venue="Proceedings of the 2024 Conference on Empirical Methods in Natural Language Processing (EMNLP)",
         arxiv="2406.17328", publisher=_ACL),
    _ref("gao2024framework", "software", "Gao, Leo; Tow, Jonathan; Abbasi, Baber; Biderman, Stella; Black, Sid; "
         "DiPofi, Anthony; Foster, Charles; Golding, Laurence; Hsu, Jeffrey; Le Noac'h, Alain; Li, Haonan; "
         "McDonell, Kyle; Muennighoff, Niklas; Ociepa, Chris; Phang, Jason; Reynolds, Laria; Schoelkopf, Hailey; "
         "Skowron, Aviya; Sutawika, Lintang; Tang, Eric; Thite, Anish; Wang, Ben; Wang, Kevin; Zou, Andy",
         "A framework for few-shot language model evaluation (lm-evaluation-harness)", 2024,
         venue="Zenodo", url="https://github.com/EleutherAI/lm-evaluation-harness"),
])

#: what kdlens does -> the keys of the papers it follows (``category:name``; categories ``method``,
#: ``loss``, ``feature``, ``training``, ``metric``, ``test``, ``dataset``, ``software``)
USES: dict[str, tuple[str, ...]] = {
    "software:kdlens": (KDLENS_KEY,),
    # methods (kdlens.distill.METHODS; metadistil and mpdistil are being added)
    "method:sft": ("ouyang2022training",),
    "method:word_kd": ("hinton2015distilling", "kim2016sequence"),
    "method:feature_kd": ("romero2015fitnets", "sun2019patient"),
    "method:seq_kd": ("kim2016sequence",),
    "method:gkd": ("agarwal2024onpolicy",),
    "method:distillm": ("ko2024distillm",),
    "method:minillm": ("gu2024minillm",),
    "method:blackbox": ("kim2016sequence", "ho2023large"),
    "method:metadistil": ("zhou2022bert",),
    "method:mpdistil": ("sengupta2024good",),
    # output-distribution divergences (kdlens.losses.LOSSES)
    "loss:forward_kl": ("kullback1951information", "hinton2015distilling"),
    "loss:reverse_kl": ("kullback1951information", "gu2024minillm"),
    "loss:jsd": ("lin1991divergence", "agarwal2024onpolicy"),
    "loss:tvd": ("wen2023fdivergence",),
    "loss:skew_forward_kl": ("ko2024distillm",),
    "loss:skew_reverse_kl": ("ko2024distillm",),
    "loss:ab_divergence": ("cichocki2011generalized", "wang2025abkd"),
    "loss:soft_cross_entropy": ("hinton2015distilling",),
    "loss:mse_soft": ("sengupta2024good",),
    # L1/L2 distances between Hinton's softened outputs: elementary distances on his soft targets
    "loss:l1_soft": ("hinton2015distilling",),
    "loss:l2_soft": ("hinton2015distilling",),
    # feature losses (kdlens.losses feature_loss kinds, PKD, attention, projection)
    "feature:l2": ("romero2015fitnets",),
    "feature:l1": ("romero2015fitnets",),
    "feature:mse": ("romero2015fitnets",),
    "feature:cosine": ("romero2015fitnets",),
    "feature:ce": ("hinton2015distilling",),
    "feature:mmd": ("gretton2012kernel",),
    "feature:pkd": ("sun2019patient",),
    "feature:attention_kl": ("wang2020minilm",),
    "feature:projection": ("romero2015fitnets",),
    # training choices
    "training:temperature": ("hinton2015distilling",),
    "training:teacher_noise": ("ramesh2025generalization",),
    "training:lora": ("hu2022lora",),
    # metrics (kdlens.analysis)
    "metric:agreement": ("ramesh2025generalization",),
    "metric:fidelity": ("ramesh2025generalization",),
    "metric:bleu": ("papineni2002bleu", "post2018call"),
    "metric:rouge_l": ("lin2004rouge",),
    "metric:embedding_cosine": ("reimers2019sentence", "wang2020minilm"),
    "metric:token_kl": ("kullback1951information",),
    # statistical tests and intervals (kdlens.analysis)
    "test:ttest": ("student1908probable",),
    "test:paired_ttest": ("student1908probable",),
    "test:wilcoxon": ("wilcoxon1945individual",),
    "test:mcnemar": ("mcnemar1947note",),
    "test:holm": ("holm1979simple",),
    "test:bh": ("benjamini1995controlling",),
    "test:spearman": ("spearman1904proof", "fisher1915frequency", "bonett2000sample"),
    "test:pearson": ("fisher1915frequency",),
    "test:kendall": ("kendall1938new",),
    "test:fisher_z": ("fisher1915frequency",),
    "test:bootstrap": ("efron1979bootstrap",),
    "test:gee": ("liang1986longitudinal", "mancl2001covariance"),
    "test:mixedlm": ("laird1982random",),
    "test:tost": ("schuirmann1987comparison", "lakens2017equivalence"),
    "test:friedman": ("friedman1937use",),
    "test:paradox": ("ramesh2025generalization", "student1908probable", "spearman1904proof", "fisher1915frequency",
                     "bonett2000sample"),
    # cross-tokenizer losses (kdlens.losses: uld, span_aligned)
    "loss:uld": ("boizard2025towards",),
    "loss:span_aligned": ("zhang2024dual", "boizard2025towards"),
    "metric:harness": ("gao2024framework",),
    # data sources (kdlens.data)
    "dataset:reasoning_gym": ("stojanovski2025reasoning",),
    "dataset:gsm8k": ("cobbe2021training",),
    "dataset:svamp": ("patel2021nlp",),
    "dataset:multiarith": ("roy2015solving",),
    "dataset:addsub": ("hosseini2014learning",),
    "dataset:singleeq": ("koncel2015parsing",),
    "dataset:aqua": ("ling2017program",),
    "dataset:kd_generalization": ("ramesh2025generalization",),
}

#: order of the categories of :data:`USES` in a bibliography
_CATEGORIES = ("software", "method", "loss", "feature", "training", "metric", "test", "dataset")

#: methods whose training objective does not use the run's ``loss`` (cross-entropy on gold or teacher text)
_LOSS_FREE_METHODS = frozenset({"sft", "seq_kd", "blackbox"})

#: file stems / hub names of the math test sets -> dataset use
_DATASET_NAMES = {"gsm8k": "gsm8k", "svamp": "svamp", "multiarith": "multiarith", "addsub": "addsub",
                  "singleeq": "singleeq", "aqua": "aqua", "math_data": "kd_generalization"}


def cite(*uses: str) -> list[Reference]:
    """The entries behind ``uses`` (e.g. ``cite("loss:reverse_kl", "test:mcnemar")``), each once.

    Raises
    ------
    KeyError
        A use that is not in :data:`USES` (the message lists the known ones of its category).
    """
    return references(uses)


def references(uses: Iterable[str] | Mapping[str, Sequence[str]]) -> list[Reference]:
    """The entries of ``uses`` in first-use order, without repeats.

    Parameters
    ----------
    uses : iterable of str, or mapping use -> keys
        Use names of :data:`USES`, or a manifest's ``references`` mapping (its keys are read).
    """
    keys: list[str] = []
    if isinstance(uses, Mapping):  # a manifest's field (its JSON keys may come back sorted): category order
        order = {c: i for i, c in enumerate(_CATEGORIES)}
        for use, use_keys in sorted(uses.items(), key=lambda kv: order.get(kv[0].partition(":")[0], len(order))):
            keys += list(use_keys) if use_keys is not None else list(_use_keys(use))
    else:
        for use in uses:
            keys += _use_keys(use)
    unknown = [k for k in keys if k not in REFERENCES]
    if unknown:
        raise KeyError(f"unknown reference key(s) {sorted(set(unknown))}; kdlens.citations.REFERENCES lists the known")
    return [REFERENCES[k] for k in dict.fromkeys(keys)]


def _use_keys(use: str) -> tuple[str, ...]:
    try:
        return USES[use]
    except KeyError:
        category = use.partition(":")[0]
        known = sorted(u for u in USES if u.startswith(category + ":")) or sorted(USES)
        raise KeyError(f"no reference is registered for {use!r}; known: {known}") from None


def task_uses(tasks: str | Iterable[str] | None) -> list[str]:
    """The dataset uses of task specs (``"chain_sum:200"``, ``".../SVAMP.json"``, ``"hf:openai/gsm8k"``).

    A bare name is a reasoning-gym task; a file or directory is recognised by its name (GSM8K, SVAMP,
    MultiArith, AddSub, SingleEq, AQuA, the paradox paper's ``math_data``); any other source has no
    registered reference and is skipped.
    """
    if tasks is None:
        return []
    specs = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for spec in specs:
        spec = str(spec).strip()
        if spec.startswith("hf:"):
            name = spec[3:].split(":")[0].rstrip("/").rsplit("/", 1)[-1]
        elif "/" in spec or "\\" in spec or spec.endswith((".json", ".jsonl")):
            name = PurePath(spec).stem if spec.endswith((".json", ".jsonl")) else PurePath(spec).name
        else:
            out.append("dataset:reasoning_gym")
            continue
        use = _DATASET_NAMES.get(re.sub(r"[^a-z0-9_]", "", name.lower()))
        if use is not None:
            out.append(f"dataset:{use}")
    return list(dict.fromkeys(out))


def _defaults() -> dict[str, Any]:
    from kdlens.config import DistillConfig

    out = {}
    for f in dataclasses.fields(DistillConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"feature.kind": "mmd"}`` -> ``{"feature": {"kind": "mmd"}}`` (sweep overrides are dotted)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        head, dot, rest = str(key).partition(".")
        if dot:
            section = out.setdefault(head, {})
            if isinstance(section, Mapping):
                out[head] = {**section, **_nested({rest: value})}
        else:
            out[head] = {**out[head], **value} if isinstance(out.get(head), dict) and isinstance(value, Mapping) \
                else value
    return out


def _as_mapping(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return {**_defaults(), **_nested(config)}
    raise TypeError(f"config must be a DistillConfig or a mapping of its fields, got {type(config).__name__}")


def _section(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, Mapping) else {}


def run_uses(config: Any) -> list[str]:
    """What a training run uses, from its configuration: method, divergence, features, choices, data.

    Parameters
    ----------
    config : DistillConfig or mapping
        A :class:`kdlens.config.DistillConfig`, a run's resolved ``config.yaml``, or a partial mapping
        (a sweep's base plus a run's overrides; missing keys take the config's defaults).

    Returns
    -------
    list of str
        Keys of :data:`USES`, ``software:kdlens`` first. The divergence is listed only for methods
        that train on it (not ``sft``, ``seq_kd``, ``blackbox``); the temperature when τ ≠ 1; teacher
        noise when σ > 0; LoRA when enabled.
    """
    cfg = _as_mapping(config)
    method = str(cfg.get("method"))
    uses = ["software:kdlens", f"method:{method}"]
    if cfg.get("teacher_aware"):  # a sweep axis: the teacher is first fine-tuned on the tasks
        uses.append("method:sft")
    if method not in _LOSS_FREE_METHODS and cfg.get("loss"):
        uses.append(f"loss:{cfg['loss']}")
    if method == "feature_kd":
        feature = _section(cfg.get("feature"))
        if feature.get("hidden", True):
            uses += ["feature:pkd", f"feature:{feature.get('kind', 'l2')}"]
            if feature.get("projection"):
                uses.append("feature:projection")
        if feature.get("attention"):
            uses.append("feature:attention_kl")
    if method not in _LOSS_FREE_METHODS and float(cfg.get("temperature") or 1.0) != 1.0:
        uses.append("training:temperature")
    if float(cfg.get("sigma") or 0.0) > 0:
        uses.append("training:teacher_noise")
    if cfg.get("lora"):
        uses.append("training:lora")
    uses += task_uses(cfg.get("tasks"))
    return list(dict.fromkeys(uses))


def run_references(config: Any) -> dict[str, list[str]]:
    """The ``references`` field of a run manifest: each use of :func:`run_uses` -> its BibTeX keys.

    A use with no registered reference (a method added without one) maps to an empty list, so a run
    never fails for a missing citation; ``kdlens cite`` names such uses.
    """
    return {use: list(USES.get(use, ())) for use in run_uses(config)}


def sweep_references(base: Mapping[str, Any], overrides: Iterable[Mapping[str, Any]], *,
                     evaluation: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """The ``references`` field of a sweep manifest: the union over its runs and its evaluation.

    Parameters
    ----------
    base : mapping
        The spec's base configuration.
    overrides : iterable of mapping
        Each run's overrides (dotted keys allowed; ``teacher_aware`` adds the teacher's SFT).
    evaluation : mapping, optional
        The sweep's evaluation settings; when given, the evaluation's metrics are added: accuracy
        and agreement with percentile-bootstrap CIs, BLEU fidelity (``fidelity``), per-token KL
        (``tokens``) and the data sources of ``tasks``.
    """
    uses: list[str] = []
    for run in overrides:
        uses += run_uses({**dict(base), **dict(run)})
    if evaluation is not None:
        uses += ["metric:agreement", "test:bootstrap"]
        if evaluation.get("fidelity"):
            uses += ["metric:fidelity", "metric:bleu"]
        if evaluation.get("tokens"):
            uses.append("metric:token_kl")
        uses += task_uses(evaluation.get("tasks"))
    return {use: list(USES.get(use, ())) for use in dict.fromkeys(uses)}


def directory_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """The ``references`` of a run or sweep directory: use -> BibTeX keys.

    Read from its ``manifest.json`` (written by :func:`kdlens.distill.distill` and
    :func:`kdlens.sweep.run_sweep`); a directory written before manifests held references is
    reconstructed from its ``config.yaml`` (a run) or its ``spec.yaml`` (a sweep: every
    combination of its axes).

    Raises
    ------
    FileNotFoundError
        ``path`` is neither a run directory (``config.yaml`` or ``manifest.json``) nor a sweep
        directory (``spec.yaml``).
    """
    from kdlens._io import read_json, read_yaml

    root = Path(path)
    manifest = read_json(root / "manifest.json") if (root / "manifest.json").is_file() else {}
    if isinstance(manifest.get("references"), Mapping):
        return {str(use): list(keys) for use, keys in manifest["references"].items()}
    if (root / "config.yaml").is_file():
        return run_references(read_yaml(root / "config.yaml"))
    if (root / "spec.yaml").is_file():
        # every combination of the axes (and the baseline): the runs of a "product" grid, a superset
        # of a "one_at_a_time" one, whose union of uses can only be larger
        spec = read_yaml(root / "spec.yaml")
        axes = spec.get("axes") or {}
        runs = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
        runs += [{**run, "method": spec["baseline"]} for run in runs] if spec.get("baseline") else []
        # the manifest says whether the sweep was evaluated (eval: null when not); without one, the spec's plan
        evaluation = manifest["eval"] if "eval" in manifest else (spec.get("eval") or None)
        return sweep_references(spec.get("base") or {}, runs, evaluation=evaluation)
    raise FileNotFoundError(f"{root} holds no manifest.json with references, config.yaml or spec.yaml; give a run "
                            "directory (kdlens distill) or a sweep directory (kdlens sweep)")


def to_bibtex(entries: Iterable[Reference]) -> str:
    """BibTeX records of ``entries``, separated by blank lines (ends with a newline)."""
    return "\n\n".join(e.bibtex() for e in entries) + "\n"


def to_text(entries: Iterable[Reference]) -> str:
    """One plain-text line per entry (ends with a newline)."""
    return "".join(e.text() + "\n" for e in entries)
