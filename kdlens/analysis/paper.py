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

from kdlens._schema import PAPER_COLUMNS, ROBUSTNESS_COLUMNS
from kdlens.analysis import stats
from kdlens.analysis.verdicts import (
    MIN_CORRELATION_N,
    RHO_MARGIN,
    correlation_row,
    finish_verdicts,
    mean_row,
    pending_row,
    require_bootstrap,
    require_expect_level,
)

__all__ = ["DOMAINS", "improvements", "reproduce", "robustness"]

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


def reproduce(results_dir: str | os.PathLike, domain: str = "math", *, padjust: str = "holm") -> pd.DataFrame:
    """Recompute the authors' hypothesis tests from their released CSVs.

    Parameters
    ----------
    results_dir : path
        Directory with the paper's ``results/*.csv``.
    domain : {"math", "commonsense"}

    padjust : str
        Correction of ``p_val`` within each hypothesis (H1, H2, H3: every task and method of it is
        one family); the authors published unadjusted p-values, kept in ``p_val``.

    Returns
    -------
    DataFrame
        ``kdlens._schema.PAPER_COLUMNS``: ``hypothesis, test, task, method, statistic, p_val, p_adj,
        n``, one row per test and task (each task and ``"Average"``):

        * ``H1`` ``ttest_1samp``: improvement > 0, one-sided one-sample t-test, pooled over methods
          (``method="all"``) and per method;
        * ``H2`` ``anova_oneway``: improvement differs across methods (``method="all"``);
        * ``H3`` ``spearman_<x>``: Spearman correlation of improvement with ``x`` in teacher_score,
          student_size, student_sft_score (all methods pooled), agreement and fidelity (the
          ``KD`` method rows, the only ones the agreement/BLEU files report; fidelity for math only).

        Degenerate cells (n < 3, constant inputs) have NaN statistics. The authors' unit (one row
        per (teacher, student, method)) is kept so that their numbers come back exactly; rows that
        share a student share its SFT baseline, so these tests are pseudo-replicated:
        :func:`robustness` re-tests the claims with defensible units and gives verdicts.
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
    for row in rows:
        row["p_adj"] = np.nan
    out = pd.DataFrame(rows, columns=list(PAPER_COLUMNS))
    for _, idx in out.groupby("hypothesis", sort=False).groups.items():
        out.loc[idx, "p_adj"] = stats.adjust_pvalues(out.loc[idx, "p_val"].to_numpy(float), padjust)
    out["n"] = out["n"].astype("int64")
    out.attrs["domain"] = domain
    out.attrs["procedure"] = ("improvement = max over tau of KD score - student SFT score per (teacher, student, "
                              "method); base-teacher ablation excluded; all result files of the domain pooled")
    return out


def _exact_spearman_p(x: np.ndarray, y: np.ndarray, alternative: str) -> float:
    """Permutation p-value of Spearman's rho over every pairing (exact for n <= 8)."""
    from scipy import stats as sps

    def rho(a):
        return sps.spearmanr(a, y).statistic

    n_resamples = np.inf if len(x) <= 8 else 20000
    res = sps.permutation_test((x,), rho, permutation_type="pairings", n_resamples=n_resamples,
                               alternative=alternative, random_state=0)
    return float(res.pvalue)


