"""MPPI planning in the latent space of a TD-MPC2 world model.

:class:`Planner` plans for N environments at once (each with its own task) through the world model's
methods: the policy trajectories are rolled out once per call, and only the two Q heads in use are
evaluated. :func:`plan_reference` is the plain one-environment algorithm, line by line as TD-MPC2 writes
it; the two agree given the same random stream (tests check it).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import math
from .world_model import WorldModel, two_random_heads


@dataclass
class PlannerConfig:
    """MPPI hyper-parameters (TD-MPC2 defaults)."""

    iterations: int = 6
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    horizon: int = 3
    min_std: float = 0.05
    max_std: float = 2.0
    temperature: float = 0.5

    def __post_init__(self) -> None:
        for name in ("iterations", "num_samples", "num_elites", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"planner {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.num_pi_trajs < self.num_samples:
            raise ValueError(f"num_pi_trajs must be in [0, num_samples), got {self.num_pi_trajs}")
        if self.num_elites > self.num_samples:
            raise ValueError(f"num_elites ({self.num_elites}) cannot exceed num_samples ({self.num_samples})")
        if not 0 < self.min_std <= self.max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}")

    def iterations_for(self, action_dim: int) -> int:
        """TD-MPC2 adds two iterations for high-dimensional action spaces."""
        return self.iterations + 2 * int(action_dim >= 20)


def _select(elite_actions: torch.Tensor, score: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one elite trajectory per environment by Gumbel-max over ``score [N, E]`` → ``[N, H, A]``."""
    idx = math.gumbel_argmax(score, generator)
    return elite_actions[torch.arange(score.shape[0], device=score.device), :, idx]


