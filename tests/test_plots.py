"""Figures: what the report's plots draw from their tables."""
from __future__ import annotations

import pandas as pd

from tdmpc_opt_lib.study import plots


def test_ablation_draws_the_seeds_standard_error_as_error_bars():
    ours = pd.DataFrame({"label": ["reward", "reward"], "d_coef": [0.4, 0.0], "score": [30.0, 25.0],
                         "score_se": [2.0, float("nan")]})
    paper = pd.DataFrame({"label": ["reward"], "d_coef": [0.4], "score": [50.0]})
    fig = plots.ablation(ours, paper, "d_coef", "scores")
    assert list(fig.data[0].x) == [0.0, 0.4] and list(fig.data[0].error_y.array) == [0.0, 2.0]
    assert fig.data[1].error_y.array is None                      # the paper's single numbers: no bars
    one_seed = plots.ablation(ours.assign(score_se=float("nan")), paper, "d_coef", "scores")
    assert one_seed.data[0].error_y.array is None


def test_ablation_prefers_the_95_percent_interval():
    ours = pd.DataFrame({"label": ["reward", "reward"], "d_coef": [0.0, 0.4], "score": [25.0, 30.0],
                         "score_se": [1.0, 2.0], "score_ci95": [4.3, 8.6]})
    fig = plots.ablation(ours, ours.iloc[:0], "d_coef", "scores")
    assert list(fig.data[0].error_y.array) == [4.3, 8.6]
