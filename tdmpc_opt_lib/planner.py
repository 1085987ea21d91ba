"""MPPI planning in the latent space of a TD-MPC2 world model.

:class:`Planner` plans for N environments at once (each with its own task) and factors the work
exactly: the task embedding and the shared first latent enter the first layers once per call,
the dynamics and reward heads share one first matmul, and only the two Q heads that are used
are evaluated. :func:`plan_reference` is the plain one-environment algorithm, written with the
world model's public methods line by line as TD-MPC2 does it; the two agree given the same
random stream (tests check it) and the benchmark reports their speed ratio.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import math
from .runtime import keep_freed_memory, onednn_fp32_matmul
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
    return elite_actions[torch.arange(score.shape[0]), :, idx]


@torch.no_grad()
def plan_reference(model: WorldModel, obs: torch.Tensor, task: int, prev_mean: torch.Tensor | None,
                   cfg: PlannerConfig = PlannerConfig(), eval_mode: bool = True,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain MPPI for one observation ``obs [obs_dim]``; returns ``(action [A], mean [H, A])``.

    ``prev_mean`` is the previous call's mean (None on the first step of an episode).
    """
    H, S, P, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, model.cfg.action_dim
    t = torch.tensor([task])
    mask = model.action_mask(task)
    gamma = model.discount[task]
    z = model.encode(obs.unsqueeze(0), t)
    pi_actions = torch.empty(H, P, A)
    if P:
        _z = z.repeat(P, 1)
        for h in range(H):
            pi_actions[h], _ = model.pi(_z, t, generator)
            if h < H - 1:
                _z = model.next(_z, pi_actions[h], t)
    z = z.repeat(S, 1)
    mean = torch.zeros(H, A)
    if prev_mean is not None:
        mean[:-1] = prev_mean[1:]
    std = torch.full((H, A), cfg.max_std)
    actions = torch.empty(H, S, A)
    actions[:, :P] = pi_actions
    for _ in range(cfg.iterations_for(A)):
        noise = torch.randn(H, S - P, A, generator=generator)
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
        action = action + std[0] * torch.randn(A, generator=generator)
    return action.clamp(-1, 1), mean


# ---------------------------------------------------------------------------------------------
# Batched planner. The world model's weights are split once per call so that
#   W·[z, e, a] + b  =  z·W_zᵀ + a·W_aᵀ + (e·W_eᵀ + b)
# where the bracket is a per-environment constant, and z·W_zᵀ of the shared first latent is
# computed once per environment instead of once per sample.
# ---------------------------------------------------------------------------------------------


def _mish(x: torch.Tensor) -> torch.Tensor:
    """Mish. Compiled, it uses one exp: tanh(softplus(x)) = n / (n + 2) with n = eˣ(eˣ + 2), which
    fuses into a few vector instructions; eager, torch's own kernel is faster."""
    if not torch.compiler.is_compiling():
        return F.mish(x)
    e = torch.exp(x.clamp(max=20.0))
    n = e * (e + 2)
    return x * n / (n + 2)


