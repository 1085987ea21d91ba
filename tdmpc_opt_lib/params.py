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

from .config import MODEL_SIZES, MT30

PROFILES = ("smoke", "default", "paper")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RELEASED_FP16 = SHARED / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"
MT_MINI_TEACHER = REPO / "data" / "mt-mini" / "teacher.pt"


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _tasks(v: Any) -> bool:
    names = v.split(",") if isinstance(v, str) else v
    return v is None or v == "all" or (isinstance(names, (list, tuple)) and all(n.strip() in MT30 for n in names))


def _file_or_none(v: Any) -> bool:
    return v is None or Path(v).is_file()


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "episodes": (_positive_int, "an integer >= 1"),
    "episode_length": (lambda v: v is None or (_positive_int(v) and v <= 500), "None or an integer in 1..500"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
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
}


def _default_teacher() -> str | None:
    for path in (MT_MINI_TEACHER, RELEASED_FP16):
        if path.is_file():
            return str(path)
    return None


def _released() -> str | None:
    return str(RELEASED_FP16) if RELEASED_FP16.is_file() else None


# notebook -> profile -> defaults. Callables are evaluated at resolve time (paths that may not exist).
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "01_teacher": {
        "smoke": dict(teacher=_default_teacher, released=_released, tasks="cartpole-balance,cup-catch", episodes=1,
                      episode_length=20, mpc=False, num_samples=64, iterations=2, seed=0, out_dir=str(REPO / "reports" / "_smoke")),
        "default": dict(teacher=_default_teacher, released=_released, tasks=None, episodes=2, episode_length=None,
                        mpc=False, num_samples=512, iterations=6, seed=0, out_dir=str(REPO / "reports" / "results")),
        "paper": dict(teacher=_default_teacher, released=_released, tasks=None, episodes=10, episode_length=None,
                      mpc=True, num_samples=512, iterations=6, seed=0, out_dir=str(REPO / "reports" / "results")),
    },
}


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
    out["profile"] = profile_name(profile)
    return out
