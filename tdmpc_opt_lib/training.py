"""Offline multi-task TD-MPC2 training with optional TD-MPC-Opt distillation from a frozen teacher.

One update (``Learner.update``), following TD-MPC2 (``shared/spec/TDMPC2.md``, "Training update"):

1. TD targets with the model in eval mode: ``r + γ·min of two random target-Q heads at (z', π(z'))``.
2. World model, Q dropout active: latent rollout from ``encode(obs[0])``; loss
   ``20·consistency + 0.1·reward + 0.1·value (+ d_coef·distill)``; Adam step after clipping to 20.
3. Policy prior on the detached rollout latents against the Q ensemble with detached parameters,
   scaled by a running Q scale; its own Adam (eps 1e-5), clipped to 20.
4. Polyak update of the target Qs.

``train`` wraps it in a resumable loop: a memory-mapped dataset, seeded window sampler, CSV of
metrics, periodic evaluation and atomic checkpoints from which a killed run continues exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import checks, losses
from . import fast
from .checkpoints import CheckpointError, atomic_write_text, content_digest, load_checkpoint, save_checkpoint
from .config import ModelConfig, model_config, task_set
from .data import Dataset, WindowSampler
from .data.device_batches import DeviceBatches
from .device import resolve_device
from .fast.precision import PRECISIONS
from .runstate import (MetricsCSV, NumericalGuard, RunState, accumulate, evaluate_score, preempted, preemption,
                       run_lock, run_settings)
from .runstate import read_metrics  # noqa: F401  (notebooks read run logs as training.read_metrics)
from .world_model import WorldModel

DISTILL_KINDS = checks.DISTILL_KINDS
TRAIN_FORMAT = "tdmpc_opt_train/1"
METRICS = ("consistency", "reward", "value", "distill", "latent_distill", "total", "grad_norm",
           "pi", "pi_grad_norm", "pi_scale", "pi_entropy")
CSV_COLUMNS = ("step", *METRICS, "updates_per_s", "wall_s", "eval_score")
GUARDED = ("consistency", "reward", "value", "distill", "latent_distill", "grad_norm", "pi", "pi_grad_norm")


@dataclass(kw_only=True)
class UpdateConfig:
    """Hyper-parameters of one update (TD-MPC2 defaults) and of the distillation term."""

    lr: float = 3e-4
    """Adam learning rate."""
    enc_lr_scale: float = 0.3
    """Learning-rate multiplier of the encoder."""
    grad_clip: float = 20.0
    """Gradient-norm clip of the world model and of the policy."""
    consistency_coef: float = 20.0
    """Weight of the latent-consistency loss."""
    reward_coef: float = 0.1
    """Weight of the reward loss."""
    value_coef: float = 0.1
    """Weight of the value (Q) loss."""
    rho: float = 0.5
    """Per-step discount of the losses over the horizon."""
    horizon: int = 3
    """Length of the latent rollout the losses cover (time steps)."""
    tau: float = 0.01
    """Polyak rate of the target Qs and of the running Q scale."""
    entropy_coef: float = 1e-4
    """Entropy bonus of the policy loss."""
    batch_size: int = 256
    """Windows per update."""
    d_coef: float = 0.0
    """Weight of the distillation term: 0 trains from scratch (paper best 0.4, release 0.45)."""
    distill: str = "reward"
    """What is distilled: 'reward' (TD-MPC-Opt), or 'latent-linear' / 'latent-pca' (reward and next latent)."""

    rules: ClassVar[dict[str, checks.Rule]] = {}     # rules that differ from checks.RULES

    def __post_init__(self) -> None:
        checks.check_values({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, self.rules)


@dataclass(kw_only=True)
class TrainConfig(UpdateConfig):
    """An offline training run. ``d_coef`` 0 trains from scratch; > 0 needs ``teacher``."""

    data: str
    """Dataset folder in this library's format (see convert-data)."""
    out: str
    """Run folder; an existing run there is resumed."""
    steps: int = 200_000
    """Updates in all."""
    seed: int = 1
    """Seed of the initial weights, the sampler and the dropout masks."""
    model_size: int | None = 1
    """TD-MPC2 model size 1/5/19/48/317; None (command line: 0) for a custom model given by model_overrides."""
    model_overrides: dict = field(default_factory=dict)
    """Model config fields to override (command line: --override KEY=VALUE, repeatable)."""
    tasks: list[str] | None = None
    """Train only on these tasks of the dataset (command line: a comma list)."""
    teacher: str | None = None
    """Frozen teacher checkpoint (needs d_coef > 0)."""
    init_from: str | None = None
    """Start from this checkpoint's weights (any format load_checkpoint reads), with a fresh optimizer."""
    pca_samples: int = 4096
    """Teacher latents the latent-pca projection is fitted on."""
    log_every: int = 100
    """Updates per row of metrics.csv."""
    checkpoint_every: int = 10_000
    """Updates between resume checkpoints (a multiple of log_every)."""
    eval_every: int = 0
    """Updates between evaluations, 0 for none (a multiple of log_every)."""
    eval_episodes: int = 1
    """Episodes per task of those evaluations."""
    eval_episode_length: int | None = None
    """Shorter evaluation episodes (smoke runs; scores are then not the protocol's)."""
    eval_mpc: bool = True
    """Evaluate with MPPI planning (else with the policy prior)."""
    compile: bool = field(default_factory=lambda: os.environ.get("TDMPC_OPT_COMPILE", "1") != "0")
    """Train through the speed layer (fast.accelerate: folded task embedding, fused kernels); off with
    TDMPC_OPT_COMPILE=0."""
    device: str = "auto"
    """Torch device of the model and the batches: 'auto' (CUDA when available, else the CPU), 'cpu', 'cuda:N'."""
    batches: str = "auto"
    """How batches reach the device: 'auto', 'direct', 'resident' (dataset on the device), 'prefetch' (pinned
    buffers filled ahead by a thread); see data.device_batches."""
    cuda_graph: bool = False
    """CUDA only: capture the whole update once as a CUDA graph and replay it (Adam with capturable=True)."""
    teacher_precision: str = "fp32"
    """CUDA only: the frozen teacher's forward in 'tf32' or 'bf16' instead of 'fp32', used only where its rewards
    and latents on the first batch stay within fast.precision.TOLERANCE of float32 (else fp32, with a warning)."""

    rules: ClassVar[dict[str, checks.Rule]] = {"model_size": checks.optional(checks.RULES["model_size"])}


