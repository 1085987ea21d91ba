"""The report's findings: intervals, the paired comparison, findings.csv, the README block and the front page."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tdmpc_opt_lib.study import ablations, findings, front_page, plots, stats
from tdmpc_opt_lib.study.params import REPO, AblationParams


def test_t_interval_matches_the_textbook_formula():
    ci = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2      # t(0.975, 3) · sd / √4
    assert ci["estimate"] == 2.5 and ci["n"] == 4
    assert ci["ci95_low"] == pytest.approx(2.5 - half) and ci["ci95_high"] == pytest.approx(2.5 + half)
    assert ci["resolved"] and stats.half_width([1.0, 2.0, 3.0, 4.0]) == pytest.approx(half)
    one = stats.t_interval([5.0])
    assert one["estimate"] == 5.0 and math.isnan(one["ci95_low"]) and not one["resolved"]
    with pytest.raises(ValueError, match="finite numbers"):
        stats.t_interval([1.0, float("nan")])


def test_paired_effect_pairs_by_seed_and_states_whether_it_is_resolved():
    treated = pd.Series({3: 12.0, 1: 10.0, 2: 11.5})
    control = pd.Series({1: 9.0, 2: 10.0, 3: 11.0})          # differences 1, 1.5, 1 whatever the order
    eff = stats.paired_effect(treated, control)
    assert eff["estimate"] == pytest.approx(7 / 6) and eff["n"] == 3 and eff["resolved"]
    # a large seed-to-seed spread shared by both arms cancels in the pairing
    noisy = stats.paired_effect(pd.Series({1: 50.0, 2: 10.0, 3: 30.0}), pd.Series({1: 49.0, 2: 9.5, 3: 29.2}))
    assert noisy["ci95_high"] - noisy["ci95_low"] < 2 and noisy["resolved"]
    unresolved = stats.paired_effect(pd.Series({1: 11.0, 2: 9.0}), pd.Series({1: 10.0, 2: 10.0}))
    assert unresolved["estimate"] == 0 and not unresolved["resolved"]
    with pytest.raises(ValueError, match="each seed once"):
        stats.paired_effect(pd.Series({1: 1.0, 2: 2.0}), pd.Series({1: 1.0, 3: 2.0}))


def test_episode_interval_and_interval_from_a_standard_error():
    eps = pd.DataFrame({"task": ["a", "a", "b", "b"], "score": [10.0, 20.0, 30.0, 50.0]})
    ci = stats.episode_interval(eps)
    se = math.sqrt(50 / 2 + 200 / 2) / 2
    assert ci["estimate"] == 27.5 and ci["n"] == 4
    assert ci["ci95_high"] - ci["estimate"] == pytest.approx(4.302652729911275 * se)     # t(0.975, 2)
    assert stats.from_standard_error(-3.0, 1.0, 29)["resolved"]
    assert math.isnan(stats.from_standard_error(1.0, float("nan"), 29)["ci95_low"])


P = AblationParams(teacher="/t/teacher.pt", dataset="/d", d_coef=0.4, steps=100, batch_size=256,
                   d_coefs=(0.0, 0.4, 0.9), variants=("latent-pca",), seeds=(1, 2, 3, 4), other_seeds=(1, 2),
                   jobs=1, out_dir="/out")


def test_the_main_comparison_gets_more_seeds_than_the_other_points():
    pts = ablations.points(P)
    main = [p for p in pts if p["d_coef"] in (0.0, 0.4) and p.get("distill", "reward") == "reward"]
    assert sorted(p["seed"] for p in main) == [1, 1, 2, 2, 3, 3, 4, 4]
    others = [p for p in pts if p not in main]
    assert sorted((p["d_coef"], p.get("distill", "reward"), p["seed"]) for p in others) == [
        (0.4, "latent-pca", 1), (0.4, "latent-pca", 2), (0.9, "reward", 1), (0.9, "reward", 2)]


def _runs() -> pd.DataFrame:
    """Finished runs as :func:`~tdmpc_opt_lib.study.experiments.collect` returns them."""
    rows = []
    protocol = dict(steps=100, batch_size=256, eval_episodes=4, eval_mpc=True, episode_length=None, num_samples=256,
                    iterations=4)
    for seed, base in ((1, 30.0), (2, 40.0), (3, 35.0), (4, 45.0)):
        rows.append(dict(d_coef=0.0, distill="reward", seed=seed, score=base, teacher=None, **protocol))
        rows.append(dict(d_coef=0.4, distill="reward", seed=seed, score=base + 2 + 0.5 * (seed % 2), teacher="t",
                         **protocol))
    for seed in (1, 2):
        rows.append(dict(d_coef=0.9, distill="reward", seed=seed, score=30.0 + 10 * (seed - 1) - 1, teacher="t",
                         **protocol))
        rows.append(dict(d_coef=0.4, distill="latent-pca", seed=seed, score=30.0 + 10 * (seed - 1) + 1, teacher="t",
                         **protocol))
    rows.append(dict(d_coef=0.0, distill="reward", seed=9, score=99.0, **{**protocol, "eval_episodes": 1}))
    rows.append(dict(d_coef=0.4, distill="reward", seed=1, score=99.0, teacher="small", **protocol))
    rows.append(dict(d_coef=0.0, distill="reward", seed=8, score=99.0, **{**protocol, "steps": 50}))
    return pd.DataFrame(rows).assign(**{"task:a": lambda d: d.score, "task:b": lambda d: 2 * d.score})


def test_distillation_findings_from_runs():
    runs = findings.comparable(_runs(), P)
    assert 9 not in set(runs.seed) and 8 not in set(runs.seed)     # another protocol or training length
    assert "small" not in set(runs.teacher)                         # another teacher (Table 3)
    curve = findings.d_coef_curve(runs)
    assert curve.d_coef.tolist() == [0.0, 0.4, 0.9] and curve.seeds.tolist() == [4, 4, 2]
    assert curve.vs_scratch.iloc[1] == pytest.approx(2.25) and curve.vs_scratch.iloc[2] == pytest.approx(-1.0)
    assert math.isnan(curve.vs_scratch.iloc[0])
    table = pd.DataFrame(findings.distillation_rows(_runs(), P))
    keys = table.set_index("key")
    assert list(table.columns) == ["key", *findings.COLUMNS]
    assert keys.loc["effect@0.4", "estimate"] == pytest.approx(2.25) and keys.loc["effect@0.4", "ci95_low"] > 0
    assert keys.loc["scratch", "estimate"] == 37.5 and "4 seeds" in keys.loc["scratch", "finding"]
    assert keys.loc["best@0.4", "estimate"] == pytest.approx(39.75)
    assert keys.loc["variant@latent-pca", "estimate"] == pytest.approx(1.0)
    assert findings.per_seed(runs, 0.9).seed.tolist() == [1, 2]
    tasks = findings.task_effects(runs, 0.4).set_index("task")
    assert tasks.estimate.tolist() == pytest.approx([2.25, 4.5]) and tasks.seeds.tolist() == [4, 4]


def test_paper_table2_differences():
    t2 = findings.paper_table2().set_index(["batch_size", "steps"])["distilled - scratch"]
    assert t2[(256, 200_000)] == pytest.approx(3.81) and t2[(256, 1_000_000)] == pytest.approx(0.76)
    assert t2[(1024, 200_000)] == pytest.approx(-0.59) and t2[(1024, 337_000)] == pytest.approx(-1.50)


def _table() -> pd.DataFrame:
    rows = findings.distillation_rows(_runs(), P)
    rows.append(findings.row("released", "released student fp16, MPPI 512x6, our evaluation (120 episodes, 30 tasks)",
                             {"estimate": 30.0, "ci95_low": 27.0, "ci95_high": 33.0}, findings.SCORE, "05_quantization"))
    rows.append(findings.row("released-vs-paper", "released minus the paper",
                             {"estimate": 1.55, "ci95_low": -1.45, "ci95_high": 4.55}, findings.POINTS,
                             "05_quantization"))
    rows.append(findings.row("released-size@int8", "int8 size", {"estimate": 1.44}, "MiB", "05_quantization"))
    rows.append(findings.row("released-vs-fp16@int8", "int8 minus fp16",
                             {"estimate": 0.9, "ci95_low": -2.9, "ci95_high": 4.7}, findings.POINTS, "05_quantization"))
    return pd.DataFrame(rows)


def test_findings_csv_and_the_readme_block(tmp_path):
    table = _table()
    findings.write(table, tmp_path)
    back = findings.read(tmp_path)
    assert list(back.columns) == findings.COLUMNS and len(back) == len(table)
    block = findings.readme_block(back)
    assert block.startswith(findings.README_BEGIN) and block.endswith(findings.README_END)
    assert "2.25 normalized points, 95 % CI" in block and "deployable size in MiB: " in block and "1.44" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\n{findings.readme_block(back.iloc[:1])}\n\nafter\n")
    assert findings.update_readme(readme, back) and not findings.update_readme(readme, back)
    text = readme.read_text()
    assert findings.readme_section(text) == block and text.endswith("\n\nafter\n")
    with pytest.raises(ValueError, match="markers missing"):
        findings.readme_section("# no block")


def test_readme_results_agree_with_the_committed_findings():
    """README.md's generated block is the one findings.csv gives (`python -m tdmpc_opt_lib report` writes both)."""
    table = findings.read(REPO / "reports" / "results")
    assert not table.empty, "reports/results/findings.csv is missing: run `make report`"
    assert findings.readme_section((REPO / "README.md").read_text(encoding="utf-8")) == findings.readme_block(table)


