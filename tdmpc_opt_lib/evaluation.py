"""Evaluation protocol of TD-MPC2 on MT30: episodes of 500 agent steps, no exploration noise,
task score = return / 10, normalized score = mean of task scores.

Episodes of all requested tasks run in lock-step so that one batched planner call serves them all.
Episode ``e`` of seed ``s`` runs in an environment seeded ``s * 1000 + e``; the planner's random
stream is seeded with ``s``. Environments step in this process or, with ``workers``, in worker processes
(:mod:`tdmpc_opt_lib.envs.vector`): the same seeds give the same returns either way. Tensors live on the
model's device; environments take float64 actions on the host.
"""
from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import fast
from .envs import EPISODE_LENGTH, MultiTaskEnv
from .envs.vector import LocalEnvs, WorkerEnvs
from .planner import Planner, PlannerConfig
from .world_model import WorldModel


def episode_seed(seed: int, episode: int) -> int:
    return seed * 1000 + episode


def resolve_tasks(model: WorldModel, tasks: str | list[str] | None) -> list[str]:
    """``None``/the task set's name → all its tasks; a comma list or list → those (validated)."""
    ts = model.cfg.tasks
    if tasks is None or (isinstance(tasks, str) and tasks.lower() in ("all", ts.name, "mt30") and
                         (tasks.lower() != "mt30" or ts.name == "mt30")):
        return list(ts.tasks)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    for t in names:
        ts.index(t)  # ValueError naming the known tasks
    return names


@torch.no_grad()
def policy_actions(model: WorldModel, obs: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """Acting without planning: the policy prior's mean action."""
    dev = model.discount.device
    obs, task = obs.to(dev), task.to(dev)
    _, info = model.pi(model.encode(obs, task), task)
    return info["mean"]


def evaluate(model: WorldModel, tasks: str | list[str] | None = None, episodes: int = 2, seed: int = 0,
             mpc: bool = True, planner_cfg: PlannerConfig | None = None, batch_envs: int = 64,
             compile: bool | None = None, episode_length: int | None = None, progress: bool = True,
             workers: int = 0) -> pd.DataFrame:
    """Run ``episodes`` per task; one row per episode: task, episode, seed, return, score, steps.

    ``episode_length`` shortens episodes (smoke runs only; scores are then not the protocol's).
    ``workers``: step the environments in that many worker processes (0: in this process).
    ``compile``: the speed layer (:func:`tdmpc_opt_lib.fast.accelerate`, a ``torch.compile``'d planner); on
    unless ``TDMPC_OPT_COMPILE=0``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if batch_envs < 1:
        raise ValueError(f"batch_envs must be >= 1, got {batch_envs}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    names = resolve_tasks(model, tasks)
    if compile is None:
        compile = os.environ.get("TDMPC_OPT_COMPILE", "1") != "0"
    jobs = [(t, e) for t in names for e in range(episodes)]
    rows: list[dict] = []
    start = time.perf_counter()
    model.eval()
    # the speed layer for planning (same results to float rounding); the policy prior's few rows run as they are
    speed = compile and mpc
    runner = fast.accelerate(model) if speed else model
    pool = WorkerEnvs(model.cfg.tasks, workers, min(batch_envs, len(jobs))) if workers else LocalEnvs(model.cfg.tasks)
    with fast.cpu_runtime(next(model.parameters()).device) if speed else contextlib.nullcontext():
        try:
            for lo in range(0, len(jobs), batch_envs):
                batch = jobs[lo:lo + batch_envs]
                planner = Planner(runner, planner_cfg, seed=seed + lo, compile=compile) if mpc else None
                rows += _run_batch(runner, planner, pool, batch, seed, episode_length, progress,
                                   label=f"{lo + 1}-{lo + len(batch)}/{len(jobs)}")
        finally:
            pool.close()
    df = pd.DataFrame(rows)
    df.attrs.update(wall_s=time.perf_counter() - start, mpc=mpc, seed=seed)
    return df


def _run_batch(model: WorldModel, planner: Planner | None, pool: LocalEnvs | WorkerEnvs,
               batch: list[tuple[str, int]], seed: int, episode_length: int | None, progress: bool,
               label: str) -> list[dict]:
    """Episodes ``batch`` ((task, episode) pairs) in lock-step in ``pool``'s environments, acting with
    ``planner`` (None: the policy prior); one row per episode."""
    T = episode_length or EPISODE_LENGTH
    dev = model.discount.device
    task = torch.tensor([model.cfg.tasks.index(t) for t, _ in batch], device=dev)
    obs = pool.start([(t, episode_seed(seed, e)) for t, e in batch])
    returns = np.zeros(len(batch))
    for t in tqdm(range(T), desc=f"eval {label} episodes", disable=not progress, leave=False):
        x = torch.from_numpy(obs).to(dev)
        act = planner.plan(x, task, t0=t == 0) if planner else policy_actions(model, x, task)
        obs, reward = pool.step(act.cpu().numpy().astype(np.float64))
        returns += reward
    return [{"task": t, "episode": e, "seed": episode_seed(seed, e), "return": r, "score": r / 10, "steps": T}
            for (t, e), r in zip(batch, returns)]


def task_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-task mean/std of score over episodes, in the order tasks first appear."""
    g = df.groupby("task", sort=False)["score"]
    return pd.DataFrame({"episodes": g.size(), "score": g.mean(), "std": g.std(ddof=0)}).round(2)


def normalized_score(df: pd.DataFrame) -> float:
    """Mean over tasks of the mean episode score (0–100)."""
    return float(df.groupby("task", sort=False)["score"].mean().mean())


@torch.no_grad()
def rollout_frames(model: WorldModel, task: str, frame_steps: list[int], seed: int = 0, mpc: bool = False,
                   planner_cfg: PlannerConfig | None = None, width: int = 240, height: int = 180) -> pd.DataFrame:
    """Act for ``max(frame_steps) + 1`` steps on one episode; one row per step in ``frame_steps`` with the
    return so far and an RGB frame (``None`` when no GL backend can render; rendering never fails the run)."""
    model.eval()
    env = MultiTaskEnv(task, model.cfg.tasks, seed=episode_seed(seed, 0))
    planner = Planner(model, planner_cfg, seed=seed) if mpc else None
    dev = model.discount.device
    task_id = torch.tensor([env.task_id], device=dev)
    obs, ret, rows = torch.from_numpy(env.reset())[None].to(dev), 0.0, []
    for t in range(max(frame_steps) + 1):
        if t in frame_steps:
            rows.append({"task": task, "step": t, "return": ret, "frame": env.render(width, height)})
        act = planner.plan(obs, task_id, t0=t == 0) if planner else policy_actions(model, obs, task_id)
        o, r, _, _ = env.step(act[0].cpu().numpy().astype(np.float64))
        obs, ret = torch.from_numpy(o)[None].to(dev), ret + r
    return pd.DataFrame(rows)
