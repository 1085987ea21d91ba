"""Our dataset format: a folder of plain ``.npy`` files plus ``index.json`` (no pickles, nothing
executes on load)::

    obs.npy            [steps, obs_dim]     float32  every step of every episode, episodes back to back
    action.npy         [steps, action_dim]  float32  action that led to the step (NaN on an episode's first row)
    reward.npy         [steps]              float32  reward received on arriving at the step (NaN on the first row)
    episode_task.npy   [episodes]           int64    task index into ``index.json["tasks"]``
    episode_offset.npy [episodes]           int64    first row of each episode
    episode_length.npy [episodes]           int64    rows of each episode (agent steps + 1)

:class:`Dataset` memory-maps such a folder, :class:`DatasetWriter` writes one block by block and
:class:`EpisodeBuffer` is the growable in-memory variant that online training fills.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from ..checkpoints import reporting_write

FORMAT = "tdmpc_opt_dataset"
VERSION = 1


class DatasetError(ValueError):
    """A dataset folder or file that is missing, truncated or malformed."""


# --------------------------------------------------------------------------------------- dataset
class Dataset:
    """Episodes stored as flat per-step arrays (numpy or memory-mapped) plus per-episode arrays."""

    def __init__(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, episode_task: np.ndarray,
                 episode_offset: np.ndarray, episode_length: np.ndarray, tasks: list[str], path: Path | None = None):
        self.obs, self.action, self.reward = obs, action, reward
        self.episode_task, self.episode_offset, self.episode_length = episode_task, episode_offset, episode_length
        self.tasks, self.path = list(tasks), path

    @property
    def num_episodes(self) -> int:
        return len(self.episode_length)

    @property
    def num_steps(self) -> int:
        """Rows in use (the per-step arrays may be longer, as in a growing replay buffer)."""
        return int(self.episode_offset[-1] + self.episode_length[-1]) if self.num_episodes else 0

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def action_dim(self) -> int:
        return self.action.shape[1]

    def __repr__(self) -> str:
        return f"Dataset({self.path or 'in memory'}: {self.summary()})"

    def summary(self) -> str:
        return (f"{self.num_episodes} episodes, {self.num_steps} steps, {len(self.tasks)} tasks, "
                f"obs {self.obs_dim}, action {self.action_dim}")

    @classmethod
    def open(cls, path: str | os.PathLike, full_check: bool = False) -> "Dataset":
        """Memory-map a dataset folder, checking the index, every array's dtype and shape, the episode
        boundaries, the task ids and the checksums of the small files; ``full_check`` also reads every value
        (:func:`check_finite`)."""
        path = Path(path)
        index_file = path / "index.json"
        if not index_file.is_file():
            raise DatasetError(f"{path} is not a dataset: {index_file.name} is missing")
        try:
            index = json.loads(index_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{index_file} is malformed: {e}") from e
        need = ("format", "version", "tasks", "obs_dim", "action_dim", "episodes", "steps")
        if not isinstance(index, dict) or any(k not in index for k in need):
            raise DatasetError(f"{index_file} is malformed: expected the keys {list(need)}")
        if index["format"] != FORMAT or index["version"] != VERSION:
            raise DatasetError(f"{index_file}: unsupported format {index['format']!r} version {index['version']} "
                               f"(this library reads {FORMAT!r} version {VERSION})")
        _check_index(index, index_file)
        _check_sums(path)
        S, E = index["steps"], index["episodes"]
        expected = {"obs": ((S, index["obs_dim"]), np.float32), "action": ((S, index["action_dim"]), np.float32),
                    "reward": ((S,), np.float32), "episode_task": ((E,), np.int64),
                    "episode_offset": ((E,), np.int64), "episode_length": ((E,), np.int64)}
        advice = mmap_advice(S * 4 * (index["obs_dim"] + index["action_dim"] + 1))
        arrays = {name: _load_npy(path / f"{name}.npy", shape, dtype, advice)
                  for name, (shape, dtype) in expected.items()}
        ds = cls(**arrays, tasks=index["tasks"], path=path)
        _check_episodes(ds, path)
        if full_check:
            check_finite(ds)
        return ds


def mmap_advice(nbytes: int, ram: int | None = None) -> int | None:
    """madvise for a dataset whose per-step arrays take ``nbytes``: ``MADV_RANDOM`` when they exceed half of
    the machine's memory (``ram``, default: physical), so that the page cache cannot be expected to hold
    them (no read-ahead of neighbours a window will not use); else ``MADV_NORMAL``, under which each page
    fault also maps up to 16 already-cached neighbours (sampling the 2.4 GB benchmark set: 2.0 → 1.5 ms per
    batch). None where the OS has no madvise."""
    ram = _ram_bytes() if ram is None else ram
    return getattr(mmap, "MADV_RANDOM" if nbytes > ram // 2 else "MADV_NORMAL", None)


def _ram_bytes() -> int:
    """Physical memory of this machine (bytes; 0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def _load_npy(file: Path, shape: tuple[int, ...], dtype, advice: int | None = None) -> np.ndarray:
    """Memory-map one array, checking dtype and shape; ``advice``: see :func:`mmap_advice`."""
    if not file.is_file():
        raise DatasetError(f"{file} is missing")
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        size = file.stat().st_size
        raise DatasetError(f"{file} is truncated or not a .npy file ({size} bytes; {e})") from e
    if arr.dtype != dtype or arr.shape != shape:
        raise DatasetError(f"{file} holds {arr.dtype}{list(arr.shape)}, index.json says {np.dtype(dtype)}{list(shape)}")
    if advice is not None and getattr(arr, "_mmap", None) is not None:
        arr._mmap.madvise(advice)
    return arr


def _check_index(index: dict, file: Path) -> None:
    """Types and ranges of the index's entries."""
    ints = {k: index[k] for k in ("obs_dim", "action_dim", "episodes", "steps")}
    bad = [k for k, v in ints.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        raise DatasetError(f"{file}: {', '.join(bad)} must be integers >= 0, got {ints}")
    if not isinstance(index["tasks"], list) or not all(isinstance(t, str) for t in index["tasks"]):
        raise DatasetError(f"{file}: tasks must be a list of task names")
    if "transitions" in index and index["transitions"] != index["steps"] - index["episodes"]:
        raise DatasetError(f"{file}: transitions {index['transitions']} != steps {index['steps']} - episodes "
                           f"{index['episodes']}")


SUMS = "checksums.json"
SUMMED = ("index.json", "episode_task.npy", "episode_offset.npy", "episode_length.npy")


def _file_sums(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in SUMMED}


def _check_sums(path: Path) -> None:
    """Compare the small files with ``checksums.json`` (written since this version; older folders have none)."""
    file = path / SUMS
    if not file.is_file():
        return
    try:
        sums = json.loads(file.read_text())
        if not isinstance(sums, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{file} is malformed: {e}") from e
    for name in SUMMED:
        if (path / name).is_file() and hashlib.sha256((path / name).read_bytes()).hexdigest() != sums.get(name):
            raise DatasetError(f"{path / name} does not match its checksum in {SUMS}: the file is damaged")


def _rows(mask: np.ndarray, first: int = 0, n: int = 5) -> str:
    rows = np.flatnonzero(mask)
    return f"rows {(rows[:n] + first).tolist()}" + (f" ({len(rows)} in all)" if len(rows) > n else "")


def _check_episodes(ds: Dataset, path: Path) -> None:
    lengths, offsets = np.asarray(ds.episode_length), np.asarray(ds.episode_offset)
    if ds.num_episodes:
        ends = np.cumsum(lengths)
        checks = (("episode_length", lengths < 1, "episode lengths must be >= 1"),
                  ("episode_offset", offsets != np.concatenate([[0], ends[:-1]]),
                   "each episode must start where the previous one ends"))
        for name, bad, rule in checks:
            if bad.any():
                raise DatasetError(f"{path / (name + '.npy')}: {rule}; first bad {_rows(bad)}")
        if ends[-1] != len(ds.obs):
            raise DatasetError(f"{path / 'episode_length.npy'}: the episodes cover {ends[-1]} steps, the arrays "
                               f"hold {len(ds.obs)}")
    task = np.asarray(ds.episode_task)
    bad = (task < 0) | (task >= len(ds.tasks))
    if bad.any():
        raise DatasetError(f"{path / 'episode_task.npy'}: task ids must be in [0, {len(ds.tasks)}); first bad "
                           f"{_rows(bad)}")


def _first_rows(ds: Dataset, lo: int, hi: int) -> np.ndarray:
    """Mask of the rows ``lo..hi-1`` that begin an episode (their action and reward are NaN by design)."""
    mask = np.zeros(hi - lo, bool)
    off = np.asarray(ds.episode_offset)
    off = off[(off >= lo) & (off < hi)]
    mask[off - lo] = True
    return mask


def non_finite_error(ds: Dataset, field: str, bad: np.ndarray, first: int = 0) -> "DatasetError":
    """The error for non-finite values of ``field`` at the rows where ``bad`` (from row ``first``) is set."""
    where = ds.path / f"{field}.npy" if ds.path is not None else f"the in-memory dataset's {field}"
    return DatasetError(f"{where}: field {field!r} has non-finite values (NaN or infinity) at {_rows(bad, first)}")


def check_finite(ds: Dataset, block: int = 1 << 20) -> None:
    """Read every row in use: observations must be finite everywhere, actions and rewards on every row but
    an episode's first. Raises :class:`DatasetError` naming the file, the field and the first bad rows."""
    for field in ("obs", "action", "reward"):
        arr = getattr(ds, field)
        bad_rows = []
        for lo in range(0, ds.num_steps, block):
            hi = min(lo + block, ds.num_steps)
            bad = ~np.isfinite(np.asarray(arr[lo:hi]))
            bad = bad.reshape(hi - lo, -1).any(1)
            if field != "obs":
                bad &= ~_first_rows(ds, lo, hi)
            if bad.any():
                bad_rows.append(np.flatnonzero(bad) + lo)
        if bad_rows:
            rows = np.concatenate(bad_rows)
            mask = np.zeros(ds.num_steps, bool)
            mask[rows] = True
            raise non_finite_error(ds, field, mask)


# ---------------------------------------------------------------------------------------- writing
class _NpyAppender:
    """A ``.npy`` file written row block by row block; the header gets the final row count on close."""

    HEADER = 128

    def __init__(self, file: Path, dtype, row_shape: tuple[int, ...]):
        self.f, self.dtype, self.row_shape, self.rows = open(file, "wb"), np.dtype(dtype), row_shape, 0
        self.f.write(b"\0" * self.HEADER)

    def append(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.shape[1:] != self.row_shape:
            raise ValueError(f"expected rows of shape {self.row_shape}, got {x.shape[1:]}")
        self.f.write(memoryview(x).cast("B"))              # no copy of (possibly GB-sized) blocks
        self.rows += len(x)

    def close(self) -> None:
        d = f"{{'descr': {self.dtype.str!r}, 'fortran_order': False, 'shape': {(self.rows, *self.row_shape)}, }}"
        header = d.encode("latin1").ljust(self.HEADER - 11) + b"\n"
        assert len(header) == self.HEADER - 10, d
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class DatasetWriter:
    """Write a dataset folder episode block by episode block without holding it in memory.

    Everything goes to a temporary sibling folder that is renamed into place by :meth:`close`; on
    an error (or a kill) the destination is untouched and the temporary folder is removed (or
    left as an obviously named ``.<name>.tmp-*``). Use as a context manager.
    """

    def __init__(self, out_dir: str | os.PathLike, tasks: list[str], obs_dim: int, action_dim: int,
                 overwrite: bool = False):
        self.out = Path(out_dir)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} already exists (pass overwrite=True to replace it)")
        with reporting_write(self.out):
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-"))
        self.tasks, self.obs_dim, self.action_dim = list(tasks), obs_dim, action_dim
        self.files = {"obs": _NpyAppender(self.tmp / "obs.npy", np.float32, (obs_dim,)),
                      "action": _NpyAppender(self.tmp / "action.npy", np.float32, (action_dim,)),
                      "reward": _NpyAppender(self.tmp / "reward.npy", np.float32, ())}
        self.episode_task: list[np.ndarray] = []
        self.episode_length: list[np.ndarray] = []

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, task: np.ndarray | int) -> None:
        """Append equal-length episodes: ``obs [E, T+1, obs]``, ``action [E, T+1, A]``, ``reward [E, T+1]``, ``task``.

        Observations/actions narrower than the dataset's are zero-padded.
        """
        obs, action, reward = (np.asarray(x, dtype=np.float32) for x in (obs, action, reward))
        E, T1 = reward.shape
        if obs.shape[:2] != (E, T1) or action.shape[:2] != (E, T1):
            raise ValueError(f"obs {obs.shape}, action {action.shape} and reward {reward.shape} "
                             "disagree on [episodes, steps]")
        task = np.broadcast_to(np.asarray(task, dtype=np.int64), (E,))
        if task.min() < 0 or task.max() >= len(self.tasks):
            raise ValueError(f"task index outside [0, {len(self.tasks)})")
        self.files["obs"].append(_pad(obs, self.obs_dim).reshape(E * T1, -1))
        self.files["action"].append(_pad(action, self.action_dim).reshape(E * T1, -1))
        self.files["reward"].append(reward.reshape(-1))
        self.episode_task.append(task.copy())
        self.episode_length.append(np.full(E, T1, dtype=np.int64))

    def close(self) -> Path:
        """Finish the files, write ``index.json`` and move the folder into place."""
        for f in self.files.values():
            f.close()
        task = np.concatenate(self.episode_task) if self.episode_task else np.zeros(0, np.int64)
        length = np.concatenate(self.episode_length) if self.episode_length else np.zeros(0, np.int64)
        offset = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64) if len(length) else length
        for name, arr in (("episode_task", task), ("episode_offset", offset), ("episode_length", length)):
            np.save(self.tmp / f"{name}.npy", arr)
        index = {"format": FORMAT, "version": VERSION, "tasks": self.tasks, "obs_dim": self.obs_dim,
                 "action_dim": self.action_dim, "episodes": int(len(length)), "steps": int(length.sum()),
                 "transitions": int((length - 1).sum())}
        (self.tmp / "index.json").write_text(json.dumps(index, indent=1))
        (self.tmp / SUMS).write_text(json.dumps(_file_sums(self.tmp), indent=1))
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old)
        return self.out

    def abort(self) -> None:
        for f in self.files.values():
            f.f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Publish, or on an error remove the temporary folder; a failed write (disk full, read-only folder)
        is re-raised as a SaveError naming the destination and the cause."""
        if exc_type is not None:
            self.abort()
            if isinstance(exc, OSError):
                with reporting_write(self.out):
                    raise exc
            return
        try:
            with reporting_write(self.out):
                self.close()
        except BaseException:
            self.abort()
            raise


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[-1] > width:
        raise ValueError(f"feature size {x.shape[-1]} exceeds the dataset's {width}")
    if x.shape[-1] == width:
        return x
    return np.concatenate([x, np.zeros((*x.shape[:-1], width - x.shape[-1]), x.dtype)], -1)


def save(ds: Dataset, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write any :class:`Dataset` (e.g. a replay buffer's view) to ``out_dir`` in our format."""
    with DatasetWriter(out_dir, ds.tasks, ds.obs_dim, ds.action_dim, overwrite) as w:
        for e in range(ds.num_episodes):
            rows = slice(int(ds.episode_offset[e]), int(ds.episode_offset[e] + ds.episode_length[e]))
            w.add(ds.obs[rows][None], ds.action[rows][None], ds.reward[rows][None], int(ds.episode_task[e]))
    return Path(out_dir)


