"""Per-channel int8: quantize / dequantize, GPTQ rounding, the int8 matmul and the int8 inference modules.

A weight ``w [..., out, in]`` is stored as ``q`` (int8, |q| ≤ 127) and ``scale`` (fp32, one per output
channel, ``max|w_row| / 127``): ``w ≈ q · scale[..., None]``. The integers are rounded to nearest
(:func:`quantize_per_channel`) or chosen by GPTQ (:func:`gptq_per_channel`) on the same grid.
"""
# Ours, not torchao 0.18: it has no int8 bmm for the Q ensemble, its files need torchao to load, it is slower on CPU.
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import EnsembleLinear, NormedLinear
from ..world_model import WorldModel


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel of ``w [..., out, in]``: ``w ≈ q · scale[..., None]``, |q| ≤ 127.

    ``scale = max|w_row| / 127``, so the reconstruction error is at most ``scale / 2`` per element.
    """
    w = w.detach().float()
    amax = w.abs().amax(-1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    return torch.round(w / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8), scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.unsqueeze(-1)


def gptq_per_channel(w: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ (Frantar et al., 2023) on the per-channel int8 grid of :func:`quantize_per_channel` (same scales).

    ``w [out, in]``, ``hessian [in, in] = Σ x xᵀ`` of the layer's inputs. Columns are rounded in order of
    decreasing input energy; each column's rounding error is spread over the columns not yet rounded so that
    the layer's output error ``‖X (ŵ − w)ᵀ‖`` stays small (the inverse-Hessian Cholesky update), with
    ``damp`` × mean diagonal added for stability. Returns ``(q int8, scale fp32)``.
    """
    if w.dim() == 3:  # stacked ensemble: one Hessian per head
        pairs = [gptq_per_channel(w[i], hessian[i], damp) for i in range(w.shape[0])]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    _, scale = quantize_per_channel(w)
    H = hessian.double().clone()
    dead = torch.diagonal(H) == 0  # inputs always 0: rounded to nearest, nothing to compensate
    H[dead, dead] = 1
    order = torch.argsort(torch.diagonal(H), descending=True)
    W, H = w.detach().double()[:, order].clone(), H[order][:, order]
    H += damp * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    s = scale.double()
    q = torch.empty_like(W)
    for i in range(W.shape[1]):
        q[:, i] = torch.round(W[:, i] / s).clamp(-127, 127)
        err = (W[:, i] - q[:, i] * s) / U[i, i]
        W[:, i + 1:] -= err[:, None] * U[i, i + 1:][None, :]
    return q[:, torch.argsort(order)].to(torch.int8), scale


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q·scale)ᵀ`` in int8: each row of ``x`` quantized symmetrically at run time, int32 accumulation."""
    x2 = x.reshape(-1, x.shape[-1])
    xs = x2.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    y = torch._int_mm(torch.round(x2 / xs).to(torch.int8), q.t())
    return (y.float() * xs * scale).view(*x.shape[:-1], q.shape[0])


# ------------------------------------------------------------------------------ layers the int8 schemes quantize
def matmul_layers(model: WorldModel) -> list[str]:
    """Names of the online layers with a matmul weight: encoder, dynamics, reward, pi, Q ensemble."""
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, EnsembleLinear)) and not n.startswith("_target_Qs.")]


def observation_layers(model: WorldModel) -> list[str]:
    """The encoders' first layers (they read raw observations): kept fp16 by the int8 schemes."""
    return [f"_encoder.{key}.0" for key in model._encoder]


# ============================================================================== int8 inference modules
# The plain layers with their weight stored int8 (per output channel) and the product taken in int8; bias, dropout,
# LayerNorm and activation are the plain layers' own (``tail``).
class Int8Linear(nn.Linear):
    """Inference-only int8 :class:`torch.nn.Linear`."""

    @property
    def weight(self) -> torch.Tensor:
        """fp32 view of the int8 weight."""
        return dequantize_per_channel(self.qweight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_matmul(x, self.qweight, self.weight_scale) + self.bias


class Int8NormedLinear(NormedLinear):
    """Inference-only int8 :class:`~tdmpc_opt_lib.layers.NormedLinear`."""

    weight = Int8Linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(int8_matmul(x, self.qweight, self.weight_scale) + self.bias)


class Int8EnsembleLinear(EnsembleLinear):
    """Inference-only int8 :class:`~tdmpc_opt_lib.layers.EnsembleLinear`: one int8 matmul per head."""

    weight = Int8Linear.weight

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        q, s, b = self.select(heads, self.qweight, self.weight_scale, self.bias)
        y = torch.stack([int8_matmul(x if x.dim() == 2 else x[i], q[i], s[i]) for i in range(q.shape[0])])
        return self.tail(y + b.unsqueeze(1), heads)


INT8 = {nn.Linear: Int8Linear, NormedLinear: Int8NormedLinear, EnsembleLinear: Int8EnsembleLinear}


def int8_layer(layer: nn.Module, q: torch.Tensor, scale: torch.Tensor) -> nn.Module:
    """``layer`` (in place) with its weight replaced by the int8 ``q`` and per-channel ``scale``."""
    cls = INT8.get(type(layer))
    if cls is None:
        raise TypeError(f"cannot store a {type(layer).__name__} as int8: quantize the plain model "
                        "(before fast.accelerate)")
    del layer.weight
    layer.register_buffer("qweight", q.contiguous())
    layer.register_buffer("weight_scale", scale.float())
    layer.__class__ = cls
    return layer


def to_int8_dynamic(model: WorldModel, stored: dict[str, torch.Tensor] | None = None) -> WorldModel:
    """Swap (in place) the online matmul layers stored int8 (``stored``: a file's weights + scales; None:
    every layer but :func:`observation_layers`, rounded to nearest) for their int8 versions."""
    for name in matmul_layers(model):
        if stored is None and name in observation_layers(model):
            continue
        if stored is not None and stored[f"{name}.weight"].dtype != torch.int8:
            continue
        layer = model.get_submodule(name)
        q, s = (stored[f"{name}.weight"], stored[f"{name}.weight_scale"]) if stored else quantize_per_channel(layer.weight)
        int8_layer(layer, q, s)
    return model
# ============================================================================== end of the int8 inference modules
