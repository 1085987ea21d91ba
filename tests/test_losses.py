"""Loss terms against values computed by hand."""
from __future__ import annotations

import math as pymath

import pytest
import torch

from tdmpc_opt_lib import losses

LN2, LN3 = pymath.log(2), pymath.log(3)
BINS = dict(num_bins=3, vmin=-1.0, vmax=1.0)       # bin centres -1, 0, 1 in symlog space


def test_rho_weights():
    assert torch.allclose(losses.rho_weights(0.5, 3), torch.tensor([1, 0.5, 0.25]))


def test_consistency_loss():
    z = torch.tensor([[[1.0, 0.0]], [[2.0, 2.0]]])          # [H=2, B=1, L=2]; targets 0: MSE 0.5 and 4
    assert losses.consistency_loss(z, torch.zeros_like(z), rho=0.5).item() == pytest.approx((0.5 + 0.5 * 4) / 2)


def test_reward_loss():
    r = pymath.exp(0.5) - 1                                  # symlog(r) = 0.5 → two-hot [0, .5, .5]
    logits = torch.tensor([[[0.0, 0.0, 0.0]], [[0.0, 0.0, LN2]]])   # CE: ln 3, then .5·ln 4 + .5·ln 2 = 1.5 ln 2
    reward = torch.tensor([[[0.0]], [[r]]])
    expected = (LN3 + 0.5 * 1.5 * LN2) / 2
    assert losses.reward_loss(logits, reward, 0.5, **BINS).item() == pytest.approx(expected, rel=1e-5)


def test_value_loss_averages_heads():
    q = torch.zeros(2, 1, 1, 3)                              # [Q=2, H=1, B=1, K=3]
    q[1, 0, 0] = torch.tensor([0.0, LN2, 0.0])               # head 1: target 0 → CE = ln 4 − ln 2 = ln 2
    td = torch.zeros(1, 1, 1)
    assert losses.value_loss(q, td, 0.5, **BINS).item() == pytest.approx((LN3 + LN2) / 2, rel=1e-5)
    # second step weighted by rho, divided by H·Q
    q2, td2 = torch.zeros(2, 2, 1, 3), torch.zeros(2, 1, 1)
    assert losses.value_loss(q2, td2, 0.5, **BINS).item() == pytest.approx(2 * LN3 * 1.5 / 4, rel=1e-5)


def test_td_target_uses_per_sample_discount():
    reward = torch.tensor([[[1.0], [2.0]]])                  # [H=1, B=2, 1]
    q = torch.tensor([[[10.0], [10.0]]])
    out = losses.td_target(reward, torch.tensor([0.9, 0.5]), q)
    assert torch.allclose(out, torch.tensor([[[10.0], [7.0]]]))


def test_q_scale_percentiles_and_lerp():
    q0 = torch.arange(101.0).unsqueeze(-1)                   # p5 = 5, p95 = 95
    assert losses.q_scale(torch.tensor(1.0), q0, 0.01).item() == pytest.approx(1 + 0.01 * 89)
    two = torch.tensor([[0.0], [10.0]])                      # interpolated: p5 = 0.5, p95 = 9.5
    assert losses.q_scale(torch.tensor(1.0), two, 0.5).item() == pytest.approx(5.0)
    flat = torch.full((8, 1), 3.0)                           # range 0 → clamped to 1
    assert losses.q_scale(torch.tensor(4.0), flat, 0.5).item() == pytest.approx(2.5)


def test_policy_loss():
    q = torch.tensor([[[1.0], [3.0]], [[2.0], [2.0]]])       # [H+1=2, B=2, 1]
    ent = torch.ones_like(q)
    # per step −mean(0.1·1 + q/2) = −1.1, −1.1; weights 1, 0.5; mean over steps
    out = losses.policy_loss(q, ent, torch.tensor(2.0), rho=0.5, entropy_coef=0.1)
    assert out.item() == pytest.approx(-(1.1 + 0.55) / 2)


def _peaked(index: int, bins: int = 101) -> torch.Tensor:
    logits = torch.full((bins,), -1e4)
    logits[index] = 0.0
    return logits


def test_reward_distill_loss():
    # bin 55 of 101 in [-10, 10] is symlog 1.0 → reward e − 1; bin 50 is 0; bin 40 is −2 → 1 − e²
    student = torch.stack([_peaked(55), _peaked(40)])
    teacher = torch.stack([_peaked(50), _peaked(50)])
    expected = ((pymath.e - 1) ** 2 + (1 - pymath.e ** 2) ** 2) / 2
    assert losses.reward_distill_loss(student, teacher).item() == pytest.approx(expected, rel=1e-4)
    assert losses.reward_distill_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-8)


def test_latent_distill_and_pca():
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5
    t = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    centre = torch.tensor([1.0, 2.0, 3.0])
    latents = centre + t[:, None] * direction
    mean, comps = losses.fit_pca(latents, 1)
    assert torch.allclose(mean, centre) and torch.allclose(comps[0].abs(), direction, atol=1e-6)
    proj = losses.pca_project(latents, mean, comps)
    assert torch.allclose(proj[:, 0].abs(), t.abs(), atol=1e-5)
    assert losses.latent_distill_loss(proj, proj).item() == 0.0
    assert losses.latent_distill_loss(torch.ones(2, 2), torch.zeros(2, 2)).item() == 1.0
    with pytest.raises(ValueError, match="principal components"):
        losses.fit_pca(latents, 4)
