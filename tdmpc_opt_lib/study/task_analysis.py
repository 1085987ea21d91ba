"""The task-level analysis of ``06_task_analysis``: which tasks and checkpoints to show, their rendered
rollouts, and one run's task scores beside the teacher's."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..evaluation import rollout_frames
from ..world_model import WorldModel
from . import plots
from .experiments import pick_student
from .params import MT_MINI_TEACHER, TaskAnalysisParams


def run_tasks(runs: pd.DataFrame) -> list[str]:
    """The tasks the distillation runs (rows of :func:`~.experiments.collect`) were evaluated on."""
    return [c[5:] for c in runs.columns if c.startswith("task:")]


def student_tasks(scores: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """The tasks of the task x model ``scores`` that the students were evaluated on (all when none was)."""
    evaluated = run_tasks(runs)
    return [t for t in scores.index if t in evaluated] or list(scores.index)


def checkpoints(results: str | os.PathLike) -> dict[str, Path]:
    """Name -> checkpoint of the models to watch: the newest distilled (d_coef 0.4) and from-scratch students of
    ``results`` and the MT-mini teacher, those that exist."""
    found = {"student d_coef 0.4": pick_student(results), "student from scratch": pick_student(results, d_coef=0.0),
             "MT-mini teacher": MT_MINI_TEACHER if MT_MINI_TEACHER.is_file() else None}
    return {name: path for name, path in found.items() if path}


def frame_steps(P: TaskAnalysisParams) -> list[int]:
    """The frame steps that fall inside an episode."""
    return [s for s in P.frame_steps if s < (P.episode_length or 500)]


def rollouts(models: dict[str, WorldModel], tasks: list[str], steps: list[int],
             render: bool) -> dict[tuple[str, str], pd.DataFrame | None]:
    """(model, task) -> :func:`~tdmpc_opt_lib.evaluation.rollout_frames` (policy prior) for each task a model
    knows; None everywhere when ``render`` is off."""
    return {(name, task): rollout_frames(model, task, steps) if render else None
            for name, model in models.items() for task in tasks if task in model.cfg.tasks.tasks}


def rendered(frames: pd.DataFrame | None) -> bool:
    """Whether a rollout has every frame (a GL back-end worked)."""
    return frames is not None and bool(frames.frame.notna().all())


def frame_figures(rollouts: dict[tuple[str, str], pd.DataFrame | None], model: str, tasks: list[str]) -> list:
    """A row of captioned frames per task that ``model``'s rollout rendered."""
    return [plots.frames(list(r.frame), [f"{task} t={s} return {x:.0f}" for s, x in zip(r.step, r["return"])])
            for task in tasks if rendered(r := rollouts.get((model, task)))]


def run_vs_teacher(runs: pd.DataFrame, scores: pd.DataFrame, run: str, tasks: list[str]) -> pd.DataFrame:
    """Task scores of one run (by name) with the teacher's beside them, when ``scores`` has a teacher column."""
    row = runs.set_index("run").loc[run]
    table = pd.DataFrame({"run": {t: row.get(f"task:{t}") for t in tasks}})
    teacher = [c for c in scores.columns if c.startswith(("teacher", "MT-mini teacher"))]
    if teacher:
        table["teacher"] = scores[teacher[0]]
    return table
