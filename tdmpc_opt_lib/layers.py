"""Building blocks of the TD-MPC2 world model: NormedLinear, SimNorm, MLPs and a stacked Q ensemble.

Plain PyTorch, one code path each. Faster drop-in subclasses (fused LayerNorm+activation kernels) live in
:mod:`tdmpc_opt_lib.fast` and are switched on by ``fast.accelerate(model)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax within consecutive groups of ``dim`` features."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.view(*shape[:-1], -1, self.dim), dim=-1).view(shape)


class NormedLinear(nn.Linear):
    """Linear → (Dropout) → LayerNorm → activation (Mish unless given)."""

    def __init__(self, in_features: int, out_features: int, act: nn.Module | None = None, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else nn.Mish()
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(super().forward(x))

    def tail(self, y: torch.Tensor) -> torch.Tensor:
        """(Dropout) → LayerNorm → activation of the linear output ``y``."""
        if self.dropout is not None:
            y = self.dropout(y)
        return self.act(self.ln(y))


def mlp(in_dim: int, hidden: list[int], out_dim: int, act: nn.Module | None = None, dropout: float = 0.0) -> nn.Sequential:
    """NormedLinear hidden layers (dropout in the first); the last layer is a plain Linear, or NormedLinear with ``act``."""
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = [NormedLinear(dims[i], dims[i + 1], dropout=dropout * (i == 0)) for i in range(len(dims) - 2)]
    layers.append(NormedLinear(dims[-2], dims[-1], act=act) if act is not None else nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


class StackedLayerNorm(nn.Module):
    """Affine parameters of ``n`` LayerNorms stacked on a leading ensemble dim (names ``weight``, ``bias``)."""

    def __init__(self, n: int, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, features))
        self.bias = nn.Parameter(torch.zeros(n, features))


class EnsembleLinear(nn.Module):
    """``n`` independent Linear (+ Dropout + LayerNorm + Mish) layers evaluated as one batched matmul.

    Parameters are stacked on dim 0: ``weight [n, out, in]``, ``bias [n, out]`` and, for normed layers,
    ``ln.weight`` / ``ln.bias [n, out]``. ``heads`` (indices) evaluates a subset of the layers.
    """

    def __init__(self, n: int, in_features: int, out_features: int, normed: bool = True, dropout: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n, out_features))
        self.ln = StackedLayerNorm(n, out_features) if normed else None
        self.dropout = nn.Dropout(dropout) if dropout else None
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def select(self, heads: torch.Tensor | None, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``params`` (stacked on dim 0; default weight and bias) restricted to ``heads`` (None: all)."""
        params = params or (self.weight, self.bias)
        return params if heads is None else tuple(p[heads] for p in params)

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """``x [n, B, in]`` (or ``[B, in]``, shared by every head) → ``[n, B, out]``."""
        w, b = self.select(heads)
        x = x.expand(w.shape[0], *x.shape[-2:]) if x.dim() == 2 else x
        return self.tail(torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)), heads)

    def tail(self, y: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """(Dropout) → LayerNorm → Mish of the heads' linear output ``y [n, B, out]`` (only dropout, if any,
        for the last, plain layer)."""
        if self.dropout is not None:
            y = self.dropout(y)
        if self.ln is None:
            return y
        g, beta = self.select(heads, self.ln.weight, self.ln.bias)
        return F.mish(F.layer_norm(y, y.shape[-1:]) * g.unsqueeze(1) + beta.unsqueeze(1))


class QEnsemble(nn.Sequential):
    """``num_q`` Q-functions ``mlp(in, [h, h], num_bins)`` with dropout in layer 0, stacked on dim 0."""

    def __init__(self, num_q: int, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0):
        dims = [in_dim, *hidden, out_dim]
        layers = [EnsembleLinear(num_q, dims[i], dims[i + 1], dropout=dropout * (i == 0)) for i in range(len(dims) - 2)]
        layers.append(EnsembleLinear(num_q, dims[-2], dims[-1], normed=False))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, in]`` → logits ``[n, B, out]`` (``n`` = number of ``heads``, all by default)."""
        for layer in self:
            x = layer(x, heads)
        return x
