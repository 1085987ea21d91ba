"""The teacher of ``01_teacher``: its architecture, and its scores beside the paper's released student's."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..checkpoints import load_checkpoint
from ..evaluation import evaluate, normalized_score, task_table
from ..world_model import WorldModel
from .params import TeacherParams, planner_config


def architecture(model: WorldModel, path: str | os.PathLike) -> str:
    """One line: the checkpoint's file name, the model's size, tasks and layer widths."""
    c = model.cfg
    return (f"{Path(path).name}: model size {c.model_size}, {c.num_tasks} tasks, latent {c.latent_dim}, mlp {c.mlp_dim}, "
            f"enc {c.enc_dim}, {c.num_q} Q heads, task embedding {c.task_dim}")


def evaluate_models(model: WorldModel, P: TeacherParams) -> dict[str, pd.DataFrame]:
    """Per-episode scores of the teacher, and of the released student on the same tasks and seeds when it is
    another file that knows every task of the teacher; a ``protocol`` column says how they acted (``MPPI 128x2``,
    ``policy prior``)."""
    kw = dict(tasks=P.tasks, episodes=P.episodes, seed=P.seed, mpc=P.mpc,
              planner_cfg=planner_config(P.num_samples, P.iterations), episode_length=P.episode_length, progress=False)
    protocol = f"MPPI {P.num_samples}x{P.iterations}" if P.mpc else "policy prior"
    results = {"teacher": evaluate(model, **kw).assign(protocol=protocol)}
    if P.released and Path(P.released).resolve() != Path(P.teacher).resolve():
        released = load_checkpoint(P.released, device=model.discount.device)
        if set(model.cfg.tasks.tasks) <= set(released.cfg.tasks.tasks):
            tasks = P.tasks or list(model.cfg.tasks.tasks)
            results["released student"] = evaluate(released, **{**kw, "tasks": tasks}).assign(protocol=protocol)
    return results


def scores(results: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.Series]:
    """(task x model table of mean scores, normalized score per model) of per-episode results."""
    table = pd.concat({name: task_table(df)["score"] for name, df in results.items()}, axis=1)
    summary = pd.Series({name: normalized_score(df) for name, df in results.items()}, name="normalized score")
    return table, summary


def episodes(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every model's episodes in one frame, the model's name first."""
    return pd.concat(results, names=["model"]).reset_index(level=0)
