"""The public TD-MPC2 data layout: ``chunk_*.pt`` files, pickled TensorDicts of shape [episodes, T+1].

Reading them runs pickle code, so :func:`convert_public` does it only with ``trust=True``, once, and
the result is our format (:mod:`.storage`). Real chunks need ``pip install tensordict`` (the ``public-data``
extra) to unpickle; a plain dict of tensors in the same layout (what :func:`export_public` writes) reads
without it. Conversion streams: a chunk is memory-mapped and copied a block of episodes at a time, and a
killed conversion continues after the last chunk it finished (its work folder ``.<out>.converting``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import atomic_save, atomic_write_text
from ..config import MT30
from .storage import Dataset, DatasetError, DatasetWriter, _NpyAppender

BLOCK_EPISODES = 2000     # episodes copied at a time (a 501-step MT30 block: ~125 MB)


class UntrustedFileError(DatasetError):
    """A pickle-based file was about to be loaded without the caller's explicit ``trust=True``."""


_UNTRUSTED = ("{path} is a pickle: loading it can run arbitrary code. Convert public chunks once with "
              "convert_public(paths, out_dir, trust=True) (CLI: convert-data --trust) only if you trust their "
              "source (e.g. the official TD-MPC2 release); training then reads the safe converted format.")


def read_public_chunk(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """Load one public ``chunk_*.pt`` (a pickle!) as ``{obs, action, reward, task}`` tensors [E, T+1, ...]."""
    path = Path(path)
    if not trust:
        raise UntrustedFileError(_UNTRUSTED.format(path=path))
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        try:   # memory-mapped: the tensors are read as they are copied, not all at once
            td = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            td = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise DatasetError(f"{path} needs the module {e.name!r} to unpickle (public chunks are TensorDicts: "
                           "pip install tensordict)") from e
    except Exception as e:
        raise DatasetError(f"{path} is truncated or not a torch file ({type(e).__name__}: {e})") from e
    try:
        out = {k: torch.as_tensor(td[k]) for k in ("obs", "action", "reward", "task")}
    except (KeyError, TypeError, IndexError) as e:
        raise DatasetError(f"{path} holds a {type(td).__name__} without the keys obs/action/reward/task") from e
    E, T1 = out["reward"].shape[:2]
    if out["obs"].dim() != 3 or out["obs"].shape[:2] != (E, T1) or out["action"].shape[:2] != (E, T1) \
            or out["task"].shape[:2] != (E, T1):
        raise DatasetError(f"{path}: fields disagree on [episodes, steps]: "
                           + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()))
    out["reward"] = out["reward"].reshape(E, T1)
    out["task"] = out["task"].reshape(E, T1)
    for lo in range(0, E, BLOCK_EPISODES):      # in blocks: a memory-mapped chunk is read as it is checked
        block = out["task"][lo:lo + BLOCK_EPISODES]
        if not bool((block == block[:, :1]).all()):
            raise DatasetError(f"{path}: an episode changes task mid-way")
        for k in ("obs", "action", "reward"):  # actions and rewards of an episode's first step are NaN by design
            x = out[k][lo:lo + BLOCK_EPISODES].reshape(block.shape[0], T1, -1)
            bad = ~torch.isfinite(x if k == "obs" else x[:, 1:]).all(-1)
            if bad.any():
                e, t = (int(i) for i in bad.nonzero()[0])
                raise DatasetError(f"{path}: field {k!r} has non-finite values (NaN or infinity), the first at "
                                   f"episode {lo + e}, step {t + (k != 'obs')}; not converted")
    return out


class _ResumableWriter(DatasetWriter):
    """A :class:`DatasetWriter` whose work folder (``.<name>.converting`` beside the output) survives a kill:
    :meth:`commit` records what is written after each chunk, and a writer opened on the same folder continues
    from the last commit (the files cut back to it)."""

    def __init__(self, out_dir: str | os.PathLike, tasks: list[str], obs_dim: int, action_dim: int,
                 overwrite: bool = False):
        self.out = Path(out_dir)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} already exists (pass overwrite=True to replace it)")
        self.tmp = self.out.parent / f".{self.out.name}.converting"
        self.tasks, self.obs_dim, self.action_dim = list(tasks), obs_dim, action_dim
        layout = {"tasks": self.tasks, "obs_dim": obs_dim, "action_dim": action_dim}
        progress = json.loads((self.tmp / "progress.json").read_text()) if (self.tmp / "progress.json").is_file() else None
        if progress is not None and progress["layout"] != layout:
            raise DatasetError(f"{self.tmp} holds a conversion with another layout ({progress['layout']}); "
                               "delete it to start over")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.done: list[str] = progress["done"] if progress else []
        rows = progress["rows"] if progress else 0
        episodes = np.load(self.tmp / "episodes.npy") if progress else np.zeros((2, 0), np.int64)
        episodes = episodes[:, :progress.get("episodes", episodes.shape[1])] if progress else episodes
        self.episode_task, self.episode_length = [episodes[0]], [episodes[1]]
        self.files = {"obs": _reopen(self.tmp / "obs.npy", np.float32, (obs_dim,), rows),
                      "action": _reopen(self.tmp / "action.npy", np.float32, (action_dim,), rows),
                      "reward": _reopen(self.tmp / "reward.npy", np.float32, (), rows)}
        self.layout = layout

    def commit(self, chunk: str) -> None:
        """Make everything written so far durable and record ``chunk`` as converted."""
        for f in self.files.values():
            f.f.flush()
            os.fsync(f.f.fileno())
        episodes = np.stack([np.concatenate(self.episode_task), np.concatenate(self.episode_length)])
        np.save(self.tmp / "episodes.tmp.npy", episodes)
        os.replace(self.tmp / "episodes.tmp.npy", self.tmp / "episodes.npy")
        self.done.append(chunk)
        # episodes.npy may run a chunk ahead of progress.json after a kill between the two: "episodes" cuts it back
        progress = {"layout": self.layout, "done": self.done, "rows": self.files["reward"].rows,
                    "episodes": int(episodes.shape[1])}
        atomic_write_text(self.tmp / "progress.json", json.dumps(progress))

    def close(self) -> Path:
        for name in ("episodes.npy", "progress.json"):
            (self.tmp / name).unlink(missing_ok=True)
        return super().close()

    def suspend(self) -> None:
        """Close the files, keeping the work folder to resume from."""
        for f in self.files.values():
            f.f.close()


