"""Write analysis_reference.json: reference values for tests/unit/test_analysis_*.py.

Two kinds of values (DESIGN rule 8):

* ``published``: numbers printed in a textbook, R's documentation or the paradox paper, typed
  in by hand with their source; this script only stores them.
* ``direct``: scipy/statsmodels called directly on small fixed inputs, without kdlens, so the
  tests compare kdlens' wrappers with an independent call made once and stored.

Run from the repository root: ``python tests/reference/make_analysis_reference.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

OUT = Path(__file__).with_name("analysis_reference.json")

# R datasets::PlantGrowth (weight by group) and datasets::sleep (extra by group, paired by ID)
PLANT = {
    "ctrl": [4.17, 5.58, 5.18, 6.11, 4.50, 4.61, 5.17, 4.53, 5.33, 5.14],
    "trt1": [4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69],
    "trt2": [6.31, 5.12, 5.54, 5.50, 5.37, 5.29, 4.92, 6.15, 5.80, 5.26],
}
SLEEP = {
    "group1": [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0],
    "group2": [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4],
}
# Agresti (2002), Categorical Data Analysis, Table 10.1: approval of the prime minister, two surveys
AGRESTI_TABLE = [[794, 150], [86, 570]]
PVALUES = [0.01, 0.04, 0.03, 0.005]
CORR_X = [1.2, 2.3, 2.9, 4.1, 5.0, 5.2, 6.8, 7.1, 8.4, 9.9, 10.3, 11.0]
CORR_Y = [2.0, 1.9, 3.5, 3.1, 4.8, 6.0, 5.1, 7.7, 7.0, 9.5, 8.8, 12.1]


def main() -> None:
    rng = np.random.default_rng(7)
    one_sample = np.round(rng.normal(0.8, 2.0, 15), 4).tolist()
    pearson = stats.pearsonr(CORR_X, CORR_Y)
    ci = pearson.confidence_interval(0.95)
    paired = stats.ttest_rel(SLEEP["group1"], SLEEP["group2"])
    wil = stats.wilcoxon(SLEEP["group1"], SLEEP["group2"], zero_method="wilcox")
    exact_table = [[10, 2], [9, 5]]
    ref = {
        "inputs": {"plant": PLANT, "sleep": SLEEP, "agresti_table": AGRESTI_TABLE, "pvalues": PVALUES,
                   "corr_x": CORR_X, "corr_y": CORR_Y, "one_sample": one_sample, "exact_table": exact_table},
        "published": {
            "plantgrowth_anova": {"F": 4.846, "df1": 2, "df2": 27, "p": 0.01591,
                                  "source": "R: summary(aov(weight ~ group, PlantGrowth))"},
            "sleep_paired_t": {"t": -4.0621, "df": 9, "p": 0.002833, "ci": [-2.4598858, -0.7001142],
                               "source": "R: t.test(sleep$extra[1:10], sleep$extra[11:20], paired = TRUE)"},
            "agresti_mcnemar": {"chi2_uncorrected": 17.36, "source": "Agresti (2002) CDA, section 10.1.1, z = 4.17"},
            "holm": {"p_adj": [0.03, 0.06, 0.06, 0.02], "source": "by hand: sorted p x (m - rank + 1), cumulative max"},
            "bh": {"p_adj": [0.02, 0.04, 0.04, 0.02], "source": "by hand: sorted p x m / rank, cumulative min from the top"},
            "paper_math_average": {
                "pooled_t": 8.47, "pooled_p": 5.7e-10, "pooled_n": 33, "GKD_t": 5.10, "RevKD_t": 6.31,
                "SeqKD_t": 3.72, "anova_F": 2.27, "anova_p": 0.12, "spearman_student_size": -0.66,
                "source": "paradox paper (ACL Findings 2025) via issue 7",
            },
        },
        "direct": {
            "ttest_1samp_greater": dict(zip(("t", "p"), map(float, stats.ttest_1samp(one_sample, 0, alternative="greater")),
                                            strict=True)),
            "pearson": {"r": float(pearson.statistic), "p": float(pearson.pvalue), "ci": [float(ci.low), float(ci.high)]},
            "spearman": dict(zip(("rho", "p"), map(float, stats.spearmanr(CORR_X, CORR_Y)), strict=True)),
            "kendall": dict(zip(("tau", "p"), map(float, stats.kendalltau(CORR_X, CORR_Y)), strict=True)),
            "sleep_paired_t": {"t": float(paired.statistic), "p": float(paired.pvalue)},
            "sleep_wilcoxon": {"statistic": float(wil.statistic), "p": float(wil.pvalue)},
            "mcnemar_exact": {"statistic": float(mcnemar(exact_table, exact=True).statistic),
                              "p": float(mcnemar(exact_table, exact=True).pvalue)},
            "agresti_mcnemar_corrected": {"statistic": float(mcnemar(AGRESTI_TABLE, exact=False).statistic),
                                          "p": float(mcnemar(AGRESTI_TABLE, exact=False).pvalue)},
            "holm": multipletests(PVALUES, method="holm")[1].tolist(),
            "fdr_bh": multipletests(PVALUES, method="fdr_bh")[1].tolist(),
        },
    }
    OUT.write_text(json.dumps(ref, indent=2) + "\n")


if __name__ == "__main__":
    main()
