"""Random training windows from a dataset or a growing replay buffer."""
from __future__ import annotations

import numpy as np
import torch

from .storage import Dataset, EpisodeBuffer, non_finite_error


class WindowSampler:
    """Uniform random windows of ``horizon + 1`` consecutive steps that never cross an episode boundary.

    ``sample()`` returns torch tensors ``obs [H+1, B, obs]``, ``action [H, B, A]``, ``reward [H, B, 1]``
    and ``task [B]``: the actions and rewards of window steps 1..H, as in TD-MPC2's buffer. Episodes
    appended to the dataset later (a replay buffer) are picked up automatically.
    """

    def __init__(self, dataset: "Dataset | EpisodeBuffer", horizon: int = 3, batch_size: int = 256, seed: int = 0,
                 tasks: list[str] | None = None):
        self.source, self.horizon, self.batch_size = dataset, horizon, batch_size
        self.rng = np.random.default_rng(seed)
        self.task_ids = None if tasks is None else [_task_index(dataset.tasks, t) for t in tasks]
        self._cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def ds(self) -> Dataset:
        return self.source.dataset if isinstance(self.source, EpisodeBuffer) else self.source

    def _windows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(episodes with at least one window, cumulative window counts, first row of their first window
        minus the windows before them) for the current dataset."""
        E = self.ds.num_episodes
        if self._cache is None or self._cache[0] != E:
            count = np.maximum(np.asarray(self.ds.episode_length) - self.horizon, 0)
            if self.task_ids is not None:
                count = count * np.isin(np.asarray(self.ds.episode_task), self.task_ids)
            episodes = np.flatnonzero(count)
            cum = np.cumsum(count[episodes])
            base = np.asarray(self.ds.episode_offset)[episodes] - (cum - count[episodes])
            self._cache = (E, episodes, cum, base)
        return self._cache[1:]

    @property
    def num_windows(self) -> int:
        cum = self._windows()[1]
        return int(cum[-1]) if len(cum) else 0

    def sample_starts(self, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(first row, episode id) of ``batch_size`` windows drawn uniformly with replacement."""
        episodes, cum, base = self._windows()
        if not len(cum):
            raise ValueError(f"no window of {self.horizon + 1} steps in the dataset (for the selected tasks)")
        u = self.rng.integers(0, cum[-1], batch_size or self.batch_size)   # window number
        k = np.searchsorted(cum, u, side="right")
        return base[k] + u, episodes[k]

    def sample(self) -> dict[str, torch.Tensor]:
        start, ep = self.sample_starts()
        H, B = self.horizon, len(start)
        rows = (start[None, :] + np.arange(H + 1)[:, None]).reshape(-1)     # [(H+1)·B], step-major
        obs = np.asarray(self.ds.obs[rows]).reshape(H + 1, B, -1)
        action = np.asarray(self.ds.action[rows]).reshape(H + 1, B, -1)[1:]
        reward = np.asarray(self.ds.reward[rows]).reshape(H + 1, B, 1)[1:]
        for field, x in (("obs", obs), ("action", action), ("reward", reward)):
            if not np.isfinite(x).all():           # microseconds; a full scan: Dataset.open(path, full_check=True)
                self._refuse(field, x, rows.reshape(H + 1, B)[0 if field == "obs" else 1:])
        return {"obs": torch.from_numpy(obs), "action": torch.from_numpy(action),
                "reward": torch.from_numpy(reward), "task": torch.from_numpy(np.asarray(self.ds.episode_task)[ep])}

    def _refuse(self, field: str, x: np.ndarray, rows: np.ndarray) -> None:
        """Raise the dataset's error for the non-finite ``x`` (gathered from ``rows``)."""
        bad = np.zeros(self.ds.num_steps, bool)
        bad[rows[~np.isfinite(x).reshape(*rows.shape, -1).all(-1)]] = True
        raise non_finite_error(self.ds, field, bad)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def _task_index(tasks: list[str], t: str | int) -> int:
    if isinstance(t, int):
        return t
    if t not in tasks:
        raise ValueError(f"task {t!r} is not in the dataset; its tasks: {', '.join(tasks)}")
    return tasks.index(t)
