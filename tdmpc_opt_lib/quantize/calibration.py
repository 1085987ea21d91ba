"""Calibration data: real rollouts and random inputs of a model's tasks, and the layer Hessians GPTQ rounds with."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..envs import MultiTaskEnv
from ..evaluation import policy_actions
from ..layers import EnsembleLinear
from ..world_model import WorldModel
from .int8 import matmul_layers

CALIBRATION_ENV_SEED = 10 ** 7  # evaluation episodes use seeds seed * 1000 + episode, far below this

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # obs [B, obs_dim], action [B, A], task [B]


@torch.no_grad()
def calibration_rollouts(model: WorldModel, steps: int = 60, seed: int = 0, noise: float = 0.3) -> Inputs:
    """Real (obs, action, task) rows: one episode start per task of the model's set, acted on for ``steps``
    steps with the policy prior's mean plus Gaussian noise (std ``noise``, clamped to [-1, 1]). The
    environments are seeded ``CALIBRATION_ENV_SEED + seed``, apart from every evaluation episode's seed. The model
    may sit on any device; the noise is drawn on the CPU and the rows are returned there."""
    g = torch.Generator().manual_seed(seed)
    envs = [MultiTaskEnv(t, model.cfg.tasks, seed=CALIBRATION_ENV_SEED + seed) for t in model.cfg.tasks.tasks]
    task = torch.tensor([env.task_id for env in envs])
    mask = model.action_mask(task).cpu()
    obs = torch.from_numpy(np.stack([env.reset() for env in envs]))
    rows_obs, rows_act = [], []
    for _ in range(steps):
        act = (policy_actions(model, obs, task).cpu() + noise * torch.randn(mask.shape, generator=g)).clamp(-1, 1) * mask
        rows_obs.append(obs)
        rows_act.append(act)
        obs = torch.from_numpy(np.stack([env.step(a.numpy().astype(np.float64))[0] for env, a in zip(envs, act)]))
    return torch.cat(rows_obs), torch.cat(rows_act), task.repeat(steps)


def calibration_inputs(model: WorldModel, per_task: int = 8, seed: int = 0) -> Inputs:
    """``per_task`` random (obs, action) rows per task, drawn as the golden model I/O files draw them
    (per task: ``standard_normal((n, obs_dim))`` then ``uniform(-1, 1, (n, action_dim))``, zero-padded):
    for MT30 and seed 0 these are exactly the inputs of ``shared/golden/model_io_seed0.npz``."""
    rng = np.random.default_rng(seed)
    ts, c = model.cfg.tasks, model.cfg
    obs = np.zeros((len(ts.tasks), per_task, c.obs_dim), np.float32)
    act = np.zeros((len(ts.tasks), per_task, c.action_dim), np.float32)
    for k, (od, ad) in enumerate(zip(ts.obs_dims, ts.action_dims)):
        obs[k, :, :od] = rng.standard_normal((per_task, od))
        act[k, :, :ad] = rng.uniform(-1, 1, (per_task, ad))
    task = torch.arange(len(ts.tasks)).repeat_interleave(per_task)
    return torch.from_numpy(obs.reshape(-1, c.obs_dim)), torch.from_numpy(act.reshape(-1, c.action_dim)), task


@torch.no_grad()
def layer_hessians(model: WorldModel, inputs: Inputs, horizon: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """``Σ x xᵀ`` (float64) of every online matmul layer's inputs while the model works as the planner
    uses it: encode ``obs``; then ``horizon`` latent steps (the given actions first, uniform random ones
    after), each evaluating reward, next latent, the policy and every Q head on the action and on the
    policy's. Ensembles get one matrix per head ``[heads, in, in]``. The inputs are moved to the model's device; the
    random actions are drawn on the CPU (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    dev = model.discount.device
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def accumulate(module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            x = args[0].double()
            if isinstance(module, EnsembleLinear):
                x = x.expand(module.weight.shape[0], *x.shape[-2:]) if x.dim() == 2 else x
                xx = torch.einsum("nbi,nbj->nij", x, x)
            else:
                x = x.reshape(-1, x.shape[-1])
                xx = x.T @ x
            sums[name] = sums[name] + xx if name in sums else xx
        return accumulate

    obs, action, task = (x.to(dev) for x in inputs)
    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in matmul_layers(model)]
    training = model.training
    model.eval()  # no Q dropout
    try:
        mask = model.action_mask(task)
        z = model.encode(obs, task)
        for h in range(horizon):
            a = action if h == 0 else (torch.rand(action.shape, generator=g).to(dev) * 2 - 1) * mask
            model.reward(z, a, task)
            model.Q(z, a, task, "all")
            eps = torch.randn(a.shape, generator=g).to(dev)
            model.Q(z, model.pi(z, task, eps=eps)[0], task, "all")
            z = model.next(z, a, task)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return {k: v.cpu() for k, v in sums.items()}


def calibration_hessians(model: WorldModel, steps: int = 60, seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`layer_hessians` on :func:`calibration_rollouts` (about 6 s for MT30 on 2 cores)."""
    return layer_hessians(model, calibration_rollouts(model, steps, seed), seed=seed)
