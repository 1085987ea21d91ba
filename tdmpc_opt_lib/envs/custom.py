"""The 11 custom MT30 tasks that TD-MPC2 adds on top of DMControl domains.

Each task keeps its domain's dm_control ``Task`` for initial states and observations and only
replaces the reward (and, for cup-spin, the initial ball placement). Constants follow
``shared/spec/MT30_TASKS.md``; ``tol`` is ``dm_control.utils.rewards.tolerance``.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
from dm_control import mujoco
from dm_control.rl import control
from dm_control.suite import ball_in_cup, base, cheetah, hopper, pendulum, reacher, walker
from dm_control.utils.rewards import tolerance as tol

from . import models

INF = float("inf")
WALKER_STAND_HEIGHT = 1.2
CHEETAH_JUMP_HEIGHT = 1.2
HOPPER_STAND_HEIGHT = 0.6
CUP_DIST_TARGET = 0.5
CUP_TARGET_SPEED = 6.0
PENDULUM_TARGET_SPEED = 9.0

RewardFn = Callable[[mujoco.Physics], float]


class _CustomReward:
    """Mixin for a dm_control task whose reward is ``reward_fn(physics)``."""

    def __init__(self, reward_fn: RewardFn, *args, **kwargs) -> None:
        self._reward_fn = reward_fn
        super().__init__(*args, **kwargs)

    def get_reward(self, physics) -> float:
        return self._reward_fn(physics)


class WalkerTask(_CustomReward, walker.PlanarWalker):
    """Planar walker (random joint init) with a custom reward."""


class CheetahTask(_CustomReward, cheetah.Cheetah):
    """Cheetah (random joint init + 200 settling steps) with a custom reward."""


class HopperTask(_CustomReward, hopper.Hopper):
    """Hopper (random joint init) with a custom reward."""


class PendulumTask(_CustomReward, pendulum.SwingUp):
    """Pendulum (uniform random angle) with a custom reward."""


# ---------------------------------------------------------------- rewards
def walker_backwards_reward(physics, speed: float) -> float:
    """Stand upright and move backwards at ``speed`` or faster."""
    standing = tol(physics.torso_height(), (WALKER_STAND_HEIGHT, INF), margin=WALKER_STAND_HEIGHT / 2)
    upright = (1 + physics.torso_upright()) / 2
    stand = (3 * standing + upright) / 4
    move = tol(physics.horizontal_velocity(), (-INF, -speed), margin=speed / 2,
               value_at_margin=0.5, sigmoid="linear")
    return stand * (5 * move + 1) / 6


def cheetah_run_backwards_reward(physics, speed: float) -> float:
    """Run backwards at ``speed`` or faster."""
    return tol(physics.speed(), (-INF, -speed), margin=speed, value_at_margin=0, sigmoid="linear")


def _cheetah_height(physics, body: str) -> float:
    return physics.named.data.xpos[body, "z"]


def _cheetah_up(z: float) -> float:
    return tol(z, (CHEETAH_JUMP_HEIGHT, INF), margin=CHEETAH_JUMP_HEIGHT / 2)


def cheetah_run_one_foot_reward(physics, foot: str, speed: float) -> float:
    """Run forwards on one foot: ``foot`` (the raised one) and the torso up high."""
    torso_up = _cheetah_up(_cheetah_height(physics, "torso"))
    foot_up = _cheetah_up(_cheetah_height(physics, foot))
    up = (3 * foot_up + 2 * torso_up) / 5
    move = tol(physics.speed(), (speed, INF), margin=speed, value_at_margin=0, sigmoid="linear")
    return up * (5 * move + 1) / 6


def _cheetah_stand_one_foot(physics, foot: str, speed: float) -> float:
    height = _cheetah_up((_cheetah_height(physics, "torso") + _cheetah_height(physics, foot)) / 2)
    still = tol(physics.speed(), (-speed, speed), margin=speed, value_at_margin=0, sigmoid="linear")
    return (5 * height + still) / 6


def cheetah_jump_reward(physics, speed: float) -> float:
    """Mean of standing on the front and on the back foot while staying nearly still."""
    return (_cheetah_stand_one_foot(physics, "bfoot", speed)
            + _cheetah_stand_one_foot(physics, "ffoot", speed)) / 2


def hopper_hop_backwards_reward(physics) -> float:
    """Stay upright and hop backwards at 1 m/s or faster."""
    standing = tol(physics.height(), (HOPPER_STAND_HEIGHT, 2))
    hopping = tol(physics.speed(), (-INF, -1.0), margin=0.5, value_at_margin=0.5, sigmoid="linear")
    return standing * hopping


def pendulum_spin_reward(physics) -> float:
    """Spin the pole at |angular velocity| >= 9 rad/s."""
    return tol(np.linalg.norm(physics.angular_velocity()), (PENDULUM_TARGET_SPEED, INF),
               margin=PENDULUM_TARGET_SPEED / 2, value_at_margin=0.5, sigmoid="linear")


class CupSpin(ball_in_cup.BallInCup):
    """Ball-in-cup: swing the ball around the cup, far from it and fast, rather than catch it."""

    def initialize_episode(self, physics) -> None:
        """Place the ball without contact; inside the cup unless a 10% draw allows anywhere."""
        anywhere = self.random.uniform() < 0.1
        while True:
            physics.named.data.qpos["ball_x"] = self.random.uniform(-0.2, 0.2)
            physics.named.data.qpos["ball_z"] = self.random.uniform(0.2, 0.5)
            physics.after_reset()
            if physics.data.ncon == 0 and (anywhere or physics.in_target()):
                break
        base.Task.initialize_episode(self, physics)

    def get_reward(self, physics) -> float:
        dist = np.linalg.norm(physics.ball_to_target())
        vel = np.linalg.norm(np.abs(physics.named.data.qvel[["ball_x", "ball_z"]]))
        dist_r = tol(dist, (CUP_DIST_TARGET, INF), margin=CUP_DIST_TARGET / 2,
                     value_at_margin=0.5, sigmoid="linear")
        vel_r = tol(vel, (CUP_TARGET_SPEED, INF), margin=CUP_TARGET_SPEED / 2,
                    value_at_margin=0.5, sigmoid="linear")
        return (1 - physics.in_target()) * (dist_r + 2 * vel_r) / 3


# ---------------------------------------------------------------- environments
def _environment(physics, task, time_limit: float, control_timestep: float | None = None
                 ) -> control.Environment:
    kwargs = {} if control_timestep is None else {"control_timestep": control_timestep}
    return control.Environment(physics, task, time_limit=time_limit, **kwargs)


def _walker(seed: int, speed: float) -> control.Environment:
    physics = walker.Physics.from_xml_string(*models.walker_long_floor())
    task = WalkerTask(partial(walker_backwards_reward, speed=speed), move_speed=speed, random=seed)
    return _environment(physics, task, time_limit=25, control_timestep=0.025)


def _cheetah(seed: int, reward_fn: RewardFn) -> control.Environment:
    physics = cheetah.Physics.from_xml_string(*models.cheetah_long_ground())
    return _environment(physics, CheetahTask(reward_fn, random=seed), time_limit=10)


def _hopper_hop_backwards(seed: int) -> control.Environment:
    physics = hopper.Physics.from_xml_string(*hopper.get_model_and_assets())
    task = HopperTask(hopper_hop_backwards_reward, hopping=True, random=seed)
    return _environment(physics, task, time_limit=20, control_timestep=0.02)


def _reacher_three(seed: int, target_size: float) -> control.Environment:
    physics = reacher.Physics.from_xml_string(*models.reacher_three_links())
    return _environment(physics, reacher.Reacher(target_size, random=seed), time_limit=20)


def _cup_spin(seed: int) -> control.Environment:
    physics = ball_in_cup.Physics.from_xml_string(*ball_in_cup.get_model_and_assets())
    return _environment(physics, CupSpin(random=seed), time_limit=20, control_timestep=0.02)


def _pendulum_spin(seed: int) -> control.Environment:
    physics = pendulum.Physics.from_xml_string(*pendulum.get_model_and_assets())
    return _environment(physics, PendulumTask(pendulum_spin_reward, random=seed), time_limit=20)


_run_front = partial(cheetah_run_one_foot_reward, foot="bfoot", speed=6.0)
_run_back = partial(cheetah_run_one_foot_reward, foot="ffoot", speed=6.0)

CUSTOM_TASKS: dict[str, Callable[[int], control.Environment]] = {
    "walker-walk-backwards": partial(_walker, speed=1.0),
    "walker-run-backwards": partial(_walker, speed=8.0),
    "cheetah-run-backwards": partial(_cheetah, reward_fn=partial(cheetah_run_backwards_reward, speed=8.0)),
    "cheetah-run-front": partial(_cheetah, reward_fn=_run_front),
    "cheetah-run-back": partial(_cheetah, reward_fn=_run_back),
    "cheetah-jump": partial(_cheetah, reward_fn=partial(cheetah_jump_reward, speed=0.5)),
    "hopper-hop-backwards": _hopper_hop_backwards,
    "reacher-three-easy": partial(_reacher_three, target_size=0.05),
    "reacher-three-hard": partial(_reacher_three, target_size=0.015),
    "cup-spin": _cup_spin,
    "pendulum-spin": _pendulum_spin,
}
"""Custom task name -> ``builder(seed)`` returning the dm_control environment."""
