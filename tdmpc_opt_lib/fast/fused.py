"""Fused LayerNorm + activation kernels for training: drop-in subclasses of the plain layers.

``FusedNormedLinear`` / ``FusedEnsembleLinear`` run every (bias →) dropout → LayerNorm → Mish/SimNorm tail as
one forward and one hand-derived backward kernel: on CPU float32 the C kernels of :mod:`.kernels` (~10 µs a
call, parameter gradients summed inside), elsewhere ``torch.compile``'d ones. Dropout masks are drawn through
the gaps between dropped elements (:func:`dropout_scale`): the same distribution as ``F.dropout``, another
random stream. Gain: a size-1 update at batch 256 on the 2-core CPU, ×1.5 over the plain layers
(``docs/performance.md``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from ..layers import EnsembleLinear, NormedLinear, SimNorm


def dropout_scale(shape: torch.Size, p: float, device: torch.device | None = None, dtype: torch.dtype | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted-dropout multipliers: each element independently 0 with probability ``p``, else ``1/(1-p)``.

    The same distribution as ``F.dropout``, sampled through the gaps between dropped elements
    (geometric, drawn by inversion): ~n·p random numbers instead of one per element, which
    matters on CPU where a Bernoulli draw per element costs more than the layer it masks. On other devices, one
    uniform draw per element (the gap walk's loop would wait for the device at every round)."""
    if not 0 < p < 1:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    if device is not None and torch.device(device).type != "cpu":
        keep = torch.rand(shape, generator=generator, device=device) >= p
        return keep.to(dtype or torch.float32) * (1 / (1 - p))
    n = math.prod(shape)
    scale = torch.full(shape, 1 / (1 - p), device=device, dtype=dtype)
    expected = n * p
    draw, last, dropped = int(expected + 6 * math.sqrt(expected) + 16), -1, []
    while last < n:
        u = torch.rand(draw, generator=generator, device=device, dtype=torch.float64)
        gaps = torch.floor(torch.log1p(-u) / math.log1p(-p)).long() + 1      # Geometric(p) on {1, 2, ...}
        idx = last + torch.cumsum(gaps, 0)
        dropped.append(idx[idx < n])
        last = int(idx[-1])
    scale.view(-1)[torch.cat(dropped)] = 0
    return scale


def dropout_ln_mish(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, p: float, training: bool,
                    pre_bias: torch.Tensor | None = None) -> torch.Tensor:
    """(+ ``pre_bias``, the linear layer's bias) → Dropout(p) → LayerNorm over the last dim (affine ``weight``,
    ``bias``, broadcast) → Mish."""
    return _ln_mish(y, weight, bias, dropout_scale(y.shape, p, y.device, y.dtype) if p and training else None, pre_bias)


def _ln_mish(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None = None,
             pre_bias: torch.Tensor | None = None) -> torch.Tensor:
    if pre_bias is not None:
        y = y + pre_bias
    if scale is not None:
        y = y * scale
    return F.mish(F.layer_norm(y, y.shape[-1:]) * weight + bias)


def _act(o: torch.Tensor, simnorm: int) -> torch.Tensor:
    """Mish (``simnorm`` 0) or SimNorm over groups of ``simnorm``, written for the compiler."""
    if simnorm:
        return F.softmax(o.view(*o.shape[:-1], -1, simnorm), -1).view(o.shape)
    e = torch.exp(o.clamp(max=20.0))       # tanh(softplus(o)) = n / (n + 2), n = eᵒ(eᵒ + 2): one exp
    n = e * (e + 2)
    return o * n / (n + 2)


def _act_backward(g: torch.Tensor, o: torch.Tensor, simnorm: int) -> torch.Tensor:
    """``g`` through :func:`_act` at ``o``."""
    if simnorm:
        sm = F.softmax(o.view(*o.shape[:-1], -1, simnorm), -1)
        gs = g.view(sm.shape)
        return (sm * (gs - (gs * sm).sum(-1, keepdim=True))).view(o.shape)
    e = torch.exp(o.clamp(max=20.0))
    n = e * (e + 2)
    t = n / (n + 2)                                                   # tanh(softplus(o))
    return g * (t + o * (1 - t * t) * (e / (1 + e)))                  # mish'(o) = t + o·sech²(softplus o)·σ(o)