def _ln_mish(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _mish(F.layer_norm(x, x.shape[-1:]) * weight + bias)


def _split(weight: torch.Tensor, L: int, E: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_zᵀ, W_eᵀ, W_aᵀ) of a first-layer weight ``[..., out, L+E(+A)]``."""
    wt = weight.transpose(-1, -2)
    return wt[..., :L, :], wt[..., L:L + E, :], wt[..., L + E:, :]


def plan_weights(m: WorldModel, emb: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors one planning call needs, with the task embedding ``emb [N, E]`` folded into constants."""
    L, E = m.cfg.latent_dim, m.cfg.task_dim
    dyn, rew, pi, qs = m._dynamics, m._reward, m._pi, m._Qs
    w: dict[str, torch.Tensor] = {}
    # dynamics and reward read the same [z, e, a]: one fused first matmul of width 2M
    wz, we, wa = _split(torch.cat([dyn[0].weight, rew[0].weight]), L, E)
    w["dr_wz"], w["dr_wa"], w["dr_wza"] = wz.contiguous(), wa.contiguous(), torch.cat([wz, wa]).contiguous()
    w["dr_c"] = emb @ we + torch.cat([dyn[0].bias, rew[0].bias])
    w["dr_lnw"] = torch.stack([dyn[0].ln.weight, rew[0].ln.weight])
    w["dr_lnb"] = torch.stack([dyn[0].ln.bias, rew[0].ln.bias])
    wz, we, _ = _split(pi[0].weight, L, E)
    w["pi_wz"], w["pi_c"] = wz.contiguous(), emb @ we + pi[0].bias
    w["pi0_lnw"], w["pi0_lnb"] = pi[0].ln.weight, pi[0].ln.bias
    wz, we, wa = _split(qs[0].weight, L, E)                       # stacked over heads
    w["q_wza"] = torch.cat([wz, wa], 1)                          # [Q, L+A, M]
    w["q_c"] = emb @ we + qs[0].bias.unsqueeze(1)                 # [Q, N, M]
    for name, mod in (("dyn", dyn), ("rew", rew), ("pi", pi)):
        for i in (1, 2):
            w[f"{name}{i}_w"], w[f"{name}{i}_b"] = mod[i].weight.t(), mod[i].bias
            if hasattr(mod[i], "ln"):
                w[f"{name}{i}_lnw"], w[f"{name}{i}_lnb"] = mod[i].ln.weight, mod[i].ln.bias
    for i in (0, 1, 2):
        w[f"q{i}_lnw"] = qs[i].ln.weight if qs[i].ln is not None else None
        w[f"q{i}_lnb"] = qs[i].ln.bias if qs[i].ln is not None else None
    w["q1_w"], w["q1_b"] = qs[1].weight.transpose(1, 2), qs[1].bias
    w["q2_w"], w["q2_b"] = qs[2].weight.transpose(1, 2), qs[2].bias
    return {k: v for k, v in w.items() if v is not None}


@dataclass(frozen=True)
class _Consts:
    simnorm: int
    vmin: float
    vmax: float
    log_std_min: float
    log_std_max: float


def _dyn_rew(w: dict, x0: torch.Tensor, k: _Consts) -> tuple[torch.Tensor, torch.Tensor]:
    """First-layer pre-activations ``x0 [N, S, 2M]`` of dynamics|reward → (next z [N, S, L], reward [N, S])."""
    N, S, _ = x0.shape
    M = w["dyn1_w"].shape[0]
    x = _ln_mish(x0.view(N, S, 2, M), w["dr_lnw"], w["dr_lnb"])
    h = _ln_mish(x[..., 0, :] @ w["dyn1_w"] + w["dyn1_b"], w["dyn1_lnw"], w["dyn1_lnb"])
    z = F.layer_norm(h @ w["dyn2_w"] + w["dyn2_b"], (w["dyn2_b"].shape[0],), w["dyn2_lnw"], w["dyn2_lnb"])
    z = F.softmax(z.view(N, S, -1, k.simnorm), -1).view(N, S, -1)
    h = _ln_mish(x[..., 1, :] @ w["rew1_w"] + w["rew1_b"], w["rew1_lnw"], w["rew1_lnb"])
    r = math.two_hot_inv(h @ w["rew2_w"] + w["rew2_b"], k.vmin, k.vmax)
    return z, r


def _first_dr(w: dict, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Dynamics|reward first-layer pre-activation for per-sample latents ``z [N, S, L]``."""
    return torch.cat([z, a], -1) @ w["dr_wza"] + w["dr_c"].unsqueeze(1)


def _pi_sample(w: dict, z: torch.Tensor, mask: torch.Tensor, eps: torch.Tensor, k: _Consts) -> torch.Tensor:
    """Policy-prior action for ``z [N, S, L]`` with standard-normal ``eps [N, S, A]`` (as WorldModel.pi)."""
    h = _ln_mish(z @ w["pi_wz"] + w["pi_c"].unsqueeze(1), w["pi0_lnw"], w["pi0_lnb"])
    h = _ln_mish(h @ w["pi1_w"] + w["pi1_b"], w["pi1_lnw"], w["pi1_lnb"])
    mu, log_std = (h @ w["pi2_w"] + w["pi2_b"]).chunk(2, -1)
    log_std = math.scale_log_std(log_std, k.log_std_min, k.log_std_max)
    mk = mask.unsqueeze(1)
    return torch.tanh(mu * mk + eps * mk * (log_std * mk).exp())


def _q_avg(w: dict, z: torch.Tensor, a: torch.Tensor, heads: torch.Tensor | None, k: _Consts) -> torch.Tensor:
    """Mean of the Q heads ``heads`` (only those are computed; None: all) → ``[N, S]``."""
    N, S, _ = z.shape
    sel = (lambda t: t) if heads is None else (lambda t: t[heads])
    wza = sel(w["q_wza"])                                          # [nh, L+A, M]
    nh, M = wza.shape[0], wza.shape[-1]
    x = torch.matmul(torch.cat([z, a], -1).view(1, N * S, -1), wza)                  # [nh, N·S, M]
    x = x.view(nh, N, S, M) + sel(w["q_c"]).unsqueeze(2)
    x = _ln_mish(x, sel(w["q0_lnw"])[:, None, None], sel(w["q0_lnb"])[:, None, None]).view(nh, N * S, M)
    # bmm + bias (fused into the next kernel) rather than baddbmm, which first copies the broadcast bias
    x = _ln_mish(torch.bmm(x, sel(w["q1_w"])) + sel(w["q1_b"]).unsqueeze(1),
                 sel(w["q1_lnw"]).unsqueeze(1), sel(w["q1_lnb"]).unsqueeze(1))
    logits = torch.bmm(x, sel(w["q2_w"])) + sel(w["q2_b"]).unsqueeze(1)
    return math.two_hot_inv(logits, k.vmin, k.vmax).view(nh, N, S).mean(0)


def _rollout(w: dict, z0: torch.Tensor, actions: torch.Tensor, gamma: torch.Tensor,
             k: _Consts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent rollout of ``actions [H, N, S, A]`` from ``z0 [N, L]`` → (z_H [N, S, L], Σ_h γ^h r̂_h [N, S], γ^H [N, 1])."""
    H = actions.shape[0]
    G = torch.zeros_like(actions[0, :, :, 0])
    discount = torch.ones_like(gamma).unsqueeze(1)
    z = z0
    for h in range(H):
        if h == 0:  # the first latent is shared by all samples: its matmul runs once per environment
            x0 = (z0 @ w["dr_wz"] + w["dr_c"]).unsqueeze(1) + actions[0] @ w["dr_wa"]
        else:
            x0 = _first_dr(w, z, actions[h])
        z, r = _dyn_rew(w, x0, k)
        G = G + discount * r
        discount = discount * gamma.unsqueeze(1)
    return z, G, discount


def _iteration_value(w: dict, z0: torch.Tensor, actions: torch.Tensor, z_pi: torch.Tensor, G_pi: torch.Tensor,
                     gamma: torch.Tensor, mask: torch.Tensor, eps: torch.Tensor, heads: torch.Tensor,
                     k: _Consts) -> torch.Tensor:
    """Values ``[N, P+S']`` of one MPPI iteration: the P policy trajectories continue from their rollout
    (``z_pi [N, P, L]``, ``G_pi [N, P]``: their actions never change, so it is computed once per call); the
    S' sampled ``actions [H, N, S', A]`` are rolled out here. Each row: Σ_h γ^h r̂_h + γ^H·Q̄(z_H, a_H ~ π)."""
    z, G, discount = _rollout(w, z0, actions, gamma, k)
    z, G = torch.cat([z_pi, z], 1), torch.cat([G_pi, G], 1)
    return G + discount * _q_avg(w, z, _pi_sample(w, z, mask, eps, k), heads, k)


class Planner:
    """Batched MPPI: ``plan(obs [N, obs], task [N])`` → actions ``[N, A]``, keeping each env's warm start.

    ``compile=True`` fuses the trajectory-value computation with ``torch.compile`` (falls back to
    eager, with a warning, where no compiler is available). Results equal the eager ones to float
    rounding.
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
        c = model.cfg
        self._k = _Consts(c.simnorm_dim, c.vmin, c.vmax, c.log_std_min, c.log_std_max)
        keep_freed_memory()

    def reset(self) -> None:
        """Forget warm starts (every environment starts a new episode)."""
        self.prev_mean = None

    def plan(self, obs: torch.Tensor, task: torch.Tensor, t0: torch.Tensor | bool = False,
             eval_mode: bool = True) -> torch.Tensor:
        """Plan one action per environment. ``t0`` marks environments at the first step of an episode. CPU
        matmuls go through oneDNN where that keeps them float32 (:func:`runtime.onednn_fp32_matmul`: ×1.07 for
        one environment, ×1.09 for 16 here)."""
        with onednn_fp32_matmul():
            return self._plan(obs, task, t0, eval_mode)

    @torch.inference_mode()
    def _plan(self, obs: torch.Tensor, task: torch.Tensor, t0: torch.Tensor | bool, eval_mode: bool) -> torch.Tensor:
        m, cfg, g, k = self.model, self.cfg, self.generator, self._k
        H, S, P, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, m.cfg.action_dim
        N = obs.shape[0]
        if self.prev_mean is not None and self.prev_mean.shape[1] != N:
            raise ValueError(f"planner was warm-started for {self.prev_mean.shape[1]} environments, got {N}; "
                             "call reset() when the set of environments changes")
        task = task.long()
        mask = m.action_mask(task)                                      # [N, A]
        gamma = m.discount[task]                                        # [N]
        emb = m.task_vectors(task)                                      # [N, E], renormalised like TD-MPC2
        z0 = m._encoder["state"](torch.cat([obs, emb], -1))             # [N, L]
        w = plan_weights(m, emb)

        # policy trajectories: their actions, latent rollout and discounted return are fixed for the call
        pi_actions = torch.empty(H, N, P, A)
        zp, G_pi, discount = z0.unsqueeze(1).expand(N, P, z0.shape[-1]), torch.zeros(N, P), torch.ones(N, 1)
        for h in range(H if P else 0):
            pi_actions[h] = _pi_sample(w, zp, mask, torch.randn(N, P, A, generator=g), k)
            zp, r = _dyn_rew(w, _first_dr(w, zp, pi_actions[h]), k)
            G_pi, discount = G_pi + discount * r, discount * gamma.unsqueeze(1)
        mean = torch.zeros(H, N, A)
        if self.prev_mean is not None:
            keep = ~torch.as_tensor(t0, dtype=torch.bool).expand(N)
            mean[:-1, keep] = self.prev_mean[1:, keep]
        std = torch.full((H, N, A), cfg.max_std)
        actions = torch.empty(H, N, S, A)
        actions[:, :, :P] = pi_actions
        for _ in range(cfg.iterations_for(A)):
            noise = torch.randn(H, N, S - P, A, generator=g)
            actions[:, :, P:] = (mean.unsqueeze(2) + std.unsqueeze(2) * noise).clamp(-1, 1)
            actions *= mask.unsqueeze(1)
            eps = torch.randn(N, S, A, generator=g)
            heads = two_random_heads(m.cfg.num_q, g)
            heads = None if m.cfg.num_q == 2 else heads     # both heads: their mean does not depend on the order
            value = torch.cat([self._value(_rows(w, sl), z0[sl], actions[:, sl, P:], zp[sl], G_pi[sl], gamma[sl],
                                           mask[sl], eps[sl], heads, k)
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
            action = action + std[0] * torch.randn(N, A, generator=g)
        self.prev_mean = mean
        return action.clamp(-1, 1)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _rows(w: dict[str, torch.Tensor], sl: slice) -> dict[str, torch.Tensor]:
    """The per-environment constants of ``w`` restricted to environments ``sl``."""
    out = dict(w)
    out["dr_c"], out["pi_c"], out["q_c"] = w["dr_c"][sl], w["pi_c"][sl], w["q_c"][:, sl]
    return out


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
