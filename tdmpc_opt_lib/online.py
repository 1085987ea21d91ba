"""Online single-task TD-MPC2, as the agents that collected the public MT30 data were trained.

``seed_steps`` uniformly random actions, then MPPI planning with exploration noise; after the seed
phase, ``update_ratio`` updates per environment step (the first one after seeding pretrains with
``seed_steps`` updates, as TD-MPC2 does). Whole episodes enter the replay buffer when they end.
At episode ends the run is checkpointed (every ``checkpoint_every`` steps: buffer as a dataset
folder + learner/planner/RNG state, written atomically) and evaluated (every ``eval_every`` steps);
a killed run resumes from the last checkpoint. The final buffer is ``out/dataset`` in our format,
ready for :func:`tdmpc_opt_lib.data.merge` into a multi-task dataset.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checks, data, fast
from .checkpoints import save_checkpoint
from .config import model_config, task_set
from .device import resolve_device
from .envs import MultiTaskEnv
from .planner import Planner, PlannerConfig
from .runstate import (MetricsCSV, NumericalGuard, RunState, accumulate, due, evaluate_score, preempted, preemption,
                       run_lock, run_settings)
from .training import GUARDED, Learner, UpdateConfig
from .world_model import WorldModel

ONLINE_FORMAT = "tdmpc_opt_online/1"
COLUMNS = ("step", "episode", "episode_return", "eval_score", "consistency", "reward", "value", "pi", "grad_norm",
           "updates", "steps_per_s")


@dataclass(kw_only=True)
class OnlineConfig(UpdateConfig):
    """One online run on one MT30 task. Single-task models have no task embedding (``task_dim`` 0)."""

    task: str
    out: str
    steps: int = 100_000
    seed: int = 1
    seed_steps: int | None = None          # TD-MPC2: max(1000, 5 · episode_length)
    update_ratio: float = 1.0
    episode_length: int = 500
    model_size: int | None = 1
    model_overrides: dict = field(default_factory=dict)
    planner: dict = field(default_factory=dict)   # PlannerConfig fields
    eval_every: int = 0
    eval_episodes: int = 1
    checkpoint_every: int = 10_000
    device: str = "cpu"

    rules: ClassVar[dict[str, checks.Rule]] = {"model_size": checks.optional(checks.RULES["model_size"]),
                                               "checkpoint_every": checks.NON_NEGATIVE,
                                               "episode_length": checks.POSITIVE,
                                               "seed_steps": checks.optional(checks.NON_NEGATIVE),
                                               "update_ratio": checks.NON_NEGATIVE_NUMBER}


def train_online(cfg: OnlineConfig, progress: bool = True) -> WorldModel:
    """Run (or resume from ``cfg.out/online.pt``) online training; returns the model."""
    ts = task_set([cfg.task])
    seed_steps = cfg.seed_steps if cfg.seed_steps is not None else max(1000, 5 * cfg.episode_length)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = WorldModel(model_config(cfg.model_size, ts, **{"task_dim": 0, **cfg.model_overrides})).to(device)
    model.eval()                        # the agent acts in eval mode (no Q dropout); updates switch modes themselves
    agent = fast.accelerate(model)      # the speed layer: fused kernels, folded first layers (same parameters)
    learner = Learner(agent, cfg)
    planner_cfg = PlannerConfig(**cfg.planner)
    planner = Planner(agent, planner_cfg, seed=cfg.seed)
    buffer = data.EpisodeBuffer(list(ts.tasks), model.cfg.obs_dim, model.cfg.action_dim)
    rng = np.random.default_rng(cfg.seed)           # seed-phase actions
    out = Path(cfg.out)
    run_state = RunState(out / "online.pt", ONLINE_FORMAT, _run_config(cfg))
    with run_lock(out), preemption() as stop:  # preempted: stops at the end of the current episode
        state = run_state.load()
        step, episode, credit = 0, 0, 0.0
        guard = NumericalGuard(GUARDED)
        if state is not None:
            buffer = data.EpisodeBuffer.from_dataset(data.Dataset.open(out / state["buffer"]))
        sampler = data.WindowSampler(buffer, cfg.horizon, cfg.batch_size, seed=cfg.seed)
        if state is not None:
            step = run_state.restore(state, model, learner, sampler)
            episode, credit = state["episode"], state["credit"]
            rng.bit_generator.state = state["rng"]
            planner.generator.set_state(state["planner_rng"].cpu())
        saved = step
        log = MetricsCSV(out / "metrics.csv", COLUMNS, keep_until=step)

        def save_state() -> None:
            name = f"buffer-{step:09d}"
            data.save(buffer.dataset, out / name, overwrite=True)
            run_state.save(step, model, learner, sampler, episode=episode, credit=credit, buffer=name,
                           rng=rng.bit_generator.state, planner_rng=planner.generator.get_state())
            for old in out.glob("buffer-*"):
                if old.name != name:
                    shutil.rmtree(old)

        task = torch.zeros(1, dtype=torch.long, device=device)
        A = ts.action_dims[0]
        bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"online {cfg.task}", dynamic_ncols=True)
        while step < cfg.steps:
            env = MultiTaskEnv(cfg.task, ts, seed=cfg.seed * 100_000 + episode)
            obs = env.reset()
            ep_obs, ep_act, ep_rew = [obs], [np.full(A, np.nan, np.float32)], [np.nan]
            sums, updates, t_start, step_start = {}, 0, time.perf_counter(), step
            for t in range(cfg.episode_length):
                if step <= seed_steps:                   # `step` counts env steps taken before this one, as TD-MPC2's
                    action = rng.uniform(-1, 1, A).astype(np.float32)
                else:
                    obs_t = torch.from_numpy(obs).to(device)[None]
                    with fast.cpu_runtime(device):
                        action = planner.plan(obs_t, task, t0=t == 0, eval_mode=False)[0].cpu().numpy()
                obs, reward, _, _ = env.step(action)
                ep_obs.append(obs), ep_act.append(action), ep_rew.append(reward)
                if step >= seed_steps:                   # credit accrues even before the first episode is stored
                    credit += (seed_steps if step == seed_steps else 1) * cfg.update_ratio
                while credit >= 1 and sampler.num_windows:
                    with fast.cpu_runtime(device):
                        metrics = learner.update(**{k: v.to(device) for k, v in sampler.sample().items()})
                    guard.watch(step + 1, metrics)
                    accumulate(sums, metrics)
                    credit -= 1
                    updates += 1
                step += 1
                bar.update(1)
                if step >= cfg.steps:
                    break
            buffer.add_episode(np.stack(ep_obs), np.stack(ep_act), np.array(ep_rew, np.float32), 0)
            episode += 1
            row = {"step": step, "episode": episode, "episode_return": float(np.nansum(ep_rew)), "updates": updates,
                   "steps_per_s": (step - step_start) / (time.perf_counter() - t_start),
                   **{k: float(v) / updates for k, v in sums.items()}}
            episode_start = step - (len(ep_rew) - 1)
            if due(cfg.eval_every, step, episode_start):
                row["eval_score"] = evaluate_score(model, [cfg.task], cfg.eval_episodes, cfg.seed, mpc=True,
                                                   planner_cfg=planner_cfg, episode_length=cfg.episode_length)
            guard.check(f"online training {out}", saved)
            log.append(row)
            bar.set_postfix(ret=f"{row['episode_return']:.1f}")
            if due(cfg.checkpoint_every, step, episode_start) or step >= cfg.steps or stop:
                save_state()
                saved = step
                if stop and step < cfg.steps:
                    raise preempted(stop, f"online training {out}", f"at step {step}")
        bar.close()
        data.save(buffer.dataset, out / "dataset", overwrite=True)
        save_checkpoint(model, out / "model.pt", step=step)
    return model


def _run_config(cfg: OnlineConfig) -> dict:
    """What must match to resume a run: the settings but for length, evaluation, checkpointing and device."""
    return run_settings(cfg, {"steps", "eval_every", "eval_episodes", "checkpoint_every", "device"})