def _ln_act_forward(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None,
                    pre_bias: torch.Tensor | None, simnorm: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """act(LayerNorm((y + pre_bias)·scale)·weight + bias) → (output, row mean, row 1/std), for compiling."""
    u = y if pre_bias is None else y + pre_bias
    if scale is not None:
        u = u * scale
    mean = u.mean(-1, keepdim=True)
    rstd = torch.rsqrt((u - mean).square().mean(-1, keepdim=True) + 1e-5)
    return _act((u - mean) * rstd * weight + bias, simnorm), mean, rstd


def _ln_act_backward(g: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     scale: torch.Tensor | None, pre_bias: torch.Tensor | None, mean: torch.Tensor,
                     rstd: torch.Tensor, simnorm: int, param_grads: bool) -> tuple[torch.Tensor, ...]:
    """Gradient of :func:`_ln_act_forward` w.r.t. ``y`` and, with ``param_grads``, the per-element terms whose
    sums over the broadcast dims are the gradients of ``weight`` (g·act'·x̂) and ``bias`` (g·act')."""
    u = y if pre_bias is None else y + pre_bias
    if scale is not None:
        u = u * scale
    xhat = (u - mean) * rstd
    go = _act_backward(g, xhat * weight + bias, simnorm)
    gx = go * weight
    gy = rstd * (gx - gx.mean(-1, keepdim=True) - xhat * (gx * xhat).mean(-1, keepdim=True))
    if scale is not None:
        gy = gy * scale
    return (gy, go * xhat, go) if param_grads else (gy,)


_KERNELS: dict[str, object] = {}


def _kernel(name: str):
    """The compiled (dynamic-shape) forward or backward kernel, compiled on first use."""
    if name not in _KERNELS:
        # one code object serves every variant (rank, activation, dropout or not, ...): allow their guards
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _KERNELS[name] = torch.compile(_ln_act_forward if name == "forward" else _ln_act_backward, dynamic=True)
    return _KERNELS[name]


def _forward_kernel(y, weight, bias, scale, pre_bias) -> tuple[object, bool]:
    """The C kernel where it takes these tensors (CPU float32, see :mod:`kernels`), else the compiled one."""
    if kernels.supports(y, weight, bias, scale, pre_bias):
        return kernels.ln_act_forward, True
    return _kernel("forward"), False


class _FusedLnAct(torch.autograd.Function):
    """One forward and one hand-derived backward kernel. On CPU float32 both are the C kernels of
    :mod:`kernels` (parameter gradients summed inside); elsewhere compiled ones, whose parameter gradients
    are summed by torch's reductions: inductor's own backward (reductions across rows inside the kernel)
    took twice as long for the Q ensemble's ``[2, 768, 384]`` layers."""

    @staticmethod
    def forward(ctx, y, weight, bias, scale, pre_bias, simnorm):
        fn, ctx.c = _forward_kernel(y, weight, bias, scale, pre_bias)
        out, mean, rstd = fn(y, weight, bias, scale, pre_bias, simnorm)
        ctx.save_for_backward(y, weight, bias, scale, pre_bias, mean, rstd)
        ctx.simnorm = simnorm
        return out

    @staticmethod
    def backward(ctx, g):
        y, weight, bias, scale, pre_bias, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        params = need[1] or need[2]
        if ctx.c:
            gy, gw, gb, gpb = kernels.ln_act_backward(g.contiguous(), y, weight, bias, scale, pre_bias, mean, rstd,
                                                      ctx.simnorm, params, need[4])
            return (gy if need[0] else None), (gw if need[1] else None), (gb if need[2] else None), None, gpb, None
        grads = _kernel("backward")(g.contiguous(), y, weight, bias, scale, pre_bias, mean, rstd, ctx.simnorm, params)
        gy = grads[0]
        gw = grads[1].sum_to_size(weight.shape) if need[1] else None
        gb = grads[2].sum_to_size(bias.shape) if need[2] else None
        gpb = gy.sum_to_size(pre_bias.shape) if need[4] else None
        return (gy if need[0] else None), gw, gb, None, gpb, None


def fused_dropout_ln_act(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, p: float, training: bool,
                         pre_bias: torch.Tensor | None = None, simnorm: int = 0) -> torch.Tensor:
    """:func:`dropout_ln_mish` (``simnorm`` > 0: SimNorm over groups of that size instead of Mish) as one
    forward kernel and one backward kernel (C on CPU float32, else compiled on first use for dynamic sizes);
    the dropout mask is drawn eagerly (:func:`dropout_scale`)."""
    scale = dropout_scale(y.shape, p, y.device, y.dtype) if p and training else None
    if torch.compiler.is_compiling():       # inside a compiled function (planning): inductor fuses the plain math
        u = y if pre_bias is None else y + pre_bias
        return _act(F.layer_norm(u if scale is None else u * scale, u.shape[-1:]) * weight + bias, simnorm)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (y, weight, bias, pre_bias)):
        return _FusedLnAct.apply(y, weight, bias, scale, pre_bias, simnorm)
    return _forward_kernel(y, weight, bias, scale, pre_bias)[0](y, weight, bias, scale, pre_bias, simnorm)[0]


