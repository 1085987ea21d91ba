"""Building blocks of the TD-MPC2 world model: NormedLinear, SimNorm, MLPs and a stacked Q ensemble."""
from __future__ import annotations

import math as pymath

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .runtime import onednn_matmul_active


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax within consecutive groups of ``dim`` features."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.view(*shape[:-1], -1, self.dim), dim=-1).view(shape)


def dropout_scale(shape: torch.Size, p: float, device: torch.device | None = None, dtype: torch.dtype | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted-dropout multipliers: each element independently 0 with probability ``p``, else ``1/(1-p)``.

    The same distribution as ``F.dropout``, sampled through the gaps between dropped elements
    (geometric, drawn by inversion): ~n·p random numbers instead of one per element, which
    matters on CPU where a Bernoulli draw per element costs more than the layer it masks."""
    if not 0 < p < 1:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    n = pymath.prod(shape)
    scale = torch.full(shape, 1 / (1 - p), device=device, dtype=dtype)
    expected = n * p
    draw, last, dropped = int(expected + 6 * pymath.sqrt(expected) + 16), -1, []
    while last < n:
        u = torch.rand(draw, generator=generator, device=device, dtype=torch.float64)
        gaps = torch.floor(torch.log1p(-u) / pymath.log1p(-p)).long() + 1      # Geometric(p) on {1, 2, ...}
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
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (y, weight, bias, pre_bias)):
        return _FusedLnAct.apply(y, weight, bias, scale, pre_bias, simnorm)
    return _forward_kernel(y, weight, bias, scale, pre_bias)[0](y, weight, bias, scale, pre_bias, simnorm)[0]


class NormedLinear(nn.Linear):
    """Linear → (Dropout) → LayerNorm → activation (Mish unless given).

    ``fused = True`` (set by :meth:`WorldModel.fuse_kernels`) runs the tail (Mish or SimNorm) as one compiled
    kernel forward and one backward."""

    def __init__(self, in_features: int, out_features: int, act: nn.Module | None = None, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else nn.Mish()
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(super().forward(x))

    def tail(self, y: torch.Tensor) -> torch.Tensor:
        """(Dropout) → LayerNorm → activation of the linear output ``y``."""
        if self.fused and isinstance(self.act, (nn.Mish, SimNorm)):
            p = self.dropout.p if self.dropout is not None else 0.0
            simnorm = self.act.dim if isinstance(self.act, SimNorm) else 0
            return fused_dropout_ln_act(y, self.ln.weight, self.ln.bias, p, self.training, simnorm=simnorm)
        if self.dropout is not None:
            y = self.dropout(y)
        return self.act(self.ln(y))


def mlp(in_dim: int, hidden: list[int], out_dim: int, act: nn.Module | None = None, dropout: float = 0.0) -> nn.Sequential:
    """NormedLinear hidden layers; the last layer is a plain Linear, or NormedLinear with ``act``."""
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = [NormedLinear(dims[i], dims[i + 1], dropout=dropout * (i == 0)) for i in range(len(dims) - 2)]
    layers.append(NormedLinear(dims[-2], dims[-1], act=act) if act is not None else nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


class _StackedLayerNorm(nn.Module):
    """Affine parameters of ``n`` LayerNorms stacked on a leading ensemble dim (names ``weight``, ``bias``)."""

    def __init__(self, n: int, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, features))
        self.bias = nn.Parameter(torch.zeros(n, features))


class EnsembleLinear(nn.Module):
    """``n`` independent Linear(+LayerNorm+Mish) layers evaluated as one batched matmul.

    Parameters are stacked on dim 0: ``weight [n, out, in]``, ``bias [n, out]`` and, for normed
    layers, ``ln.weight`` / ``ln.bias [n, out]``.
    """

    def __init__(self, n: int, in_features: int, out_features: int, normed: bool = True, dropout: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n, out_features))
        self.ln = _StackedLayerNorm(n, out_features) if normed else None
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.fused = False
        bound = 1 / pymath.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """``x [n, B, in]`` (or ``[B, in]``, shared by every head) → ``[n, B, out]``; ``heads`` selects a subset.
        ``extra [B, k]`` (shared): the last ``k`` input features, multiplied separately, so that autograd
        computes no gradient for ``x`` when only ``extra`` needs one."""
        w, b = self.weight, self.bias
        if heads is not None:
            w, b = w[heads], b[heads]
        n = w.shape[0]
        x = x.expand(n, *x.shape[-2:]) if x.dim() == 2 else x
        # bmm, and the bias added in the next kernel: baddbmm would first copy the bias to every output row
        if extra is None:
            y = torch.bmm(x, w.transpose(1, 2))
        else:
            k = x.shape[-1]
            y = torch.baddbmm(torch.bmm(extra.expand(n, *extra.shape), w[..., k:].transpose(1, 2)), x,
                              w[..., :k].transpose(1, 2))
        return self.tail(y, heads, b)

    def tail(self, y: torch.Tensor, heads: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(+ ``bias [n, out]``; None when ``y`` has it already) → (Dropout) → LayerNorm → Mish of the heads'
        matmul output ``y [n, B, out]``, or only the bias for the last (plain) layer."""
        if self.ln is None:
            y = y + bias.unsqueeze(1) if bias is not None else y
            return self.dropout(y) if self.dropout is not None else y
        g, beta = self.ln.weight, self.ln.bias
        if heads is not None:
            g, beta = g[heads], beta[heads]
        p = self.dropout.p if self.dropout is not None else 0.0
        pre = bias.unsqueeze(1) if bias is not None else None
        return (fused_dropout_ln_act if self.fused else dropout_ln_mish)(y, g.unsqueeze(1), beta.unsqueeze(1), p,
                                                                         self.training, pre)


class QEnsemble(nn.Sequential):
    """``num_q`` Q-functions ``mlp(in, [h, h], num_bins)`` with dropout in layer 0, stacked for speed."""

    def __init__(self, num_q: int, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0):
        dims = [in_dim, *hidden, out_dim]
        layers = [EnsembleLinear(num_q, dims[i], dims[i + 1], dropout=dropout * (i == 0)) for i in range(len(dims) - 2)]
        layers.append(EnsembleLinear(num_q, dims[-2], dims[-1], normed=False))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, in]`` (``extra [B, k]``: the last k input features, see :class:`EnsembleLinear`) →
        logits ``[n, B, out]``."""
        for i, layer in enumerate(self):
            x = layer(x, heads, extra) if i == 0 and extra is not None else layer(x, heads)
        return x


class _SharedRowsMatmul(torch.autograd.Function):
    """``x·w_hᵀ`` for every head h: ``x [R, k]`` shared, ``w [n, out, k]`` (column slices welcome) → ``[n, R, out]``.

    One 2-D product per head, forward and backward: ``bmm`` over ``x`` expanded to the heads made oneDNN copy
    the expanded (and, for the weight gradient, transposed) input first (:func:`runtime.onednn_fp32_matmul`)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        y = x.new_empty(w.shape[0], x.shape[0], w.shape[1])
        for h in range(w.shape[0]):
            torch.mm(x, w[h].t(), out=y[h])
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.mm(g[0], w[0])
            for h in range(1, w.shape[0]):
                gx.addmm_(g[h], w[h])
        if ctx.needs_input_grad[1]:
            gw = w.new_empty(w.shape)
            for h in range(w.shape[0]):
                torch.mm(g[h].t(), x, out=gw[h])
        return gx, gw