def merge(sources: list[str | os.PathLike], out_dir: str | os.PathLike, tasks: list[str]) -> Path:
    """Concatenate datasets into one over the task list ``tasks`` (padding obs/actions, remapping task ids)."""
    dsets = [Dataset.open(s) for s in sources]
    missing = sorted({t for d in dsets for t in d.tasks} - set(tasks))
    if missing:
        raise ValueError(f"tasks {missing} of the sources are not in the target task list {tasks}")
    with DatasetWriter(out_dir, tasks, max(d.obs_dim for d in dsets), max(d.action_dim for d in dsets)) as w:
        for d in dsets:
            remap = np.array([tasks.index(t) for t in d.tasks])
            for e in range(d.num_episodes):
                rows = slice(int(d.episode_offset[e]), int(d.episode_offset[e] + d.episode_length[e]))
                w.add(d.obs[rows][None], d.action[rows][None], d.reward[rows][None], remap[d.episode_task[e]])
    return Path(out_dir)


def episode_table(ds: Dataset) -> "pd.DataFrame":
    """One row per episode: task, episode index, transitions, return (sum of rewards), mean reward."""
    import pandas as pd

    offsets, lengths = np.asarray(ds.episode_offset), np.asarray(ds.episode_length)
    reward = np.nan_to_num(np.asarray(ds.reward[:ds.num_steps]), nan=0.0)   # the first step of an episode has none
    csum = np.concatenate([[0.0], np.cumsum(reward, dtype=np.float64)])
    returns = csum[offsets + lengths] - csum[offsets]
    transitions = lengths - 1
    return pd.DataFrame({"task": np.asarray(ds.tasks)[np.asarray(ds.episode_task)], "episode": np.arange(ds.num_episodes),
                         "transitions": transitions, "return": returns,
                         "mean_reward": returns / np.maximum(transitions, 1)})


