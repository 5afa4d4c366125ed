"""Plots are checked through their artists (line data, bars, texts), never through pixels."""

from __future__ import annotations

import subprocess
import sys

import _report_data as data
import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from kdlens import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def results(**columns) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    frame["task"] = frame.get("task", "all")
    return frame


def test_importing_plots_does_not_import_pyplot():
    code = "import sys, kdlens.plots; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_sigma_draws_each_point_with_its_confidence_interval():
    res = results(sigma=[2.0, 0.0, 1.0], accuracy=[0.5, 0.8, 0.7], accuracy_ci_low=[0.3, 0.6, 0.5],
                  accuracy_ci_high=[0.6, 0.9, 0.8])
    ax = plots.plot_sigma(res)
    (line,) = ax.get_lines()[:1]
    assert line.get_xdata().tolist() == [0.0, 1.0, 2.0]  # sorted along the axis
    assert line.get_ydata().tolist() == [0.8, 0.7, 0.5]
    (container,) = ax.containers
    segments = container.lines[2][0].get_segments()
    assert np.array([s[:, 1] for s in segments]) == pytest.approx(np.array([[0.6, 0.9], [0.5, 0.8], [0.3, 0.6]]))
    assert "σ" in ax.get_xlabel()


def test_plot_tau_draws_one_line_per_hue_group_with_seed_means():
    res = results(temperature=[1.0, 1.0, 2.0, 2.0, 1.0, 2.0], student=["a", "a", "a", "a", "b", "b"],
                  accuracy=[0.4, 0.6, 0.7, 0.9, 0.2, 0.3], accuracy_ci_low=np.nan, accuracy_ci_high=np.nan)
    ax = plots.plot_tau(res, hue="student")
    lines = [c.lines[0] for c in ax.containers]
    assert len(lines) == 2
    assert lines[0].get_ydata().tolist() == pytest.approx([0.5, 0.8])  # mean over the two seeds of "a"
    assert lines[1].get_ydata().tolist() == pytest.approx([0.2, 0.3])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["student = a", "student = b"]


def test_plot_teacher_awareness_draws_two_bars_per_task():
    res = pd.DataFrame({"task": ["x", "x", "y", "y", "all", "all"], "teacher_aware": [False, True] * 3,
                        "accuracy": [0.1, 0.5, 0.2, 0.6, 0.15, 0.55], "accuracy_ci_low": np.nan,
                        "accuracy_ci_high": np.nan})
    ax = plots.plot_teacher_awareness(res)
    unaware, aware = ax.containers
    assert [b.get_height() for b in unaware] == pytest.approx([0.1, 0.2, 0.15])
    assert [b.get_height() for b in aware] == pytest.approx([0.5, 0.6, 0.55])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "all"]
    assert unaware.get_label() == "task-unaware teacher"
    with pytest.raises(ValueError, match="teacher_aware"):
        plots.plot_teacher_awareness(res.assign(teacher_aware=None))


def test_plot_before_after_groups_by_student_size_with_sft_first():
    res = pd.DataFrame({"task": "all", "student": ["prune:22", "prune:10", "prune:22", "prune:10"],
                        "method": ["sft", "sft", "word_kd", "word_kd"], "agreement": [0.3, 0.1, 0.6, 0.4],
                        "agreement_ci_low": np.nan, "agreement_ci_high": np.nan})
    ax = plots.plot_before_after(res)
    before, after = ax.containers
    assert [t.get_text() for t in ax.get_xticklabels()] == ["prune:10", "prune:22"]  # numeric order
    assert [b.get_height() for b in before] == pytest.approx([0.1, 0.3])
    assert [b.get_height() for b in after] == pytest.approx([0.4, 0.6])
    assert before.get_label().startswith("before KD")
    with pytest.raises(ValueError, match="method='sft'"):
        plots.plot_before_after(res.assign(method="word_kd"))


def test_plot_fidelity_gain_shows_the_spearman_statistic():
    runs = pd.DataFrame({"bleu": [0.1, 0.4, 0.2, 0.3, 0.5], "accuracy_gain": [0.05, 0.01, 0.0, 0.08, 0.03]})
    ax = plots.plot_fidelity_gain(runs)
    rho, p = sps.spearmanr(runs["bleu"], runs["accuracy_gain"])
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"Spearman ρ = {rho:.2f}, p = {p:.3g}, n = 5"]
    offsets = ax.collections[0].get_offsets()
    assert np.asarray(offsets).tolist() == runs[["bleu", "accuracy_gain"]].to_numpy().tolist()
    with pytest.raises(ValueError, match="baseline: sft"):
        plots.plot_fidelity_gain(runs.assign(accuracy_gain=np.nan))


def test_plot_token_distribution_histograms_every_token_per_model():
    tokens = data.tokens()
    ax = plots.plot_token_distribution(tokens, bins=10)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["kd", "sft"]
    assert len(ax.patches) == 2
    ax2 = plots.plot_token_distribution(tokens, metric="top1_agree", bins=4)
    # per example: two histograms whose counts add up to the 20 examples of each model
    counts = [np.histogram(p.groupby(["task", "example_id"])["top1_agree"].mean(), bins=4, range=(0, 1))[0].sum()
              for _, p in tokens.groupby("model_id")]
    assert counts == [20, 20] and ax2.get_ylabel() == "examples"


def test_plot_task_heatmap_shows_student_minus_teacher():
    ax = plots.plot_task_heatmap(data.examples(), teacher="teacher")
    image = ax.get_images()[0].get_array()
    assert image.shape == (2, 3)  # kd, sft x alpha, beta, all
    assert np.asarray(image) == pytest.approx(np.array([[-0.2, 0.2, 0.0], [-0.5, -0.1, -0.3]]))
    assert [t.get_text() for t in ax.texts] == ["-20.0", "+20.0", "+0.0", "-50.0", "-10.0", "-30.0"]
    with pytest.raises(ValueError, match="teacher's model_id"):
        plots.plot_task_heatmap(data.examples())


def test_plot_kl_fit_draws_the_teacher_and_both_fitted_students():
    from kdlens.analysis import fit_to_bimodal

    fit = fit_to_bimodal(steps=300)
    ax = plots.plot_kl_fit(fit)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[0] == "teacher (bimodal)"
    assert labels[1].startswith("forward KL: mode covering") and labels[2].startswith("reverse KL: mode seeking")
    assert ax.get_lines()[2].get_ydata() == pytest.approx(fit["reverse_kl"].to_numpy())
    with pytest.raises(ValueError, match="not both"):
        plots.plot_kl_fit(fit, steps=3)


def test_plot_training_loss_and_a_given_ax_is_used():
    fig, ax = plt.subplots()
    out = plots.plot_training_loss([{"step": 2, "loss": 1.0}, {"step": 1, "loss": 2.0}], ax=ax)
    assert out is ax and ax.get_lines()[0].get_xdata().tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="missing column"):
        plots.plot_training_loss([{"loss": 1.0}])
