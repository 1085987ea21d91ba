"""Task-embedding folding: the embedding's share of a first layer computed per task, not per row.

Every first layer of TD-MPC2 reads ``[x, e(task), a]``. Since ``W·[x, e, a] + b = x·W_xᵀ + a·W_aᵀ + (e·W_eᵀ + b)``
and the bracket takes one value per task, it is computed for the few tasks (or environments) and added to the
rows: the row matmul spans ``x`` and ``a`` only (for a size-1 model 134 instead of 230 input columns).
:func:`folded_first_layer` does it with gradients for training batches (×1.035 per update at batch 256);
:func:`broadcast_first_layer` for inputs whose task is one per environment, broadcast over samples (planning).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import runtime
from ..layers import EnsembleLinear


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


def folded_first_layer(layer: nn.Linear | EnsembleLinear, x: torch.Tensor, task: torch.Tensor,
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
        if runtime.onednn_matmul_active():      # oneDNN would copy the expanded inputs first; with MKL, bmm is faster
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


def _env_terms(emb: torch.Tensor, w_e: torch.Tensor) -> torch.Tensor:
    """``emb @ w_e`` (a few rows); inside a compiled function as a multiply-sum that the compiler fuses into
    its neighbours instead of a matmul call per layer (the compiled planning call: ×1.03)."""
    if torch.compiler.is_compiling():
        return (emb.unsqueeze(-1) * w_e.unsqueeze(-3)).sum(-2)
    return emb @ w_e


def arrange_first_layer(weight: torch.Tensor, bias: torch.Tensor, k: int, E: int) -> tuple[torch.Tensor, ...]:
    """A first layer's weight ``[out, k+E+j]`` (``[n, out, k+E+j]`` for an ensemble) as the planning path reads it:
    ``(w_xa [.., k+j, out], w_e [.., E, out], bias)``, the rows and the embedding's columns apart, transposed and
    contiguous. Done once per planning call (:meth:`FastWorldModel.arrange_planning`) rather than inside each
    compiled rollout step, where it copied ~3 MB per iteration (planning call, 1 environment: ×1.05)."""
    wt = weight.transpose(-1, -2)
    return torch.cat([wt[..., :k, :], wt[..., k + E:, :]], -2).contiguous(), wt[..., k:k + E, :].contiguous(), bias


def broadcast_first_layer(arranged: tuple[torch.Tensor, ...], x: torch.Tensor, emb: torch.Tensor,
                          extra: torch.Tensor | None = None) -> torch.Tensor:
    """``[x, emb, extra]·Wᵀ + b`` for ``emb`` broadcast over the rows of ``x`` (no gradients), from the layer's
    :func:`arrange_first_layer`.

    ``x [N, S, k]`` — a latent shared by the S samples may come expanded (stride 0): its product is then taken
    once — ``emb [N, 1, E]``, ``extra [N, S, j]`` → ``[N, S, out]`` (``[n, N·S, out]`` for an ensemble)."""
    w_xa, w_e, bias = arranged
    k, E = x.shape[-1], emb.shape[-1]
    w_x, w_a = w_xa[..., :k, :], w_xa[..., k:, :]
    if w_xa.dim() == 3:
        n, out = w_xa.shape[0], w_xa.shape[-1]
        N, S = x.shape[:2]
        c = _env_terms(emb.reshape(1, N, E), w_e).unsqueeze(2) + bias[:, None, None, :]  # [n, N, 1, out]
        xa = x if extra is None else torch.cat([x, extra], -1)
        y = torch.matmul(xa.reshape(1, N * S, -1), w_x if extra is None else w_xa).view(n, N, S, out) + c
        return y.view(n, N * S, out)
    c = _env_terms(emb, w_e) + bias                                                  # [N, 1, out]
    if extra is None:
        return x @ w_x + c
    if x.dim() == 3 and x.shape[1] > 1 and x.stride(1) == 0:       # one latent per environment
        return (x[:, :1] @ w_x + c) + extra @ w_a
    return torch.cat([x, extra], -1) @ w_xa + c
