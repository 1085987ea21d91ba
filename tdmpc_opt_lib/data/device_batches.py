"""Training batches on the training device, prepared ahead of the update that uses them.

:class:`DeviceBatches` serves a :class:`~tdmpc_opt_lib.data.WindowSampler`'s batches in one of three modes:

- ``direct`` (the CPU): ``sampler.sample()`` moved to the device, as the loop always did;
- ``resident`` (a GPU the dataset fits on): the dataset's arrays copied to the device once; a batch is a gather
  there by the window rows the sampler draws (one small index copy per batch);
- ``prefetch`` (otherwise): a background thread fills pinned host buffers and copies them to the device on its
  own stream, a few batches ahead.

Every mode yields the batches ``sampler.sample()`` would, in order, and its :meth:`DeviceBatches.state_dict` is
the sampler's state before the first batch not yet handed out, so a resumed run continues exactly.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from .sampler import WindowSampler

MODES = ("auto", "direct", "resident", "prefetch")
RESIDENT_SHARE = 0.5     # the dataset may take at most this share of the device's free memory


def dataset_bytes(sampler: WindowSampler) -> int:
    ds = sampler.ds
    return sum(np.asarray(a).nbytes for a in (ds.obs, ds.action, ds.reward))


def choose_mode(sampler: WindowSampler, device: torch.device) -> str:
    """``direct`` on the CPU; on CUDA ``resident`` when the dataset takes under :data:`RESIDENT_SHARE` of the free
    device memory, else ``prefetch``."""
    if device.type != "cuda":
        return "direct"
    free, _ = torch.cuda.mem_get_info(device)
    return "resident" if dataset_bytes(sampler) < RESIDENT_SHARE * free else "prefetch"


def _to_device(a: np.ndarray, device: torch.device, block_rows: int = 1 << 20) -> torch.Tensor:
    """A (memory-mapped) array copied to ``device`` block by block (never whole in host memory)."""
    out = torch.empty(a.shape, dtype=torch.from_numpy(np.zeros(0, a.dtype)).dtype, device=device)
    for lo in range(0, a.shape[0], block_rows):
        out[lo:lo + block_rows] = torch.from_numpy(np.array(a[lo:lo + block_rows]))    # a writable block copy
    return out


class DeviceBatches:
    """``next()`` → the next training batch on ``device`` (see the module doc for the modes)."""

    def __init__(self, sampler: WindowSampler, device: str | torch.device, mode: str = "auto", depth: int = 3):
        if mode not in MODES:
            raise ValueError(f"batch mode must be one of {MODES}, got {mode!r}")
        self.sampler, self.device = sampler, torch.device(device)
        self.mode = choose_mode(sampler, self.device) if mode == "auto" else mode
        self.depth = depth
        self._state = sampler.state_dict()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._arrays: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ modes
    def _resident(self) -> dict[str, torch.Tensor]:
        s = self.sampler
        if self._arrays is None or self._arrays["rows"] != s.ds.num_steps:
            ds = s.ds
            self._arrays = {"obs": _to_device(ds.obs, self.device), "action": _to_device(ds.action, self.device),
                            "reward": _to_device(ds.reward, self.device),
                            "episode_task": torch.from_numpy(np.asarray(ds.episode_task)).to(self.device),
                            "rows": ds.num_steps}
        start, ep = s.sample_starts()
        H, B = s.horizon, len(start)
        rows = torch.from_numpy((start[None, :] + np.arange(H + 1)[:, None]).reshape(-1))
        idx = torch.cat([rows, torch.from_numpy(ep)])
        if self.device.type == "cuda":
            idx = idx.pin_memory()
        idx = idx.to(self.device, non_blocking=True)
        rows, ep = idx[:rows.numel()], idx[rows.numel():]
        a = self._arrays
        return {"obs": a["obs"][rows].view(H + 1, B, -1), "action": a["action"][rows].view(H + 1, B, -1)[1:],
                "reward": a["reward"][rows].view(H + 1, B, 1)[1:], "task": a["episode_task"][ep]}

    def _produce(self) -> None:
        """Background thread: sample, pin, copy on a side stream; queue (batch, sampler state after it)."""
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        try:
            while not self._stop.is_set():
                host = self.sampler.sample()
                state = self.sampler.state_dict()
                if cuda:
                    with torch.cuda.stream(stream):
                        batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in host.items()}
                        event = torch.cuda.Event()
                        event.record(stream)
                else:
                    batch, event = {k: v.to(self.device) for k, v in host.items()}, None
                while not self._stop.is_set():
                    try:
                        self._queue.put((batch, state, event), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:       # handed to the consumer, raised there
            self._queue.put((e, None, None))

    def _prefetched(self) -> dict[str, torch.Tensor]:
        if self._thread is None:
            self._queue = queue.Queue(self.depth)
            self._stop.clear()
            self._thread = threading.Thread(target=self._produce, daemon=True, name="batch-prefetch")
            self._thread.start()
        batch, state, event = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
            for v in batch.values():
                v.record_stream(torch.cuda.current_stream(self.device))
        self._state = state
        return batch

    # ------------------------------------------------------------------ interface
    def next(self) -> dict[str, torch.Tensor]:
        if self.mode == "prefetch":
            return self._prefetched()
        if self.mode == "resident":
            batch = self._resident()
        else:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in self.sampler.sample().items()}
        self._state = self.sampler.state_dict()
        return batch

    def close(self) -> None:
        """End the prefetch thread (batches it prepared are dropped; :meth:`state_dict` is unaffected)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def state_dict(self) -> dict:
        """The sampler's state before the first batch not handed out yet."""
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.sampler.load_state_dict(state)
        self._state = self.sampler.state_dict()
