"""The public TD-MPC2 data layout: ``chunk_*.pt`` files, pickled TensorDicts of shape [episodes, T+1].

Reading them runs pickle code, so :func:`convert_public` does it only with ``trust=True``, once, and
the result is our format (:mod:`.storage`). Real chunks need ``pip install tensordict`` to unpickle;
a plain dict of tensors in the same layout (what :func:`export_public` writes) reads without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..config import MT30
from .storage import Dataset, DatasetError, DatasetWriter


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
    if not bool((out["task"] == out["task"][:, :1]).all()):
        raise DatasetError(f"{path}: an episode changes task mid-way")
    for k in ("obs", "action", "reward"):      # actions and rewards of an episode's first step are NaN by design
        x = out[k].reshape(E, T1, -1)
        bad = ~torch.isfinite(x if k == "obs" else x[:, 1:]).all(-1)
        if bad.any():
            e, t = (int(i) for i in bad.nonzero()[0])
            raise DatasetError(f"{path}: field {k!r} has non-finite values (NaN or infinity) in {int(bad.sum())} "
                               f"steps, the first at episode {e}, step {t + (k != 'obs')}; not converted")
    return out


def convert_public(paths: list[str | os.PathLike], out_dir: str | os.PathLike, tasks: list[str] | None = None,
                   trust: bool = False, overwrite: bool = False) -> Path:
    """Convert public chunks (in the given order) into our format; ``tasks`` names the task ids (default MT30)."""
    if not trust:
        raise UntrustedFileError(_UNTRUSTED.format(path=", ".join(map(str, paths)) or "the chunks"))
    tasks = list(tasks or MT30)
    writer = None
    try:
        for p in paths:
            c = read_public_chunk(p, trust=True)
            if writer is None:
                writer = DatasetWriter(out_dir, tasks, c["obs"].shape[-1], c["action"].shape[-1], overwrite)
            writer.add(c["obs"].numpy(), c["action"].numpy(), c["reward"].numpy(), c["task"][:, 0].long().numpy())
        if writer is None:
            raise ValueError("no chunk files given")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer.close()


def export_public(ds: Dataset, out_dir: str | os.PathLike, episodes_per_chunk: int = 1000) -> list[Path]:
    """Write ``chunk_{i}.pt`` files in the public layout (a dict of tensors per chunk; equal episode lengths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ..checkpoints import atomic_save
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
