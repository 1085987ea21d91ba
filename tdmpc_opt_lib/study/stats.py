"""Intervals of the report's findings.

Every interval is a two-sided 95 % Student-t interval. For the paired comparison of two training recipes, each
training seed trains one student per recipe, both students are evaluated on the same episodes (same tasks and
environment seeds), and the per-seed difference of their normalized scores is one sample: the interval is
``mean(d) ± t(0.975, n-1) · sd(d) / √n`` over the ``n`` seeds. Evaluation noise (which episodes were drawn)
and training noise (which seed) are both inside ``d``, so the interval covers both; pairing by episode removes
the part of the episode-to-episode spread the two students share.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

LEVEL = 0.95


def from_standard_error(estimate: float, se: float, dof: int) -> dict[str, float]:
    """``estimate`` with the 95 % t-interval ``estimate ± t(0.975, dof) · se`` (``ci95_low``, ``ci95_high``; NaN
    without degrees of freedom or a finite ``se``) and ``resolved`` (the interval excludes 0)."""
    lo = hi = math.nan
    if dof >= 1 and np.isfinite(se):
        half = float(_scipy_stats.t.ppf(0.5 + LEVEL / 2, dof) * se)
        lo, hi = estimate - half, estimate + half
    return {"estimate": float(estimate), "ci95_low": lo, "ci95_high": hi,
            "resolved": bool(np.isfinite(lo) and (lo > 0 or hi < 0))}


def t_interval(values: Sequence[float] | np.ndarray | pd.Series) -> dict[str, float]:
    """Mean of ``values`` with its 95 % t-interval over them (:func:`from_standard_error` with ``sd / √n`` and
    ``n - 1`` degrees of freedom) and ``n``."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"t_interval needs a non-empty list of finite numbers, got {values!r}")
    se = x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return {**from_standard_error(float(x.mean()), se, len(x) - 1), "n": len(x)}


def half_width(values: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Half-width of :func:`t_interval` (NaN for one value)."""
    ci = t_interval(values)
    return ci["ci95_high"] - ci["estimate"]


def paired_effect(treated: pd.Series, control: pd.Series) -> dict[str, float]:
    """``treated - control`` paired by index (training seed): the mean per-seed difference with its 95 %
    t-interval over seeds (:func:`t_interval`). Both series must cover the same seeds."""
    if set(treated.index) != set(control.index) or treated.index.has_duplicates or control.index.has_duplicates:
        raise ValueError(f"a paired effect needs each seed once in both arms, got {sorted(treated.index)} and "
                         f"{sorted(control.index)}")
    return t_interval((treated - control.reindex(treated.index)).to_numpy())


def episode_interval(episodes: pd.DataFrame) -> dict[str, float]:
    """Normalized score of one model's per-episode results (``task``, ``score``) with a 95 % interval over
    episodes: the mean over tasks of the task means, ``± t · se`` where ``se² = Σ_task var_task / n_task / T²``
    (episodes independent, T tasks) and t has ``Σ (n_task - 1)`` degrees of freedom; ``n`` episodes."""
    g = episodes.groupby("task", sort=False)["score"]
    means, var, n = g.mean(), g.var(ddof=1).fillna(0.0), g.size()
    se = math.sqrt(float((var / n).sum())) / len(means)
    return {**from_standard_error(float(means.mean()), se, int((n - 1).sum())), "n": int(n.sum())}