class FastLinear(nn.Linear):
    """:class:`torch.nn.Linear`; inside a compiled function the bias is added apart from the matmul, so that the
    compiler fuses it into the next kernel (``addmm`` first copies it to every output row: the compiled planning
    call took ~10 % longer with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return x @ self.weight.t() + self.bias
        return super().forward(x)


class FusedNormedLinear(NormedLinear):
    """:class:`~tdmpc_opt_lib.layers.NormedLinear` whose Mish/SimNorm tail runs as one fused kernel (inside a
    compiled function, with the bias, as :class:`FastLinear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self.tail(x @ self.weight.t(), self.bias)
        return self.tail(super(NormedLinear, self).forward(x))

    def tail(self, y: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(+ ``bias``) → (Dropout) → LayerNorm → activation of ``y``."""
        if not isinstance(self.act, (nn.Mish, SimNorm)):
            return super().tail(y if bias is None else y + bias)
        p = self.dropout.p if self.dropout is not None else 0.0
        simnorm = self.act.dim if isinstance(self.act, SimNorm) else 0
        return fused_dropout_ln_act(y, self.ln.weight, self.ln.bias, p, self.training, bias, simnorm)


class FusedEnsembleLinear(EnsembleLinear):
    """:class:`~tdmpc_opt_lib.layers.EnsembleLinear` with the bias added inside the fused tail kernel (``bmm``
    rather than ``baddbmm``, which first copies the broadcast bias to every output row)."""

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        w, b = self.select(heads)
        x = x.expand(w.shape[0], *x.shape[-2:]) if x.dim() == 2 else x
        return self.tail(torch.bmm(x, w.transpose(1, 2)), heads, b)

    def tail(self, y: torch.Tensor, heads: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(+ ``bias [n, out]``) → (Dropout) → LayerNorm → Mish of ``y [n, B, out]``; the last layer: bias only."""
        if self.ln is None:
            y = y + bias.unsqueeze(1) if bias is not None else y
            return self.dropout(y) if self.dropout is not None else y
        g, beta = self.select(heads, self.ln.weight, self.ln.bias)
        p = self.dropout.p if self.dropout is not None else 0.0
        pre = bias.unsqueeze(1) if bias is not None else None
        return fused_dropout_ln_act(y, g.unsqueeze(1), beta.unsqueeze(1), p, self.training, pre)


FUSED = {nn.Linear: FastLinear, NormedLinear: FusedNormedLinear, EnsembleLinear: FusedEnsembleLinear}