def test_front_page_states_each_finding_with_its_interval_and_notebook():
    table = _table()
    text = front_page.distillation(table)
    assert "<b>+2.25 (95 % CI +1.79 to +2.71)</b>" in text
    assert "resolved: the interval excludes 0 (a gain)" in text and 'href="04_ablations.html"' in text
    assert "+3.81 at batch 256 / 200k updates" in text and "-1.50 at batch 1024 / 337k updates" in text and "+0.76 at batch 256 / 1M" in text
    best = front_page.best_d_coef(table)
    assert "<b>d_coef 0.4</b>" in best and "d_coef 0.9: -1.00" in best and "peaks at 0.4" in best
    quant = front_page.quantization(table)
    assert "int8 1.44 MiB, +0.90 (95 % CI -2.90 to +4.70)" in quant and "05_quantization.html" in quant
    assert "<b>30.00 (95 % CI 27.00 to 33.00)</b>" in front_page.released(table)
    empty = pd.DataFrame(columns=["key", *findings.COLUMNS])
    assert front_page.distillation(empty).startswith("Not measured") and "peaks at 0.4" in front_page.best_d_coef(empty)


def test_paired_differences_figure():
    per_seed = pd.DataFrame({"seed": [1, 2, 3], "difference": [1.0, 2.0, 3.0]})
    fig = plots.paired_differences(per_seed, {"estimate": 2.0, "ci95_low": 0.5, "ci95_high": 3.5}, "t")
    assert list(fig.data[0].y) == [1.0, 2.0, 3.0] and list(fig.data[0].x) == ["1", "2", "3"]
    assert [s.y0 for s in fig.layout.shapes if s.type == "line"] == [2.0, 0]


def test_front_page_figures_from_saved_runs(tmp_path):
    import json

    for i, r in _runs().assign(steps=20, batch_size=32).iterrows():       # the smoke profile's base point
        run = tmp_path / "runs" / f"run{i}"
        run.mkdir(parents=True)
        tasks = {c[5:]: r[c] for c in r.index if c.startswith("task:")}
        fields = {k: (None if pd.isna(v) else v) for k, v in r.items() if not k.startswith("task:")}
        (run / "result.json").write_text(json.dumps({**fields, "run": f"run{i}", "tasks": tasks}, default=float))
    figs = front_page.figures(tmp_path, "smoke")
    titles = [f.layout.title.text for f in figs]
    assert titles[0].startswith("Normalized score vs d_coef") and titles[1].startswith("Reward distillation")
    assert list(figs[0].data[0].x) == [0.0, 0.4, 0.9] and len(figs[1].data[0].y) == 4
    page = front_page.page([("04_ablations", 12.0)], tmp_path, "smoke", _table(), "<h3>t</h3>")
    assert page.count("Plotly.newPlot") == len(figs) and "src='plotly.min.js'" in page
    assert '<a href="04_ablations.html">04_ablations</a> (12 s)' in page and "<h3>1. Does reward" in page