@torch.no_grad()
def plan_reference(model: WorldModel, obs: torch.Tensor, task: int, prev_mean: torch.Tensor | None,
                   cfg: PlannerConfig = PlannerConfig(), eval_mode: bool = True,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain MPPI for one observation ``obs [obs_dim]``; returns ``(action [A], mean [H, A])``.

    ``prev_mean`` is the previous call's mean (None on the first step of an episode).
    """
    H, S, P, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, model.cfg.action_dim
    dev = model.discount.device
    obs = obs.to(dev)
    t = torch.tensor([task], device=dev)
    mask = model.action_mask(task)
    gamma = model.discount[task]
    z = model.encode(obs.unsqueeze(0), t)
    pi_actions = torch.empty(H, P, A, device=dev)
    if P:
        _z = z.repeat(P, 1)
        for h in range(H):
            pi_actions[h], _ = model.pi(_z, t, generator)
            if h < H - 1:
                _z = model.next(_z, pi_actions[h], t)
    z = z.repeat(S, 1)
    mean = torch.zeros(H, A, device=dev)
    if prev_mean is not None:
        mean[:-1] = prev_mean[1:]
    std = torch.full((H, A), cfg.max_std, device=dev)
    actions = torch.empty(H, S, A, device=dev)
    actions[:, :P] = pi_actions
    for _ in range(cfg.iterations_for(A)):
        noise = torch.randn(H, S - P, A, generator=generator, device=dev)
        actions[:, P:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
        actions = actions * mask
        # value of each trajectory: discounted model rewards + bootstrapped Q at the horizon
        G, discount, _z = 0, 1, z
        for h in range(H):
            G = G + discount * math.two_hot_inv(model.reward(_z, actions[h], t))
            _z = model.next(_z, actions[h], t)
            discount = discount * gamma
        a_H, _ = model.pi(_z, t, generator)
        value = (G + discount * model.Q(_z, a_H, t, "avg", generator=generator).squeeze(-1)).nan_to_num(0)
        elite_value, elite_idx = torch.topk(value, cfg.num_elites)
        elite_actions = actions[:, elite_idx]
        score = torch.softmax(cfg.temperature * (elite_value - elite_value.max()), 0)
        mean = (score[None, :, None] * elite_actions).sum(1)
        std = (score[None, :, None] * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1).sqrt()
        std = std.clamp(cfg.min_std, cfg.max_std) * mask
        mean = mean * mask
    chosen = _select(elite_actions.unsqueeze(0), score.unsqueeze(0), generator)[0]
    action = chosen[0]
    if not eval_mode:
        action = action + std[0] * torch.randn(A, generator=generator, device=dev)
    return action.clamp(-1, 1), mean


def _rollout(model: WorldModel, z0: torch.Tensor, actions: torch.Tensor, task: torch.Tensor,
             gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent rollout of ``actions [H, N, S, A]`` from ``z0 [N, L]`` → (z_H [N, S, L], Σ_h γ^h r̂_h [N, S], γ^H [N, 1])."""
    H, N, S, _ = actions.shape
    z = z0.unsqueeze(1).expand(N, S, z0.shape[-1])     # shared by the samples (an expanded view)
    G, discount = 0, torch.ones_like(gamma)
    for h in range(H):
        z, r = model.next_and_reward(z, actions[h], task)
        G = G + discount * math.two_hot_inv(r, model.cfg.vmin, model.cfg.vmax)
        discount = discount * gamma
    return z, G, discount


def _iteration_value(model: WorldModel, z0: torch.Tensor, actions: torch.Tensor, z_pi: torch.Tensor,
                     G_pi: torch.Tensor, task: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor,
                     heads: torch.Tensor) -> torch.Tensor:
    """Values ``[N, P+S']`` of one MPPI iteration: the P policy trajectories continue from their rollout
    (``z_pi [N, P, L]``, ``G_pi [N, P]``: their actions never change, so it is computed once per call); the
    S' sampled ``actions [H, N, S', A]`` are rolled out here. Each row: Σ_h γ^h r̂_h + γ^H·Q̄(z_H, a_H ~ π)."""
    z, G, discount = _rollout(model, z0, actions, task, gamma)
    z, G = torch.cat([z_pi, z], 1), torch.cat([G_pi, G], 1)
    a, _ = model.pi(z, task, eps=eps)
    return G + discount * model.Q(z, a, task, "avg", heads=heads).squeeze(-1)


class Planner:
    """Batched MPPI: ``plan(obs [N, obs], task [N])`` → actions ``[N, A]``, keeping each env's warm start.

    Everything runs through the world model's methods; pass an accelerated model (:func:`tdmpc_opt_lib.fast.
    accelerate`) for speed. ``compile=True`` compiles the trajectory values with ``torch.compile`` (eager, with a
    warning, where no compiler is available); results equal the eager ones to float rounding.
    """

    def __init__(self, model: WorldModel, cfg: PlannerConfig | None = None, seed: int | None = None,
                 compile: bool = False, chunk_rows: int = 1024):
        self.model = model
        self.cfg = cfg or PlannerConfig()
        self.generator = torch.Generator(device=next(model.parameters()).device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.prev_mean: torch.Tensor | None = None
        self._value = _compiled_iteration_value() if compile else _iteration_value
        self.chunk_envs = max(1, chunk_rows // self.cfg.num_samples)   # keeps activations cache-sized

    def reset(self) -> None:
        """Forget warm starts (every environment starts a new episode)."""
        self.prev_mean = None

    @torch.inference_mode()
    def plan(self, obs: torch.Tensor, task: torch.Tensor, t0: torch.Tensor | bool = False,
             eval_mode: bool = True) -> torch.Tensor:
        """Plan one action per environment. ``t0`` marks environments at the first step of an episode."""
        m, cfg, g = self.model, self.cfg, self.generator
        H, S, P, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, m.cfg.action_dim
        N, dev = obs.shape[0], self.generator.device                  # the model's device
        obs, task = obs.to(dev), task.to(dev)
        if self.prev_mean is not None and self.prev_mean.shape[1] != N:
            raise ValueError(f"planner was warm-started for {self.prev_mean.shape[1]} environments, got {N}; "
                             "call reset() when the set of environments changes")
        task = task.long()
        mask = m.action_mask(task)                                      # [N, A]
        gamma = m.discount[task].unsqueeze(1)                           # [N, 1]
        z0 = m.encode(obs, task)                                        # [N, L]
        if hasattr(m, "arrange_planning"):      # the accelerated model: its first layers arranged once per call
            m.arrange_planning()
        env_task = task.unsqueeze(1)                                    # [N, 1]: one task per environment

        # policy trajectories: their actions, latent rollout and discounted return are fixed for the call
        pi_actions = torch.empty(H, N, P, A, device=dev)
        zp, G_pi, discount = z0.unsqueeze(1).expand(N, P, z0.shape[-1]), torch.zeros(N, P, device=dev), 1
        for h in range(H if P else 0):
            pi_actions[h], _ = m.pi(zp, env_task, eps=torch.randn(N, P, A, generator=g, device=dev))
            zp, r = m.next_and_reward(zp, pi_actions[h], env_task)
            G_pi, discount = G_pi + discount * math.two_hot_inv(r, m.cfg.vmin, m.cfg.vmax), discount * gamma
        mean = torch.zeros(H, N, A, device=dev)
        if self.prev_mean is not None:
            keep = ~torch.as_tensor(t0, dtype=torch.bool, device=dev).expand(N)
            mean[:-1, keep] = self.prev_mean[1:, keep]
        std = torch.full((H, N, A), cfg.max_std, device=dev)
        actions = torch.empty(H, N, S, A, device=dev)
        actions[:, :, :P] = pi_actions
        for _ in range(cfg.iterations_for(A)):
            noise = torch.randn(H, N, S - P, A, generator=g, device=dev)
            actions[:, :, P:] = (mean.unsqueeze(2) + std.unsqueeze(2) * noise).clamp(-1, 1)
            actions *= mask.unsqueeze(1)
            eps = torch.randn(N, S, A, generator=g, device=dev)
            heads = two_random_heads(m.cfg.num_q, g, dev)
            value = torch.cat([self._value(m, z0[sl], actions[:, sl, P:], zp[sl], G_pi[sl], env_task[sl], gamma[sl],
                                           eps[sl], heads)
                               for sl in _chunks(N, self.chunk_envs)]).nan_to_num(0)        # [N, S]
            elite_value, elite_idx = torch.topk(value, cfg.num_elites, dim=1)
            elite_actions = torch.gather(actions, 2, elite_idx[None, :, :, None].expand(H, N, -1, A))
            score = torch.softmax(cfg.temperature * (elite_value - elite_value.max(1, keepdim=True).values), 1)
            wts = score[None, :, :, None]
            mean = (wts * elite_actions).sum(2)
            std = (wts * (elite_actions - mean.unsqueeze(2)) ** 2).sum(2).sqrt().clamp(cfg.min_std, cfg.max_std)
            mean, std = mean * mask, std * mask
        action = _select(elite_actions.permute(1, 0, 2, 3), score, g)[:, 0]
        if not eval_mode:
            action = action + std[0] * torch.randn(N, A, generator=g, device=dev)
        self.prev_mean = mean
        return action.clamp(-1, 1)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


_COMPILED = None


def _compiled_iteration_value():
    """``torch.compile``'d :func:`_iteration_value` (dynamic shapes), or the eager one where compiling fails."""
    global _COMPILED
    if _COMPILED is None:
        compiled = torch.compile(_iteration_value, dynamic=True)

        def value(*args):
            global _COMPILED
            try:
                return compiled(*args)
            except Exception as e:  # no C++ compiler, unsupported platform, ...
                warnings.warn(f"torch.compile unavailable ({type(e).__name__}: {str(e)[:120]}); planning in eager mode")
                _COMPILED = _iteration_value
                return _iteration_value(*args)
        _COMPILED = value
    return _COMPILED


def public_plan_macs(mc, cfg: PlannerConfig = PlannerConfig()) -> int:
    """Multiply-adds of one planning call as the public implementation computes it (no factoring)."""
    L, E, A, M, Q = mc.latent_dim, mc.task_dim, mc.action_dim, mc.mlp_dim, 2
    head = (L + E + A) * M + M * M                                   # first two layers of dyn/rew/Q
    dyn, rew, q = head + M * L, head + M * mc.num_bins, head + M * mc.num_bins
    pi = (L + E) * M + M * M + M * 2 * A
    per_sample = cfg.horizon * (dyn + rew) + pi + Q * q
    pi_trajs = cfg.num_pi_trajs * (cfg.horizon * pi + (cfg.horizon - 1) * dyn)
    return cfg.iterations_for(A) * cfg.num_samples * per_sample + pi_trajs
