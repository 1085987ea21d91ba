"""Many MT30 episodes stepped together: in this process, or in worker processes (gymnasium's ``AsyncVectorEnv``).

A pool runs a batch of jobs (task, environment seed): ``start(jobs)`` returns their first observations
``[n, obs]``, ``step(actions [n, A])`` their next observations and rewards. :class:`LocalEnvs` steps them one
after another here; :class:`WorkerEnvs` splits them into ``workers`` equal groups, each stepped by its own
process, with observations, rewards and actions passed through shared memory. Both return the same numbers
(the same environments, seeds and float64 actions).
"""
from __future__ import annotations

import math

import numpy as np

from ..config import TaskSet
from .env import MultiTaskEnv

Job = tuple[str, int]   # (task name, environment seed)


class LocalEnvs:
    """The jobs' environments in this process, stepped one after another."""

    def __init__(self, task_set: TaskSet):
        self.task_set, self.envs = task_set, []

    def start(self, jobs: list[Job]) -> np.ndarray:
        self.envs = [MultiTaskEnv(t, self.task_set, seed=s) for t, s in jobs]
        return np.stack([env.reset() for env in self.envs])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps = [env.step(a) for env, a in zip(self.envs, actions)]
        return np.stack([s[0] for s in steps]), np.array([s[1] for s in steps])

    def close(self) -> None:
        self.envs = []


def _group_env(task_set: TaskSet, size: int):
    """A gymnasium env holding up to ``size`` MT30 environments (built in the worker process)."""
    import gymnasium as gym
    from gymnasium import spaces

    class EnvGroup(gym.Env):
        """Its jobs are set by ``set_attr("jobs", ...)`` before ``reset``; unused slots return zeros."""

        def __init__(self):
            self.jobs: list[Job] = []
            self.envs: list[MultiTaskEnv] = []
            self.observation_space = spaces.Dict({
                "obs": spaces.Box(-np.inf, np.inf, (size, task_set.obs_pad), np.float32),
                "reward": spaces.Box(-np.inf, np.inf, (size,), np.float64)})
            self.action_space = spaces.Box(-1.0, 1.0, (size, task_set.action_pad), np.float64)

        def _out(self, obs: list[np.ndarray], rewards: list[float]) -> dict:
            out = {"obs": np.zeros((size, task_set.obs_pad), np.float32), "reward": np.zeros(size)}
            if obs:
                out["obs"][:len(obs)] = np.stack(obs)
                out["reward"][:len(rewards)] = rewards
            return out

        def reset(self, *, seed=None, options=None):
            self.envs = [MultiTaskEnv(t, task_set, seed=s) for t, s in self.jobs]
            return self._out([env.reset() for env in self.envs], []), {}

        def step(self, action):
            steps = [env.step(a) for env, a in zip(self.envs, action)]
            return self._out([s[0] for s in steps], [s[1] for s in steps]), 0.0, False, False, {}

    return EnvGroup()


class WorkerEnvs:
    """Up to ``capacity`` environments at a time in ``workers`` processes (gymnasium ``AsyncVectorEnv``); close it
    (or use ``with``) to end them. Workers are forked (they run no torch code), or spawned once CUDA is
    initialised in this process (a script then needs the ``if __name__ == "__main__":`` guard)."""

    def __init__(self, task_set: TaskSet, workers: int, capacity: int):
        from functools import partial

        import torch
        from gymnasium.vector import AsyncVectorEnv

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = min(workers, capacity)
        self.size = math.ceil(capacity / self.workers)
        self.vec = AsyncVectorEnv([partial(_group_env, task_set, self.size)] * self.workers, 
                                  context="spawn" if torch.cuda.is_initialized() else "fork")
        self.n = 0

    def start(self, jobs: list[Job]) -> np.ndarray:
        if len(jobs) > self.workers * self.size:
            raise ValueError(f"{len(jobs)} jobs exceed the pool's {self.workers * self.size} environments")
        self.n = len(jobs)
        self.vec.set_attr("jobs", [jobs[i * self.size:(i + 1) * self.size] for i in range(self.workers)])
        out, _ = self.vec.reset()
        return out["obs"].reshape(-1, out["obs"].shape[-1])[:self.n]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        full = np.zeros((self.workers * self.size, actions.shape[-1]))
        full[:self.n] = actions
        out, *_ = self.vec.step(full.reshape(self.workers, self.size, -1))
        return out["obs"].reshape(-1, out["obs"].shape[-1])[:self.n], out["reward"].reshape(-1)[:self.n]

    def close(self) -> None:
        self.vec.close()

    def __enter__(self) -> "WorkerEnvs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