# Settings that may change when a run is resumed (everything else must match the checkpoint).
RESUMABLE = {"steps", "eval_every", "eval_episodes", "eval_episode_length", "eval_mpc", "compile", "device",
             "checkpoint_every", "batches", "cuda_graph", "teacher_precision"}


class LatentProjection(nn.Module):
    """Teacher latent → student latent size: a learned Linear (``latent-linear``) or a fitted PCA (``latent-pca``)."""

    def __init__(self, kind: str, teacher_dim: int, student_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "latent-linear":
            self.linear = nn.Linear(teacher_dim, student_dim)
        else:
            if student_dim > teacher_dim:
                raise ValueError(f"latent-pca cannot map a {teacher_dim}-dim teacher latent to "
                                 f"{student_dim} components")
            self.register_buffer("mean", torch.zeros(teacher_dim))
            self.register_buffer("components", torch.zeros(student_dim, teacher_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "latent-linear":
            return self.linear(z)
        return losses.pca_project(z, self.mean, self.components)


def check_teacher(teacher: ModelConfig, student: ModelConfig) -> None:
    """Teacher and student may differ in size and task_dim, not in tasks, padding or reward bins."""
    pairs = {"task list": (list(teacher.tasks.tasks), list(student.tasks.tasks)),
             "obs padding": (teacher.obs_dim, student.obs_dim),
             "action padding": (teacher.action_dim, student.action_dim),
             "reward bins (num_bins, vmin, vmax)": ((teacher.num_bins, teacher.vmin, teacher.vmax),
                                                    (student.num_bins, student.vmin, student.vmax))}
    bad = [f"{k}: teacher {t}, student {s}" for k, (t, s) in pairs.items() if t != s]
    if bad:
        raise ValueError("teacher and student are incompatible; " + "; ".join(bad))


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_(params, max_norm, foreach=True)``: the same norm and the same factor
    ``min(1, max_norm / (norm + 1e-6))``, but on the CPU the rescale is skipped when that factor is 1. Torch
    multiplies by 1 anyway to spare GPUs a synchronisation; here that was a pass over every gradient (0.66 ms
    per call), and TD-MPC2's gradient norms stay far below the clip (20) in our runs."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    if norm.device.type != "cpu" or factor.item() < 1.0:
        torch._foreach_mul_(grads, factor)
    return norm


class Learner:
    """Owns the optimizers, the running Q scale and the (optional) teacher; ``update`` is one gradient step."""

    def __init__(self, model: WorldModel, cfg: UpdateConfig, teacher: WorldModel | None = None,
                 projection: LatentProjection | None = None, capturable: bool = False,
                 teacher_precision: str = "fp32"):
        if cfg.distill not in DISTILL_KINDS:
            raise ValueError(f"distill must be one of {DISTILL_KINDS}, got {cfg.distill!r}")
        if (teacher is None) != (cfg.d_coef == 0):
            raise ValueError("distillation needs both a teacher and d_coef > 0 (d_coef 0 = from scratch, no teacher)")
        if teacher is not None:
            check_teacher(teacher.cfg, model.cfg)
            teacher.eval().requires_grad_(False)
        self.model, self.cfg, self.teacher, self.projection = model, cfg, teacher, projection
        self.teacher_precision = teacher_precision
        groups = [{"params": model._encoder.parameters(), "lr": cfg.lr * cfg.enc_lr_scale},
                  {"params": model._dynamics.parameters()}, {"params": model._reward.parameters()},
                  {"params": model._Qs.parameters()}, {"params": model._task_emb.parameters()}]
        if projection is not None and projection.kind == "latent-linear":
            groups.append({"params": projection.parameters()})
        self.optim = torch.optim.Adam(groups, lr=cfg.lr, fused=True, capturable=capturable)
        self.pi_optim = torch.optim.Adam(model._pi.parameters(), lr=cfg.lr, eps=1e-5, fused=True, capturable=capturable)
        self.params = [p for g in self.optim.param_groups for p in g["params"]]
        self.scale = torch.ones((), device=model.discount.device)

    @torch.no_grad()
    def td_targets(self, next_z: torch.Tensor, reward: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        m = self.model
        a_next, _ = m.pi(next_z, task)
        return losses.td_target(reward, m.discount[task], m.Q(next_z, a_next, task, "min", target=True))

    def model_losses(self, obs, action, reward, task, next_z, td) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """World-model loss on a batch → (total, rollout latents ``[H+1, B, L]``, metrics)."""
        m, c, mc = self.model, self.cfg, self.model.cfg
        zs = [m.encode(obs[0], task)]
        for t in range(action.shape[0]):
            zs.append(m.next(zs[-1], action[t], task))
        zs = torch.stack(zs)
        reward_logits = m.reward(zs[:-1], action, task)
        q_logits = m.Q(zs[:-1], action, task, return_type="all")
        out = {"consistency": losses.consistency_loss(zs[1:], next_z, c.rho),
               "reward": losses.reward_loss(reward_logits, reward, c.rho, mc.num_bins, mc.vmin, mc.vmax),
               "value": losses.value_loss(q_logits, td, c.rho, mc.num_bins, mc.vmin, mc.vmax)}
        total = c.consistency_coef * out["consistency"] + c.reward_coef * out["reward"] + c.value_coef * out["value"]
        if self.teacher is not None:
            total = total + c.d_coef * self.distill_losses(obs[0], action[0], task, reward_logits[0], zs[1], out)
        out["total"] = total
        return total, zs, out

    def distill_losses(self, obs0, a0, task, student_reward_logits, student_next_z, out: dict) -> torch.Tensor:
        """TD-MPC-Opt reward distillation at (obs[0], a[0]) (+ next-latent distillation for the latent variants)."""
        t, mc = self.teacher, self.model.cfg
        with torch.no_grad(), fast.lowered_precision(self.teacher_precision, obs0.device):
            zt = t.encode(obs0, task).float()
            teacher_reward_logits = t.reward(zt, a0, task).float()
        out["distill"] = losses.reward_distill_loss(student_reward_logits, teacher_reward_logits, mc.vmin, mc.vmax)
        if self.projection is None:
            return out["distill"]
        with torch.no_grad(), fast.lowered_precision(self.teacher_precision, obs0.device):
            zt_next = t.next(zt, a0, task).float()
        out["latent_distill"] = losses.latent_distill_loss(student_next_z, self.projection(zt_next))
        return out["distill"] + out["latent_distill"]

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
               task: torch.Tensor) -> dict[str, torch.Tensor]:
        """One TD-MPC2 update on ``obs [H+1, B, obs]``, ``action [H, B, A]``, ``reward [H, B, 1]``, ``task [B]``."""
        m, c = self.model, self.cfg
        m.eval()                                     # targets without Q dropout, as TD-MPC2 computes them
        with torch.no_grad():
            next_z = m.encode(obs[1:], task)
            td = self.td_targets(next_z, reward, task)
        m.train()
        # In TD-MPC-Opt's TD-MPC2 version the policy loss's gradient on the task embedding is cleared here, before
        # any step uses it (newer TD-MPC2 lets it leak into this step); below it is not computed at all.
        self.optim.zero_grad(set_to_none=True)
        total, zs, out = self.model_losses(obs, action, reward, task, next_z, td)
        total.backward()
        out["grad_norm"] = clip_grad_norm(self.params, c.grad_clip)
        self.optim.step()

        zs = zs.detach()
        # No gradient for the task embedding (it is not in pi_optim; the next zero_grad would discard it): the
        # policy's first layer then computes no input gradient.
        a, info = m.pi(zs, task, detach=True)
        q = m.Q(zs, a, task, return_type="avg", detach=True)
        self.scale.copy_(losses.q_scale(self.scale, q[0], c.tau))      # in place: a captured update replays it
        out["pi"] = losses.policy_loss(q, info["scaled_entropy"], self.scale, c.rho, c.entropy_coef)
        out["pi"].backward()
        out["pi_grad_norm"] = clip_grad_norm(m._pi.parameters(), c.grad_clip)
        self.pi_optim.step()
        self.pi_optim.zero_grad(set_to_none=True)

        m.sync_target(c.tau)
        m.eval()
        out["pi_scale"], out["pi_entropy"] = self.scale.clone(), info["entropy"].mean()
        return {k: v.detach() for k, v in out.items()}

    def state_dict(self) -> dict:
        return {"optim": self.optim.state_dict(), "pi_optim": self.pi_optim.state_dict(), "scale": self.scale,
                "projection": self.projection.state_dict() if self.projection is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        self.scale.copy_(state["scale"])
        if self.projection is not None:
            self.projection.load_state_dict(state["projection"])


# --------------------------------------------------------------------------------- training loop
def fit_pca_projection(projection: LatentProjection, teacher: WorldModel, ds: Dataset, n: int, seed: int) -> None:
    """Fit ``projection`` (latent-pca) on ``n`` teacher next-latents of random dataset windows."""
    sampler = WindowSampler(ds, horizon=1, batch_size=n, seed=seed + 12345)
    b = sampler.sample()
    with torch.no_grad():
        dev = projection.mean.device
        task = b["task"].to(dev)
        zt = teacher.next(teacher.encode(b["obs"][0].to(dev), task), b["action"][0].to(dev), task)
    projection.mean, projection.components = losses.fit_pca(zt, projection.components.shape[0])


def _run_config(cfg: TrainConfig) -> dict:
    """What must match to resume a run: the settings, with dataset and teacher by content (a moved run folder,
    dataset or teacher is the same run)."""
    run = run_settings(cfg, RESUMABLE | {"out", "data", "teacher", "init_from"})
    run = {**run, "data_digest": content_digest(cfg.data), "teacher_digest": content_digest(cfg.teacher)}
    if cfg.init_from:
        run["init_digest"] = content_digest(cfg.init_from)
    return run


def _update_fn(learner: Learner, cfg: TrainConfig, batches: DeviceBatches):
    """``learner.update``, captured as a CUDA graph with ``cfg.cuda_graph``; with a lowered teacher precision, only
    where the first batch shows the teacher within tolerance (else float32, with a warning)."""
    if learner.teacher is not None and cfg.teacher_precision != "fp32":
        probe = batches.sampler.sample()      # drawn from a copy of the sampler's state: the run's batches are unchanged
        batches.sampler.load_state_dict(batches.state_dict())
        ok, err = fast.precision_within_tolerance(
            learner.teacher, {k: v.to(batches.device) for k, v in probe.items()}, cfg.teacher_precision)
        if not ok:
            warnings.warn(f"teacher in {cfg.teacher_precision} moves its outputs by {err} (tolerance "
                          f"{fast.precision.TOLERANCE}): keeping float32")
        learner.teacher_precision = cfg.teacher_precision if ok else "fp32"
    if cfg.cuda_graph:
        from .fast.graphs import CapturedUpdate
        return CapturedUpdate(learner)
    return learner.update


def train(cfg: TrainConfig, progress: bool = True) -> WorldModel:
    """Train (or resume, if ``cfg.out/train.pt`` exists) and return the model; writes to ``cfg.out``:
    ``metrics.csv``, ``train.pt`` (resume state), ``model.pt`` (final weights, :func:`load_checkpoint`-able).
    """
    if cfg.checkpoint_every % cfg.log_every or (cfg.eval_every and cfg.eval_every % cfg.log_every):
        raise ValueError("checkpoint_every and eval_every must be multiples of log_every")
    device = resolve_device(cfg.device)
    if cfg.teacher_precision not in PRECISIONS:
        raise ValueError(f"teacher_precision must be one of {PRECISIONS}, got {cfg.teacher_precision!r}")
    if device.type != "cuda" and (cfg.cuda_graph or cfg.teacher_precision != "fp32"):
        raise ValueError(f"cuda_graph and teacher_precision {cfg.teacher_precision!r} apply to CUDA runs only "
                         f"(device {device})")
    ds = Dataset.open(cfg.data)
    model_cfg = model_config(cfg.model_size, task_set(ds.tasks), **cfg.model_overrides)
    teacher = None
    if cfg.teacher:
        try:
            teacher = load_checkpoint(cfg.teacher, task_set=model_cfg.tasks, device=device)
        except CheckpointError as e:
            raise ValueError(f"teacher {cfg.teacher} does not fit the dataset's task list: {e}") from e
    torch.manual_seed(cfg.seed)
    model = WorldModel(model_cfg).to(device)
    if cfg.init_from:
        try:
            init = load_checkpoint(cfg.init_from, task_set=model_cfg.tasks, device=device)
        except CheckpointError as e:
            raise ValueError(f"init_from {cfg.init_from} does not fit this run's model and tasks: {e}") from e
        if init.cfg.to_dict() != model_cfg.to_dict():
            raise ValueError(f"init_from {cfg.init_from} is a different model (size or architecture) than this run's")
        model.load_state_dict(init.state_dict())
    projection = None
    if cfg.distill != "reward" and teacher is not None:
        projection = LatentProjection(cfg.distill, teacher.cfg.latent_dim, model_cfg.latent_dim).to(device)
    speed = fast.accelerate if cfg.compile else (lambda m: m)  # folded task embedding, fused kernels (×1.5)
    learner = Learner(speed(model), cfg, speed(teacher) if teacher is not None else None, projection,
                      capturable=cfg.cuda_graph)
    sampler = WindowSampler(ds, cfg.horizon, cfg.batch_size, seed=cfg.seed, tasks=cfg.tasks)
    batches = DeviceBatches(sampler, device, cfg.batches)

    out = Path(cfg.out)
    run_state = RunState(out / "train.pt", TRAIN_FORMAT, _run_config(cfg))
    guard = NumericalGuard(GUARDED)
    with run_lock(out), preemption() as stop, contextlib.closing(batches):
        state = run_state.load()
        sums: dict[str, torch.Tensor] = {}
        n_last = 0
        if state is not None:
            step = saved = run_state.restore(state, model, learner, batches)
            sums, n_last = state.get("sums", {}), state.get("n_since_log", 0)   # set when stopped between log rows
        else:
            step = saved = 0
            atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
            if projection is not None and projection.kind == "latent-pca":
                fit_pca_projection(projection, learner.teacher, ds, cfg.pca_samples, cfg.seed)   # as training sees it
        log = MetricsCSV(out / "metrics.csv", CSV_COLUMNS, keep_until=step)
        update = _update_fn(learner, cfg, batches)

        t_last, start = time.perf_counter(), time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
        while step < cfg.steps:
            batch = batches.next()
            with fast.cpu_runtime(device):
                metrics = update(**batch)
            step += 1
            guard.watch(step, metrics)
            accumulate(sums, metrics)
            n_last += 1
            bar.update(1)
            if step % cfg.log_every == 0:
                guard.check(f"training {out}", saved)
                row = {"step": step, **{k: float(v) / n_last for k, v in sums.items()},
                       "wall_s": time.perf_counter() - start,
                       "updates_per_s": n_last / (time.perf_counter() - t_last)}
                if cfg.eval_every and step % cfg.eval_every == 0:
                    row["eval_score"] = evaluate_score(model, cfg.tasks, cfg.eval_episodes, cfg.seed,
                                                       mpc=cfg.eval_mpc, episode_length=cfg.eval_episode_length)
                log.append(row)
                bar.set_postfix(total=f"{row['total']:.3f}", ups=f"{row['updates_per_s']:.1f}")
                sums, n_last = {}, 0
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                guard.check(f"training {out}", saved)
                between_rows = {"sums": sums, "n_since_log": n_last} if n_last else {}
                run_state.save(step, model, learner, batches, **between_rows)
                saved = step
                if stop and step < cfg.steps:
                    raise preempted(stop, f"training {out}", f"at step {step}")
            if n_last == 0:
                t_last = time.perf_counter()
        bar.close()
        save_checkpoint(model, out / "model.pt", step=step)
    return model