def _reopen(file: Path, dtype, row_shape: tuple[int, ...], rows: int) -> _NpyAppender:
    """An appender continuing ``file`` after its first ``rows`` rows (a new file when ``rows`` is 0)."""
    if rows == 0:
        return _NpyAppender(file, dtype, row_shape)
    app = _NpyAppender.__new__(_NpyAppender)
    app.dtype, app.row_shape, app.rows = np.dtype(dtype), row_shape, rows
    app.f = open(file, "r+b")
    end = _NpyAppender.HEADER + rows * app.dtype.itemsize * int(np.prod(row_shape))
    app.f.truncate(end)
    app.f.seek(end)
    return app


def _chunk_key(path: Path) -> str:
    return f"{path.name}:{path.stat().st_size}"


def convert_public(paths: list[str | os.PathLike], out_dir: str | os.PathLike, tasks: list[str] | None = None,
                   trust: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Convert public chunks (in the given order) into our format; ``tasks`` names the task ids (default MT30).

    Streams with bounded memory (:data:`BLOCK_EPISODES` episodes at a time). After a kill, the same call continues
    after the last finished chunk; an error in a chunk's content removes the work folder."""
    from tqdm.auto import tqdm

    if not trust:
        raise UntrustedFileError(_UNTRUSTED.format(path=", ".join(map(str, paths)) or "the chunks"))
    if not paths:
        raise ValueError("no chunk files given")
    tasks = list(tasks or MT30)
    paths = [Path(p) for p in paths]
    writer = None
    try:
        for i, p in enumerate(paths):
            if writer is not None and i < len(writer.done):     # converted before a kill: not read again
                continue
            c = read_public_chunk(p, trust=True)
            if writer is None:
                writer = _ResumableWriter(out_dir, tasks, c["obs"].shape[-1], c["action"].shape[-1], overwrite)
                keys = [_chunk_key(q) for q in paths[:len(writer.done)]]
                if writer.done != keys:
                    raise DatasetError(f"{writer.tmp} was converting other chunks ({writer.done}); delete it or "
                                       "pass the same chunk files in the same order")
            if i < len(writer.done):
                continue
            E = c["reward"].shape[0]
            for lo in tqdm(range(0, E, BLOCK_EPISODES), desc=f"convert {p.name}", disable=not progress, leave=False):
                sl = slice(lo, lo + BLOCK_EPISODES)
                writer.add(c["obs"][sl].numpy(), c["action"][sl].numpy(), c["reward"][sl].numpy(),
                           c["task"][sl, 0].long().numpy())
            del c
            writer.commit(_chunk_key(p))
    except Exception:
        if writer is not None:
            writer.abort()
        raise
    except BaseException:       # interrupted: keep what is committed for the next call
        if writer is not None:
            writer.suspend()
        raise
    return writer.close()


def export_public(ds: Dataset, out_dir: str | os.PathLike, episodes_per_chunk: int = 1000) -> list[Path]:
    """Write ``chunk_{i}.pt`` files in the public layout (a dict of tensors per chunk; equal episode lengths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, lo in enumerate(range(0, ds.num_episodes, episodes_per_chunk)):
        eps = range(lo, min(lo + episodes_per_chunk, ds.num_episodes))
        lengths = {int(ds.episode_length[e]) for e in eps}
        if len(lengths) != 1:
            raise ValueError(f"episodes {eps.start}..{eps.stop - 1} have different lengths {sorted(lengths)}: "
                             "the public layout needs equal-length episodes per chunk")
        T1 = lengths.pop()
        rows = (np.asarray(ds.episode_offset)[list(eps)][:, None] + np.arange(T1)[None]).reshape(-1)
        E = len(eps)
        chunk = {"obs": torch.from_numpy(np.asarray(ds.obs[rows]).reshape(E, T1, -1)),
                 "action": torch.from_numpy(np.asarray(ds.action[rows]).reshape(E, T1, -1)),
                 "reward": torch.from_numpy(np.asarray(ds.reward[rows]).reshape(E, T1)),
                 "task": torch.from_numpy(np.repeat(np.asarray(ds.episode_task)[list(eps)][:, None], T1, 1))}
        atomic_save(chunk, out / f"chunk_{i}.pt")
        files.append(out / f"chunk_{i}.pt")
    return files
