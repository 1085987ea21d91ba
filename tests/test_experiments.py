"""Cached distillation runs: names keyed by content, one-axis grids, results collected from run folders."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from tdmpc_opt_lib import data
from tdmpc_opt_lib.study import experiments
from tdmpc_opt_lib.study.params import DistillParams
from tdmpc_opt_lib.checkpoints import save_checkpoint
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.world_model import WorldModel

TASKS = ["cartpole-balance", "cup-catch"]


@pytest.fixture
def params(tmp_path):
    ds = data.make_synthetic(tmp_path / "ds", transitions=400, tasks=TASKS, episode_length=20)
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(WorldModel(model_config(None, TASKS, enc_dim=16, mlp_dim=16, latent_dim=16, task_dim=4)), teacher)
    P = DistillParams(d_coef=0.4, distill="reward", steps=6, batch_size=8, model_size=1, seed=1, teacher=str(teacher),
                      dataset=str(ds), eval_episodes=1, eval_mpc=False, episode_length=5, out_dir=str(tmp_path / "out"))
    P.validate()
    return P


def test_run_names_follow_content_not_paths(params, tmp_path):
    name = experiments.run_name(params)
    assert name.startswith("reward-d0.4-size1-bs8-6steps-seed1-")
    moved = shutil.copy(params.teacher, tmp_path / "elsewhere.pt")
    assert experiments.run_name(replace(params, teacher=moved)) == name          # same file content
    assert experiments.run_name(replace(params, d_coef=0.9)) != name
    scratch = replace(params, d_coef=0.0)
    assert experiments.run_name(scratch).startswith("scratch-d0-")
    assert experiments.run_name(replace(scratch, teacher=None)) == experiments.run_name(scratch)  # teacher unused
    # the planner setting counts only when the evaluation plans
    assert experiments.run_name(replace(params, num_samples=64)) == name
    planned = replace(params, eval_mpc=True)
    assert experiments.run_name(replace(planned, num_samples=64)) != experiments.run_name(planned)
    assert experiments.eval_seed(params) == params.seed


def test_grid_varies_one_axis_at_a_time_without_duplicates():
    base = {"d_coef": 0.4, "steps": 100, "batch_size": 256}
    points = experiments.grid(base, d_coef=[0.0, 0.4, 0.9], batch_size=[256, 1024])
    assert points == [{**base, "d_coef": 0.0}, base, {**base, "d_coef": 0.9}, {**base, "batch_size": 1024}]


def test_over_seeds_averages_each_configuration():
    import pandas as pd
    runs = pd.DataFrame([
        dict(d_coef=0.4, distill="reward", steps=100, teacher="t", seed=1, run="a", score=30.0, train_s=10.0,
             **{"task:x": 20.0, "task:y": 40.0}),
        dict(d_coef=0.0, distill="reward", steps=100, teacher=None, seed=1, run="b", score=25.0, train_s=8.0,
             **{"task:x": 10.0, "task:y": 40.0}),
        dict(d_coef=0.4, distill="reward", steps=100, teacher="t", seed=2, run="c", score=34.0, train_s=12.0,
             **{"task:x": 28.0, "task:y": 40.0}),
    ])
    out = experiments.over_seeds(runs)
    assert list(out.d_coef) == [0.4, 0.0] and list(out.seeds) == [2, 1]      # order of first appearance
    distilled, scratch = out.iloc[0], out.iloc[1]
    assert distilled.score == 32.0 and distilled["task:x"] == 24.0 and distilled.train_s == 11.0
    assert distilled.score_se == pytest.approx(2.0)        # std (ddof 1) 2·√2 over √2 seeds
    assert distilled.score_ci95 == pytest.approx(12.706204736 * 2.0)      # t(0.975, 1) · s.e.
    assert scratch.score == 25.0 and pd.isna(scratch.score_se) and pd.isna(scratch.teacher)
    assert "seed" not in out and "run" not in out
    assert experiments.over_seeds(runs.iloc[:0]).empty


def test_run_is_trained_once_then_read_back(params):
    torch.set_num_threads(1)
    cfg = experiments.train_config(params)
    assert (cfg.steps, cfg.batch_size, cfg.d_coef, cfg.checkpoint_every % cfg.log_every) == (6, 8, 0.4, 0)
    from tdmpc_opt_lib import training
    model = training.train(cfg, progress=False)
    result, episodes = experiments.evaluate_or_load(model, params)
    assert set(result["tasks"]) == set(TASKS) and 0 <= result["score"] <= 100 and len(episodes) == 2
    again, episodes2 = experiments.evaluate_or_load(None, params)            # cached: no model needed
    assert again == result and episodes2.score.tolist() == episodes.score.tolist()
    runs = experiments.collect(params.out_dir)
    assert list(runs.run) == [experiments.run_name(params)] and "task:cup-catch" in runs
    assert experiments.pick_student(params.out_dir) == experiments.run_dir(params) / "model.pt"
    assert experiments.pick_student(params.out_dir, d_coef=0.0) is None
    assert json.loads((experiments.run_dir(params) / "result.json").read_text())["teacher"] is not None


def test_child_processes_stderr_goes_to_the_log(tmp_path):
    import subprocess
    import sys
    log = tmp_path / "runs" / "kernels.log"
    with experiments._child_stderr_to(log):
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('kernel warning\\n')"], check=True)
    assert log.read_text() == "kernel warning\n"
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'after')"], check=True)
    assert log.read_text() == "kernel warning\n"                               # fd 2 is restored


def test_labels_and_distilled_minus_scratch(params):
    import pandas as pd
    assert experiments.label(params) == "student d_coef 0.4 (reward, 6 steps)"
    assert experiments.label(replace(params, d_coef=0.0)) == "student from scratch (6 steps)"
    configs = pd.DataFrame([
        dict(d_coef=0.0, distill="reward", steps=100, batch_size=8, **{"task:x": 10.0, "task:y": 30.0}),
        dict(d_coef=0.4, distill="reward", steps=100, batch_size=8, **{"task:x": 15.0, "task:y": float("nan")}),
        dict(d_coef=0.4, distill="reward", steps=200, batch_size=8, **{"task:x": 50.0, "task:y": 50.0}),  # no pair
    ])
    delta = experiments.distilled_minus_scratch(configs)
    assert delta.to_dict("records") == [{"run": "reward d_coef 0.4 (100 steps, bs 8)", "task": "x",
                                         "distilled - scratch": 5.0}]
    assert experiments.distilled_minus_scratch(configs.iloc[:0]).empty
