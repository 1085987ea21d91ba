"""MT30 environments: golden dm_control traces for all 30 tasks, plus wrapper behaviour."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tdmpc_opt_lib.config import MT30, task_set
from tdmpc_opt_lib.envs import EPISODE_LENGTH, MultiTaskEnv, env as env_module, make_env

TOL = 1e-5
TASKS = list(MT30)


@pytest.fixture(scope="module")
def golden(shared_dir) -> dict[str, np.ndarray]:
    path = shared_dir / "golden" / "env_traces_seed0.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_golden_task_order_matches_config(golden):
    assert list(golden["tasks"]) == TASKS
    assert task_set("mt30").obs_pad == golden["obs"].shape[-1]
    assert task_set("mt30").action_pad == golden["action"].shape[-1]


@pytest.mark.parametrize("task", TASKS)
def test_golden_trace(golden, task):
    k = TASKS.index(task)
    env = make_env(task, int(golden["seed"]))
    assert (env.obs_dim, env.action_dim) == (golden["obs_dim"][k], golden["action_dim"][k])
    assert env.episode_length == golden["episode_length"][k]
    assert env.control_timestep() == pytest.approx(golden["control_timestep"][k], abs=1e-12)
    assert env.physics.model.opt.timestep == pytest.approx(golden["physics_timestep"][k], abs=1e-12)

    pad = golden["obs"].shape[-1]
    obs = np.zeros((int(golden["steps"]) + 1, pad), np.float32)
    rewards = np.zeros(int(golden["steps"]))
    obs[0, : env.obs_dim] = env.reset()
    for t in range(int(golden["steps"])):
        o, rewards[t], done, _ = env.step(golden["action"][k, t, : env.action_dim])
        obs[t + 1, : env.obs_dim] = o
        assert not done
    obs_err = float(np.abs(obs - golden["obs"][k]).max())
    rew_err = float(np.abs(rewards - golden["reward"][k]).max())
    assert obs_err <= TOL and rew_err <= TOL, (
        f"{task}: max |obs err| {obs_err:.3e}, max |reward err| {rew_err:.3e}")


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match="unknown task 'walker-fly'.*walker-walk"):
        make_env("walker-fly")
    with pytest.raises(ValueError, match="known tasks"):
        MultiTaskEnv("walker-fly")


def test_task_outside_task_set_is_rejected():
    with pytest.raises(ValueError, match="cheetah-run"):
        MultiTaskEnv("cheetah-run", task_set="mt-mini")


def test_wrong_action_size_names_task_and_shapes():
    env = make_env("pendulum-swingup")
    env.reset()
    with pytest.raises(ValueError, match=r"pendulum-swingup.*\(1,\).*\(2,\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan]))


def test_float32_and_float64_actions_are_accepted():
    env = make_env("cartpole-balance", seed=3)
    env.reset()
    obs, reward, done, info = env.step(np.array([0.5], np.float32))
    assert obs.dtype == np.float32 and obs.shape == (5,)
    assert isinstance(reward, float) and not done and info["t"] == 1


def test_multitask_pads_obs_and_truncates_actions():
    mt = MultiTaskEnv("reacher-easy", task_set="mt30", seed=1)
    single = make_env("reacher-easy", seed=1)
    assert mt.task_id == TASKS.index("reacher-easy")
    assert (mt.obs_dim, mt.action_dim) == (24, 6)

    obs, ref = mt.reset(), single.reset()
    assert obs.shape == (24,) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:6], ref)
    assert not obs[6:].any()

    action = np.array([0.3, -0.7, 0.9, 0.9, 0.9, 0.9])
    obs, reward, _, info = mt.step(action)
    ref, ref_reward, _, _ = single.step(action[:2])
    np.testing.assert_array_equal(obs[:6], ref)
    assert not obs[6:].any() and reward == ref_reward and info["task_id"] == mt.task_id

    with pytest.raises(ValueError, match=r"reacher-easy.*size 6.*action dim 2.*\(1,\)"):
        mt.step(np.zeros(1))


def test_episode_is_done_exactly_at_step_500():
    env = make_env("pendulum-swingup")
    with pytest.raises(RuntimeError, match="not started"):
        env.step(np.zeros(1))
    env.reset()
    dones = [env.step(np.zeros(1))[2] for _ in range(EPISODE_LENGTH)]
    assert EPISODE_LENGTH == 500 and dones[-1] and not any(dones[:-1])
    with pytest.raises(RuntimeError, match="ended after 500 steps"):
        env.step(np.zeros(1))
    env.reset()
    assert not env.step(np.zeros(1))[2]


@pytest.mark.filterwarnings("ignore")  # dm_control's own GL back-end noise when none is available
def test_render_returns_frame_or_none():
    env = make_env("pendulum-swingup")
    env.reset()
    frame = env.render(width=32, height=24)
    assert frame is None or (frame.shape == (24, 32, 3) and frame.dtype == np.uint8)


def test_broken_gl_backend_does_not_break_import_or_stepping():
    """MUJOCO_GL=osmesa without OSMesa makes dm_control's import fail; ours must still work."""
    code = ("import numpy as np, warnings; warnings.simplefilter('ignore')\n"
            "from tdmpc_opt_lib.envs import make_env\n"
            "env = make_env('pendulum-swingup'); env.reset(); env.step(np.zeros(1))\n"
            "frame = env.render(width=32, height=24)\n"
            "print('frame' if frame is not None else 'none')")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MUJOCO_GL": "osmesa"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] in ("frame", "none")


def test_render_failure_warns_once(monkeypatch):
    env = make_env("pendulum-swingup")
    env.reset()

    def broken_render(**_):
        raise RuntimeError("no GL")

    monkeypatch.setattr(env.physics, "render", broken_render)
    monkeypatch.setattr(env_module, "_render_error", None)
    with pytest.warns(RuntimeWarning, match="no GL") as record:
        assert env.render() is None
        assert env.render() is None
    assert len(record) == 1


@pytest.mark.parametrize("task, target_size", [("reacher-three-easy", 0.05), ("reacher-three-hard", 0.015)])
def test_reacher_three_model_and_sparse_reward(task, target_size):
    env = make_env(task)
    env.reset()
    model = env.physics.named.model
    assert list(model.jnt_range.axes.row.names) == ["shoulder0", "shoulder1", "wrist"]
    assert not model.jnt_limited["shoulder0"]
    np.testing.assert_allclose(model.jnt_range[["shoulder1", "wrist"]], np.deg2rad([[-80, 80]] * 2))
    np.testing.assert_allclose(model.actuator_gear[:, 0], 0.05)
    assert model.geom_size["target", 0] == target_size

    # Straight arm: the finger sits at 0.09 * 3 from the shoulder.
    env.physics.data.qpos[:] = 0.0
    env.physics.forward()
    np.testing.assert_allclose(env.physics.named.data.geom_xpos["finger", :2], [0.27, 0.0], atol=1e-12)
    # Put the target on the finger (the arm stays still under zero torque): reward 1 per control step.
    model.geom_pos["target", :2] = env.physics.named.data.geom_xpos["finger", :2]
    env.physics.forward()
    assert env.step(np.zeros(3))[1] == pytest.approx(2.0)


@pytest.mark.parametrize("task, geom, length", [("walker-run-backwards", "floor", 500.0),
                                                ("cheetah-jump", "ground", 200.0)])
def test_custom_models_have_long_floors(task, geom, length):
    assert make_env(task).physics.named.model.geom_size[geom, 0] == length