class EpisodeBuffer:
    """Growable in-memory replay buffer of whole episodes; :attr:`dataset` is a live view for sampling."""

    def __init__(self, tasks: list[str], obs_dim: int, action_dim: int, capacity: int = 10_000):
        self.tasks = list(tasks)
        self._obs = np.zeros((capacity, obs_dim), np.float32)
        self._action = np.zeros((capacity, action_dim), np.float32)
        self._reward = np.zeros(capacity, np.float32)
        self._task: list[int] = []
        self._length: list[int] = []
        self.rows = 0
        self._view: Dataset | None = None

    def add_episode(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, task: int) -> None:
        """``obs [T+1, obs]``, ``action [T+1, A]``, ``reward [T+1]`` (first action/reward NaN)."""
        n = len(reward)
        if self.rows + n > len(self._reward):
            grow = max(len(self._reward), self.rows + n - len(self._reward))
            for name in ("_obs", "_action", "_reward"):
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.zeros((grow, *old.shape[1:]), old.dtype)]))
        self._obs[self.rows:self.rows + n] = _pad(np.asarray(obs, np.float32), self._obs.shape[1])
        self._action[self.rows:self.rows + n] = _pad(np.asarray(action, np.float32), self._action.shape[1])
        self._reward[self.rows:self.rows + n] = reward
        self._task.append(int(task))
        self._length.append(n)
        self.rows += n
        self._view = None

    @property
    def dataset(self) -> Dataset:
        if self._view is None:
            length = np.array(self._length, dtype=np.int64)
            offset = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64) if len(length) else length
            self._view = Dataset(self._obs[:self.rows], self._action[:self.rows], self._reward[:self.rows],
                                 np.array(self._task, dtype=np.int64), offset, length, self.tasks)
        return self._view

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "EpisodeBuffer":
        buf = cls(ds.tasks, ds.obs_dim, ds.action_dim, capacity=max(ds.num_steps, 1) * 2)
        n = ds.num_steps
        buf._obs[:n], buf._action[:n], buf._reward[:n] = ds.obs[:n], ds.action[:n], ds.reward[:n]
        buf._task, buf._length, buf.rows = [int(t) for t in ds.episode_task], [int(x) for x in ds.episode_length], n
        buf._view = None
        return buf
