"""Layers: the dropout sampler's distribution, fused vs eager training-mode layers, detached Q heads."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.layers import EnsembleLinear, dropout_scale
from tdmpc_opt_lib.world_model import WorldModel


@pytest.mark.parametrize("p", [0.01, 0.3, 0.9])
def test_dropout_scale_is_independent_bernoulli(p):
    """Each element is dropped with probability p, independently: the drop count per draw has the binomial
    mean and variance, every position is dropped at rate p, neighbours are uncorrelated."""
    torch.manual_seed(0)
    n, draws = 500, 4000
    s = torch.stack([dropout_scale((20, 25), p) for _ in range(draws)]).view(draws, n)
    assert torch.isclose(s, torch.tensor(1 / (1 - p))).logical_or(s == 0).all()
    dropped = (s == 0).double()
    counts = dropped.sum(1)
    se_mean = math.sqrt(n * p * (1 - p) / draws)
    assert abs(counts.mean().item() - n * p) < 5 * se_mean
    var = n * p * (1 - p)
    assert abs(counts.var().item() / var - 1) < 5 * math.sqrt(2 / draws)       # chi-square spread
    per_pos = dropped.mean(0)
    assert (per_pos - p).abs().max().item() < 5 * math.sqrt(p * (1 - p) / draws)
    neighbours = torch.corrcoef(torch.stack([dropped[:, :-1].reshape(-1), dropped[:, 1:].reshape(-1)]))[0, 1]
    assert abs(neighbours.item()) < 5 / math.sqrt(draws * (n - 1))


def test_dropout_scale_large_tensor_and_bad_probability():
    torch.manual_seed(1)
    s = dropout_scale((2, 768, 384), 0.01)
    assert abs((s == 0).double().mean().item() - 0.01) < 5 * math.sqrt(0.01 * 0.99 / s.numel())
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="dropout probability"):
            dropout_scale((3,), bad)


def test_fused_and_eager_ensemble_agree_in_training_mode():
    """With the same seed the fused (compiled) and eager layers draw the same dropout mask and agree."""
    torch.manual_seed(0)
    eager = EnsembleLinear(2, 16, 32, dropout=0.2).train()
    fused = copy.deepcopy(eager)
    fused.fused = True
    x = torch.randn(64, 16)
    outs = []
    for layer in (eager, fused):
        torch.manual_seed(5)
        y = layer(x)
        y.square().mean().backward()
        outs.append((y.detach(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(eager.eval()(x), outs[0][0])        # dropout was active in training mode


def test_detached_q_gives_input_gradients_only():
    torch.manual_seed(0)
    m = WorldModel(model_config(1, "mt30")).train()
    torch.nn.init.normal_(m._Qs[-1].weight)             # initialised to zero: Q would not depend on a
    z = torch.randn(8, m.cfg.latent_dim)
    a = torch.zeros(8, m.cfg.action_dim, requires_grad=True)
    m.Q(z, a, 0, "avg", detach=True).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in m._Qs.parameters())
    assert all(p.requires_grad for p in m._Qs.parameters())
