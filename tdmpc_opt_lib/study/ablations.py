"""The ablations of ``04_ablations``: the grid of distillation runs around a base point, their labels, and our
results beside the rows of the paper's Tables 1-3."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import paper
from .experiments import grid, unique
from .params import AblationParams

# our label at the base point -> the paper's Table 1 row
TABLE1_ROWS = {"from scratch": "baseline (no distill)", "reward d_coef 0.4": "d_coef 0.4",
               "latent-linear d_coef 0.4": "reward+next-state (linear projection)",
               "latent-pca d_coef 0.4": "reward+next-state (PCA)"}
D_COEF_CURVE = "reward distillation (0 = from scratch)"


def base_point(P: AblationParams) -> dict[str, Any]:
    """The 03_distill parameters every axis varies around."""
    return {"teacher": P.teacher, "dataset": P.dataset, "d_coef": P.d_coef, "steps": P.steps,
            "batch_size": P.batch_size, "out_dir": P.out_dir, "device": P.device}


def points(P: AblationParams) -> list[dict[str, Any]]:
    """Every run of the sweep: Table 1 (d_coef, latent variants, teachers) around the base point, Table 2 (batch
    size, steps) from scratch and distilled; the main comparison (the base point and from scratch) once per seed of
    ``seeds``, every other grid point once per seed of ``other_seeds``; seed by seed."""
    base = base_point(P)
    found = grid(base, d_coef=P.d_coefs, distill=P.variants, teacher=P.teachers)
    found += grid({**base, "d_coef": 0.0}, batch_size=P.batch_sizes, steps=P.step_counts)
    found = unique(found + grid(base, batch_size=P.batch_sizes, steps=P.step_counts))   # the base may recur
    main = [base, {**base, "d_coef": 0.0}]
    seeds = list(dict.fromkeys([*P.seeds, *P.other_seeds]))
    return [{**p, "seed": s} for s in seeds for p in found if s in (P.seeds if p in main else P.other_seeds)]


def points_table(points: list[dict[str, Any]]) -> pd.DataFrame:
    """The grid as a table: teachers by file name, without the folders every point shares."""
    return pd.DataFrame(points).assign(teacher=lambda d: d.teacher.map(lambda t: Path(t).name if t else None)).drop(
        columns=["out_dir", "dataset", "device"])


def main_teacher(P: AblationParams) -> str:
    return Path(P.teacher).name if P.teacher else "-"


def with_labels(results: pd.DataFrame, P: AblationParams) -> pd.DataFrame:
    """``results`` of :func:`~.experiments.run_grid` with a first ``label`` column (``from scratch``,
    ``reward d_coef 0.4``, ``... (teacher mt30-48M.pt)`` for another teacher than the base point's)."""
    other = lambda t: t not in ("-", main_teacher(P))  # noqa: E731
    labels = [("from scratch" if r.d_coef == 0 else f"{r.distill} d_coef {r.d_coef:g}")
              + (f" (teacher {r.teacher})" if other(r.teacher) else "") for r in results.itertuples()]
    return results.assign(label=labels)[["label", *results.columns]]


def at_base(means: pd.DataFrame, P: AblationParams) -> pd.DataFrame:
    """Configurations with the base point's steps, batch size and teacher (Table 1)."""
    return means[(means.steps == P.steps) & (means.batch_size == P.batch_size)
                 & means.teacher.isin(["-", main_teacher(P)])]


def paper_d_coef_curve() -> pd.DataFrame:
    """The paper's Table 1 along d_coef (0 = from scratch), labelled for :func:`~.plots.ablation`."""
    t1 = paper.table(1)
    return t1[t1.d_coef.notna()].assign(label=D_COEF_CURVE)


def d_coef_curves(base_rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ours, the paper's) score along d_coef with reward distillation, for :func:`~.plots.ablation`."""
    return base_rows[base_rows.distill == "reward"].assign(label=D_COEF_CURVE), paper_d_coef_curve()


def table1(base_rows: pd.DataFrame) -> pd.DataFrame:
    """Table 1 side by side: our mean score, its standard error and seeds at the base point, the paper's row."""
    ours = base_rows.set_index("label")[["score", "score_se", "seeds"]].rename(
        columns={"score": "ours (MT-mini)", "score_se": "ours: s.e. over seeds"})
    reported = paper.table(1).set_index("setting").score
    theirs = pd.Series({name: reported.get(row) for name, row in TABLE1_ROWS.items()}, name="paper (MT30)")
    return pd.concat([ours, theirs], axis=1).loc[lambda d: d["ours (MT-mini)"].notna()]


def other_axes(means: pd.DataFrame, P: AblationParams) -> pd.DataFrame:
    """Configurations off the base point's steps or batch size (Table 2), then other teachers (Table 3)."""
    t2 = means[(means.batch_size != P.batch_size) | (means.steps != P.steps)]
    t3 = means[~means.teacher.isin(["-", main_teacher(P)])]
    return pd.concat([t2, t3])[["label", "batch_size", "steps", "score", "score_se", "seeds"]]


def paper_other_axes() -> pd.DataFrame:
    """The paper's Tables 2 and 3."""
    return pd.concat([paper.table(2), paper.table(3)])[["table", "setting", "method", "batch_size", "steps", "score"]]


def summary(means: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration for the report index: score, its standard error over seeds, seeds."""
    out = means.set_index("label")[["score", "score_se", "seeds"]].set_axis(
        ["normalized score", "s.e. over seeds", "seeds"], axis=1).round(3)
    out.index = [f"{i} ({r.steps} steps, batch {r.batch_size})" for i, r in zip(out.index, means.itertuples())]
    return out
