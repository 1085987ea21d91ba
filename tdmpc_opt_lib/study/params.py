"""Notebook parameters: one dataclass per notebook, its profiles (smoke / default / paper) and one validation.

A notebook's ``parameters`` cell sets every value to ``None`` ("take it from the profile") or to an
explicit value; papermill overrides them (``-p d_coef 0.4``). :func:`resolve` fills the ``None``s from
the profile — ``profile`` itself defaults to ``$TDMPC_OPT_PROFILE`` or ``default`` — and checks every
value, so a bad parameter fails in the first cell with a message naming it. Resolving only reads: it
writes no file, folder or environment variable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from .. import checks
from ..config import MODEL_SIZES, MT30, MT_MINI
from ..planner import PlannerConfig
from ..device import AUTO
from ..quantize import SCHEMES

PROFILES = ("smoke", "default", "paper")
REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
RELEASED_FP16 = SHARED / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"
MT_MINI_DIR = REPO / "data" / "mt-mini"
MT_MINI_TEACHER = MT_MINI_DIR / "teacher.pt"
MT_MINI_DATASET = str(REPO / "build" / "mt-mini" / "dataset")   # merged from MT_MINI_DIR/tasks on first use
SMOKE_OUT = str(REPO / "reports" / "_smoke")
RESULTS = str(REPO / "reports" / "results")
RECORDED = REPO / "reports" / "runs"   # committed results of runs too long for the default report
# The paper's scale needs files this repository cannot ship: the converted MT30 dataset
# (`python -m tdmpc_opt_lib convert-data`) and the public 317M / 48M TD-MPC2 checkpoints.
PAPER_DATA = REPO / "data" / "mt30"
PAPER_TEACHER = REPO / "data" / "checkpoints" / "mt30-317M.pt"
PAPER_TEACHER_48M = REPO / "data" / "checkpoints" / "mt30-48M.pt"
# The MPPI setting of every model the default report evaluates with planning (the teacher and the released student
# in 01, every student of 03/04): 128 samples x 2 iterations, with the 16 elites and 8 policy trajectories of
# :func:`planner_config`; the smoke profile acts with the policy prior, the paper profile plans with TD-MPC2's
# 512 x 6. CPU time of one lock-step call for 20 environments, one thread (2026-12-04): size-1 student 156 ms
# (256 x 4, the committed MT-mini build's setting: 555 ms), size-5 teacher 348 ms (256 x 4: 1311 ms); a 500-step
# episode of the student costs ~4 s instead of ~14 s, which buys the main comparison its training seeds.
EVAL_SAMPLES, EVAL_ITERATIONS = 128, 2


def planner_config(num_samples: int, iterations: int) -> PlannerConfig:
    """MPPI with ``num_samples`` x ``iterations``; elites (1/8 of the samples, at most TD-MPC2's 64) and policy
    trajectories (1/16, at most 24) shrink with fewer samples: TD-MPC2's 64 and 24 at 512 samples."""
    return PlannerConfig(num_samples=num_samples, iterations=iterations, num_elites=max(1, min(64, num_samples // 8)),
                         num_pi_trajs=min(24, num_samples // 16))


class Found:
    """A profile value: the first of ``paths`` that exists when the parameters are resolved, else None."""

    def __init__(self, *paths: str | os.PathLike) -> None:
        self.paths = tuple(Path(p) for p in paths)

    def first(self) -> str | None:
        return next((str(p) for p in self.paths if p.is_file()), None)

    def __repr__(self) -> str:
        return f"Found({', '.join(map(rel, self.paths))})"


# ---------------------------------------------------------------------------------------------- checks
def _tasks(v: Any) -> bool:
    names = v.split(",") if isinstance(v, str) else v
    return v is None or v == "all" or (isinstance(names, (list, tuple)) and all(n.strip() in MT30 for n in names))


def _file_or_none(v: Any) -> bool:
    return v is None or Path(v).is_file()


def _dataset(v: Any) -> bool:
    """A dataset folder, or the MT-mini default when every task dataset it is merged from is there."""
    if v is None:
        return False
    if (Path(v) / "index.json").is_file():
        return True
    return Path(v) == Path(MT_MINI_DATASET) and all((MT_MINI_DIR / "tasks" / t / "scores.json").is_file()
                                                    for t in MT_MINI)


_TASKS = (_tasks, "None, 'all', or MT30 task names (list or comma string)")
_FILE = (_file_or_none, "None or an existing checkpoint file")
_POSITIVE = checks.POSITIVE
_BOOL = checks.BOOL
_SEEDS = (lambda v: checks.list_of(v, checks.non_negative_int) and len(v) >= 1 and len(set(v)) == len(v),
          "a non-empty list of distinct integers >= 0")
# parameter name -> (check, what it must be); a name means the same in every notebook, and as a library or
# command-line setting (checks.RULES)
CHECKS: dict[str, checks.Rule] = {
    **{k: checks.RULES[k] for k in ("episodes", "episode_length", "seed", "mpc", "d_coef", "steps", "batch_size",
                                    "model_size", "distill", "threads", "eval_episodes", "eval_mpc", "device")},
    "profile": (lambda v: v in PROFILES, f"one of {PROFILES}"),
    "tasks": _TASKS,
    "teacher": _FILE,
    "released": _FILE,
    "checkpoint": _FILE,
    "num_samples": _POSITIVE,
    "iterations": _POSITIVE,
    "out_dir": (lambda v: isinstance(v, (str, Path)), "a folder path"),
    "dataset": (_dataset, "a dataset folder of this library's format (for MT-mini: `python -m tdmpc_opt_lib mt-mini "
                          "--stage data`; for MT30: `python -m tdmpc_opt_lib convert-data`)"),
    "source": (lambda v: v is None or Path(v).is_dir(), "None or the folder of a generated dataset (data/mt-mini)"),
    "generate": _BOOL,
    "summary": _BOOL,
    "d_coefs": (lambda v: checks.list_of(v, checks.RULES['d_coef'][0]), "a list of numbers >= 0"),
    "variants": (lambda v: checks.list_of(v, checks.RULES['distill'][0]), f"a list of {checks.DISTILL_KINDS}"),
    "batch_sizes": (lambda v: checks.list_of(v, checks.positive_int), "a list of integers >= 1"),
    "step_counts": (lambda v: checks.list_of(v, checks.positive_int), "a list of integers >= 1"),
    "teachers": (lambda v: checks.list_of(v, lambda x: Path(x).is_file()), "a list of existing checkpoint files"),
    "seeds": _SEEDS,
    "other_seeds": _SEEDS,
    "jobs": _POSITIVE,
    "schemes": (lambda v: v == "all" or checks.list_of(v, lambda x: x in SCHEMES), f"'all' or a list of {SCHEMES}"),
    "released_tasks": _TASKS,
    "latency_steps": _POSITIVE,
    "render": _BOOL,
    "cluster": (lambda v: v is None or (isinstance(v, str) and bool(v) and find_spec("ray") is not None),
                "None (this machine), or 'auto' / 'host:port' of a Ray cluster with Ray installed "
                "(pip install -e \".[cluster]\"; docs/cluster.md)"),
    "frame_steps": (lambda v: checks.list_of(v, lambda x: isinstance(x, int) and 0 <= x < 500) and len(v) >= 1,
                    "a non-empty list of step indices in 0..499"),
}


@dataclass(frozen=True)
class Params:
    """Base of the notebooks' parameters: the profile they came from and their validation."""

    notebook: ClassVar[str]
    profile: str = "default"
    """The profile the values not given were taken from."""
    out_dir: str = RESULTS
    """Folder of the notebooks' saved results (distillation runs are cached in its runs/ folder)."""
    device: str = AUTO
    """Torch device of training, evaluation and planning: 'auto' (CUDA when available, else the CPU), 'cpu', 'cuda'."""

    def validate(self) -> None:
        """Raise ValueError naming the first parameter that is not acceptable."""
        for f in fields(self):
            v = getattr(self, f.name)
            check, want = CHECKS[f.name]
            if isinstance(v, Found) or not check(v):
                raise ValueError(f"{self.notebook}: parameter {checks.problem(f.name, v, (check, want))}")
        d_coef, teacher = getattr(self, "d_coef", 0), getattr(self, "teacher", "")
        if d_coef > 0 and teacher is None:
            raise ValueError(f"{self.notebook}: d_coef {d_coef} > 0 needs a teacher checkpoint (parameter 'teacher'; "
                             "the MT-mini one is made by `python -m tdmpc_opt_lib mt-mini --stage teacher`)")


@dataclass(frozen=True)
class TeacherParams(Params):
    """01_teacher: the teacher's architecture and scores, the paper's released student beside it."""

    notebook: ClassVar[str] = "01_teacher"
    teacher: str | None = Found(MT_MINI_TEACHER, RELEASED_FP16)
    """Checkpoint to evaluate (default: data/mt-mini/teacher.pt, else the paper's released student)."""
    released: str | None = Found(RELEASED_FP16)
    """The paper's released fp16 student, evaluated on the same tasks when present."""
    tasks: str | list[str] | None = None
    """None: every task of the teacher; else a comma string or list of task names."""
    episodes: int = 2
    """Episodes per task."""
    episode_length: int | None = None
    """Steps per episode (None: 500, as the protocol says)."""
    mpc: bool = True
    """True: plan with MPPI; False: act with the policy prior's mean."""
    num_samples: int = EVAL_SAMPLES
    """MPPI samples per iteration (default: the report's setting, :data:`EVAL_SAMPLES`)."""
    iterations: int = EVAL_ITERATIONS
    """MPPI iterations (default: :data:`EVAL_ITERATIONS`)."""
    seed: int = 0
    """Environment seed of the first episode."""


@dataclass(frozen=True)
class DataParams(Params):
    """02_data: the dataset's composition and how it was generated."""

    notebook: ClassVar[str] = "02_data"
    dataset: str = MT_MINI_DATASET
    """Dataset folder in this library's format (default: MT-mini, merged from data/mt-mini/tasks)."""
    source: str | None = str(MT_MINI_DIR)
    """Folder of the generated dataset with per-task scores and curves (None: not known)."""
    generate: bool = False
    """True: (re)generate the missing MT-mini tasks first (CPU-hours; resumable)."""


@dataclass(frozen=True)
class DistillParams(Params):
    """03_distill: one student trained offline, distilled from a teacher or from scratch, and evaluated."""

    notebook: ClassVar[str] = "03_distill"
    d_coef: float = 0.4
    """Distillation weight; 0 means from scratch (paper best 0.4, the release used 0.45)."""
    distill: str = "reward"
    """"reward" (the paper's), "latent-linear" or "latent-pca"."""
    steps: int = 1000
    """Gradient updates."""
    batch_size: int = 256
    """Windows per update."""
    model_size: int = 1
    """Student size: 1, 5, 19, 48 or 317 (million parameters)."""
    teacher: str | None = Found(MT_MINI_TEACHER)
    """Frozen teacher checkpoint (default: data/mt-mini/teacher.pt)."""
    dataset: str = MT_MINI_DATASET
    """Dataset folder (default: MT-mini, merged from data/mt-mini/tasks)."""
    seed: int = 1
    """Training seed."""
    eval_episodes: int = 2
    """Evaluation episodes per task (the seed's own episodes: :func:`~.experiments.eval_seed`)."""
    eval_mpc: bool = True
    """True: evaluate with MPPI planning (as the paper does); False: with the policy prior's mean."""
    num_samples: int = EVAL_SAMPLES
    """MPPI samples per iteration when ``eval_mpc`` (default: the report's setting, :data:`EVAL_SAMPLES`)."""
    iterations: int = EVAL_ITERATIONS
    """MPPI iterations when ``eval_mpc`` (default: :data:`EVAL_ITERATIONS`)."""
    episode_length: int | None = None
    """Steps per evaluation episode (None: 500, as the protocol says)."""
    threads: int | None = None
    """Torch threads (None: torch's default)."""
    summary: bool = True
    """Write 03_distill_summary.csv for the report index (04 turns it off for its runs)."""


@dataclass(frozen=True)
class AblationParams(Params):
    """04_ablations: the paper's Tables 1-3 as a one-axis-at-a-time grid of 03_distill runs around a base point."""

    notebook: ClassVar[str] = "04_ablations"
    teacher: str | None = Found(MT_MINI_TEACHER)
    """Base point's teacher (default: data/mt-mini/teacher.pt)."""
    dataset: str = MT_MINI_DATASET
    """Dataset folder (default: MT-mini)."""
    d_coef: float = 0.4
    """Base point's distillation weight."""
    steps: int = DistillParams.steps
    """Base point's gradient updates (the 03_distill value of the profile)."""
    batch_size: int = DistillParams.batch_size
    """Base point's batch size (the 03_distill value of the profile)."""
    d_coefs: tuple[float, ...] = (0.0, 0.25, 0.4, 0.9)
    """Table 1 axis (0 is the from-scratch baseline)."""
    variants: tuple[str, ...] = ()
    """Table 1 latent-distillation rows: "latent-linear", "latent-pca" (default: none; the paper profile has both)."""
    batch_sizes: tuple[int, ...] = ()
    """Table 2 axis (each value distilled and from scratch)."""
    step_counts: tuple[int, ...] = ()
    """Table 2 axis (each value distilled and from scratch)."""
    teachers: tuple[str, ...] = ()
    """Table 3: extra teacher checkpoints (the base teacher is always in)."""
    seeds: tuple[int, ...] = (1, 2, 3, 4)
    """Training seeds of the main comparison (from scratch and the base point's d_coef), paired by seed."""
    other_seeds: tuple[int, ...] = (1, 2)
    """Training seeds of every other grid point (fewer: the main comparison gets the statistical power)."""
    jobs: int = 2
    """Runs executed side by side, one torch thread each (without a cluster)."""
    cluster: str | None = None
    """None: run the grid on this machine; "auto" or "host:port": one Ray task per run on that cluster."""


@dataclass(frozen=True)
class QuantizationParams(Params):
    """05_quantization: every quantization scheme written, reloaded, measured and evaluated."""

    notebook: ClassVar[str] = "05_quantization"
    checkpoint: str | None = Found(MT_MINI_DIR / "student-distilled.pt")
    """Student to quantize (default: data/mt-mini/student-distilled.pt, else the newest 03 student)."""
    released: str | None = Found(RELEASED_FP16)
    """The paper's released fp16 student, quantized on MT30 tasks when present."""
    schemes: str | tuple[str, ...] = "all"
    """"all" or a list of scheme names."""
    episodes: int = 2
    """Evaluation episodes per task."""
    episode_length: int | None = None
    """Steps per episode (None: 500)."""
    mpc: bool = False
    """True: plan with MPPI; False: act with the policy prior's mean."""
    released_tasks: str | list[str] | None = None
    """MT30 tasks for the released student (None: all 30)."""
    latency_steps: int = 10
    """Timed calls per latency measurement."""
    cluster: str | None = None
    """None: evaluate on this machine; "auto" or "host:port": split each evaluation over that Ray cluster."""


@dataclass(frozen=True)
class TaskAnalysisParams(Params):
    """06_task_analysis: every evaluated model task by task, rendered rollouts and an explorer."""

    notebook: ClassVar[str] = "06_task_analysis"
    render: bool = True
    """Render rollout frames (skipped with a note when no GL back-end works)."""
    frame_steps: tuple[int, ...] = (0, 50, 150, 499)
    """Environment steps at which frames are shown."""
    episode_length: int | None = None
    """Steps per rollout (None: 500)."""


_DISTILL = {"smoke": DistillParams(steps=20, batch_size=32, eval_episodes=1, eval_mpc=False, episode_length=20,
                                   out_dir=SMOKE_OUT),
            "default": DistillParams(),
            "paper": DistillParams(teacher=str(PAPER_TEACHER), dataset=str(PAPER_DATA), steps=1_000_000,
                                   eval_episodes=10, eval_mpc=True, num_samples=512, iterations=6)}
SMOKE_TASKS = "cartpole-balance,cup-catch"

# notebook -> profile -> its parameters (the default profile is each dataclass's defaults)
NOTEBOOK_PROFILES: dict[str, dict[str, Params]] = {
    "01_teacher": {
        "smoke": TeacherParams(tasks=SMOKE_TASKS, episodes=1, episode_length=20, mpc=False, num_samples=64,
                               iterations=2, out_dir=SMOKE_OUT),
        "default": TeacherParams(),
        "paper": TeacherParams(teacher=str(PAPER_TEACHER), episodes=10, mpc=True, num_samples=512, iterations=6),
    },
    "02_data": {
        "smoke": DataParams(out_dir=SMOKE_OUT),
        "default": DataParams(),
        "paper": DataParams(dataset=str(PAPER_DATA), source=None),
    },
    "03_distill": _DISTILL,
    "04_ablations": {
        "smoke": AblationParams(steps=_DISTILL["smoke"].steps, batch_size=_DISTILL["smoke"].batch_size,
                                d_coefs=(0.0, 0.4), variants=(), seeds=(1,), other_seeds=(1,), jobs=1,
                                out_dir=SMOKE_OUT),
        "default": AblationParams(),
        "paper": AblationParams(teacher=str(PAPER_TEACHER), dataset=str(PAPER_DATA), steps=200_000,
                                d_coefs=(0.0, 0.05, 0.25, 0.4, 0.55, 0.6, 0.9),
                                variants=("latent-linear", "latent-pca"), batch_sizes=(128, 1024),
                                step_counts=(337_000, 1_000_000), teachers=(str(PAPER_TEACHER_48M),), seeds=(1,),
                                other_seeds=(1,), jobs=1),
    },
    "05_quantization": {
        "smoke": QuantizationParams(schemes=("fp16", "int8", "paper-int8"), episodes=1, episode_length=20,
                                    released_tasks=SMOKE_TASKS, latency_steps=2, out_dir=SMOKE_OUT),
        "default": QuantizationParams(),
        "paper": QuantizationParams(checkpoint=None, episodes=10, mpc=True, latency_steps=20),
    },
    "06_task_analysis": {
        "smoke": TaskAnalysisParams(frame_steps=(0, 10), episode_length=20, out_dir=SMOKE_OUT),
        "default": TaskAnalysisParams(),
        "paper": TaskAnalysisParams(),
    },
}


def profile_name(profile: str | None = None) -> str:
    """``profile``, else ``$TDMPC_OPT_PROFILE``, else "default"; checked."""
    name = profile or os.environ.get("TDMPC_OPT_PROFILE") or "default"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES} (parameter 'profile' or $TDMPC_OPT_PROFILE)")
    return name


def resolve(notebook: str, profile: str | None = None, **given: Any) -> Params:
    """The notebook's parameters: ``given`` values that are not None, the rest from the profile; all checked."""
    if notebook not in NOTEBOOK_PROFILES:
        raise ValueError(f"no parameters defined for notebook {notebook!r}; known: {sorted(NOTEBOOK_PROFILES)}")
    name = profile_name(profile)
    base = NOTEBOOK_PROFILES[notebook][name]
    known = [f.name for f in fields(base) if f.name != "profile"]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{notebook}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    found = {k: v.first() for k, v in values(base).items() if isinstance(v, Found)}
    P = replace(base, profile=name, **{**found, **{k: v for k, v in given.items() if v is not None}})
    P.validate()
    return P


def prepare_dataset(dataset: str | os.PathLike) -> str:
    """``dataset``, ready to open: the MT-mini default is merged from ``data/mt-mini/tasks`` on first use
    (the one step after :func:`resolve` that writes, kept out of it)."""
    if Path(dataset) == Path(MT_MINI_DATASET):
        from .mtmini import merged_dataset
        merged_dataset(MT_MINI_DIR, MT_MINI_DATASET)
    return str(dataset)


def values(P: Params) -> dict[str, Any]:
    """The parameters as a dict (field order)."""
    return {f.name: getattr(P, f.name) for f in fields(P)}


def rel(path: str | os.PathLike) -> str:
    """``path`` as the report shows it: relative to the repository (``../shared/...`` for the shared
    folder beside it), so pages do not depend on where the clone lives; other paths unchanged."""
    p = Path(path).absolute()
    for base, prefix in ((REPO, ""), (SHARED, "../shared/")):
        if p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    return str(path)


def table(P: Params | dict[str, Any]) -> pd.DataFrame:
    """Parameters as a one-column table, paths shown with :func:`rel`."""
    items = values(P) if isinstance(P, Params) else P
    shown = {k: rel(v) if isinstance(v, (str, Path)) and os.sep in str(v) else v for k, v in items.items()}
    return pd.Series(shown, name="value", dtype=object).to_frame()
