"""The batched MPPI planner against the plain reference, plus its contract (shapes, masks, warm starts)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmpc_opt_lib.checkpoints import load_checkpoint
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.envs import MultiTaskEnv
from tdmpc_opt_lib.planner import Planner, PlannerConfig, plan_reference, public_plan_macs
from tdmpc_opt_lib.world_model import WorldModel

TASKS = ["walker-walk", "cheetah-run", "reacher-easy", "cartpole-swingup", "fish-swim", "reacher-three-easy"]


@pytest.fixture(scope="module")
def student(shared_dir):
    return load_checkpoint(shared_dir / "checkpoints/mt30_1M_steps_045dist_fp16.pt")


@pytest.fixture
def float64(student):
    """Run in float64: float32 summation order alone can swap near-tied trajectories at the top-k
    boundary, so exact equivalence of two MPPI implementations is checked in double precision."""
    torch.set_default_dtype(torch.float64)
    yield student.double()
    torch.set_default_dtype(torch.float32)
    student.float()


@pytest.mark.parametrize("task", TASKS)
def test_batched_planner_equals_reference(float64, task):
    """Same random stream → same action and same warm-start mean, on a real observation."""
    student = float64
    env = MultiTaskEnv(task, "mt30", seed=1)
    obs = torch.from_numpy(env.reset()).double()
    gen = torch.Generator().manual_seed(7)
    a1, mean1 = plan_reference(student, obs, env.task_id, None, generator=gen)
    a2, _ = plan_reference(student, obs, env.task_id, mean1, generator=gen)
    planner = Planner(student, seed=7)
    b1 = planner.plan(obs[None], torch.tensor([env.task_id]), t0=True)
    torch.testing.assert_close(planner.prev_mean[:, 0], mean1, atol=1e-9, rtol=0)
    b2 = planner.plan(obs[None], torch.tensor([env.task_id]), t0=False)
    torch.testing.assert_close(b1[0], a1, atol=1e-9, rtol=0)
    torch.testing.assert_close(b2[0], a2, atol=1e-9, rtol=0)


def test_trajectory_values_match_world_model_in_float32(student):
    """The accelerated model's value computation (folded first layers, one dynamics+reward matmul, a latent
    shared by the samples) equals the plain world model's heads to float32 rounding."""
    from tdmpc_opt_lib import fast, math
    from tdmpc_opt_lib.planner import _iteration_value, _rollout
    g = torch.Generator().manual_seed(0)
    task = torch.tensor([3, 16])
    obs = torch.randn(2, 24, generator=g)
    actions = (torch.rand(3, 2, 64, 6, generator=g) * 2 - 1) * student.action_mask(task).unsqueeze(1)
    eps, heads = torch.randn(2, 64, 6, generator=g), torch.tensor([1, 0])
    quick = fast.accelerate(student)
    quick.FOLD_MIN_ROWS = 1                                        # fold these few rows too
    with torch.no_grad():
        z0, env_task, gamma = student.encode(obs, task), task[:, None], student.discount[task][:, None]
        z_pi, G_pi, _ = _rollout(quick, z0, actions[:, :, :8], env_task, gamma)   # the first 8 rows as policy trajectories
        value = _iteration_value(quick, z0, actions[:, :, 8:], z_pi, G_pi, env_task, gamma, eps, heads)
        for n in range(2):
            t, z, G, disc = task[n:n + 1], z0[n].expand(64, -1), 0, 1
            for h in range(3):
                G = G + disc * math.two_hot_inv(student.reward(z, actions[h, n], t))
                z, disc = student.next(z, actions[h, n], t), disc * student.discount[t]
            mean, log_std = student._pi(student.task_emb(z, t)).chunk(2, -1)
            log_std, mask = math.scale_log_std(log_std, -10, 2) * student.action_mask(t), student.action_mask(t)
            a_H = torch.tanh(mean * mask + eps[n] * mask * log_std.exp())
            ref = G + disc * math.two_hot_inv(student.Q(z, a_H, t, "all")[heads]).mean(0)
            torch.testing.assert_close(value[n], ref, rtol=1e-5, atol=1e-4)


def test_many_environments_at_once(student):
    envs = [MultiTaskEnv(t, "mt30", seed=0) for t in TASKS]
    obs = torch.from_numpy(np.stack([e.reset() for e in envs]))
    task = torch.tensor([e.task_id for e in envs])
    planner = Planner(student, PlannerConfig(num_samples=128, num_elites=16, num_pi_trajs=8), seed=0, chunk_rows=256)
    actions = planner.plan(obs, task, t0=True)
    assert actions.shape == (len(TASKS), 6) and actions.abs().max() <= 1
    for row, env in zip(actions, envs):
        assert (row[student.cfg.tasks.action_dims[env.task_id]:] == 0).all()
    # same seed, same actions; chunking does not change the result beyond float32 rounding (MKL blocks
    # matmuls of other row counts differently; 1.4e-5 seen)
    again = Planner(student, PlannerConfig(num_samples=128, num_elites=16, num_pi_trajs=8), seed=0, chunk_rows=4096)
    torch.testing.assert_close(again.plan(obs, task, t0=True), actions, atol=1e-4, rtol=0)
    # warm start is per environment; a different batch size needs reset()
    with pytest.raises(ValueError, match="reset"):
        planner.plan(obs[:2], task[:2])
    planner.reset()
    assert planner.plan(obs[:2], task[:2], t0=True).shape == (2, 6)


