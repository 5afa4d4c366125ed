"""Recompute the paradox paper's statistics from its released result tables.

The paper (Ramesh, Sengupta and Chakraborty, "On the Generalization vs Fidelity Paradox in Knowledge
Distillation", Findings of ACL 2025, arXiv:2505.15442; ``kdlens.citations`` key
``ramesh2025generalization``) released per-task accuracies (``*_results*.csv``), teacher-student answer agreement
(``EM1*.csv``) and rationale BLEU (``BLEU.csv``, math only). :func:`improvements` turns them into
one row per (teacher, student, method, task); :func:`reproduce` runs the authors' tests on it.

The procedure that reproduces the published math numbers (pooled Average t = 8.47,
p = 5.7e-10, n = 33; GKD t = 5.10, RevKD t = 6.31, KD t = 3.72; ANOVA F = 2.27, p = 0.12;
Spearman rho(student size) = -0.66), found by recomputation:

* both the Qwen file (``math_results_main.csv``) and the Llama file (``llama_math_results.csv``)
  are pooled: 27 Qwen + 6 Llama (teacher, student, method) rows = 33;
* the KD score per task is the max over the temperatures tried; teacher names lose their
  checkpoint suffix (``Qwen2.5-3B_ckpt2400`` is the Qwen2.5-3B teacher);
* the task-unaware "base teacher" runs are an ablation, not a method, and are excluded;
* improvement = KD score - the student's own SFT score (the ``"-"`` teacher SFT row).

Method names are the files' own: ``KD`` (which the paper calls SeqKD; in its code it is
token-level forward KL on gold sequences, not Kim & Rush sequence-level KD), ``RevKD``, ``GKD``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kdlens._schema import PAPER_COLUMNS
from kdlens.analysis import stats

__all__ = ["DOMAINS", "improvements", "reproduce"]

#: domain -> result files (in ``results_dir``) and task columns, as released by the authors
DOMAINS: dict[str, dict] = {
    "math": {
        "results": ("math_results_main.csv", "llama_math_results.csv"),
        "agreement": "EM1.csv",
        "fidelity": "BLEU.csv",
        "tasks": ("gsm8k", "SVAMP", "MultiArith", "SingleEq", "AddSub", "AQuA"),
    },
    "commonsense": {
        "results": ("cs_results_main.csv", "llama_cs_results.csv"),
        "agreement": "EM1_cs.csv",
        "fidelity": None,
        "tasks": ("hellaswag", "boolq", "social_i_qa", "piqa", "ARC-Easy", "ARC-Challenge",
                  "winogrande", "openbookqa"),
    },
}

AVERAGE = "Average"
_METHOD_RE = re.compile(r"^student_(?P<method>.+?)_temp_(?P<tau>[0-9.]+)$")
_SIZE_RE = re.compile(r"-(?P<size>[0-9.]+)B\b")
_ABLATION_METHODS = ("KD_base_teacher",)
#: correlates of improvement tested with Spearman (H3), in output order
_CORRELATES = ("teacher_score", "student_size", "student_sft_score", "agreement", "fidelity")


def _domain(domain: str) -> dict:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[domain]


def _read(results_dir: Path, name: str, needed: list[str]) -> pd.DataFrame:
    path = results_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; results_dir must hold the paper's results/*.csv files")
    table = pd.read_csv(path)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is missing column(s) {missing}; it has {list(table.columns)}")
    return table


def _student_size(name: str) -> float:
    match = _SIZE_RE.search(name)
    if match is None:
        raise ValueError(f"cannot read a parameter count (e.g. '-1.5B') from student name {name!r}")
    return float(match["size"])


def _pair_metric(results_dir: Path, name: str | None, tasks: tuple[str, ...]) -> pd.DataFrame | None:
    """The KD row of an EM1/BLEU file: one value per (teacher, student, task), plus the Average."""
    if name is None:
        return None
    table = _read(results_dir, name, ["Teacher", "Student", "Method", *tasks])
    kd = table.loc[table["Method"] == "KD"].copy()
    kd[AVERAGE] = kd[list(tasks)].mean(axis=1)
    long = kd.melt(id_vars=["Teacher", "Student"], value_vars=[*tasks, AVERAGE], var_name="task", value_name="v")
    return long.rename(columns={"Teacher": "teacher", "Student": "student"})


def improvements(results_dir: str | os.PathLike, domain: str = "math") -> pd.DataFrame:
    """One row per (teacher, student, method, task): the paper's unit of analysis.

    Parameters
    ----------
    results_dir : path
        Directory with the paper's released CSVs (``.../kd-generalization/results``).
    domain : {"math", "commonsense"}

    Returns
    -------
    DataFrame
        Columns ``teacher, student, method, task, kd_score, best_tau, sft_score, improvement,
        teacher_score, student_size, student_sft_score, agreement, fidelity``. ``task`` includes
        ``"Average"`` (the files' Average column for scores; the mean over tasks for agreement and
        fidelity, which the files report per task only). ``teacher_score`` is the teacher's own
        SFT score; ``agreement`` (EM1, %) and ``fidelity`` (BLEU, x100) are those of the pair's
        ``KD`` row and are NaN for other methods (the files report only that method) and for
        fidelity in commonsense (no file released).
    """
    spec = _domain(domain)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir} is not a directory; pass the paper's results/ folder")
    tasks = list(spec["tasks"])
    cols = [*tasks, AVERAGE]
    raw = pd.concat([_read(results_dir, f, ["Teacher", "Student", "Method", *cols]) for f in spec["results"]],
                    ignore_index=True)
    raw["Teacher"] = raw["Teacher"].astype(str).str.replace(r"_ckpt\d+$", "", regex=True)

    sft = raw.loc[raw["Method"] == "SFT"].set_index("Student")[cols]
    if sft.index.duplicated().any():
        raise ValueError(f"several SFT rows for student(s) {sorted(set(sft.index[sft.index.duplicated()]))}")
    parsed = raw["Method"].astype(str).str.extract(_METHOD_RE)
    kd = raw.assign(method=parsed["method"], tau=pd.to_numeric(parsed["tau"]))
    kd = kd.loc[kd["method"].notna() & ~kd["method"].isin(_ABLATION_METHODS)]
    if kd.empty:
        raise ValueError(f"no 'student_<method>_temp_<tau>' rows in {spec['results']}")

    long = kd.melt(id_vars=["Teacher", "Student", "method", "tau"], value_vars=cols, var_name="task",
                   value_name="kd_score")
    long = long.rename(columns={"Teacher": "teacher", "Student": "student"})
    # max over tau per (teacher, student, method, task), remembering which tau won
    best = long.loc[long.groupby(["teacher", "student", "method", "task"], sort=True)["kd_score"].idxmax()]
    best = best.rename(columns={"tau": "best_tau"}).reset_index(drop=True)

    missing_sft = sorted(set(best["student"]) - set(sft.index))
    if missing_sft:
        raise ValueError(f"no SFT baseline row for student(s) {missing_sft}")
    sft_long = sft.reset_index().melt(id_vars="Student", var_name="task", value_name="sft")
    lookup = sft_long.set_index(["Student", "task"])["sft"]
    best["sft_score"] = lookup.loc[list(zip(best["student"], best["task"], strict=True))].to_numpy()
    best["improvement"] = best["kd_score"] - best["sft_score"]
    missing_teacher = sorted(set(best["teacher"]) - set(sft.index))
    if missing_teacher:
        raise ValueError(f"no SFT row giving the score of teacher(s) {missing_teacher}")
    best["teacher_score"] = lookup.loc[list(zip(best["teacher"], best["task"], strict=True))].to_numpy()
    best["student_size"] = best["student"].map(_student_size)
    best["student_sft_score"] = best["sft_score"]

    for column, name in (("agreement", spec["agreement"]), ("fidelity", spec["fidelity"])):
        pair = _pair_metric(results_dir, name, spec["tasks"])
        if pair is None:
            best[column] = np.nan
            continue
        merged = best.merge(pair.assign(method="KD"), on=["teacher", "student", "method", "task"], how="left")
        best[column] = merged["v"].to_numpy(dtype=float)

    order = {t: i for i, t in enumerate(cols)}
    best = best.sort_values(["teacher", "student", "method", "task"], key=lambda s: s.map(order) if s.name == "task"
                            else s).reset_index(drop=True)
    return best[["teacher", "student", "method", "task", "kd_score", "best_tau", "sft_score", "improvement",
                 "teacher_score", "student_size", "student_sft_score", "agreement", "fidelity"]]


def reproduce(results_dir: str | os.PathLike, domain: str = "math") -> pd.DataFrame:
    """Recompute the authors' hypothesis tests from their released CSVs.

    Parameters
    ----------
    results_dir : path
        Directory with the paper's ``results/*.csv``.
    domain : {"math", "commonsense"}

    Returns
    -------
    DataFrame
        ``kdlens._schema.PAPER_COLUMNS``: ``hypothesis, test, task, method, statistic, p_val, n``,
        one row per test and task (each task and ``"Average"``):

        * ``H1`` ``ttest_1samp``: improvement > 0, one-sided one-sample t-test, pooled over methods
          (``method="all"``) and per method;
        * ``H2`` ``anova_oneway``: improvement differs across methods (``method="all"``);
        * ``H3`` ``spearman_<x>``: Spearman correlation of improvement with ``x`` in teacher_score,
          student_size, student_sft_score (all methods pooled), agreement and fidelity (the
          ``KD`` method rows, the only ones the agreement/BLEU files report; fidelity for math only).

        Degenerate cells (n < 3, constant inputs) have NaN statistics.
    """
    table = improvements(results_dir, domain)
    rows: list[dict] = []
    task_order = [*DOMAINS[domain]["tasks"], AVERAGE]
    for task in task_order:
        part = table.loc[table["task"] == task]
        pooled = stats.ttest(part, dv="improvement", alternative="greater", padjust="none").iloc[0]
        rows.append({"hypothesis": "H1", "test": "ttest_1samp", "task": task, "method": "all",
                     "statistic": pooled["statistic"], "p_val": pooled["p_val"], "n": pooled["n"]})
        for _, r in stats.ttest(part, dv="improvement", alternative="greater", by="method",
                                    padjust="none").iterrows():
            rows.append({"hypothesis": "H1", "test": "ttest_1samp", "task": task, "method": r["method"],
                         "statistic": r["statistic"], "p_val": r["p_val"], "n": r["n"]})
        f = stats.anova(part, dv="improvement", between="method", padjust="none").iloc[0]
        rows.append({"hypothesis": "H2", "test": "anova_oneway", "task": task, "method": "all",
                     "statistic": f["statistic"], "p_val": f["p_val"], "n": f["n"]})
        for var in _CORRELATES:
            on_kd_rows = var in ("agreement", "fidelity")
            if on_kd_rows and part[var].isna().all():
                continue
            subset = part.loc[part["method"] == "KD"] if on_kd_rows else part
            r = stats.correlation(subset, x="improvement", y=var, method="spearman", padjust="none").iloc[0]
            rows.append({"hypothesis": "H3", "test": f"spearman_{var}", "task": task,
                         "method": "KD" if on_kd_rows else "all",
                         "statistic": r["statistic"], "p_val": r["p_val"], "n": r["n"]})
    out = pd.DataFrame(rows, columns=list(PAPER_COLUMNS))
    out["n"] = out["n"].astype("int64")
    out.attrs["domain"] = domain
    out.attrs["procedure"] = ("improvement = max over tau of KD score - student SFT score per (teacher, student, "
                              "method); base-teacher ablation excluded; all result files of the domain pooled")
    return out
