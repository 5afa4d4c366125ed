"""Plots: DataFrame in, matplotlib Axes out.

Every function has the shape ``fn(data, *, ..., ax=None, **kwargs) -> Axes`` (seaborn): it draws
on ``ax`` (a new figure when None) and returns it. Plots compute nothing beyond grouping: the
numbers they show (confidence intervals, Spearman statistics, fitted students) come from
:mod:`kdlens.analysis`. ``matplotlib.pyplot`` is imported inside the functions only, so
``import kdlens.plots`` is cheap; without a display the Agg backend is used.

Tables they take:

* a sweep's results table (:func:`kdlens.sweep.run_sweep`, :func:`kdlens.sweep.read_results`):
  :func:`plot_axis`, :func:`plot_sigma`, :func:`plot_tau`, :func:`plot_teacher_awareness`,
  :func:`plot_before_after`, :func:`plot_fidelity_gain`;
* a tokens table (``kdlens._schema.TOKENS_COLUMNS``): :func:`plot_token_distribution`;
* an examples table or :func:`kdlens.analysis.ablations.teacher_gap`: :func:`plot_task_heatmap`;
* :func:`kdlens.analysis.mode_fit.fit_to_bimodal`: :func:`plot_kl_fit`;
* a run's ``train_log.jsonl`` rows: :func:`plot_training_loss`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd

__all__ = [
    "pyplot",
    "AXIS_LABELS",
    "plot_axis",
    "plot_before_after",
    "plot_fidelity_gain",
    "plot_kl_fit",
    "plot_sigma",
    "plot_task_heatmap",
    "plot_tau",
    "plot_teacher_awareness",
    "plot_token_distribution",
    "plot_training_loss",
]

#: axis labels of the columns kdlens tables share
AXIS_LABELS: dict[str, str] = {
    "sigma": "teacher-logit noise σ",
    "temperature": "temperature τ",
    "accuracy": "accuracy",
    "agreement": "answer agreement with the teacher",
    "bleu": "fidelity (sentence BLEU to the teacher)",
    "accuracy_gain": "accuracy gain over SFT",
    "agreement_gain": "agreement gain over SFT",
    "bleu_gain": "fidelity gain over SFT",
    "token_forward_kl": "token KL(teacher ‖ student)",
    "forward_kl": "per-token KL(teacher ‖ student) (nats)",
    "reverse_kl": "per-token KL(student ‖ teacher) (nats)",
    "top1_agree": "per-example top-1 token agreement",
    "student": "student",
    "teacher_aware": "teacher",
}


#: short names for titles (the axis labels carry the full ones)
_SHORT: dict[str, str] = {"bleu": "fidelity", "agreement": "agreement", "accuracy_gain": "accuracy gain",
                          "agreement_gain": "agreement gain", "bleu_gain": "fidelity gain"}


def _short(column: str) -> str:
    return _SHORT.get(column, column.replace("_", " "))


def _label(column: str) -> str:
    return AXIS_LABELS.get(column, column.replace("_", " "))


def pyplot():
    """``matplotlib.pyplot``, with the Agg backend chosen first on a headless Linux machine (never
    switching a backend the user or a notebook already set up)."""
    import matplotlib

    interactive = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("MPLBACKEND")
    # choose Agg only before pyplot exists: never switch a backend the user (or a notebook) already set up
    if not interactive and "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules \
            and sys.platform.startswith("linux"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(ax: Any, figsize: tuple[float, float] = (6.0, 4.0)) -> Any:
    if ax is not None:
        return ax
    _, ax = pyplot().subplots(figsize=figsize, layout="constrained")
    return ax


def _require(data: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    from kdlens.analysis._validate import require_columns

    require_columns(data, columns, what=what)


def _yerr(curve: pd.DataFrame) -> Any:
    """Asymmetric error bars from CI columns; None when no point has a finite interval."""
    import numpy as np

    low = (curve["value"] - curve["ci_low"]).to_numpy(float)
    high = (curve["ci_high"] - curve["value"]).to_numpy(float)
    if not (np.isfinite(low).any() or np.isfinite(high).any()):
        return None
    return np.vstack([np.nan_to_num(low, nan=0.0), np.nan_to_num(high, nan=0.0)])


def plot_axis(results: pd.DataFrame, axis: str, *, metric: str = "accuracy", hue: str | None = None,
              task: str = "all", ax: Any = None, **kwargs: Any) -> Any:
    """A metric against one sweep axis, one line per ``hue`` group, with confidence intervals.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table.
    axis : str
        Column on the x axis (``"sigma"``, ``"temperature"``, ...).
    metric : str
        Column on the y axis.
    hue : str, optional
        Column separating lines (e.g. ``"student"``).
    task : str
        Which task (``"all"`` = pooled).
    ax : matplotlib Axes, optional
    **kwargs
        Passed to ``Axes.errorbar`` (e.g. ``marker``, ``capsize``).

    Returns
    -------
    Axes
        One line per hue group; its data are the points of
        :func:`kdlens.analysis.ablations.axis_curve` (CIs as error bars: the run's bootstrap CI, or
        a t interval across seeds).
    """
    from kdlens.analysis import axis_curve

    curve = axis_curve(results, axis, metric=metric, hue=hue, task=task)
    ax = _axes(ax)
    style = {"marker": "o", "capsize": 3, **kwargs}
    groups = curve.groupby(hue, sort=True) if hue else [(None, curve)]
    for name, part in groups:
        part = part.sort_values(axis)
        label = f"{hue} = {name}" if hue else metric
        ax.errorbar(part[axis].to_numpy(float), part["value"].to_numpy(float), yerr=_yerr(part), label=label, **style)
    ax.set_xlabel(_label(axis))
    ax.set_ylabel(_label(metric))
    ax.set_title(f"{_short(metric)} against {_label(axis)}" + ("" if task == "all" else f" ({task})"))
    if hue:
        ax.legend()
    return ax


def plot_sigma(results: pd.DataFrame, *, metric: str = "accuracy", hue: str | None = None, task: str = "all",
               ax: Any = None, **kwargs: Any) -> Any:
    """Accuracy (or ``metric``) against the teacher-logit noise σ; see :func:`plot_axis`."""
    return plot_axis(results, "sigma", metric=metric, hue=hue, task=task, ax=ax, **kwargs)


def plot_tau(results: pd.DataFrame, *, metric: str = "accuracy", hue: str | None = None, task: str = "all",
             ax: Any = None, **kwargs: Any) -> Any:
    """Accuracy (or ``metric``) against the temperature τ; see :func:`plot_axis`."""
    return plot_axis(results, "temperature", metric=metric, hue=hue, task=task, ax=ax, **kwargs)


def _grouped_bars(ax: Any, curves: dict[str, pd.DataFrame], x: str, order: Sequence[Any], labels: dict[Any, str],
                  **kwargs: Any) -> None:
    """Bars of several curves side by side: one group per value of ``x``, one bar per curve."""
    import numpy as np

    width = 0.8 / max(len(curves), 1)
    positions = np.arange(len(order))
    for k, (name, curve) in enumerate(curves.items()):
        by_x = curve.set_index(x)
        values = [float(by_x["value"].get(v, math.nan)) for v in order]
        sub = pd.DataFrame({"value": values, "ci_low": [float(by_x["ci_low"].get(v, math.nan)) for v in order],
                            "ci_high": [float(by_x["ci_high"].get(v, math.nan)) for v in order]})
        ax.bar(positions + (k - (len(curves) - 1) / 2) * width, values, width, yerr=_yerr(sub), capsize=3,
               label=labels.get(name, str(name)), **kwargs)
    ax.set_xticks(positions, [str(v) for v in order])


def plot_teacher_awareness(results: pd.DataFrame, *, metric: str = "accuracy", ax: Any = None,
                           **kwargs: Any) -> Any:
    """Task-aware against task-unaware teacher: one group of two bars per task.

    Parameters
    ----------
    results : DataFrame
        Results with a boolean ``teacher_aware`` column (the sweep axis); rows without a value
        (SFT baselines) are left out. Filter to the runs you compare first: several runs per
        (task, teacher) are averaged (t interval across them).
    metric : str
        Column on the y axis.

    Returns
    -------
    Axes
        ``len(tasks) * 2`` bars (containers labelled "task-unaware teacher", "task-aware teacher").
    """
    from kdlens.analysis import axis_curve

    _require(results, ["teacher_aware", "task", metric], "results")
    part = results.loc[results["teacher_aware"].notna()]
    if part.empty:
        raise ValueError("no result row has a teacher_aware value: add the axis teacher_aware: [false, true]")
    tasks = sorted((t for t in part["task"].unique() if t != "all"), key=str) + (["all"] if "all" in set(part["task"]) else [])
    curves: dict[bool, list[pd.DataFrame]] = {False: [], True: []}
    for task in tasks:
        curve = axis_curve(part, "teacher_aware", metric=metric, task=task)
        for aware in (False, True):
            curves[aware].append(curve.loc[curve["teacher_aware"] == aware].assign(task=task))
    ax = _axes(ax)
    frames = {aware: pd.concat(c, ignore_index=True) for aware, c in curves.items()}
    _grouped_bars(ax, frames, "task", tasks, {False: "task-unaware teacher", True: "task-aware teacher"}, **kwargs)
    ax.set_ylabel(_label(metric))
    ax.set_xlabel("task")
    ax.set_title(f"{_short(metric)}: task-aware against task-unaware teacher")
    ax.legend()
    return ax


def plot_before_after(results: pd.DataFrame, *, metric: str = "agreement", size: str = "student",
                      before: str = "sft", task: str = "all", ax: Any = None, **kwargs: Any) -> Any:
    """A metric before KD (the SFT student) and after KD, grouped by student size.

    Parameters
    ----------
    results : DataFrame
        A sweep's results table with ``method`` and ``size`` columns.
    metric : str
        ``"agreement"``, ``"bleu"``, ``"accuracy"``, ...
    size : str
        Column identifying the student (e.g. ``"student"`` with values ``prune:10``, ``prune:22``).
    before : str
        Method of the "before KD" runs; every other method is an "after" bar.
    task : str
        Which task (``"all"`` = pooled).

    Returns
    -------
    Axes
        One group per student, one bar per method (``before`` first).
    """
    from kdlens.analysis import axis_curve

    _require(results, ["method", size, metric], "results")
    data = results.copy()
    if data[size].isna().all():
        raise ValueError(f"column {size!r} has no values: sweep the student size (axis {size}: [...])")
    methods = [before] + sorted(m for m in data["method"].dropna().unique() if m != before)
    if before not in set(data["method"]):
        raise ValueError(f"no run has method={before!r} (the 'before KD' baseline); add 'baseline: {before}'")
    order = sorted(data[size].dropna().unique(), key=_size_key)
    curves = {m: axis_curve(data.loc[data["method"] == m], size, metric=metric, task=task) for m in methods}
    ax = _axes(ax)
    labels = {m: f"before KD ({m})" if m == before else f"after KD ({m})" for m in methods}
    _grouped_bars(ax, curves, size, order, labels, **kwargs)
    ax.set_xlabel(_label(size))
    ax.set_ylabel(_label(metric))
    ax.set_title(f"{_short(metric)} before and after KD")
    ax.legend()
    return ax


def _size_key(value: Any) -> tuple:
    text = str(value)
    digits = "".join(ch for ch in text.rsplit(":", 1)[-1] if ch.isdigit())
    return (0, int(digits), text) if digits else (1, 0, text)


def plot_fidelity_gain(runs: pd.DataFrame, *, x: str = "bleu", y: str = "accuracy_gain", ax: Any = None,
                       **kwargs: Any) -> Any:
    """Fidelity (or agreement) against accuracy gain, one point per run, Spearman statistic shown.

    Parameters
    ----------
    runs : DataFrame
        One row per run (e.g. a results table at ``task == "all"`` without the SFT rows).
    x, y : str
        Columns; rows with NaN in either are left out.

    Returns
    -------
    Axes
        A scatter of the runs and a text artist ``"Spearman ρ = r, p = p, n = n"`` computed by
        :func:`kdlens.analysis.correlation`.
    """
    from kdlens.analysis import correlation

    _require(runs, [x, y], "runs")
    data = runs.loc[runs[x].notna() & runs[y].notna()]
    if data.empty:
        raise ValueError(f"no run has both {x!r} and {y!r}; gains need SFT baseline runs ('baseline: sft')")
    ax = _axes(ax)
    ax.scatter(data[x].to_numpy(float), data[y].to_numpy(float), **{"zorder": 3, **kwargs})
    stat = correlation(data, x=x, y=y, method="spearman").iloc[0]
    if math.isfinite(stat["statistic"]):
        p_text = "p < 0.001" if stat["p_val"] < 0.001 else f"p = {stat['p_val']:.3g}"
        text = f"Spearman ρ = {stat['statistic']:.2f}, {p_text}, n = {int(stat['n'])}"
    else:
        text = f"Spearman ρ undefined (n = {int(stat['n'])})"
    ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", ha="left",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.axhline(0.0, color="0.6", lw=0.8, zorder=1)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(f"{_short(x)} against {_short(y)}")
    return ax


def plot_token_distribution(tokens: pd.DataFrame, *, metric: str = "forward_kl", hue: str = "model_id",
                            bins: int = 30, ax: Any = None, **kwargs: Any) -> Any:
    """Distribution of per-token KL (or per-example top-1 agreement) for each model.

    Parameters
    ----------
    tokens : DataFrame
        A tokens table (``kdlens._schema.TOKENS_COLUMNS``).
    metric : {"forward_kl", "reverse_kl", "top1_agree", ...}
        A numeric column. ``top1_agree`` is shown per example (the share of its tokens whose top-1
        tokens agree), since a per-token 0/1 histogram says nothing more than its mean.
    hue : str
        Column separating the histograms.
    bins : int

    Returns
    -------
    Axes
        One step histogram per ``hue`` value, labelled by it.
    """
    import numpy as np

    _require(tokens, [hue, metric, "task", "example_id"], "tokens")
    if tokens.empty:
        raise ValueError("the tokens table is empty: nothing to plot")
    data = tokens
    if metric == "top1_agree":
        data = tokens.groupby([hue, "task", "example_id"], sort=True)[metric].mean().reset_index()
    values = data[metric].astype(float)
    finite = values[np.isfinite(values)]
    edges = np.histogram_bin_edges(finite.to_numpy(), bins=bins)
    ax = _axes(ax)
    for name, part in data.groupby(hue, sort=True):
        ax.hist(part[metric].astype(float), bins=edges, histtype="step", lw=1.5, label=str(name), **kwargs)
    ax.set_xlabel(_label(metric))
    ax.set_ylabel("examples" if metric == "top1_agree" else "tokens")
    ax.set_title(f"distribution of {_label(metric)}")
    ax.legend()
    return ax


def plot_task_heatmap(data: pd.DataFrame, *, teacher: str | None = None, value: str = "delta",
                      ax: Any = None, annotate: bool = True, **kwargs: Any) -> Any:
    """MPDistil-style heatmap of student-minus-teacher accuracy, students by tasks.

    Parameters
    ----------
    data : DataFrame
        Either :func:`kdlens.analysis.ablations.teacher_gap` output (``model_id, task, delta``), or an
        examples table together with ``teacher`` (then ``teacher_gap`` is called).
    teacher : str, optional
        The teacher's ``model_id`` when ``data`` is an examples table.
    value : str
        Column shown (default ``delta`` in accuracy points, fraction scale).
    annotate : bool
        Write each cell's value (in points, 1 decimal).

    Returns
    -------
    Axes
        An image (``AxesImage``) of shape [students, tasks] with a diverging colormap centred at 0,
        and one text per cell when ``annotate``.
    """
    import numpy as np

    from kdlens.analysis import teacher_gap

    if value not in data.columns:
        if teacher is None:
            raise ValueError(f"data has no {value!r} column; pass the teacher's model_id to compute it from examples")
        data = teacher_gap(data, teacher=teacher)
    _require(data, ["model_id", "task", value], "data")
    grid = data.pivot(index="model_id", columns="task", values=value)
    cols = sorted((c for c in grid.columns if c != "all"), key=str) + (["all"] if "all" in grid.columns else [])
    grid = grid[cols]
    matrix = grid.to_numpy(float)
    limit = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    limit = limit or 1.0
    ax = _axes(ax, figsize=(1.2 + 0.9 * len(cols), 1.2 + 0.5 * len(grid)))
    image = ax.imshow(matrix, cmap=kwargs.pop("cmap", "RdBu"), vmin=-limit, vmax=limit, aspect="auto", **kwargs)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(grid)), [str(i) for i in grid.index])
    if annotate:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if np.isfinite(matrix[i, j]):
                    # white on the dark ends of the colormap, black in the pale middle
                    color = "white" if abs(matrix[i, j]) > 0.6 * limit else "black"
                    ax.text(j, i, f"{100 * matrix[i, j]:+.1f}", ha="center", va="center", fontsize=8, color=color)
    ax.figure.colorbar(image, ax=ax, label="student − teacher")
    ax.set_title("student minus teacher accuracy by task")
    return ax


def plot_kl_fit(fit: pd.DataFrame | None = None, *, ax: Any = None, **fit_kwargs: Any) -> Any:
    """Forward against reverse KL fitted to a bimodal teacher: mode covering against mode seeking.

    Parameters
    ----------
    fit : DataFrame, optional
        :func:`kdlens.analysis.mode_fit.fit_to_bimodal` output; computed with ``fit_kwargs`` when None.

    Returns
    -------
    Axes
        Three lines over the grid: the teacher, the student fitted by forward KL and the one fitted
        by reverse KL (labels give each fitted mean and std).
    """
    from kdlens.analysis.mode_fit import fit_to_bimodal

    if fit is None:
        fit = fit_to_bimodal(**fit_kwargs)
    elif fit_kwargs:
        raise ValueError("pass either a fit table or fit_to_bimodal keyword arguments, not both")
    _require(fit, ["x", "teacher", "forward_kl", "reverse_kl"], "fit")
    fits = fit.attrs.get("fits", {})
    ax = _axes(ax)
    x = fit["x"].to_numpy(float)
    ax.fill_between(x, fit["teacher"].to_numpy(float), color="0.85")
    ax.plot(x, fit["teacher"].to_numpy(float), color="0.3", lw=2, label="teacher (bimodal)")
    for name, label, style in (("forward_kl", "forward KL: mode covering", "-"),
                               ("reverse_kl", "reverse KL: mode seeking", "--")):
        extra = f" (μ = {fits[name]['mean']:.2f}, σ = {fits[name]['std']:.2f})" if name in fits else ""
        ax.plot(x, fit[name].to_numpy(float), ls=style, lw=2, label=label + extra)
    ax.set_xlabel("x")
    ax.set_ylabel("probability mass")
    ax.set_title("one-Gaussian student fitted to a bimodal teacher")
    ax.legend(fontsize=8)
    return ax


def plot_training_loss(log: pd.DataFrame | Sequence[dict], *, y: str = "loss", hue: str | None = None,
                       ax: Any = None, **kwargs: Any) -> Any:
    """Training loss against step, from ``train_log.jsonl`` rows (:meth:`kdlens.distill.RunDir.log`).

    Parameters
    ----------
    log : DataFrame or list of dict
        Needs ``step`` and ``y`` (and ``hue`` when given, e.g. a run id added per run).

    Returns
    -------
    Axes
        One line per ``hue`` value (or a single line).
    """
    data = log if isinstance(log, pd.DataFrame) else pd.DataFrame(list(log))
    _require(data, ["step", y] + ([hue] if hue else []), "training log")
    if data.empty:
        raise ValueError("the training log is empty: the run logged no step")
    ax = _axes(ax)
    groups = data.groupby(hue, sort=True) if hue else [(y, data)]
    for name, part in groups:
        part = part.sort_values("step")
        ax.plot(part["step"].to_numpy(float), part[y].to_numpy(float), label=str(name), **kwargs)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(_label(y))
    ax.set_title(f"training {_label(y)}")
    if hue:
        ax.legend(fontsize=8)
    return ax
