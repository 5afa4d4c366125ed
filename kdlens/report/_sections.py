"""The content of a report, independent of its format: sections of text, tables and figures.

Numbers stay unrounded here except inside sentences; :mod:`kdlens.report._render` rounds them.
Statistics come from :mod:`kdlens.analysis`, figures from :mod:`kdlens.plots`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kdlens.report._source import ReportSource, describe

__all__ = ["SECTION_TITLES", "Code", "Figure", "Section", "Table", "build_sections"]

#: section id -> title, in report order (every report has all of them)
SECTION_TITLES: dict[str, str] = {
    "setup": "Setup",
    "accuracy": "Per-task accuracy",
    "agreement": "Agreement with the teacher",
    "fidelity": "Fidelity",
    "tests": "Statistical tests",
    "provenance": "Provenance",
}

#: bootstrap replicates of the CIs a report computes itself (run reports)
N_BOOT = 1000


@dataclass
class Table:
    """A table: ``formats`` maps a column to ``"pct"`` (fraction shown in %), ``"num"`` (3
    decimals), ``"p"`` (p-value), ``"int"`` or ``"text"`` (default). A cell holding a
    ``(value, low, high)`` tuple is shown as ``value [low, high]`` in its column's format.
    ``unit`` names what a test table's ``n`` counts (e.g. ``"paired examples"``, ``"runs"``);
    the renderer states it in the caption (:func:`kdlens.report._format.table_notes`)."""

    caption: str
    frame: pd.DataFrame
    formats: dict[str, str] = field(default_factory=dict)
    unit: str = ""


@dataclass
class Figure:
    caption: str
    png: bytes


@dataclass
class Code:
    caption: str
    text: str
    language: str = "yaml"


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)

    def text(self, paragraph: str) -> None:
        self.blocks.append(paragraph)


def _figure(draw, caption: str, blocks: list[Any], *, figsize=(6.4, 4.0)) -> None:
    """Draw with ``draw(ax)`` into a fresh figure and keep it as PNG; a plot that cannot be drawn
    from these data (e.g. one axis value) becomes a sentence saying why."""
    from kdlens.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    try:
        draw(ax)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        blocks.append(Figure(caption, buffer.getvalue()))
    except ValueError as err:
        blocks.append(f"({caption}: not drawn: {err})")
    finally:
        plt.close(fig)


def _fmt_p(p: float, name: str = "p") -> str:
    """``"p = 0.12"``, ``"p = 0.034"`` or ``"p < 0.001"``."""
    if p is None or not math.isfinite(float(p)):
        return f"{name} = n/a"
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}" if p < 0.1 else f"{name} = {p:.2f}"


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{100 * x:.1f}%"


def _students(src: ReportSource) -> list[str]:
    return sorted(m for m in map(str, src.examples["model_id"].unique()) if m != src.teacher)


# --------------------------------------------------------------------------- run reports


_SETUP_KEYS = ("teacher", "student", "method", "loss", "loss_params", "kd_weight", "sigma", "temperature",
               "scale_by_temperature_squared", "teacher_source", "tasks", "n_examples", "steps", "epochs",
               "batch_size", "lr", "max_length", "lora", "seed")


def _run_setup(src: ReportSource) -> Section:
    sec = Section("setup", SECTION_TITLES["setup"])
    cfg, man = src.config, src.manifest
    students = _students(src)
    if cfg:
        sec.text(f"Model {cfg.get('student') or cfg.get('teacher')} trained with method {cfg.get('method')} "
                 f"from teacher {cfg.get('teacher')}" + (f" (loss {cfg.get('loss')}, τ = {cfg.get('temperature')}, "
                                                          f"σ = {cfg.get('sigma')})" if cfg.get("method") != "sft" else "")
                 + f" for {man.get('steps', cfg.get('steps'))} steps on {describe(cfg.get('tasks'))}.")
        rows = [(k, describe(cfg.get(k))) for k in _SETUP_KEYS if k in cfg]
        sec.blocks.append(Table("Training configuration (full config under Provenance)",
                                pd.DataFrame(rows, columns=["setting", "value"])))
    else:
        sec.text("No config.yaml: this is an evaluation directory, not a training run.")
    ex = src.examples
    tasks = sorted(map(str, ex["task"].unique()))
    sec.text(f"Evaluation: {len(tasks)} task(s) ({', '.join(tasks)}), "
             f"{ex.loc[ex['sample'] == 0].groupby(['task', 'example_id']).ngroups} examples, greedy outputs; "
             f"teacher: {src.teacher or 'none in the examples table'}; evaluated model(s): {', '.join(students) or 'none'}.")
    return sec


def _accuracy_rows(src: ReportSource) -> pd.DataFrame:
    from kdlens.analysis import run_metrics

    models = ([src.teacher] if src.teacher else []) + _students(src)
    frames = [run_metrics(src.examples, model_id=m, teacher=None, n_boot=N_BOOT).assign(model_id=m) for m in models]
    return pd.concat(frames, ignore_index=True)


def _interval_pivot(frame: pd.DataFrame, index: str, columns: str, value: str, low: str, high: str) -> pd.DataFrame:
    cells = frame.assign(_cell=[(v, lo, hi) for v, lo, hi in zip(frame[value], frame[low], frame[high], strict=True)])
    table = cells.pivot(index=index, columns=columns, values="_cell")
    order = sorted((c for c in table.columns if c != "all"), key=str) + (["all"] if "all" in table.columns else [])
    return table[order]


def _run_accuracy(src: ReportSource) -> Section:
    from kdlens.plots import plot_task_heatmap, plot_training_loss

    sec = Section("accuracy", SECTION_TITLES["accuracy"])
    acc = _accuracy_rows(src)
    table = _interval_pivot(acc, "task", "model_id", "accuracy", "accuracy_ci_low", "accuracy_ci_high")
    models = list(table.columns)
    n = acc.pivot(index="task", columns="model_id", values="n").max(axis=1)
    table = table.reset_index()
    table.insert(1, "n", n.reindex(table["task"]).to_numpy())
    order = sorted(t for t in table["task"] if t != "all") + ["all"]
    table = table.set_index("task").loc[order].reset_index()
    sec.blocks.append(Table("Accuracy per task (greedy; 95% percentile bootstrap CI over examples; "
                            "'all' pools the tasks)", table, {m: "pct" for m in models} | {"n": "int"}))
    if src.teacher and _students(src):
        _figure(lambda ax: plot_task_heatmap(src.examples, teacher=src.teacher, ax=ax),
                "Student minus teacher accuracy by task (points)", sec.blocks, figsize=(6.4, 1.8 + 0.45 * len(_students(src))))
    if src.log:
        _figure(lambda ax: plot_training_loss(src.log, ax=ax), "Training loss", sec.blocks, figsize=(6.4, 3.2))
    return sec


def _run_agreement(src: ReportSource) -> Section:
    from kdlens.analysis import ANSWER_METRICS, TOKEN_METRICS, agreement
    from kdlens.plots import plot_token_distribution

    sec = Section("agreement", SECTION_TITLES["agreement"])
    if not src.teacher or not _students(src):
        sec.text("Not available: the examples table needs the teacher (model_id 'teacher') and at least one student.")
        return sec
    agree = agreement(src.examples, teacher=src.teacher, tokens=src.tokens, n_boot=N_BOOT)
    for model, part in agree.groupby("model_id", sort=True):
        part = part.assign(metric=pd.Categorical(part["metric"], [*ANSWER_METRICS, *TOKEN_METRICS], ordered=True))
        table = _interval_pivot(part, "metric", "task", "value", "ci_low", "ci_high").sort_index().reset_index()
        table["metric"] = table["metric"].astype(str)
        formats = {c: "pct" for c in table.columns if c != "metric"}
        # token KL rows are nats, not rates: format them as numbers
        kl = table["metric"].isin(["token_forward_kl", "token_reverse_kl"])
        if kl.any():
            rates, kls = table.loc[~kl], table.loc[kl]
            sec.blocks.append(Table(f"{model}: agreement with {src.teacher} (95% bootstrap CI over examples)",
                                    rates.reset_index(drop=True), formats))
            sec.blocks.append(Table(f"{model}: mean per-token KL to {src.teacher} on the teacher's outputs (nats)",
                                    kls.reset_index(drop=True), {c: "num" for c in formats}))
        else:
            sec.blocks.append(Table(f"{model}: agreement with {src.teacher} (95% bootstrap CI over examples)",
                                    table, formats))
        overall = part.set_index("metric")
        a = overall.loc[(overall["task"] == "all")]
        value = a.loc["answer_agreement"] if "answer_agreement" in a.index else None
        if value is not None:
            sec.text(f"{model} gives the teacher's final answer on {_pct(value['value'])} of {int(value['n'])} examples "
                     f"(95% CI {_pct(value['ci_low'])} to {_pct(value['ci_high'])}).")
    sec.text("Definitions: " + "; ".join(f"{k}: {v}" for k, v in ANSWER_METRICS.items()) + ".")
    if src.tokens is not None:
        _figure(lambda ax: plot_token_distribution(src.tokens, metric="top1_agree", ax=ax),
                "Per-example top-1 token agreement with the teacher (teacher-forced on the teacher's outputs)",
                sec.blocks, figsize=(6.4, 3.4))
    return sec


def _run_fidelity(src: ReportSource) -> Section:
    from kdlens.analysis import fidelity, summarize_fidelity
    from kdlens.plots import plot_token_distribution

    sec = Section("fidelity", SECTION_TITLES["fidelity"])
    ex = src.examples
    refs = (["teacher"] if src.teacher and _students(src) else []) + \
        (["gold"] if ex["gold_rationale"].notna().any() else [])
    if not refs:
        sec.text("Not available: no teacher outputs and no gold rationales to compare with.")
    else:
        fid = fidelity(ex, teacher=src.teacher, references=refs, metrics=("bleu", "rouge_l"))
        summary = summarize_fidelity(fid, n_boot=N_BOOT)
        summary = summary.assign(row=summary["model_id"] + " vs " + summary["reference"] + " (" + summary["metric"] + ")")
        table = _interval_pivot(summary, "row", "task", "value", "ci_low", "ci_high").reset_index()
        sec.blocks.append(Table("Rationale fidelity: sentence BLEU and ROUGE-L F (0 to 1) of each model's output "
                                "against the reference (95% bootstrap CI over examples)",
                                table, {c: "num" for c in table.columns if c != "row"}))
        sec.text(f"BLEU signature: {fid.attrs.get('bleu_signature', 'n/a')}. The sentence-embedding cosine is "
                 "not computed here: a report never loads a model (use kdlens analyze).")
    if src.tokens is not None:
        _figure(lambda ax: plot_token_distribution(src.tokens, metric="forward_kl", ax=ax),
                "Per-token KL(teacher ‖ student) on the teacher's outputs", sec.blocks, figsize=(6.4, 3.4))
    return sec


def _mcnemar_sentences(table: pd.DataFrame, a: str, b: str) -> list[str]:
    out = []
    for _, r in table.iterrows():
        if not math.isfinite(r["p_val"]):
            out.append(f"{r['task']}: not testable ({r.get('note', '')}).")
            continue
        verdict = "differ" if r["p_adj"] < 0.05 else "do not differ detectably"
        out.append(f"{r['task']}: {a} and {b} {verdict} in accuracy ({r['test'].replace('_', ' ')}, "
                   f"{_fmt_p(r['p_val'])}, {_fmt_p(r['p_adj'], 'Holm-adjusted p')}, n = {int(r['n'])}; "
                   f"{a} right where {b} is wrong on {int(r['n_a_only'])} examples, the reverse on {int(r['n_b_only'])}).")
    return out


_TEST_COLS = ["statistic", "p_val", "p_adj", "effect_size", "n"]
_TEST_FORMATS = {"statistic": "num", "p_val": "p", "p_adj": "p", "effect_size": "num", "n": "int",
                 "ci_low": "num", "ci_high": "num", "n_a_only": "int", "n_b_only": "int"}


def _run_tests(src: ReportSource) -> Section:
    from kdlens.analysis import mcnemar, pair_models

    sec = Section("tests", SECTION_TITLES["tests"])
    if not src.teacher or not _students(src):
        sec.text("No paired test: the examples table needs the teacher and a student.")
        return sec
    greedy = src.examples.loc[src.examples["sample"] == 0]
    for student in _students(src):
        paired = pair_models(greedy, model_a=student, model_b=src.teacher)
        table = mcnemar(paired, a=student, b=src.teacher, by="task")
        overall = mcnemar(paired, a=student, b=src.teacher).assign(task="all")
        both = pd.concat([table, overall[table.columns]], ignore_index=True)
        sec.text(f"McNemar's test of {student} against the teacher on the same examples (per task, Holm-adjusted "
                 "across tasks; 'all' pools them, unadjusted). Effect size: odds ratio of the discordant pairs.")
        sec.blocks.append(Table(f"McNemar: {student} vs {src.teacher}",
                                both[["task", "test", *_TEST_COLS, "n_a_only", "n_b_only"]], _TEST_FORMATS))
        for sentence in _mcnemar_sentences(both, student, src.teacher):
            sec.text(sentence)
    return sec


def _seed_text(src: ReportSource) -> str:
    if src.kind == "run":
        return describe(src.manifest.get("seed", src.config.get("seed")))
    axes = {**(src.config.get("axes") or {}), **(src.config.get("replicate") or {})}
    if "seed" in axes:
        return f"per run (axis seed: {describe(axes['seed'])})"
    return describe((src.config.get("base") or {}).get("seed", 0))


def _provenance(src: ReportSource, extra: list[tuple[str, str]]) -> Section:
    import yaml

    from kdlens import __version__
    from kdlens._io import git_sha

    sec = Section("provenance", SECTION_TITLES["provenance"])
    man = src.manifest
    rows = [("source directory", str(src.path.resolve())), ("kind", src.kind),
            ("git commit of the results", str(man.get("git_sha") or "unknown")),
            ("seed", _seed_text(src)),
            *extra,
            ("kdlens of this report", __version__), ("git commit of this report", str(git_sha() or "unknown"))]
    if man.get("data_hash"):
        rows.append(("training data hash (sha256)", man["data_hash"]))
    rows += [(f"version: {k}", describe(v)) for k, v in sorted((man.get("versions") or {}).items())]
    sec.blocks.append(Table("Provenance", pd.DataFrame(rows, columns=["item", "value"])))
    if src.examples is not None:
        counts = src.examples.loc[src.examples["sample"] == 0].groupby(["task", "model_id"]).size().unstack("model_id")
        sec.blocks.append(Table("n per cell: greedy examples per task and model", counts.reset_index(),
                                {c: "int" for c in counts.columns}))
    if src.config:
        sec.blocks.append(Code("Configuration" if src.kind == "run" else "Sweep spec",
                               yaml.safe_dump(src.config, sort_keys=False)))
    if src.kind == "run" and isinstance(man.get("eval"), dict) and man["eval"]:
        settings = {k: man["eval"][k] for k in ("decoding", "settings", "models", "tasks") if k in man["eval"]}
        if settings:
            sec.blocks.append(Code("Evaluation settings", yaml.safe_dump(settings, sort_keys=False)))
    return sec


def _run_sections(src: ReportSource) -> list[Section]:
    return [_run_setup(src), _run_accuracy(src), _run_agreement(src), _run_fidelity(src), _run_tests(src),
            _provenance(src, [("method", describe(src.manifest.get("method"))),
                              ("teacher", describe(src.manifest.get("teacher"))),
                              ("teacher cache", describe(src.manifest.get("teacher_cache")))])]


# --------------------------------------------------------------------------- sweep reports


def _axes(src: ReportSource) -> list[str]:
    # replicate axes (the seed crossed with every cell) tell runs apart like the axes
    axes = [*(src.config.get("axes") or {}), *(src.config.get("replicate") or {})]
    if src.config.get("baseline") and "method" not in axes:
        axes.append("method")
    return [a for a in axes if a in src.results.columns]


def _run_label(results: pd.DataFrame, axes: list[str]) -> pd.Series:
    def one(row) -> str:
        parts = [f"{a}={describe(row[a])}" for a in axes if not _missing(row[a])]
        return ", ".join(parts) or row["run_id"]

    return results.apply(one, axis=1)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sweep_setup(src: ReportSource) -> Section:
    sec = Section("setup", SECTION_TITLES["setup"])
    spec, res = src.config, src.results
    axes = spec.get("axes") or {}
    n_runs = res["run_id"].nunique()
    sec.text(f"Sweep {spec.get('name', src.path.name)}: {n_runs} evaluated run(s), grid '{spec.get('grid', 'product')}'"
             + (f", each student also trained with {spec['baseline']} as the baseline of gains" if spec.get("baseline") else "")
             + ".")
    replicate = spec.get("replicate") or {}
    if axes:
        sec.blocks.append(Table("Axes" + (" (and the replicate axes crossed with every cell)" if replicate else ""),
                                pd.DataFrame([(k, describe(v)) for k, v in {**axes, **replicate}.items()],
                                             columns=["axis", "values"])))
    base = spec.get("base") or {}
    if base:
        sec.blocks.append(Table("Base configuration shared by every run",
                                pd.DataFrame([(k, describe(v)) for k, v in base.items()], columns=["setting", "value"])))
    ev = (src.manifest.get("eval") or spec.get("eval") or {})
    if ev:
        sec.text("Evaluation: " + ", ".join(f"{k} = {describe(v)}" for k, v in ev.items()) + ".")
    if "status" in res.columns:
        status = res.drop_duplicates("run_id")["status"].value_counts()
        sec.text("Run status: " + ", ".join(f"{k}: {v}" for k, v in status.items()) + ".")
    return sec


def _sweep_pivot(src: ReportSource, metric: str, with_ci: bool) -> pd.DataFrame:
    res = src.results.assign(run=_run_label(src.results, _axes(src)))
    if with_ci:
        table = _interval_pivot(res, "run", "task", metric, f"{metric}_ci_low", f"{metric}_ci_high")
    else:
        table = res.pivot(index="run", columns="task", values=metric)
        order = sorted((c for c in table.columns if c != "all"), key=str) + (["all"] if "all" in table.columns else [])
        table = table[order]
    runs = res.drop_duplicates("run")[["run", "run_id"]].set_index("run")["run_id"]
    table = table.loc[[r for r in res.drop_duplicates("run")["run"]]]
    table.insert(0, "run_id", runs.reindex(table.index).to_numpy())
    return table.reset_index()


def _seed_table(src: ReportSource, metric: str) -> Table | None:
    """Mean ± 95% t interval over seeds per setting (task 'all'): the table a paper reports."""
    from kdlens.analysis import seed_summary

    if "seed" not in src.results.columns or src.results["seed"].dropna().nunique() < 2:
        return None
    by = [a for a in _axes(src) if a != "seed"]
    summary = seed_summary(src.results, metric=metric, by=by)
    cells = summary[by].copy()
    cells[metric] = [(m, lo, hi) for m, lo, hi in zip(summary["mean"], summary["ci_low"], summary["ci_high"],
                                                      strict=True)]
    cells["n"] = summary["n_seeds"].to_numpy()
    return Table(f"{metric.replace('_', ' ').capitalize()} per setting, task 'all': mean over seeds ± the half-width "
                 f"of its 95% t interval (unit: seeds, n per row)", cells, {metric: "pct±", "n": "int"},
                 unit="seeds")


def _varies(results: pd.DataFrame, column: str) -> bool:
    return column in results.columns and results[column].dropna().nunique() >= 2


def _kd_rows(src: ReportSource, task: str = "all") -> pd.DataFrame:
    res = src.results.loc[src.results["task"] == task]
    baseline = src.config.get("baseline") or "sft"
    return res.loc[res["method"] != baseline] if "method" in res.columns else res


def _sweep_accuracy(src: ReportSource) -> Section:
    from kdlens.plots import plot_axis, plot_task_heatmap, plot_teacher_awareness

    sec = Section("accuracy", SECTION_TITLES["accuracy"])
    table = _sweep_pivot(src, "accuracy", with_ci=True)
    tasks = [c for c in table.columns if c not in ("run", "run_id")]
    summary = _seed_table(src, "accuracy")
    if summary is not None:
        sec.blocks.append(summary)
    sec.blocks.append(Table("Accuracy per run and task (greedy; 95% bootstrap CI over examples)", table,
                            {t: "pct" for t in tasks}))
    teachers = src.results.drop_duplicates(["teacher_id", "task"]) if "teacher_id" in src.results else None
    if teachers is not None:
        tt = teachers.pivot(index="teacher_id", columns="task", values="teacher_accuracy")
        tt = tt[[c for c in tasks if c in tt.columns]].reset_index()
        sec.blocks.append(Table("Teacher accuracy on the same examples", tt, {t: "pct" for t in tasks}))
    res = src.results
    kd = _kd_rows(src)
    for axis in ("sigma", "temperature"):
        if _varies(res, axis):
            # one curve per value of the other varying setting; runs that differ only in seed are
            # averaged into one point (t interval across seeds)
            others = [a for a in ("temperature", "sigma", "teacher_aware", "student", "loss", "method")
                      if a != axis and _varies(kd, a)]
            _figure(lambda ax, axis=axis, h=(others[0] if others else None): plot_axis(
                        _kd_only(src), axis, hue=h, ax=ax),
                    f"Accuracy against {'σ (teacher-logit noise)' if axis == 'sigma' else 'τ (temperature)'} "
                    "(95% CI)", sec.blocks)
    if _varies(res, "teacher_aware"):
        _figure(lambda ax: plot_teacher_awareness(_kd_only(src), ax=ax),
                "Task-aware against task-unaware teacher (95% CI)", sec.blocks)
    gap = res.assign(model_id=res["run_id"], delta=res["accuracy"] - res["teacher_accuracy"])
    if gap["delta"].notna().any():
        n_runs = gap["run_id"].nunique()
        _figure(lambda ax: plot_task_heatmap(gap[["model_id", "task", "delta"]], ax=ax),
                "Student minus teacher accuracy by task (points)", sec.blocks,
                figsize=(7.0, 1.8 + 0.4 * n_runs))
    return sec


def _kd_only(src: ReportSource) -> pd.DataFrame:
    baseline = src.config.get("baseline") or "sft"
    res = src.results
    return res.loc[res["method"] != baseline] if "method" in res.columns else res


def _sweep_agreement(src: ReportSource) -> Section:
    from kdlens.plots import plot_before_after

    sec = Section("agreement", SECTION_TITLES["agreement"])
    if src.results["agreement"].isna().all():
        sec.text("Not available: the runs were evaluated without their teacher.")
        return sec
    table = _sweep_pivot(src, "agreement", with_ci=True)
    sec.blocks.append(Table("Answer agreement with the run's teacher (95% bootstrap CI over examples)", table,
                            {c: "pct" for c in table.columns if c not in ("run", "run_id")}))
    if "token_top1_agreement" in src.results and src.results["token_top1_agreement"].notna().any():
        t = _sweep_pivot(src, "token_top1_agreement", with_ci=False)
        sec.blocks.append(Table("Top-1 token agreement on the teacher's outputs", t,
                                {c: "pct" for c in t.columns if c not in ("run", "run_id")}))
    if "method" in src.results and src.results["method"].nunique() >= 2:
        size = "student" if "student" in src.results.columns else None
        if size:
            _figure(lambda ax: plot_before_after(src.results, metric="agreement", size=size,
                                                 before=src.config.get("baseline") or "sft", ax=ax),
                    "Agreement before (SFT) and after KD by student size (95% CI)", sec.blocks)
    return sec


def _sweep_fidelity(src: ReportSource) -> Section:
    from kdlens.plots import plot_before_after, plot_fidelity_gain, plot_token_distribution

    sec = Section("fidelity", SECTION_TITLES["fidelity"])
    res = src.results
    cols = [c for c in ("bleu", "token_forward_kl", "token_reverse_kl") if c in res and res[c].notna().any()]
    if not cols:
        sec.text("Not available: no fidelity was computed for these runs.")
        return sec
    for col, caption, fmt in (("bleu", "Sentence BLEU (0 to 1) of each run's rationales against its teacher's", "num"),
                              ("token_forward_kl", "Mean per-token KL(teacher ‖ run) on the teacher's outputs (nats)", "num")):
        if col in cols:
            t = _sweep_pivot(src, col, with_ci=False)
            sec.blocks.append(Table(caption, t, {c: fmt for c in t.columns if c not in ("run", "run_id")}))
    if "method" in res and res["method"].nunique() >= 2 and "student" in res and "bleu" in cols:
        _figure(lambda ax: plot_before_after(res, metric="bleu", size="student",
                                             before=src.config.get("baseline") or "sft", ax=ax),
                "Fidelity before (SFT) and after KD by student size", sec.blocks)
    kd = _kd_rows(src)
    if "accuracy_gain" in kd and kd["accuracy_gain"].notna().sum() >= 3 and "bleu" in cols:
        _figure(lambda ax: plot_fidelity_gain(kd, x="bleu", y="accuracy_gain", ax=ax),
                "Fidelity against accuracy gain over SFT, one point per KD run", sec.blocks)
    if src.tokens is not None and not src.tokens.empty:
        models = sorted(src.tokens["model_id"].unique())[:8]
        shown = src.tokens.loc[src.tokens["model_id"].isin(models)]
        _figure(lambda ax: plot_token_distribution(shown, metric="forward_kl", ax=ax),
                "Per-token KL(teacher ‖ run) on the teacher's outputs" + (" (first 8 runs)" if len(models) == 8 else ""),
                sec.blocks, figsize=(6.4, 3.6))
    return sec


_VERDICT_COLS = ["family", "comparison", "test", "unit", "estimate", "ci_low", "ci_high", "n", "p_val", "p_alpha",
                 "p_adj", "mde", "verdict"]
_VERDICT_FORMATS = {"estimate": "pct", "ci_low": "pct", "ci_high": "pct", "mde": "pct", "n": "int", "p_val": "p",
                    "p_alpha": "num", "p_adj": "p"}


def _sweep_tests(src: ReportSource) -> Section:
    """Renders the verdicts :mod:`kdlens.analysis` decides (tables and their sentences); decides nothing."""
    from kdlens.analysis import ablation_tests, adjust_pvalues, mcnemar, pair_models, paradox_test

    sec = Section("tests", SECTION_TITLES["tests"])
    baseline = src.config.get("baseline") or "sft"
    tested = False
    verdicts = ablation_tests(src.results, baseline=baseline)
    if not verdicts.empty:
        tested = True
        sec.text("Each verdict is read from a 95% confidence interval against a smallest effect of interest of "
                 "2 accuracy points (kdlens.analysis.ablation_tests()): KD against SFT is paired within student, "
                 "seed and task, with the gains of runs sharing a baseline averaged within it; where both axes vary, σ "
                 "contrasts use only the τ = 1 runs and τ contrasts only the σ = 0 runs; mde is the smallest "
                 "difference the seeds at hand detect with 80% power. p_val is the p-value of the claim's "
                 "direction (one-sided for a rise or a fall, two-sided otherwise) and p_alpha the level it is "
                 "compared with (0.025 one-sided for a 95% interval): p_val < p_alpha exactly when the interval "
                 "excludes 0 in that direction. The intervals are per comparison; p_adj (Holm) corrects across "
                 "the table.")
        sec.blocks.append(Table("Verdicts on the sweep's claims (task 'all'; differences in points)",
                                verdicts[_VERDICT_COLS], _VERDICT_FORMATS))
        for sentence in verdicts["sentence"]:
            sec.text(sentence)
    for line in verdicts.attrs.get("skipped", []):
        sec.text(f"{line}.")
    kd = _kd_rows(src)
    if "accuracy_gain" in kd and kd["accuracy_gain"].notna().sum() >= 3:
        fid = [c for c in ("bleu", "agreement") if kd[c].notna().sum() >= 3]
        if fid:
            tested = True
            runs = kd.dropna(subset=["accuracy_gain"])
            # student size drives both fidelity and the gain: compare within students when they vary
            by = "student" if _varies(runs, "student") else None
            para = paradox_test(runs, gain="accuracy_gain", fidelity=fid, by=by)
            clustered = " with cluster-bootstrap design effects" if para["test"].str.endswith("_clustered").any() \
                else ""
            sec.blocks.append(Table("Generalization-fidelity paradox test (KD runs, task 'all'; kdlens.analysis."
                                    f"paradox_test{clustered})",
                                    para[["variable", "adjustment", "stratum", "test", "estimate", "ci_low", "ci_high",
                                          "n", "p_val", "p_alpha", "p_adj", "verdict"]],
                                    {"estimate": "num", "ci_low": "num", "ci_high": "num", "n": "int", "p_val": "p",
                                     "p_alpha": "num", "p_adj": "p"}))
            sec.text(para.attrs["sentence"])
            for sentence in para.loc[para["decisive"], "sentence"]:
                sec.text(sentence)
    if src.examples is not None and "baseline_run_id" in src.results:
        pairs = src.results.loc[(src.results["task"] == "all") & src.results["baseline_run_id"].notna(),
                                ["run_id", "baseline_run_id"]]
        models = set(src.examples["model_id"])
        rows = []
        for rid, base in pairs.itertuples(index=False):
            if rid in models and base in models:
                paired = pair_models(src.examples.loc[src.examples["sample"] == 0], model_a=rid, model_b=base)
                rows.append(mcnemar(paired, a=rid, b=base, padjust="none").assign(run_id=rid, baseline=base))
        if rows:
            tested = True
            table = pd.concat(rows, ignore_index=True)
            table["p_adj"] = adjust_pvalues(table["p_val"].to_numpy(float), "holm")
            sec.text("McNemar's test of each KD run against its SFT baseline on the same examples (Holm-adjusted "
                     "across runs): a statement about these two trained models on these examples, not about the "
                     "method, whose seed-to-seed variation it does not see.")
            sec.blocks.append(Table("McNemar: KD run vs its SFT baseline",
                                    table[["run_id", "baseline", "test", *_TEST_COLS, "n_a_only", "n_b_only"]],
                                    _TEST_FORMATS))
            for _, r in table.iterrows():
                if math.isfinite(r["p_val"]):
                    better = "more" if r["n_a_only"] > r["n_b_only"] else "fewer" if r["n_a_only"] < r["n_b_only"] else "as many"
                    sec.text(f"{r['run_id']} is right on {better} examples than its baseline "
                             f"({int(r['n_a_only'])} vs {int(r['n_b_only'])} discordant; "
                             f"{_fmt_p(r['p_adj'], 'Holm-adjusted p')}, n = {int(r['n'])}).")
    if not tested:
        sec.text("No test applies: the sweep needs KD runs along σ, τ or the teacher's task awareness, or SFT "
                 "baselines ('baseline: sft') for gains and paired tests.")
    return sec


def _sweep_sections(src: ReportSource) -> list[Section]:
    man = src.manifest
    runs = man.get("runs") or {}
    train_s = sum(float(r.get("train_s", 0.0)) for r in runs.values())
    extra = [("spec hash (sha256)", describe(man.get("spec_hash"))),
             ("training wall time of the runs trained so far", f"{train_s:.0f} s" if runs else "n/a")]
    sections = [_sweep_setup(src), _sweep_accuracy(src), _sweep_agreement(src), _sweep_fidelity(src),
                _sweep_tests(src), _provenance(src, extra)]
    n_table = src.results.pivot(index="run_id", columns="task", values="n")
    n_table = n_table[sorted((c for c in n_table.columns if c != "all"), key=str) + ["all"]].reset_index()
    sections[-1].blocks.append(Table("n per cell: evaluated examples per run and task", n_table,
                                     {c: "int" for c in n_table.columns if c != "run_id"}))
    return sections


def build_sections(src: ReportSource) -> list[Section]:
    """The report's sections (ids and order of :data:`SECTION_TITLES`) for a loaded source."""
    sections = _sweep_sections(src) if src.kind == "sweep" else _run_sections(src)
    assert [s.id for s in sections] == list(SECTION_TITLES)
    return sections
