"""04_ablations' grid around a base point, its labels and the mapping of our rows onto the paper's tables."""
from __future__ import annotations

import pandas as pd
import pytest

from tdmpc_opt_lib.study import ablations, experiments
from tdmpc_opt_lib.study.params import AblationParams

P = AblationParams(teacher="/t/teacher.pt", dataset="/d", d_coef=0.4, steps=100, batch_size=256, d_coefs=(0.0, 0.4),
                   variants=("latent-pca",), batch_sizes=(1024,), step_counts=(), teachers=("/t/small.pt",),
                   seeds=(1, 2), jobs=1, out_dir="/out")


def test_points_vary_one_axis_at_a_time_once_per_seed():
    pts = ablations.points(P)
    base = ablations.base_point(P)
    one_seed = [base | {"d_coef": 0.0}, base, base | {"distill": "latent-pca"}, base | {"teacher": "/t/small.pt"},
                base | {"d_coef": 0.0, "batch_size": 1024}, base | {"batch_size": 1024}]
    assert pts == [p | {"seed": s} for s in (1, 2) for p in one_seed]
    table = ablations.points_table(pts[:2])
    assert list(table.columns) == ["teacher", "d_coef", "steps", "batch_size", "seed"]
    assert table.teacher.tolist() == ["teacher.pt", "teacher.pt"]


def _results():
    rows = [dict(d_coef=0.0, distill="reward", steps=100, batch_size=256, teacher="-", seed=1, score=10.0),
            dict(d_coef=0.4, distill="reward", steps=100, batch_size=256, teacher="teacher.pt", seed=1, score=14.0),
            dict(d_coef=0.4, distill="reward", steps=100, batch_size=256, teacher="teacher.pt", seed=2, score=16.0),
            dict(d_coef=0.4, distill="latent-pca", steps=100, batch_size=256, teacher="teacher.pt", seed=1, score=9.0),
            dict(d_coef=0.4, distill="reward", steps=100, batch_size=256, teacher="small.pt", seed=1, score=12.0),
            dict(d_coef=0.4, distill="reward", steps=100, batch_size=1024, teacher="teacher.pt", seed=1, score=20.0)]
    return pd.DataFrame(rows).assign(**{"task:x": lambda d: d.score})


def test_labels_and_paper_rows():
    results = ablations.with_labels(_results(), P)
    assert results.columns[0] == "label"
    assert results.label.tolist() == ["from scratch", "reward d_coef 0.4", "reward d_coef 0.4",
                                      "latent-pca d_coef 0.4", "reward d_coef 0.4 (teacher small.pt)",
                                      "reward d_coef 0.4"]
    means = experiments.over_seeds(results)
    base = ablations.at_base(means, P)
    assert base.label.tolist() == ["from scratch", "reward d_coef 0.4", "latent-pca d_coef 0.4"]
    t1 = ablations.table1(base)
    assert t1.loc["reward d_coef 0.4", "ours (MT-mini)"] == 15.0 and t1.loc["reward d_coef 0.4", "seeds"] == 2
    assert t1.loc["from scratch", "paper (MT30)"] == 14.04 and t1.loc["latent-pca d_coef 0.4", "paper (MT30)"] == 8.78
    assert t1.loc["reward d_coef 0.4", "paper (MT30)"] == 17.85 and "latent-linear d_coef 0.4" not in t1.index
    ours, theirs = ablations.d_coef_curves(base)
    assert ours.d_coef.tolist() == [0.0, 0.4] and len(theirs) == 7 and set(theirs.label) == set(ours.label)
    other = ablations.other_axes(means, P)
    assert other.label.tolist() == ["reward d_coef 0.4", "reward d_coef 0.4 (teacher small.pt)"]
    assert other.batch_size.tolist() == [1024, 256]
    assert set(ablations.paper_other_axes().table) == {2, 3}
    summary = ablations.summary(means)
    assert summary.index[1] == "reward d_coef 0.4 (100 steps, batch 256)"
    assert list(summary.columns) == ["normalized score", "s.e. over seeds", "seeds"]
    assert summary.iloc[1]["s.e. over seeds"] == pytest.approx(1.0)


def test_every_paper_row_named_exists():
    from tdmpc_opt_lib.study import paper
    assert set(ablations.TABLE1_ROWS.values()) <= set(paper.table(1).setting)


def test_the_base_point_is_trained_once_when_an_axis_repeats_it():
    """A batch size or step count equal to the base point's gives the base point again: it runs once per seed."""
    import json
    from tdmpc_opt_lib.study import params
    P = params.resolve("04_ablations", "smoke", batch_sizes=(params.resolve("04_ablations", "smoke").batch_size, 64))
    pts = ablations.points(P)
    assert len({json.dumps(p, sort_keys=True, default=str) for p in pts}) == len(pts)
