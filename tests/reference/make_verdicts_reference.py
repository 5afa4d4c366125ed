"""Write verdicts_reference.json: reference values for tests/unit/test_analysis_verdicts.py.

Two kinds of values (DESIGN rule 8):

* ``published``: numbers printed by R packages or textbooks, typed in by hand with their source:
  TOSTER's equivalence tests (Lakens 2017; the values of TOSTER's own known-results tests), lme4's
  sleepstudy fit (Bates et al. 2015), and Cohen's/G*Power's sample size for d = 0.5.
* ``direct``: computed here without kdlens, by a different route than kdlens takes: the partial
  Spearman correlation from the inverse of the rank correlation matrix (kdlens residualizes by least
  squares), and statsmodels' ``TTestPower`` for the number of seeds.

Run from the repository root: ``python tests/reference/make_verdicts_reference.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestPower

OUT = Path(__file__).with_name("verdicts_reference.json")

# fixed inputs for the partial correlation: y goes with x only through z (a confounder), w is noise
PARTIAL_X = [3.1, 4.7, 2.2, 5.9, 6.3, 1.8, 7.4, 5.0, 8.8, 3.6, 9.1, 6.7, 2.9, 7.9, 4.1, 8.2]
PARTIAL_Y = [2.0, 3.3, 1.1, 4.0, 5.7, 1.9, 5.1, 3.0, 7.2, 3.4, 6.6, 5.9, 1.5, 6.1, 2.2, 7.7]
PARTIAL_Z = [1.0, 2.0, 1.0, 3.0, 3.0, 1.0, 4.0, 2.0, 5.0, 2.0, 5.0, 3.0, 1.0, 4.0, 2.0, 4.0]
PARTIAL_W = [0.3, -1.2, 0.8, 0.1, -0.4, 1.5, -0.9, 0.6, 0.2, -0.1, 1.1, -0.7, 0.4, -1.6, 0.9, 0.0]


def partial_from_precision(columns: list[list[float]]) -> float:
    """Partial correlation of the first two columns given the rest: -P_01 / sqrt(P_00 P_11), with P
    the inverse of the Spearman (rank) correlation matrix."""
    ranks = np.column_stack([stats.rankdata(c) for c in columns])
    precision = np.linalg.inv(np.corrcoef(ranks, rowvar=False))
    return float(-precision[0, 1] / np.sqrt(precision[0, 0] * precision[1, 1]))


def main() -> None:
    rx, ry, rz = (stats.rankdata(v) for v in (PARTIAL_X, PARTIAL_Y, PARTIAL_Z))
    r_xy, r_xz, r_yz = np.corrcoef(rx, ry)[0, 1], np.corrcoef(rx, rz)[0, 1], np.corrcoef(ry, rz)[0, 1]
    first_order = (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz ** 2) * (1 - r_yz ** 2))
    power = TTestPower()
    ref = {
        "inputs": {"partial": {"x": PARTIAL_X, "y": PARTIAL_Y, "z": PARTIAL_Z, "w": PARTIAL_W}},
        "published": {
            "toster_one_sample_raw": {
                "call": "TOSTone.raw(m=0.52, mu=0.5, sd=0.5, n=300, low_eqbound=-0.1, high_eqbound=0.1, alpha=0.05)",
                "m": 0.52, "mu": 0.5, "sd": 0.5, "n": 300, "bounds": [-0.1, 0.1],
                "diff": 0.02, "t1": 4.156922, "p1": 0.00002108451, "t2": -2.771281, "p2": 0.002966762, "df": 299,
                "ci_tost": [-0.02763041, 0.06763041],
                "source": "R TOSTER, tests/testthat/test-known_results.R (Lakens/TOSTER on GitHub)",
            },
            "toster_paired_raw": {
                "call": "TOSTpaired.raw(n=65, m1=5.83, m2=5.75, sd1=1.17, sd2=1.30, r12=0.745, "
                        "low_eqbound=-0.34, high_eqbound=0.34)",
                "n": 65, "m1": 5.83, "m2": 5.75, "sd1": 1.17, "sd2": 1.30, "r12": 0.745, "bounds": [-0.34, 0.34],
                "t1": 3.803437, "p1": 0.0001606103, "t2": -2.354508, "p2": 0.01081349, "df": 64,
                "ci_tost": [-0.1043032, 0.2643032],
                "source": "R TOSTER, tests/testthat/test-known_results.R (the Lakens 2017 primer's example)",
            },
            "toster_r": {
                "call": "TOSTr(n=100, r=0.02, low_eqbound_r=-0.3, high_eqbound_r=0.3, alpha=0.05)",
                "n": 100, "r": 0.02, "bounds": [-0.3, 0.3], "p1": 0.0005863917, "p2": 0.002176282,
                "ci_tost": [-0.145957, 0.1848622], "ci_95": [-0.1771139, 0.2155713],
                "source": "R TOSTER, tests/testthat/test-known_results.R",
            },
            "lme4_sleepstudy": {
                "call": "lmer(Reaction ~ Days + (Days | Subject), sleepstudy)  # REML",
                "fixed": {"Intercept": 251.405, "Days": 10.467}, "std_err": {"Intercept": 6.825, "Days": 1.546},
                "var_intercept": 612.10, "var_days": 35.07, "residual_var": 654.94,
                "source": "lme4 summary output (Bates, Maechler, Bolker & Walker 2015, J. Stat. Softw. 67(1))",
            },
            "one_sample_power_d05": {
                "d": 0.5, "alpha": 0.05, "power": 0.8, "n": 34,
                "source": "G*Power / Cohen (1988): one-sample t, d = 0.5, two-sided alpha .05, power .80 -> 34",
            },
        },
        "direct": {
            "partial_spearman_xy_z_first_order": float(first_order),
            "partial_spearman_xy_zw_precision": partial_from_precision([PARTIAL_X, PARTIAL_Y, PARTIAL_Z, PARTIAL_W]),
            "spearman_xy": float(stats.spearmanr(PARTIAL_X, PARTIAL_Y).statistic),
            "ttest_power_n_d05": float(power.solve_power(effect_size=0.5, alpha=0.05, power=0.8)),
            "ttest_power_n_d02": float(power.solve_power(effect_size=0.2, alpha=0.05, power=0.8)),
            "ttest_power_d_n5": float(power.solve_power(effect_size=None, nobs=5, alpha=0.05, power=0.8)),
        },
    }
    OUT.write_text(json.dumps(ref, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
