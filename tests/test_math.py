"""Hand-checked values of the discrete-regression and policy helpers."""
from __future__ import annotations

import pytest
import torch

from tdmpc_opt_lib import math
from tdmpc_opt_lib.config import discount


def test_symlog_symexp_inverse():
    x = torch.tensor([-100.0, -1.0, 0.0, 0.5, 3.0, 1e3])
    torch.testing.assert_close(math.symexp(math.symlog(x)), x)
    assert math.symlog(torch.tensor(1.0)).item() == pytest.approx(0.6931472)


def test_two_hot_hand_values():
    # symlog(e - 1) = 1.0 → position (1 - (-10)) / 0.2 = 55: all mass on bin 55
    t = math.two_hot(torch.tensor([torch.e - 1]), 101, -10, 10)
    assert t[0, 55].item() == pytest.approx(1.0, abs=1e-5) and t.sum().item() == pytest.approx(1.0)
    # symlog(x) = 0.1 → halfway between bins 50 and 51
    x = math.symexp(torch.tensor([0.1]))
    t = math.two_hot(x, 101, -10, 10)
    assert t[0, 50].item() == pytest.approx(0.5, abs=1e-5) and t[0, 51].item() == pytest.approx(0.5, abs=1e-5)
    # clamped at the ends
    assert math.two_hot(torch.tensor([1e9]), 101, -10, 10)[0, 100].item() == pytest.approx(1.0)


def test_two_hot_inv_of_peaked_logits_recovers_value():
    x = torch.tensor([-3.0, 0.0, 2.5, 40.0])
    logits = torch.log(math.two_hot(x, 101, -10, 10) + 1e-12)
    torch.testing.assert_close(math.two_hot_inv(logits), x, rtol=1e-4, atol=1e-4)


def test_soft_ce_is_minimised_by_target():
    target = torch.tensor([1.7])
    good = torch.log(math.two_hot(target, 101, -10, 10) + 1e-9)
    bad = torch.zeros(1, 101)
    assert math.soft_ce(good, target, 101, -10, 10) < math.soft_ce(bad, target, 101, -10, 10)
    assert math.soft_ce(bad, target, 101, -10, 10).item() == pytest.approx(torch.log(torch.tensor(101.0)).item())


def test_log_std_range_and_gaussian_logprob():
    assert math.scale_log_std(torch.tensor(-50.0), -10, 2).item() == pytest.approx(-10)
    assert math.scale_log_std(torch.tensor(0.0), -10, 2).item() == pytest.approx(-4)
    lp = math.gaussian_logprob(torch.zeros(1, 3), torch.zeros(1, 3))
    assert lp.item() == pytest.approx(-3 * 0.9189385332046727)


def test_discount_heuristic():
    assert discount(500) == pytest.approx(0.99)
    assert discount(10) == pytest.approx(0.95) and discount(10_000) == pytest.approx(0.995)


def test_gumbel_argmax_follows_probabilities():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.7, 0.2, 0.1]]).expand(20000, 3)
    counts = torch.bincount(math.gumbel_argmax(p, g), minlength=3).float() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)
