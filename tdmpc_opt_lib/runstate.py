"""What offline and online training share to make a run folder resumable.

* :class:`RunState`: the resume file (``train.pt``, ``online.pt``), a dict tagged with a format string and
  the run's settings, written atomically; a file of another run is refused.
* :class:`MetricsCSV` / :func:`read_metrics`: the run's ``metrics.csv``, cut back to the resumed step.
* :func:`due`, :func:`accumulate` and :func:`evaluate_score`: when to log, checkpoint or evaluate, running sums
  of update metrics, and evaluation that leaves the training RNG streams untouched.
* :func:`run_lock`: one process per run folder (a lock file naming host and PID; a dead owner's is taken over).
* :func:`preemption`: SIGTERM / SIGINT ask the loop to checkpoint at its next safe point and raise :class:`Preempted`.
* :class:`NumericalGuard`: the first update with a non-finite loss or gradient norm, found without a host sync
  per update; :meth:`NumericalGuard.check` raises :class:`NonFiniteError` before anything is written after it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from .checkpoints import CheckpointError, atomic_save, atomic_write_text


class RunState:
    """The resume state of a run at ``path``, in format ``format``; ``run``: the settings that must match."""

    def __init__(self, path: str | os.PathLike, format: str, run: dict):
        self.path, self.format, self.run = Path(path), format, run

    def load(self) -> dict | None:
        """The saved state, on the CPU (restoring moves each tensor to where it belongs), or None when there is
        none (a fresh run)."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("format") != self.format:
            raise CheckpointError(f"{self.path} is not a resume state of this library's format {self.format!r}")
        check_same_run(self.path.parent, self.run, state["run"])
        return state

    @staticmethod
    def restore(state: dict, model, learner, sampler) -> int:
        """Load the weights, optimizer, sampler and torch RNG states (CPU, and CUDA where saved) written by
        :meth:`save`; returns the step."""
        model.load_state_dict(state["model"])
        learner.load_state_dict(state["learner"])
        sampler.load_state_dict(state["sampler"])
        restore_rng(state)
        return state["step"]

    def save(self, step: int, model, learner, sampler, **extra) -> None:
        """Write the state atomically (a kill leaves the previous one); ``extra``: more entries to keep."""
        atomic_save({"format": self.format, "run": self.run, "step": step, "model": model.state_dict(),
                     "learner": learner.state_dict(), "sampler": sampler.state_dict(), **rng_states(), **extra},
                    self.path)


def rng_states() -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Torch's CPU RNG state and, once CUDA is in use, every CUDA device's."""
    states: dict = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(state: dict) -> None:
    """Set the RNG states of :func:`rng_states` (the CPU one from a CPU tensor; the CUDA ones where saved)."""
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None:
        if not torch.cuda.is_available():
            raise ValueError("this run was saved with CUDA random states and CUDA is not available here: "
                         "resume it on a CUDA machine (or start a new run)")
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


def run_settings(cfg, ignore: set[str]) -> dict:
    """A run config dataclass as a dict, without the fields in ``ignore``."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignore}


def check_same_run(out: Path, now: dict, then: dict) -> None:
    """Refuse to resume when a setting differs; settings that one side lacks (older versions) are not compared."""
    diff = {k: (v, then[k]) for k, v in now.items() if k in then and then[k] != v}
    if diff:
        raise ValueError(f"{out} holds a different run; differing settings (now, then): {diff}. "
                         "Use another --out folder.")