class _AddSharedMatmul(torch.autograd.Function):
    """``y += x·w_hᵀ`` in place for every head h: ``y [n, R, out]``, ``x [R, k]`` shared, ``w [n, out, k]``. The
    gradient of ``x`` is Σ_h g_h·w_h, computed transposed (``w_hᵀ·g_hᵀ``): for the action's few columns, torch's
    ``[n, R, out] @ [n, out, k]`` ran at ~12 GFLOP/s (0.68 ms for the policy loss's Q, 0.14 ms transposed)."""

    @staticmethod
    def forward(ctx, y, x, w):
        ctx.mark_dirty(y)
        ctx.save_for_backward(x, w)
        for h in range(w.shape[0]):
            y[h].addmm_(x, w[h].t())
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx = gw = None
        if need[1]:
            gx = torch.mm(w[0].t(), g[0].t())
            for h in range(1, w.shape[0]):
                gx.addmm_(w[h].t(), g[h].t())
            gx = gx.t()
        if need[2]:
            gw = w.new_empty(w.shape)
            for h in range(w.shape[0]):
                torch.mm(g[h].t(), x, out=gw[h])
        return (g if need[0] else None), gx, gw


class _AddTaskRows(torch.autograd.Function):
    """``y [..., H·B, out] += P[..., task[b], :]`` in place, ``task [B]`` repeating over the H row blocks. The
    gradient of ``P [..., T, out]`` is summed over H, then per task with ``index_add_`` (autograd's own gather
    backward, ``index_put_`` with accumulation, sorts the indices and cost more than the matmul it spares)."""

    @staticmethod
    def forward(ctx, y, P, task):
        ctx.mark_dirty(y)
        ctx.save_for_backward(task)
        ctx.tasks = P.shape[-2]
        B = task.shape[0]
        y.view(*y.shape[:-2], -1, B, y.shape[-1]).add_(P.index_select(-2, task).unsqueeze(-3))
        return y

    @staticmethod
    def backward(ctx, g):
        task, = ctx.saved_tensors
        gP = None
        if ctx.needs_input_grad[1]:
            per_row = g.reshape(*g.shape[:-2], -1, task.shape[0], g.shape[-1]).sum(-3)
            gP = g.new_zeros(*g.shape[:-2], ctx.tasks, g.shape[-1]).index_add_(-2, task, per_row)
        return g, gP, None


