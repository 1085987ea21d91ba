"""Single- and multi-task wrappers around the MT30 dm_control environments.

Semantics follow TD-MPC2's DMControl wrapper (``shared/spec/MT30_TASKS.md``): actions in
[-1, 1] rescaled linearly to the actuator range, action repeat 2 with summed reward, flat
float32 observations, 500 agent steps per episode and no early termination.
"""
from __future__ import annotations

import warnings

import numpy as np
from dm_control import mujoco, suite
from dm_control.suite.wrappers import action_scale

from ..config import MT30, TaskSet
from ..config import task_set as resolve_task_set
from . import gl
from .custom import CUSTOM_TASKS

ACTION_REPEAT = 2
EPISODE_LENGTH = 500
_DOMAINS = {"cup": "ball_in_cup"}
_render_error: str | None = None  # set after the first failed render; later calls skip GL


def _load(task: str, seed: int):
    """The raw dm_control environment of an MT30 task (a custom one or a suite task)."""
    if task in CUSTOM_TASKS:
        return CUSTOM_TASKS[task](seed)
    domain, name = task.split("-", 1)
    return suite.load(_DOMAINS.get(domain, domain), name.replace("-", "_"), task_kwargs={"random": seed})


def _flatten(observation: dict) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in observation.values()]).astype(np.float32)


def _disable_rendering(error: Exception) -> None:
    """Remember that rendering failed in this process and say so once."""
    global _render_error
    _render_error = f"{type(error).__name__}: {error}"
    if gl.FALLBACK_REASON is not None:
        _render_error += f"; {gl.FALLBACK_REASON}"
    warnings.warn(f"rendering is unavailable ({_render_error}); render() returns None from now on. "
                  "Set MUJOCO_GL=egl or MUJOCO_GL=osmesa to enable it.", RuntimeWarning, stacklevel=3)


class Env:
    """One MT30 task: ``reset() -> obs`` and ``step(action) -> (obs, reward, done, info)``."""

    def __init__(self, task: str, seed: int = 0) -> None:
        resolve_task_set("mt30").index(task)  # a ValueError listing the known tasks if unknown
        self.task = task
        self.obs_dim, self.action_dim = MT30[task]
        self.episode_length = EPISODE_LENGTH
        self._raw = _load(task, seed)
        self._env = action_scale.Wrapper(self._raw, minimum=-1.0, maximum=1.0)
        self._t: int | None = None  # agent steps into the episode; None before the first reset()

    @property
    def physics(self) -> mujoco.Physics:
        """The dm_control physics of the running environment."""
        return self._raw.physics

    def control_timestep(self) -> float:
        """Seconds of simulated time per dm_control step (an agent step is two of them)."""
        return float(self._raw.control_timestep())

    def reset(self) -> np.ndarray:
        """Start an episode; returns the float32 observation of shape [obs_dim]."""
        self._t = 0
        return _flatten(self._env.reset().observation)

    def _check_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_dim,):
            raise ValueError(f"{self.task}: expected an action of shape ({self.action_dim},), "
                             f"got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.task}: action of shape ({self.action_dim},) has non-finite values: {a}")
        return np.clip(a, -1.0, 1.0)

    def step(self, action) -> tuple[np.ndarray, float, bool, dict]:
        """Apply ``action`` (in [-1, 1], float64 as given) for two control steps."""
        if self._t is None or self._t >= self.episode_length:
            state = "not started" if self._t is None else f"ended after {self.episode_length} steps"
            raise RuntimeError(f"{self.task}: episode {state}; call reset()")
        a = self._check_action(action)
        reward = 0.0
        for _ in range(ACTION_REPEAT):
            time_step = self._env.step(a)
            reward += time_step.reward or 0.0
        self._t += 1
        done = self._t >= self.episode_length
        return _flatten(time_step.observation), float(reward), done, {"t": self._t, "success": 0.0}

    def render(self, width: int = 320, height: int = 240, camera_id: int = 0) -> np.ndarray | None:
        """An RGB frame [height, width, 3], or None (warning once) when no GL backend works."""
        if _render_error is not None:
            return None
        try:
            return self.physics.render(height=height, width=width, camera_id=camera_id)
        except Exception as error:  # any GL/back-end failure must stay soft
            _disable_rendering(error)
            return None


class MultiTaskEnv:
    """An MT30 task seen through a task set: obs zero-padded, actions truncated."""

    def __init__(self, task: str, task_set: str | TaskSet = "mt30", seed: int = 0) -> None:
        self.tasks = resolve_task_set(task_set)
        self.task_id = self.tasks.index(task)
        self.env = Env(task, seed)
        self.obs_dim = self.tasks.obs_pad
        self.action_dim = self.tasks.action_pad

    @property
    def task(self) -> str:
        return self.env.task

    @property
    def episode_length(self) -> int:
        return self.env.episode_length

    def _pad(self, obs: np.ndarray) -> np.ndarray:
        out = np.zeros(self.obs_dim, dtype=np.float32)
        out[: obs.shape[0]] = obs
        return out

    def reset(self) -> np.ndarray:
        return self._pad(self.env.reset())

    def step(self, action) -> tuple[np.ndarray, float, bool, dict]:
        """Step with a padded action; only its first ``env.action_dim`` entries are used."""
        a = np.asarray(action, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] < self.env.action_dim:
            raise ValueError(f"{self.task}: expected a 1-D action of size {self.action_dim} (at least the "
                             f"task's action dim {self.env.action_dim}), got shape {a.shape}")
        obs, reward, done, info = self.env.step(a[: self.env.action_dim])
        return self._pad(obs), reward, done, {**info, "task_id": self.task_id}

    def render(self, width: int = 320, height: int = 240, camera_id: int = 0) -> np.ndarray | None:
        return self.env.render(width, height, camera_id)


def make_env(task: str, seed: int = 0) -> Env:
    """The environment of one MT30 task, seeded like ``suite.load(..., task_kwargs={'random': seed})``."""
    return Env(task, seed)
