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
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import checks, fast
from .checkpoints import atomic_write_text
from .envs import EPISODE_LENGTH, MultiTaskEnv
from .envs.vector import LocalEnvs, WorkerEnvs
from .planner import Planner, PlannerConfig
from .runstate import Stop, preempted, preemption, run_lock
from .world_model import WorldModel


RESUME_FORMAT = "tdmpc_opt_eval_progress/1"


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
             resume: str | os.PathLike | None = None, cluster: str | None = None, workers: int = 0) -> pd.DataFrame:
    """Run ``episodes`` per task; one row per episode: task, episode, seed, return, score, steps.

    ``episode_length`` shortens episodes (smoke runs only; scores are then not the protocol's).
    ``workers``: step the environments in that many worker processes (0: in this process).
    ``compile``: the speed layer (:func:`tdmpc_opt_lib.fast.accelerate`, a ``torch.compile``'d planner); on
    unless ``TDMPC_OPT_COMPILE=0``. ``resume``: a JSON file that keeps the rows of finished batches (of
    ``batch_envs`` episodes); a run killed, or stopped by SIGTERM / SIGINT (:class:`~tdmpc_opt_lib.runstate.Preempted`),
    skips them when started again with the same settings and model. ``cluster``: a Ray address ("auto" or
    "host:port"); each batch then runs as one Ray task, with the same rows (:func:`tdmpc_opt_lib.cluster.evaluate_split`).
    """
    checks.check_values({"episodes": episodes, "seed": seed, "mpc": mpc, "batch_envs": batch_envs,
                         "episode_length": episode_length, "workers": workers})
    names = resolve_tasks(model, tasks)
    if compile is None:
        compile = os.environ.get("TDMPC_OPT_COMPILE", "1") != "0"
    if cluster is not None:
        if resume is not None or workers:
            raise ValueError("evaluate on a cluster retries a failed batch itself: resume and workers apply to "
                             "evaluations on this machine only")
        from .cluster import evaluate_split
        start = time.perf_counter()
        df = pd.DataFrame(evaluate_split(model, names, episodes, seed, mpc, planner_cfg, batch_envs, compile,
                                         episode_length, cluster, progress))
        df.attrs.update(wall_s=time.perf_counter() - start, mpc=mpc, seed=seed)
        return df
    jobs = [(t, e) for t in names for e in range(episodes)]
    rows: list[dict] = []
    start = time.perf_counter()
    model.eval()
    # the speed layer for planning (same results to float rounding); the policy prior's few rows run as they are
    speed = compile and mpc
    runner = fast.accelerate(model) if speed else model
    with contextlib.ExitStack() as stack:
        if speed:
            stack.enter_context(fast.cpu_runtime(next(model.parameters()).device))
        stop, done = None, {}
        if resume is not None:
            resume = Path(resume)
            settings = {"tasks": names, "episodes": episodes, "seed": seed, "mpc": mpc, "batch_envs": batch_envs,
                        "episode_length": episode_length, "compile": speed, "model": model_digest(model),
                        "planner": dataclasses.asdict(planner_cfg or PlannerConfig()) if mpc else None}
            stack.enter_context(run_lock(resume.parent, f"{resume.name}.lock"))
            stop, done = stack.enter_context(preemption()), _finished_batches(resume, settings)
        pool = WorkerEnvs(model.cfg.tasks, workers, min(batch_envs, len(jobs))) if workers else LocalEnvs(model.cfg.tasks)
        stack.callback(pool.close)
        for lo in range(0, len(jobs), batch_envs):
            if str(lo) in done:
                rows += done[str(lo)]
                continue
            batch = jobs[lo:lo + batch_envs]
            planner = Planner(runner, planner_cfg, seed=seed + lo, compile=compile) if mpc else None
            rows += _run_batch(runner, planner, pool, batch, seed, episode_length, progress,
                               label=f"{lo + 1}-{lo + len(batch)}/{len(jobs)}", stop=stop)
            if resume is not None:
                done[str(lo)] = rows[-len(batch):]
                atomic_write_text(resume, json.dumps({"format": RESUME_FORMAT, "settings": settings, "batches": done}))
    df = pd.DataFrame(rows)
    df.attrs.update(wall_s=time.perf_counter() - start, mpc=mpc, seed=seed)
    return df


def model_digest(model: WorldModel) -> str:
    """A hash of the model's tensors (a resumed evaluation must be of the same weights)."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            v = v.dequantize() if v.is_quantized else v
            h.update(v.detach().cpu().float().numpy().tobytes() if v.is_floating_point() else v.cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _finished_batches(path: Path, settings: dict) -> dict[str, list[dict]]:
    """The rows of the batches a previous run with these settings finished (``{}`` for a fresh start)."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        saved = None
    if not (isinstance(saved, dict) and saved.get("format") == RESUME_FORMAT
            and isinstance(saved.get("settings"), dict) and isinstance(saved.get("batches"), dict)):
        raise ValueError(f"{path} is not the progress file of an evaluation; delete it to start over")
    diff = sorted(k for k in settings if saved["settings"].get(k) != settings[k])
    if diff:
        raise ValueError(f"{path} holds the progress of another evaluation (different {', '.join(diff)}); "
                         "delete it or give another path")
    return saved["batches"]


def _run_batch(model: WorldModel, planner: Planner | None, pool: LocalEnvs | WorkerEnvs,
               batch: list[tuple[str, int]], seed: int, episode_length: int | None, progress: bool,
               label: str, stop: Stop | None = None) -> list[dict]:
    """Episodes ``batch`` ((task, episode) pairs) in lock-step in ``pool``'s environments, acting with
    ``planner`` (None: the policy prior); one row per episode. ``stop`` set (:func:`~tdmpc_opt_lib.runstate.preemption`):
    raise :class:`~tdmpc_opt_lib.runstate.Preempted` (the batch's episodes are dropped; they run again from their start)."""
    T = episode_length or EPISODE_LENGTH
    dev = model.discount.device
    task = torch.tensor([model.cfg.tasks.index(t) for t, _ in batch], device=dev)
    obs = pool.start([(t, episode_seed(seed, e)) for t, e in batch])
    returns = np.zeros(len(batch))
    for t in tqdm(range(T), desc=f"eval {label} episodes", disable=not progress, leave=False):
        if stop:
            raise preempted(stop, "evaluation", f"in episodes {label}")
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
