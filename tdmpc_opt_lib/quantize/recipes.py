"""Quantization schemes: the TD-MPC-Opt paper's three recipes and this library's storage schemes.

**Paper recipes** (``paper-fp16``, ``paper-mixed``, ``paper-int8``) act on a public old-API state dict
(:func:`~tdmpc_opt_lib.checkpoints.to_public` ``(model, "old")``) and return it exactly as the released
files hold it. ``torch.quantize_per_tensor(t, scale=1.0, zero_point=0)`` rounds every value to an integer,
so most weights (|w| < 0.5) become 0: the collapse behind the paper's int8 and mixed scores.

**This library's schemes** (:func:`quantize_state`, our module names):

- ``fp32`` / ``fp16`` / ``bf16``: every float tensor stored in that dtype.
- ``int8``: every matmul weight (Linear, and the stacked Q ensemble per head) as int8 with per-output-channel
  scales (:mod:`~tdmpc_opt_lib.quantize.int8`), stored as ``<layer>.weight`` (int8) + ``<layer>.weight_scale``
  (fp32), except the encoder's observation layer (:func:`~tdmpc_opt_lib.quantize.int8.observation_layers`,
  ~1.5 % of the size-1 weights), stored fp16: it reads raw observations (entries of several units), and its
  int8 rounding alone moved the released student's policy mean by 14 % (relative RMS) on real observations.
  The integers are chosen by GPTQ given layer Hessians, else rounded to nearest. LayerNorm parameters, biases
  and the task embedding are stored fp16 (~1 % of the parameters).
- ``int8-dynamic``: the ``int8`` state, loaded with int8 matmuls
  (:func:`~tdmpc_opt_lib.quantize.int8.to_int8_dynamic`).
- ``mixed``: ``int8`` except some layers kept fp16 (chosen by
  :func:`~tdmpc_opt_lib.quantize.analysis.mixed_plan`).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn

from ..checkpoints import QUANTIZED_DEPRECATION, CheckpointError
from ..layers import EnsembleLinear
from ..world_model import WorldModel
from .int8 import (INT8, dequantize_per_channel, gptq_per_channel, matmul_layers,
                   observation_layers, quantize_per_channel)

MiB = 2 ** 20
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OUR_SCHEMES = (*STORAGE_DTYPES, "int8", "int8-dynamic", "mixed")
PAPER_SCHEMES = ("paper-fp16", "paper-mixed", "paper-int8")
SCHEMES = OUR_SCHEMES + PAPER_SCHEMES


def calibrated(scheme: str) -> bool:
    """Whether a scheme stores int8 weights (rounded by GPTQ when calibration Hessians are given)."""
    return scheme in ("int8", "int8-dynamic", "mixed")


def tensor_bytes(sd: dict) -> int:
    """Bytes of the tensors of a state dict (qint8 / int8 count 1 byte per element)."""
    return sum(v.numel() * v.element_size() for v in sd.values() if isinstance(v, torch.Tensor))


# ------------------------------------------------------------------------------ paper recipes
def _qint8_unit(t: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUANTIZED_DEPRECATION)
        return torch.quantize_per_tensor(t.float(), scale=1.0, zero_point=0, dtype=torch.qint8)


def paper_fp16(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TD-MPC-Opt fp16 release: every float tensor cast to float16."""
    return {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}


def paper_int8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TD-MPC-Opt int8 release: every float tensor ``quantize_per_tensor(scale=1.0, zero_point=0, qint8)``."""
    return {k: _qint8_unit(v) if v.is_floating_point() else v for k, v in sd.items()}


def paper_mixed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TD-MPC-Opt mixed release: keys containing 'weight' or 'bias' in float16, other float tensors
    (the old-API ``_Qs.params.k`` / ``_target_Qs.params.k``) qint8 with scale 1.0."""
    return {k: (v.half() if "weight" in k or "bias" in k else _qint8_unit(v)) if v.is_floating_point() else v
            for k, v in sd.items()}


PAPER_RECIPES: dict[str, Callable[[dict], dict]] = {
    "paper-fp16": paper_fp16, "paper-mixed": paper_mixed, "paper-int8": paper_int8}


# ------------------------------------------------------------------------------ our schemes
def quantize_state(model: WorldModel, scheme: str, fp16_layers: list[str] | tuple[str, ...] = (),
                   deployable: bool = False, hessians: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict a scheme of ours stores (module names of :class:`WorldModel`).

    ``fp16_layers`` (``mixed`` only): online layers kept in fp16 besides :func:`observation_layers`; their
    target-Q copies follow them. ``hessians`` (:func:`~tdmpc_opt_lib.quantize.calibration.layer_hessians`):
    int8 layers that have one are rounded by :func:`gptq_per_channel` (target Qs with their online layer's),
    the others to nearest. ``deployable`` drops the target Qs.
    """
    if any(isinstance(m, tuple(INT8.values())) for m in model.modules()):
        raise ValueError("model is already int8-dynamic: quantize a float model instead")
    if scheme not in OUR_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; schemes of this library: {', '.join(OUR_SCHEMES)}")
    layers = matmul_layers(model)
    if unknown := [n for n in fp16_layers if n not in layers]:
        raise ValueError(f"fp16_layers {unknown} are not matmul layers; choose from {layers}")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()
          if not (deployable and k.startswith("_target_Qs."))}
    if scheme in STORAGE_DTYPES:
        return {k: v.to(STORAGE_DTYPES[scheme]) if v.is_floating_point() else v for k, v in sd.items()}
    weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, EnsembleLinear))}
    keep = {f"{n}.weight" for n in [*observation_layers(model), *(fp16_layers if scheme == "mixed" else ())]}
    hessians = hessians or {}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        online = k.replace("_target_Qs.", "_Qs.", 1)
        if k in weights and online not in keep:
            h = hessians.get(online.removesuffix(".weight"))
            out[k], out[f"{k}_scale"] = quantize_per_channel(v) if h is None else gptq_per_channel(v, h)
        else:
            out[k] = v.half() if v.is_floating_point() else v
    return out


def dequantize_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors from a stored state: int8 weights times their ``_scale``, others upcast."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight_scale"):
            continue
        if v.dtype == torch.int8:
            if f"{k}_scale" not in sd:
                raise CheckpointError(f"int8 tensor {k!r} has no scale tensor {k + '_scale'!r}")
            out[k] = dequantize_per_channel(v, sd[f"{k}_scale"])
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out