def robustness(
    results_dir: str | os.PathLike,
    domain: str = "math",
    *,
    task: str = AVERAGE,
    margin: float = 2.0,
    rho_margin: float = RHO_MARGIN,
    level: float = 0.95,
    min_n: int = MIN_CORRELATION_N,
    padjust: str = "holm",
    simultaneous: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """The paper's claims re-tested with defensible units of analysis, each with a three-way verdict.

    Parameters
    ----------
    results_dir : path
        Directory with the paper's ``results/*.csv``.
    domain : {"math", "commonsense"}
    task : str
        Task column of the files (default the ``"Average"``).
    margin : float
        SESOI of an improvement, in points (the files' unit): 2 points.
    rho_margin : float
        SESOI of a correlation: ``|rho| < 0.3`` is "no relation".
    level : float
        Level of every interval (familywise within a family with ``simultaneous=True``).
    min_n : int
        Fewest units (minus covariates), and fewest clusters, for a correlation verdict.
    padjust : str
        Correction within each family: one per (claim, analysis), so the authors' rows and the
        robust rows are corrected separately.
    simultaneous : bool
        Bonferroni-simultaneous intervals within each robust family (:mod:`kdlens.analysis.verdicts`).
    n_boot, seed : int
        The cluster bootstrap of the robust paradox rows (:func:`kdlens.analysis.paradox_test`).

    Returns
    -------
    DataFrame
        :data:`kdlens._schema.ROBUSTNESS_COLUMNS`. ``analysis="as published"`` rows use the
        authors' unit and carry **no verdict** (empty ``verdict``; the sentence starts "As published
        (no verdict)" and says why the unit is pseudo-replicated): they show what the authors'
        analysis gives, next to the ``"robust"`` rows, which carry the verdicts:

        * ``H1`` KD improves the student (``expect="greater"``): the mean of the 33 rows, then the
          mean over the 6 students of each student's mean improvement (rows sharing a student share
          its SFT baseline: the cluster), pooled and per method;
        * ``H2`` methods differ: the authors' one-way ANOVA, then Friedman and a repeated-measures
          ANOVA with the methods paired within (teacher, student) (omnibus: no interval, empty
          verdict), and each pair of methods as a paired difference within (teacher, student),
          averaged within student (``expect="two-sided"``);
        * ``H3`` improvement falls with student size (``expect="less"``): Spearman over the 33
          rows, then over the distinct sizes (mean improvement per size; exact permutation p when
          they are too few for an interval);
        * ``H3`` the paradox, agreement/fidelity do not go with improvement
          (``expect="equivalent"``) on the KD rows: the authors' Spearman, then the partial
          Spearman holding student size fixed (it drives both) with the students as clusters (the
          11 rows come from 6 students: :func:`kdlens.analysis.paradox_test`'s design effect).

    Notes
    -----
    Friedman (1937); repeated-measures ANOVA: statsmodels ``AnovaRM``. Cluster means: Donner &
    Klar (2000). Verdicts: :func:`kdlens.analysis.decide`. The authors' own numbers are
    :func:`reproduce`'s, unchanged.
    """
    from statsmodels.stats.anova import AnovaRM

    require_expect_level("greater", margin, level)
    require_expect_level("equivalent", rho_margin, level)
    require_bootstrap(n_boot, seed)
    table = improvements(results_dir, domain)
    part = table.loc[table["task"] == task]
    if part.empty:
        raise ValueError(f"no rows for task {task!r}; tasks: {[*DOMAINS[domain]['tasks'], AVERAGE]}")
    families: dict[tuple[str, str], list[dict]] = {}
    unit_rows = "rows of the paper (teacher, student, method)"
    n_students = part["student"].nunique()
    shared = f"the authors' unit: {len(part)} rows share {n_students} students' SFT baselines, so they are not independent"
    published = f"{shared} and this interval is too narrow; the robust rows carry the verdict"

    def add(claim: str, analysis: str, method: str, row: dict) -> None:
        families.setdefault((claim, analysis), []).append(
            {"claim": claim, "analysis": analysis, "task": task, "method": method, **row})

    def mean_of(values: np.ndarray, hypothesis: str, unit: str, expect: str, no_verdict: str = "") -> dict:
        return mean_row(values, hypothesis=hypothesis, unit=unit, expect=expect, margin=margin, units=" points",
                        label="mean improvement" if expect == "greater" else "mean difference",
                        no_verdict=no_verdict)

    h1 = f"KD improves the student over its SFT baseline (SESOI {margin:g} points)"
    add("H1", "as published", "all", mean_of(part["improvement"].to_numpy(float), h1, unit_rows, "greater",
                                             no_verdict=published))
    for method, scope in [("all", part), *part.groupby("method", sort=True)]:
        per_student = scope.groupby("student", sort=True)["improvement"].mean().to_numpy(float)
        add("H1", "robust", method, mean_of(per_student, h1 + ("" if method == "all" else f", method {method}"),
                                            "students (mean over their rows)", "greater"))

    blocks = part.assign(block=part["teacher"] + " -> " + part["student"])
    oneway = stats.anova(part, dv="improvement", between="method", padjust="none").iloc[0]
    fried = stats.friedman(blocks, dv="improvement", within="method", subject="block", padjust="none").iloc[0]
    complete = blocks.groupby("block").filter(lambda g: g["method"].nunique() == blocks["method"].nunique())
    rm = AnovaRM(complete, depvar="improvement", subject="block", within=["method"]).fit().anova_table.iloc[0]
    k = part["method"].nunique()
    hyp = f"improvement differs across the {k} methods"
    for analysis, test, stat, dof, p, n, unit, what in (
            ("as published", "anova_oneway", oneway["statistic"], oneway["dof"], oneway["p_val"], oneway["n"],
             unit_rows, f"F({oneway['dof']:g}, {oneway['dof2']:g})"),
            ("robust", "friedman", fried["statistic"], fried["dof"], fried["p_val"], fried["n"],
             "(teacher, student) blocks", f"Friedman chi2({fried['dof']:g})"),
            ("robust", "anova_rm", float(rm["F Value"]), float(rm["Num DF"]), float(rm["Pr > F"]),
             complete["block"].nunique(), "(teacher, student) blocks",
             f"F({rm['Num DF']:g}, {rm['Den DF']:g})")):
        numbers = f"{what} = {float(stat):.2f}, p = {float(p):.3g}, n = {int(n)} {unit}"
        sentence = (f"As published (no verdict): {hyp} (an omnibus test on {numbers}; {shared}, and the one-way "
                    "ANOVA ignores that the methods are paired within (teacher, student); the robust rows test them)."
                    if analysis == "as published" else
                    f"{hyp}: no verdict (an omnibus test has no interval; {numbers}; the paired method differences "
                    "below carry the verdicts).")
        add("H2", analysis, "all", pending_row(
            hypothesis=hyp, test=test, unit=unit, expect="two-sided", margin=margin, n=int(n), estimate=np.nan,
            statistic=float(stat), dof=float(dof), p_val=float(p), note="omnibus test: no interval",
            sentence=sentence))
    wide = blocks.pivot_table(index=["student", "block"], columns="method", values="improvement")
    methods = sorted(wide.columns)
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            diff = (wide[a] - wide[b]).dropna().groupby(level="student").mean().to_numpy(float)
            add("H2", "robust", f"{a} - {b}", mean_of(
                diff, f"{a} and {b} give different improvements (paired within (teacher, student); "
                      f"SESOI {margin:g} points)", "students (mean over their (teacher, student) blocks)",
                "two-sided"))

    size_h = f"improvement falls with student size (|rho| >= {rho_margin:g} of interest)"
    common = dict(method="spearman", expect="less", margin=rho_margin, min_n=min_n)
    add("H3", "as published", "all", correlation_row(
        part["student_size"].to_numpy(float), part["improvement"].to_numpy(float), None, hypothesis=size_h,
        unit=unit_rows, no_verdict=f"{published}; the {len(part)} rows hold {part['student_size'].nunique()} "
                                   "distinct sizes", **common))
    by_size = part.groupby("student_size", sort=True)["improvement"].mean()
    row = correlation_row(by_size.index.to_numpy(float), by_size.to_numpy(float), None, hypothesis=size_h,
                          unit="distinct student sizes (mean improvement per size)", **common)
    if row["_est"] is None and len(by_size) >= 3:  # too few for an interval: the exact test still says something
        row["p_val"] = _exact_spearman_p(by_size.index.to_numpy(float), by_size.to_numpy(float), "less")
        row["note"] = "; ".join(filter(None, [row["note"], "p: exact permutation test"]))
    add("H3", "robust", "all", row)

    kd = part.loc[part["method"] == "KD"]
    kd_published = (f"the authors' unit: the {len(kd)} KD rows come from {kd['student'].nunique()} students, so "
                    "they are not independent; the robust row carries the verdict")
    for var in ("agreement", "fidelity"):
        if kd[var].isna().all():
            continue
        hyp = f"{var} does not go with improvement (|rho| < {rho_margin:g}: the paradox)"
        eq = dict(method="spearman", expect="equivalent", margin=rho_margin, min_n=min_n,
                  unit="rows of the paper (teacher, student), KD method")
        x, y = kd["improvement"].to_numpy(float), kd[var].to_numpy(float)
        add("H3 paradox", "as published", "KD", correlation_row(x, y, None, hypothesis=hyp, no_verdict=kd_published,
                                                                **eq))
        add("H3 paradox", "robust", "KD", correlation_row(
            x, y, kd[["student_size"]], hypothesis=f"{hyp}, holding student size fixed",
            clusters=kd["student"].to_numpy(object), cluster_name="student", n_boot=n_boot, seed=seed, **eq))

    lead = ["claim", "analysis", "task", "method"]
    out = pd.concat([finish_verdicts(rows, lead, padjust, level=level, simultaneous=simultaneous)
                     for rows in families.values()], ignore_index=True)[list(ROBUSTNESS_COLUMNS)]
    out["n"] = out["n"].astype("int64")
    out.attrs["domain"] = domain
    return out