def folded_first_layer(layer: NormedLinear | EnsembleLinear, x: torch.Tensor, task: torch.Tensor,
                       table: torch.Tensor, extra: torch.Tensor | None = None,
                       heads: torch.Tensor | None = None) -> torch.Tensor:
    """The linear part (bias included) of ``layer`` on ``[x, table[task], extra]``, the embedding's share
    computed once per task (``table · W_eᵀ + b``, a few dozen rows) and added to the rows, so that the
    matmul over the rows spans only ``x`` and ``extra``. Gradients reach ``x``, ``extra``, ``table`` and the
    weights as through the concatenated input.

    ``x [*lead, k]``, ``task`` broadcastable to ``lead``, ``table [T, E]``, ``extra [*lead, j]`` → ``[R, out]``
    for a NormedLinear, ``[n, R, out]`` for an EnsembleLinear (R = rows of ``lead``)."""
    k, E, lead = x.shape[-1], table.shape[-1], x.shape[:-1]
    if not (task.dim() == 1 and lead and lead[-1] == task.shape[0]):   # one task per row
        task = task.expand(lead).reshape(-1)
    x = x.reshape(-1, k)
    extra = extra.reshape(-1, extra.shape[-1]) if extra is not None else None
    w, b = layer.weight, layer.bias
    ensemble = isinstance(layer, EnsembleLinear)
    if ensemble and heads is not None:
        w, b = w[heads], b[heads]
    w_x, w_e, w_a = w[..., :k], w[..., k:k + E], w[..., k + E:]
    if extra is not None and not (torch.is_grad_enabled() and extra.requires_grad):
        # an input that takes no gradient (data actions; no-grad passes): one matmul over [x, extra] against the
        # gathered weight columns, instead of a second one whose few columns run at a fraction of the matmul rate
        x, w_x, extra = torch.cat([x, extra], -1), torch.cat([w_x, w_a], -1), None
    if ensemble:
        n, out = w.shape[:2]
        if onednn_matmul_active():      # oneDNN would copy the expanded inputs first; with MKL, bmm is faster
            # the heads' embedding columns side by side (a view): one [T, E] × [E, n·out] product
            per_task = (table @ w_e.reshape(n * out, E).t()).view(-1, n, out).transpose(0, 1) + b.unsqueeze(1)
            xw = _SharedRowsMatmul.apply(x, w_x)
        else:
            per_task = torch.baddbmm(b.unsqueeze(1), table.expand(n, *table.shape), w_e.transpose(1, 2))
            xw = torch.bmm(x.expand(n, *x.shape), w_x.transpose(1, 2))
        y = _AddTaskRows.apply(xw, per_task, task)
        return _AddSharedMatmul.apply(y, extra, w_a) if extra is not None else y
    per_task = torch.addmm(b, table, w_e.t())
    y = _AddTaskRows.apply(torch.mm(x, w_x.t()), per_task, task)
    return torch.addmm(y, extra, w_a.t()) if extra is not None else y
