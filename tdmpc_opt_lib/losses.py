"""The loss terms of one TD-MPC2 / TD-MPC-Opt update, as small pure functions.

Shapes: H = horizon, B = batch, L = latent size, K = number of bins, Q = number of Q heads.
Time-step t of a length-H sequence is weighted by ``rho**t``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import math


def rho_weights(rho: float, steps: int, device=None) -> torch.Tensor:
    """``[1, rho, rho², ...]`` of length ``steps``."""
    return rho ** torch.arange(steps, device=device, dtype=torch.float32)


def consistency_loss(z_pred: torch.Tensor, z_target: torch.Tensor, rho: float) -> torch.Tensor:
    """Σ_t rho^t · MSE(z_pred[t], z_target[t]) / H, for latents ``[H, B, L]``."""
    H = z_pred.shape[0]
    return (rho_weights(rho, H, z_pred.device) * (z_pred - z_target).pow(2).mean((1, 2))).sum() / H


def reward_loss(logits: torch.Tensor, reward: torch.Tensor, rho: float, num_bins: int, vmin: float,
                vmax: float) -> torch.Tensor:
    """Σ_t rho^t · mean_b CE(logits[t, b], two_hot(reward[t, b])) / H; ``logits [H, B, K]``, ``reward [H, B, 1]``."""
    H = logits.shape[0]
    ce = math.soft_ce(logits, reward.squeeze(-1), num_bins, vmin, vmax)          # [H, B]
    return (rho_weights(rho, H, logits.device) * ce.mean(1)).sum() / H


def value_loss(q_logits: torch.Tensor, td_target: torch.Tensor, rho: float, num_bins: int, vmin: float,
               vmax: float) -> torch.Tensor:
    """Σ_t Σ_q rho^t · mean_b CE(Q_q[t, b], two_hot(td[t, b])) / (H · Q).

    ``q_logits [Q, H, B, K]``, ``td_target [H, B, 1]``.
    """
    Q, H = q_logits.shape[:2]
    ce = math.soft_ce(q_logits, td_target.squeeze(-1), num_bins, vmin, vmax)      # two-hot [H, B, K] broadcast over Q
    return (rho_weights(rho, H, q_logits.device) * ce.mean(2).sum(0)).sum() / (H * Q)


def td_target(reward: torch.Tensor, discount: torch.Tensor, next_q: torch.Tensor) -> torch.Tensor:
    """``r + γ_task · Q_target(z', a')``: ``reward [H, B, 1]``, per-sample ``discount [B]``, ``next_q [H, B, 1]``."""
    return reward + discount.unsqueeze(-1) * next_q


_QUANTILES: dict[torch.device, torch.Tensor] = {}


def q_scale(scale: torch.Tensor, q0: torch.Tensor, tau: float) -> torch.Tensor:
    """Running Q scale ``lerp(S, max(1, p95 − p5 of q0), tau)``, percentiles linearly interpolated over the batch.
    The percentile levels are a tensor kept per device (no host-to-device copy per update)."""
    levels = _QUANTILES.get(q0.device)
    if levels is None:
        levels = _QUANTILES[q0.device] = torch.tensor([0.05, 0.95], device=q0.device)
    p5, p95 = torch.quantile(q0.detach().reshape(-1).float(), levels)
    return torch.lerp(scale, torch.clamp(p95 - p5, min=1.0), tau)


def policy_loss(q: torch.Tensor, scaled_entropy: torch.Tensor, scale: torch.Tensor, rho: float,
                entropy_coef: float) -> torch.Tensor:
    """mean_t rho^t · mean_b −(entropy_coef · scaled_entropy + Q/S); ``q``, ``scaled_entropy`` ``[H+1, B, 1]``."""
    per_step = -(entropy_coef * scaled_entropy + q / scale).mean((1, 2))
    return (rho_weights(rho, q.shape[0], q.device) * per_step).mean()


def reward_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        vmin: float = -10.0, vmax: float = 10.0) -> torch.Tensor:
    """TD-MPC-Opt: MSE between the student's and the (frozen) teacher's expected rewards."""
    student = math.two_hot_inv(student_logits, vmin, vmax)
    return F.mse_loss(student, math.two_hot_inv(teacher_logits.detach(), vmin, vmax))


def latent_distill_loss(student_next_z: torch.Tensor, projected_teacher_next_z: torch.Tensor) -> torch.Tensor:
    """Next-latent distillation (paper Table 1 ablation): MSE to the teacher's latent projected to the student size."""
    return F.mse_loss(student_next_z, projected_teacher_next_z)


def fit_pca(latents: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and top-``k`` principal directions ``[k, D]`` of ``latents [N, D]`` (exact SVD)."""
    N, D = latents.shape
    if k > min(N, D):
        raise ValueError(f"cannot fit {k} principal components to {N} latents of size {D}")
    mean = latents.mean(0)
    _, _, vh = torch.linalg.svd(latents - mean, full_matrices=False)
    return mean, vh[:k]


def pca_project(z: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Coordinates of ``z [..., D]`` on the principal directions ``[k, D]`` → ``[..., k]``."""
    return (z - mean) @ components.T
