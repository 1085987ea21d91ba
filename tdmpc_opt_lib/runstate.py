"""What offline and online training share to make a run folder resumable.

* :class:`RunState`: the resume file (``train.pt``, ``online.pt``), a dict tagged with a format string and
  the run's settings, written atomically; a file of another run is refused.
* :class:`MetricsCSV` / :func:`read_metrics`: the run's ``metrics.csv``, cut back to the resumed step.
* :func:`due`, :func:`accumulate` and :func:`evaluate_score`: when to log, checkpoint or evaluate, running sums
  of update metrics, and evaluation that leaves the training RNG streams untouched.
"""
from __future__ import annotations

import dataclasses
import os
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
