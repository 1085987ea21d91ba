"""Random datasets in our format, for tests and I/O benchmarks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import task_set
from .storage import DatasetWriter


def make_synthetic(out_dir: str | os.PathLike, transitions: int = 20_000_000, tasks: list[str] | str = "mt30",
                   episode_length: int = 500, seed: int = 0, episodes_per_block: int = 200,
                   overwrite: bool = False) -> Path:
    """Random episodes in our format, written block by block (memory use independent of ``transitions``).

    Observations are N(0, 1) in each task's true dims and zero-padding after; actions uniform in
    [-1, 1] on the task's action dims; rewards uniform in [0, 1]. For I/O and memory benchmarks only.
    """
    ts = task_set(tasks)
    rng = np.random.default_rng(seed)
    episodes = -(-transitions // episode_length)
    T1 = episode_length + 1
    with DatasetWriter(out_dir, list(ts.tasks), ts.obs_pad, ts.action_pad, overwrite) as w:
        for lo in range(0, episodes, episodes_per_block):
            E = min(episodes_per_block, episodes - lo)
            task = rng.integers(0, len(ts.tasks), E)
            obs_mask = np.arange(ts.obs_pad)[None] < np.array(ts.obs_dims)[task][:, None]
            act_mask = np.arange(ts.action_pad)[None] < np.array(ts.action_dims)[task][:, None]
            obs = rng.standard_normal((E, T1, ts.obs_pad), np.float32) * obs_mask[:, None]
            action = rng.uniform(-1, 1, (E, T1, ts.action_pad)).astype(np.float32) * act_mask[:, None]
            reward = rng.uniform(0, 1, (E, T1)).astype(np.float32)
            action[:, 0], reward[:, 0] = np.nan, np.nan
            w.add(obs, action, reward, task)
    return Path(out_dir)
