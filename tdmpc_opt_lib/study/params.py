"""Notebook parameters: named profiles (smoke / default / paper) and validation with clear errors.

A notebook's ``parameters`` cell sets every value to ``None`` ("take it from the profile") or to an
explicit value; papermill overrides them (``-p d_coef 0.4``). :func:`resolve` fills the ``None``s from
the profile — ``profile`` itself defaults to ``$TDMPC_OPT_PROFILE`` or ``default`` — and checks every
value, so a bad parameter fails in the first cell with a message naming it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..config import MODEL_SIZES, MT30
from ..quantize import SCHEMES
from ..training import DISTILL_KINDS

PROFILES = ("smoke", "default", "paper")
REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
RELEASED_FP16 = SHARED / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"
MT_MINI_DIR = REPO / "data" / "mt-mini"
MT_MINI_TEACHER = MT_MINI_DIR / "teacher.pt"


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _tasks(v: Any) -> bool:
    names = v.split(",") if isinstance(v, str) else v
    return v is None or v == "all" or (isinstance(names, (list, tuple)) and all(n.strip() in MT30 for n in names))


def _seed(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _list_of(v: Any, check: Callable[[Any], bool]) -> bool:
    return isinstance(v, (list, tuple)) and all(check(x) for x in v)


def _file_or_none(v: Any) -> bool:
    return v is None or Path(v).is_file()


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "episodes": (_positive_int, "an integer >= 1"),
    "episode_length": (lambda v: v is None or (_positive_int(v) and v <= 500), "None or an integer in 1..500"),
    "seed": (_seed, "an integer >= 0"),
    "mpc": (lambda v: isinstance(v, bool), "True or False"),
    "tasks": (_tasks, "None, 'all', or MT30 task names (list or comma string)"),
    "teacher": (_file_or_none, "None or an existing checkpoint file"),
    "released": (_file_or_none, "None or an existing checkpoint file"),
    "checkpoint": (_file_or_none, "None or an existing checkpoint file"),
    "d_coef": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
    "steps": (_positive_int, "an integer >= 1"),
    "batch_size": (_positive_int, "an integer >= 1"),
    "model_size": (lambda v: v in MODEL_SIZES, f"one of {sorted(MODEL_SIZES)}"),
    "num_samples": (_positive_int, "an integer >= 1"),
    "iterations": (_positive_int, "an integer >= 1"),
    "out_dir": (lambda v: isinstance(v, (str, Path)), "a folder path"),
    "dataset": (lambda v: v is not None and (Path(v) / "index.json").is_file(),
                "a dataset folder of this library's format (for MT-mini: `python -m tdmpc_opt_lib mt-mini --stage data`;"
                " for MT30: `python -m tdmpc_opt_lib convert-data`)"),
    "source": (lambda v: v is None or Path(v).is_dir(), "None or the folder of a generated dataset (data/mt-mini)"),
    "generate": (lambda v: isinstance(v, bool), "True or False"),
    "distill": (lambda v: v in DISTILL_KINDS, f"one of {DISTILL_KINDS}"),
    "threads": (lambda v: v is None or _positive_int(v), "None (torch's default) or an integer >= 1"),
    "summary": (lambda v: isinstance(v, bool), "True or False"),
    "eval_episodes": (_positive_int, "an integer >= 1"),
    "eval_mpc": (lambda v: isinstance(v, bool), "True or False"),
    "d_coefs": (lambda v: _list_of(v, lambda x: _number(x) and x >= 0), "a list of numbers >= 0"),
    "variants": (lambda v: _list_of(v, lambda x: x in DISTILL_KINDS), f"a list of {DISTILL_KINDS}"),
    "batch_sizes": (lambda v: _list_of(v, _positive_int), "a list of integers >= 1"),
    "step_counts": (lambda v: _list_of(v, _positive_int), "a list of integers >= 1"),
    "teachers": (lambda v: _list_of(v, lambda x: Path(x).is_file()), "a list of existing checkpoint files"),
    "seeds": (lambda v: _list_of(v, _seed) and len(v) >= 1 and len(set(v)) == len(v),
              "a non-empty list of distinct integers >= 0"),
    "jobs": (_positive_int, "an integer >= 1"),
    "schemes": (lambda v: v == "all" or _list_of(v, lambda x: x in SCHEMES), f"'all' or a list of {SCHEMES}"),
    "released_tasks": (_tasks, "None, 'all', or MT30 task names (list or comma string)"),
    "latency_steps": (_positive_int, "an integer >= 1"),
    "render": (lambda v: isinstance(v, bool), "True or False"),
    "frame_steps": (lambda v: _list_of(v, lambda x: isinstance(x, int) and 0 <= x < 500) and len(v) >= 1,
                    "a non-empty list of step indices in 0..499"),
}
# 04_ablations: None = take 03_distill's value for the same profile.
for _name in ("steps", "batch_size"):
    CHECKS[_name] = (lambda v, c=CHECKS[_name][0]: v is None or c(v), "None or an integer >= 1")


def _default_teacher() -> str | None:
    for path in (MT_MINI_TEACHER, RELEASED_FP16):
        if path.is_file():
            return str(path)
    return None


def _mt_mini_teacher() -> str | None:
    return str(MT_MINI_TEACHER) if MT_MINI_TEACHER.is_file() else None


def _mt_mini_student() -> str | None:
    path = MT_MINI_DIR / "student-distilled.pt"
    return str(path) if path.is_file() else None


def _released() -> str | None:
    return str(RELEASED_FP16) if RELEASED_FP16.is_file() else None


def _mt_mini_dataset() -> str | None:
    """The merged MT-mini dataset (built from data/mt-mini/tasks on first use), or None if not generated."""
    from .mtmini import merged_dataset
    try:
        return str(merged_dataset(MT_MINI_DIR, REPO / "build" / "mt-mini" / "dataset"))
    except FileNotFoundError:
        return None


SMOKE_OUT = str(REPO / "reports" / "_smoke")
RESULTS = str(REPO / "reports" / "results")
RECORDED = REPO / "reports" / "runs"   # committed results of runs too long for the default report
# The paper's scale needs files this repository cannot ship: the converted MT30 dataset
# (`python -m tdmpc_opt_lib convert-data`) and the public 317M / 48M TD-MPC2 checkpoints.
PAPER_DATA = REPO / "data" / "mt30"
PAPER_TEACHER = REPO / "data" / "checkpoints" / "mt30-317M.pt"
PAPER_TEACHER_48M = REPO / "data" / "checkpoints" / "mt30-48M.pt"
_DISTILL = dict(teacher=_mt_mini_teacher, dataset=_mt_mini_dataset, model_size=1, seed=1, distill="reward",
                threads=None, summary=True)

# notebook -> profile -> defaults. Callables are evaluated at resolve time (paths that may not exist).
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "01_teacher": {
        "smoke": dict(teacher=_default_teacher, released=_released, tasks="cartpole-balance,cup-catch", episodes=1,
                      episode_length=20, mpc=False, num_samples=64, iterations=2, seed=0, out_dir=SMOKE_OUT),
        "default": dict(teacher=_default_teacher, released=_released, tasks=None, episodes=2, episode_length=None,
                        mpc=False, num_samples=512, iterations=6, seed=0, out_dir=RESULTS),
        "paper": dict(teacher=_default_teacher, released=_released, tasks=None, episodes=10, episode_length=None,
                      mpc=True, num_samples=512, iterations=6, seed=0, out_dir=RESULTS),
    },
    "02_data": {
        "smoke": dict(dataset=_mt_mini_dataset, source=str(MT_MINI_DIR), generate=False, out_dir=SMOKE_OUT),
        "default": dict(dataset=_mt_mini_dataset, source=str(MT_MINI_DIR), generate=False, out_dir=RESULTS),
        "paper": dict(dataset=str(PAPER_DATA), source=None, generate=False, out_dir=RESULTS),
    },
    "03_distill": {
        "smoke": dict(_DISTILL, d_coef=0.4, steps=20, batch_size=32, eval_episodes=1, eval_mpc=False,
                      episode_length=20, out_dir=SMOKE_OUT),
        "default": dict(_DISTILL, d_coef=0.4, steps=1000, batch_size=256, eval_episodes=2, eval_mpc=False,
                        episode_length=None, out_dir=RESULTS),
        "paper": dict(_DISTILL, teacher=str(PAPER_TEACHER), dataset=str(PAPER_DATA), d_coef=0.4, steps=1_000_000,
                      batch_size=256, eval_episodes=10, eval_mpc=True, episode_length=None, out_dir=RESULTS),
    },
    "04_ablations": {
        "smoke": dict(teacher=_mt_mini_teacher, dataset=_mt_mini_dataset, d_coef=0.4, steps=None, batch_size=None, d_coefs=[0.0, 0.4], variants=[], batch_sizes=[],
                      step_counts=[], teachers=[], seeds=[1], jobs=1, out_dir=SMOKE_OUT),
        "default": dict(teacher=_mt_mini_teacher, dataset=_mt_mini_dataset, d_coef=0.4, steps=None, batch_size=None, d_coefs=[0.0, 0.4, 0.9],
                        variants=["latent-linear", "latent-pca"], batch_sizes=[], step_counts=[], teachers=[], seeds=[1, 2],
                        jobs=2, out_dir=RESULTS),
        "paper": dict(teacher=str(PAPER_TEACHER), dataset=str(PAPER_DATA), d_coef=0.4, steps=200_000, batch_size=256, d_coefs=[0.0, 0.05, 0.25, 0.4, 0.55, 0.6, 0.9],
                      variants=["latent-linear", "latent-pca"], batch_sizes=[128, 1024],
                      step_counts=[337_000, 1_000_000], teachers=[str(PAPER_TEACHER_48M)], seeds=[1], jobs=1,
                      out_dir=RESULTS),
    },
    "05_quantization": {
        "smoke": dict(checkpoint=_mt_mini_student, released=_released, schemes=["fp16", "int8", "paper-int8"], episodes=1,
                      episode_length=20, mpc=False, released_tasks="cartpole-balance,cup-catch", latency_steps=2,
                      out_dir=SMOKE_OUT),
        "default": dict(checkpoint=_mt_mini_student, released=_released, schemes="all", episodes=2, episode_length=None,
                        mpc=False, released_tasks=None, latency_steps=10, out_dir=RESULTS),
        "paper": dict(checkpoint=None, released=_released, schemes="all", episodes=10, episode_length=None,
                      mpc=True, released_tasks=None, latency_steps=20, out_dir=RESULTS),
    },
    "06_task_analysis": {
        "smoke": dict(render=True, frame_steps=[0, 10], episode_length=20, out_dir=SMOKE_OUT),
        "default": dict(render=True, frame_steps=[0, 50, 150, 499], episode_length=None, out_dir=RESULTS),
        "paper": dict(render=True, frame_steps=[0, 50, 150, 499], episode_length=None, out_dir=RESULTS),
    },
}


def rel(path: str | os.PathLike) -> str:
    """``path`` as the report shows it: relative to the repository (``../shared/...`` for the shared
    folder beside it), so pages do not depend on where the clone lives; other paths unchanged."""
    p = Path(path).absolute()
    for base, prefix in ((REPO, ""), (SHARED, "../shared/")):
        if p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    return str(path)


def table(P: dict[str, Any]) -> pd.DataFrame:
    """Resolved parameters as a one-column table, paths shown with :func:`rel`."""
    shown = {k: rel(v) if isinstance(v, (str, Path)) and os.sep in str(v) else v for k, v in P.items()}
    return pd.Series(shown, name="value", dtype=object).to_frame()


def profile_name(profile: str | None = None) -> str:
    name = profile or os.environ.get("TDMPC_OPT_PROFILE") or "default"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES} (parameter 'profile' or $TDMPC_OPT_PROFILE)")
    return name


def resolve(notebook: str, profile: str | None = None, **given: Any) -> dict[str, Any]:
    """The notebook's parameters: ``given`` values that are not None, the rest from the profile; all checked."""
    if notebook not in DEFAULTS:
        raise ValueError(f"no parameters defined for notebook {notebook!r}; known: {sorted(DEFAULTS)}")
    defaults = DEFAULTS[notebook][profile_name(profile)]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{notebook}: unknown parameter(s) {unknown}; known: {sorted(defaults)}")
    out = {k: (given[k] if given.get(k) is not None else (v() if callable(v) else v)) for k, v in defaults.items()}
    for k, v in out.items():
        check, want = CHECKS[k]
        if not check(v):
            raise ValueError(f"{notebook}: parameter {k!r} must be {want}, got {v!r}")
    if out.get("d_coef", 0) > 0 and "teacher" in out and out["teacher"] is None:
        raise ValueError(f"{notebook}: d_coef {out['d_coef']} > 0 needs a teacher checkpoint (parameter 'teacher'; "
                         "the MT-mini one is made by `python -m tdmpc_opt_lib mt-mini --stage teacher`)")
    out["profile"] = profile_name(profile)
    return out
