"""Evaluation protocol and the `evaluate` command (smoke scale: short or policy-only episodes)."""
from __future__ import annotations

import pandas as pd
import pytest

from tdmpc_opt_lib.cli import main
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.evaluation import evaluate, normalized_score, resolve_tasks, task_table
from tdmpc_opt_lib.planner import PlannerConfig
from tdmpc_opt_lib.world_model import WorldModel

FP16 = "checkpoints/mt30_1M_steps_045dist_fp16.pt"


def test_resolve_tasks():
    m = WorldModel(model_config(1, "mt30"))
    assert len(resolve_tasks(m, None)) == 30 and len(resolve_tasks(m, "mt30")) == 30
    assert resolve_tasks(m, "cup-catch, pendulum-spin") == ["cup-catch", "pendulum-spin"]
    with pytest.raises(ValueError, match="unknown task 'cup-catc'.*known tasks"):
        resolve_tasks(m, "cup-catc")


def test_mpc_smoke_run_is_deterministic():
    m = WorldModel(model_config(1, ["cartpole-balance", "reacher-easy"])).eval()
    kw = dict(episodes=2, seed=3, planner_cfg=PlannerConfig(num_samples=32, num_elites=4, num_pi_trajs=2, iterations=2),
              episode_length=10, compile=False, progress=False)
    a, b = evaluate(m, **kw), evaluate(m, **kw)
    assert list(a.columns) == ["task", "episode", "seed", "return", "score", "steps"]
    assert len(a) == 4 and (a.steps == 10).all()
    pd.testing.assert_frame_equal(a, b)
    assert a.seed.tolist() == [3000, 3001, 3000, 3001]
    assert task_table(a).index.tolist() == ["cartpole-balance", "reacher-easy"]


def test_cli_policy_only_on_released_student(shared_dir, tmp_path, capsys):
    out = tmp_path / "res.csv"
    assert main(["evaluate", "--checkpoint", str(shared_dir / FP16), "--tasks", "cup-catch,finger-turn-easy",
                 "--episodes", "1", "--no-mpc", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "normalized score" in printed and "cup-catch" in printed
    df = pd.read_csv(out)
    assert len(df) == 2 and (df.steps == 500).all()
    # the released student solves cup-catch from its policy prior alone (≈ 99 in our runs)
    assert df.set_index("task").loc["cup-catch", "score"] > 90
    assert normalized_score(df) == pytest.approx(df.score.mean())


def test_cli_errors_are_clear(shared_dir, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(shared_dir / FP16), "--tasks", "walker-wlak", "--no-mpc"]) == 2
    assert "unknown task 'walker-wlak'" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(shared_dir / FP16), "--episodes", "0", "--no-mpc"]) == 2
    assert "'episodes' must be an integer >= 1, got 0" in capsys.readouterr().err