def test_exploration_noise_only_outside_eval_mode(student):
    obs, task = torch.randn(1, 24, generator=torch.Generator().manual_seed(0)) * 0.1, torch.tensor([1])
    cfg = PlannerConfig(num_samples=64, num_elites=8, num_pi_trajs=4)
    a = Planner(student, cfg, seed=3).plan(obs, task, True, eval_mode=True)
    b = Planner(student, cfg, seed=3).plan(obs, task, True, eval_mode=True)
    c = Planner(student, cfg, seed=3).plan(obs, task, True, eval_mode=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_planner_config_validation():
    with pytest.raises(ValueError, match="num_elites"):
        PlannerConfig(num_samples=32, num_elites=64)
    with pytest.raises(ValueError, match="num_pi_trajs"):
        PlannerConfig(num_samples=32, num_pi_trajs=32)
    assert PlannerConfig().iterations_for(6) == 6 and PlannerConfig().iterations_for(21) == 8


def test_public_flop_count_matches_issue_figure():
    """One planning call of the size-1 MT30 model costs ≈ 7.6 G multiply-adds in the public code."""
    macs = public_plan_macs(model_config(1, "mt30"))
    assert 7.5e9 < macs < 7.7e9


def test_compiled_planner_and_onednn_match_eager(monkeypatch):
    """The speed layer (accelerated model, compiled planner, oneDNN's matmuls) changes float rounding only.
    The weights are spread (std 0.2) so that trajectory values differ: at TD-MPC2's initialisation every value
    is ~0 and the elite selection turns rounding into different actions."""
    from tdmpc_opt_lib import fast
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    m = WorldModel(model_config(1, ["cartpole-swingup", "cup-catch"])).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    obs, task = torch.randn(2, 8) * 0.3, torch.tensor([0, 1])
    cfg = PlannerConfig(num_samples=64, num_elites=8, num_pi_trajs=4)
    eager = Planner(m, cfg, seed=1).plan(obs, task, True)
    for onednn in ("0", "1"):
        monkeypatch.setenv("TDMPC_OPT_ONEDNN", onednn)
        for compile_ in (False, True):
            quick = fast.accelerate(m)
            quick.FOLD_MIN_ROWS = 1                                 # fold these few rows too
            with fast.cpu_runtime():
                got = Planner(quick, cfg, seed=1, compile=compile_).plan(obs, task, True)
            torch.testing.assert_close(got, eager, atol=1e-4, rtol=0)


def test_five_head_model_equals_reference():
    """Models with more than two Q heads (sizes 5+) evaluate only the two drawn heads; same actions as the
    reference, which evaluates every head and picks two (float64, random weights)."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        m = WorldModel(model_config(1, ["cartpole-swingup", "cup-catch"], num_q=5)).eval()
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.2)
        cfg = PlannerConfig(num_samples=64, num_elites=8, num_pi_trajs=4, iterations=3)
        obs = torch.randn(1, m.cfg.obs_dim) * 0.3
        ref, _ = plan_reference(m, obs[0], 1, None, cfg, generator=torch.Generator().manual_seed(3))
        from tdmpc_opt_lib import fast
        quick = fast.accelerate(m)
        quick.FOLD_MIN_ROWS = 1                                     # fold these few rows too
        for model in (m, quick):
            ours = Planner(model, cfg, seed=3).plan(obs, torch.tensor([1]), True)
            torch.testing.assert_close(ours[0], ref, atol=1e-9, rtol=0)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("compile_", [False, True])
def test_accelerated_planner_follows_weight_updates(compile_):
    """The accelerated model arranges its first layers once per planning call and keeps them until a weight
    changes: after an in-place update (an optimizer step) and after ``load_state_dict``, plans equal those of a
    freshly accelerated model with the new weights."""
    from tdmpc_opt_lib import fast
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    m = WorldModel(model_config(1, ["cartpole-swingup", "cup-catch"])).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    quick = fast.accelerate(m)
    quick.FOLD_MIN_ROWS = 1
    obs, task = torch.randn(2, 8) * 0.3, torch.tensor([0, 1])
    cfg = PlannerConfig(num_samples=64, num_elites=8, num_pi_trajs=4, iterations=2)
    planner = Planner(quick, cfg, seed=1, compile=compile_)
    planner.plan(obs, task, True)
    other = WorldModel(model_config(1, ["cartpole-swingup", "cup-catch"])).eval()
    for p in other.parameters():
        torch.nn.init.normal_(p, std=0.2)
    for change in ("in place", "load_state_dict"):
        with torch.no_grad():
            if change == "in place":
                for p in m.parameters():
                    p.mul_(-1.3)
            else:
                m.load_state_dict(other.state_dict())
        fresh = fast.accelerate(WorldModel(m.cfg).eval())
        fresh.load_state_dict(m.state_dict())
        fresh.FOLD_MIN_ROWS = 1
        planner.generator.manual_seed(5)
        want = Planner(fresh, cfg, seed=5).plan(obs, task, True)
        torch.testing.assert_close(planner.plan(obs, task, True), want, atol=1e-4, rtol=0)
        settled = {k: e[0] for k, e in quick.__dict__["_arrangement"].items()}
        quick.arrange_planning()               # nothing changed since: no layer is arranged again
        assert {k: e[0] for k, e in quick.__dict__["_arrangement"].items()} == settled
