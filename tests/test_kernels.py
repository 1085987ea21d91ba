"""The C LayerNorm+activation kernels: build, the tensors they accept, fallback, process state."""
from __future__ import annotations

import pytest
import torch

from tdmpc_opt_lib.fast import fused as layers
from tdmpc_opt_lib.fast import kernels

needs_cc = pytest.mark.skipif(kernels.compiler() is None, reason="no C compiler on PATH")


@needs_cc
def test_kernels_build_and_leave_denormals_alone():
    """The library builds here; loading it does not switch the process to flush-denormals-to-zero
    (fast-math is a compile-only flag)."""
    assert kernels.library() is not None
    assert (torch.tensor(1e-40) * 1.0).item() != 0.0


@needs_cc
@pytest.mark.parametrize("simnorm", [0, 8])
def test_c_and_compiled_kernels_agree(simnorm, monkeypatch):
    """Forward output and every gradient (input, LayerNorm weight/bias, the ensemble's pre-LN bias) of the C
    kernels and the compiled ones, at a Q-ensemble shape with dropout (same mask: same seed)."""
    torch.manual_seed(0)
    y = torch.randn(3, 50, 64, requires_grad=True)
    w, b, pb = (torch.randn(3, 1, 64, requires_grad=True) for _ in range(3))
    g = torch.randn(3, 50, 64)
    results = []
    for use_c in (True, False):
        if not use_c:
            monkeypatch.setattr(kernels, "supports", lambda *args: False)
        torch.manual_seed(1)
        out = layers.fused_dropout_ln_act(y, w, b, 0.2, True, pb, simnorm=simnorm)
        results.append((out.detach(), *torch.autograd.grad(out, (y, w, b, pb), g)))
    for c, compiled in zip(*results):
        torch.testing.assert_close(c, compiled, rtol=1e-4, atol=1e-5)


@needs_cc
def test_supports_only_what_the_kernels_handle():
    y, w = torch.randn(4, 6, 8), torch.randn(4, 1, 8)
    assert kernels.supports(y, w, w, torch.ones_like(y), w) and kernels.supports(y.reshape(24, 8), w[0, 0], w[0, 0])
    assert not kernels.supports(y.double(), w.double(), w.double())       # float32 only
    assert not kernels.supports(y.transpose(0, 1), w[:1].expand(6, 1, 8).contiguous(), w[:1].expand(6, 1, 8))
    w1 = torch.randn(1, 6, 8)
    assert not kernels.supports(y, w1, w1)                                # a broadcast pattern the kernels lack
    assert not kernels.supports(y, torch.randn(4, 1, 7), torch.randn(4, 1, 7))   # wrong feature size
    assert not kernels.supports(y, w, w[0, 0])                            # bias shaped unlike the weight
    assert not kernels.supports(y, w, w, pre_bias=w[0, 0])                # pre-bias likewise
    assert not kernels.supports(y, w, w, scale=torch.ones(6, 8))          # a scale that is not per element
    assert not kernels.supports(torch.zeros(0, 8), w[0, 0], w[0, 0])      # empty


def test_a_failing_compiler_warns_and_falls_back(tmp_path, monkeypatch):
    """No usable compiler: one warning naming the failure, then the compiled kernels carry on."""
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("TDMPC_OPT_KERNEL_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="C kernels unavailable.*false"):
        assert kernels.library() is None
    assert not list(tmp_path.glob("*.so"))                               # nothing half-built left behind
    y = torch.randn(5, 16)
    out = layers.fused_dropout_ln_act(y, torch.ones(16), torch.zeros(16), 0.0, False)
    torch.testing.assert_close(out, torch.nn.functional.mish(torch.nn.functional.layer_norm(y, (16,))))


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("TDMPC_OPT_CKERNELS", "0")
    assert kernels.library() is None and not kernels.supports(torch.randn(2, 8), torch.randn(8), torch.randn(8))


@needs_cc
@pytest.mark.parametrize("simnorm", [0, 8])
def test_c_kernels_against_float64(simnorm):
    """The kernels' own exp (a polynomial, ~2e-7 relative) and the rearranged Mish derivative keep forward and
    input gradient within float32 rounding of a float64 reference, pre-activations from -60 to 60 included."""
    torch.manual_seed(0)
    y, g = torch.randn(512, 64) * 3, torch.randn(512, 64)
    w, b = torch.linspace(-20, 20, 64), torch.randn(64)
    out, mean, rstd = kernels.ln_act_forward(y, w, b, None, None, simnorm)
    gy, gw, gb, _ = kernels.ln_act_backward(g, y, w, b, None, None, mean, rstd, simnorm, True, False)
    y64, w64 = y.double().requires_grad_(), w.double().requires_grad_()
    o = torch.nn.functional.layer_norm(y64, (64,)) * w64 + b.double()
    assert o.max() > 40 and o.min() < -40
    ref = torch.softmax(o.view(512, -1, simnorm), -1).view(o.shape) if simnorm else torch.nn.functional.mish(o)
    ref_gy, ref_gw = torch.autograd.grad(ref, (y64, w64), g.double())
    for got, want in ((out, ref), (gy, ref_gy), (gw, ref_gw)):
        assert (got.double() - want).abs().max().item() < 2e-6 * want.abs().max().item()