def due(every: int, step: int, before: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(before, step]``; never when ``every`` is 0."""
    return every > 0 and step // every > before // every


def accumulate(sums: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor]) -> None:
    """Add one update's metrics to ``sums`` in place."""
    for k, v in metrics.items():
        sums[k] = sums[k] + v if k in sums else v


def evaluate_score(model, tasks: list[str] | None, episodes: int, seed: int, **kwargs) -> float:
    """Normalized score of :func:`evaluation.evaluate` (``kwargs`` go to it); the training RNG streams are
    left untouched."""
    from .evaluation import evaluate, normalized_score
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        df = evaluate(model, tasks, episodes, seed, progress=False, **kwargs)
    return normalized_score(df)


class MetricsCSV:
    """Append-only CSV (first column ``step``); on (re)start, rows after ``keep_until`` and torn lines are dropped."""

    def __init__(self, path: Path, columns: tuple[str, ...], keep_until: int):
        self.path, self.columns = path, columns
        rows = []
        if path.exists():
            lines = path.read_text().split("\n")
            if lines[0] != ",".join(columns):
                raise ValueError(f"{path} has different columns than this trainer writes; move it away")
            rows = [ln for ln in lines[1:-1]
                    if ln.count(",") == len(columns) - 1 and int(ln.split(",")[0]) <= keep_until]
        atomic_write_text(path, "\n".join([",".join(columns), *rows]) + "\n")

    def append(self, row: dict) -> None:
        line = ",".join("" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k])
                        for k in self.columns)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_metrics(run: str | os.PathLike) -> pd.DataFrame:
    """The logged rows of a training run (``<run>/metrics.csv``); a clear error if the log is missing or has
    no rows (deleted or truncated after the run finished: its checkpoints stay valid, the curves are lost)."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this run's training log was deleted; the model is intact, but "
                                "its loss curves can only be regenerated by deleting the run folder and retraining")
    df = pd.read_csv(path)
    if df.empty:
        raise ValueError(f"{path} has no logged rows (it was deleted or truncated after training); the model is "
                         "intact, but its loss curves can only be regenerated by deleting the run folder and retraining")
    return df


# ------------------------------------------------------------------------------------------- run lock
LOCK_NAME = "run.lock"
_HELD: set[Path] = set()              # locks this process holds


class RunLockedError(RuntimeError):
    """A run folder that another live process is using."""


def _owner_text() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")})


def _read_owner(lock: Path) -> dict | None:
    """The lock's owner, None when there is no lock; an unreadable lock counts as an unknown owner."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {"host": "?", "pid": -1}
    except ValueError:
        return {"host": "?", "pid": -1}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(owner: dict, lock: Path) -> bool:
    """Whether the owner is known to be gone: same host and a PID that is not running (or is this process,
    which does not hold the lock)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    return owner["pid"] == os.getpid() and lock not in _HELD or owner["pid"] != os.getpid() and not _alive(owner["pid"])


def release_foreign_lock(folder: str | os.PathLike, name: str = LOCK_NAME) -> bool:
    """Remove ``folder``'s lock when another host took it (:func:`run_lock` cannot tell whether that owner is
    alive): for callers that know it is gone, e.g. a grid point whose claim went stale. True when removed."""
    lock = Path(folder) / name
    owner = _read_owner(lock)
    if owner is None or owner.get("host") == socket.gethostname():
        return False
    lock.unlink(missing_ok=True)
    return True


def _create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` atomically (complete or absent); False when it already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _acquire(lock: Path) -> str:
    me = _owner_text()
    for _ in range(50):
        if _create(lock, me):
            return me
        owner = _read_owner(lock)
        if owner is None:
            continue                                     # released meanwhile
        if not _stale(owner, lock):
            where = "this host" if owner.get("host") == socket.gethostname() else f"host {owner.get('host')!r}"
            raise RunLockedError(
                f"{lock.parent} is in use by process {owner.get('pid')} on {where} (since {owner.get('since', '?')}; "
                f"lock file {lock}). Wait for it to finish, or delete the lock file if that process is gone.")
        # a dead owner's lock: one process at a time may replace it (the takeover file serialises them)
        guard = lock.with_name(lock.name + ".takeover")
        if not _create(guard, me):
            holder = _read_owner(guard)
            if holder is not None and _stale(holder, guard):
                guard.unlink(missing_ok=True)
            time.sleep(0.02)
            continue
        try:
            if _read_owner(lock) == owner:
                lock.unlink()
        finally:
            guard.unlink(missing_ok=True)
    raise RunLockedError(f"could not take the lock {lock}: it keeps changing owner")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold ``folder/name`` (created with the folder if needed) while the block runs; another process gets a
    :class:`RunLockedError` naming the owner. A lock whose owner died on this host (SIGKILL, power loss of a
    container) is taken over. Yields the lock file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    me = _acquire(lock)
    _HELD.add(lock)
    try:
        yield lock
    finally:
        _HELD.discard(lock)
        with contextlib.suppress(OSError):
            if lock.read_text() == me:
                lock.unlink()


# -------------------------------------------------------------------------------------------- preemption
class Preempted(Exception):
    """The run stopped on SIGTERM / SIGINT after saving its state; starting it again resumes."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class Stop:
    """Set by :func:`preemption`'s signal handler; loops read :attr:`requested` at their safe points."""

    def __init__(self) -> None:
        self.requested: str | None = None

    def __bool__(self) -> bool:
        return self.requested is not None


@contextlib.contextmanager
def preemption() -> Iterator[Stop]:
    """SIGTERM and SIGINT set the yielded :class:`Stop` instead of killing the process (a second one raises
    KeyboardInterrupt at once); the previous handlers are restored on exit. Outside the main thread, where
    handlers cannot be installed, the flag stays unset."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame) -> None:
        if stop:
            raise KeyboardInterrupt
        stop.requested = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def preempted(stop: Stop, what: str, where: str) -> Preempted:
    """The exception a loop raises after saving its state on ``stop`` (``where``: e.g. "at step 40")."""
    return Preempted(f"{what} stopped on {stop.requested} {where} with its state saved; run it again to resume")


# ------------------------------------------------------------------------------------ numerical guard
class NonFiniteError(FloatingPointError):
    """A training update produced a non-finite loss or gradient norm."""


class NumericalGuard:
    """Remembers the first update whose watched metrics are not all finite, in tensors (no host sync per
    update); :meth:`check` reads them at log and checkpoint points."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.first_bad = None         # step of the first bad update (0: none yet), bad-term mask

    def watch(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        """Record update ``step`` (counted from 1)'s ``metrics`` (0-dim tensors; missing names are skipped)."""
        vals = torch.stack([metrics[k].float() for k in self.names if k in metrics])
        bad = ~torch.isfinite(vals)
        if self.first_bad is None:
            self.first_bad = (torch.zeros((), dtype=torch.long, device=vals.device), torch.zeros_like(bad),
                              [k for k in self.names if k in metrics])
        step0, mask, names = self.first_bad
        new = (step0 == 0) & bad.any()
        self.first_bad = (torch.where(new, step, step0), torch.where(new, bad, mask), names)

    def check(self, what: str, last_saved: int) -> None:
        """Raise :class:`NonFiniteError` naming the step and terms if an update went bad."""
        if self.first_bad is None or int(self.first_bad[0]) == 0:
            return
        step0, mask, names = self.first_bad
        terms = [n for n, b in zip(names, mask.tolist()) if b]
        saved = f"the last saved state is that of step {last_saved}" if last_saved else "no state was saved"
        raise NonFiniteError(f"{what}: non-finite {', '.join(terms)} at step {int(step0)}; the run stopped and "
                             f"wrote nothing after it ({saved}). Check the data (full scan: python -m "
                             "tdmpc_opt_lib check-data DATASET) or lower the learning rate.")
