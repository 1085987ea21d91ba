"""Quantization of TD-MPC2 world models: the TD-MPC-Opt paper's recipes and proper post-training quantization.

**Paper recipes** (``paper-fp16``, ``paper-mixed``, ``paper-int8``) act on a public old-API state dict
(:func:`tdmpc_opt_lib.checkpoints.to_public` ``(model, "old")``) and return it exactly as the released
files hold it; their files are ``{"model": sd}``, read back by :func:`~tdmpc_opt_lib.checkpoints.load_checkpoint`.
``torch.quantize_per_tensor(t, scale=1.0, zero_point=0)`` rounds every value to an integer, so most
weights (|w| < 0.5) become 0: the collapse behind the paper's int8 and mixed scores.

**This library's schemes** write ``{"model", "config", "format", "quantized": scheme, "deployable", ...}``
(our module names), read back by :func:`load_quantized` into a :class:`WorldModel`:

- ``fp32`` / ``fp16`` / ``bf16``: every float tensor stored in that dtype, loaded as float32.
- ``int8``: every matmul weight (Linear, and the stacked Q ensemble per head) as int8 with symmetric
  per-output-channel scales (``max|w_row| / 127``), stored as ``<layer>.weight`` (int8) +
  ``<layer>.weight_scale`` (fp32), except the encoder's observation layer (:func:`observation_layers`,
  ~1.5 % of the size-1 weights), stored fp16: it reads raw observations (entries of several units), and
  its int8 rounding alone moved the released student's policy mean by 14 % (relative RMS) on real
  observations. The integers are chosen by GPTQ (:func:`gptq_per_channel`: rounding column by column,
  each error compensated on the columns not yet rounded, weighted by the layer's input second moments
  :func:`layer_hessians` measured on :func:`calibration_rollouts`); without calibration data, by rounding
  to nearest. LayerNorm parameters, biases and the task embedding are stored fp16 (~1 % of the parameters;
  the released student's are fp16 already). Loaded with the weights dequantized (weight-only quantization:
  the matmuls run in fp32).
- ``int8-dynamic``: the same file; the loader swaps every online layer stored int8 for :class:`Int8Linear` /
  :class:`Int8EnsembleLinear`, whose matmuls run in int8 (``torch._int_mm``, int32 accumulation) on
  activations quantized per row at run time. Biases, LayerNorm, Mish, SimNorm and the target Qs stay fp32.
  The batched :class:`~tdmpc_opt_lib.planner.Planner` reads layer ``.weight`` tensors directly, so there
  it gets the fp32 view of the int8 weights (only the encoder's int8 layers run in int8); every WorldModel method
  (``encode``/``next``/``reward``/``pi``/``Q``, :func:`~tdmpc_opt_lib.planner.plan_reference`, acting
  with the policy prior) runs its matmuls in int8. ``torch.ao.quantization.quantize_dynamic`` is not used:
  on torch 2.13 it warns it is deprecated (to be replaced by torchao), is per-tensor by default and only
  converts ``nn.Linear`` (not the stacked ensemble).
- ``mixed``: ``int8`` except the layers whose int8 quantization disturbs predictions most
  (:func:`layer_sensitivity`) stay fp16, as many as fit a size budget (:func:`mixed_plan`).

Sizes: every scheme has a full file (with target Qs, as the paper counts) and a deployable one without
target Qs (:func:`write_variant`); :func:`export_safetensors` writes a pickle-free inference export.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import math
from .checkpoints import (FORMAT, QUANTIZED_DEPRECATION, CheckpointError, atomic_save, check_state_dict,
                          is_quantized_file, load_checkpoint, model_from_file_object, read_file, to_public)
from .config import ModelConfig, task_set as resolve_task_set
from .envs import MultiTaskEnv
from .evaluation import evaluate, normalized_score, policy_actions
from .layers import EnsembleLinear
from .planner import Planner
from .world_model import WorldModel

MiB = 2 ** 20
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OUR_SCHEMES = (*STORAGE_DTYPES, "int8", "int8-dynamic", "mixed")
PAPER_SCHEMES = ("paper-fp16", "paper-mixed", "paper-int8")
SCHEMES = OUR_SCHEMES + PAPER_SCHEMES
CALIBRATION_ENV_SEED = 10 ** 7  # evaluation episodes use seeds seed * 1000 + episode, far below this
MIXED_BUDGET_RATIO = 2.8 / 3.9  # default mixed budget: the paper's mixed/fp16 file-size ratio (Table 4)

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # obs [B, obs_dim], action [B, A], task [B]


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


def save_paper(sd: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a recipe's output as the release files are: ``{"model": sd}``."""
    atomic_save({"model": sd}, path)


# ------------------------------------------------------------------------------ per-channel int8
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


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q·scale)ᵀ`` in int8: each row of ``x`` quantized symmetrically at run time, int32 accumulation."""
    x2 = x.reshape(-1, x.shape[-1])
    xs = x2.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    y = torch._int_mm(torch.round(x2 / xs).to(torch.int8), q.t())
    return (y.float() * xs * scale).view(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """Inference-only int8 replacement of a Linear / NormedLinear (bias, LayerNorm, activation in fp32)."""

    def __init__(self, layer: nn.Linear, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("weight_scale", scale.float())
        self.bias = layer.bias
        if hasattr(layer, "ln"):  # NormedLinear; like the planner, tell the two kinds apart by this attribute
            self.ln, self.act = layer.ln, layer.act

    @property
    def weight(self) -> torch.Tensor:
        """fp32 view of the int8 weight (read by the batched planner)."""
        return dequantize_per_channel(self.qweight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_matmul(x, self.qweight, self.weight_scale) + self.bias
        return self.act(self.ln(y)) if hasattr(self, "ln") else y


class Int8EnsembleLinear(nn.Module):
    """Inference-only int8 replacement of an :class:`EnsembleLinear`: one int8 matmul per Q head."""

    def __init__(self, layer: EnsembleLinear, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("weight_scale", scale.float())
        self.bias, self.ln = layer.bias, layer.ln

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_per_channel(self.qweight, self.weight_scale)

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        if extra is not None:                 # the last input features, given apart (EnsembleLinear.forward)
            x = torch.cat([x, extra], -1)
        q, s, b = self.qweight, self.weight_scale, self.bias
        if heads is not None:
            q, s, b = q[heads], s[heads], b[heads]
        y = torch.stack([int8_matmul(x if x.dim() == 2 else x[i], q[i], s[i]) for i in range(q.shape[0])])
        y = y + b.unsqueeze(1)
        if self.ln is None:
            return y
        g, beta = (self.ln.weight, self.ln.bias) if heads is None else (self.ln.weight[heads], self.ln.bias[heads])
        return F.mish(F.layer_norm(y, y.shape[-1:]) * g.unsqueeze(1) + beta.unsqueeze(1))


def matmul_layers(model: WorldModel) -> list[str]:
    """Names of the online layers with a matmul weight: encoder, dynamics, reward, pi, Q ensemble."""
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, EnsembleLinear)) and not n.startswith("_target_Qs.")]


def observation_layers(model: WorldModel) -> list[str]:
    """The encoders' first layers (they read raw observations): kept fp16 by the int8 schemes."""
    return [f"_encoder.{key}.0" for key in model._encoder]


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
        new = Int8EnsembleLinear(layer, q, s) if isinstance(layer, EnsembleLinear) else Int8Linear(layer, q, s)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model


# ------------------------------------------------------------------------------ GPTQ rounding
@torch.no_grad()
def calibration_rollouts(model: WorldModel, steps: int = 60, seed: int = 0, noise: float = 0.3) -> Inputs:
    """Real (obs, action, task) rows: one episode start per task of the model's set, acted on for ``steps``
    steps with the policy prior's mean plus Gaussian noise (std ``noise``, clamped to [-1, 1]). The
    environments are seeded ``CALIBRATION_ENV_SEED + seed``, apart from every evaluation episode's seed."""
    g = torch.Generator().manual_seed(seed)
    envs = [MultiTaskEnv(t, model.cfg.tasks, seed=CALIBRATION_ENV_SEED + seed) for t in model.cfg.tasks.tasks]
    task = torch.tensor([env.task_id for env in envs])
    mask = model.action_mask(task)
    obs = torch.from_numpy(np.stack([env.reset() for env in envs]))
    rows_obs, rows_act = [], []
    for _ in range(steps):
        act = (policy_actions(model, obs, task) + noise * torch.randn(mask.shape, generator=g)).clamp(-1, 1) * mask
        rows_obs.append(obs)
        rows_act.append(act)
        obs = torch.from_numpy(np.stack([env.step(a.numpy().astype(np.float64))[0] for env, a in zip(envs, act)]))
    return torch.cat(rows_obs), torch.cat(rows_act), task.repeat(steps)


@torch.no_grad()
def layer_hessians(model: WorldModel, inputs: Inputs, horizon: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """``Σ x xᵀ`` (float64) of every online matmul layer's inputs while the model works as the planner
    uses it: encode ``obs``; then ``horizon`` latent steps (the given actions first, uniform random ones
    after), each evaluating reward, next latent, the policy and every Q head on the action and on the
    policy's. Ensembles get one matrix per head ``[heads, in, in]``."""
    g = torch.Generator().manual_seed(seed)
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def accumulate(module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            x = args[0].double()
            if isinstance(module, EnsembleLinear):
                x = x.expand(module.weight.shape[0], *x.shape[-2:]) if x.dim() == 2 else x
                xx = torch.einsum("nbi,nbj->nij", x, x)
            else:
                x = x.reshape(-1, x.shape[-1])
                xx = x.T @ x
            sums[name] = sums[name] + xx if name in sums else xx
        return accumulate

    obs, action, task = inputs
    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in matmul_layers(model)]
    training = model.training
    model.eval()  # no Q dropout
    try:
        mask = model.action_mask(task)
        z = model.encode(obs, task)
        for h in range(horizon):
            a = action if h == 0 else (torch.rand(action.shape, generator=g) * 2 - 1) * mask
            model.reward(z, a, task)
            model.Q(z, a, task, "all")
            model.Q(z, model.pi(z, task, g)[0], task, "all")
            z = model.next(z, a, task)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return sums


def calibration_hessians(model: WorldModel, steps: int = 60, seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`layer_hessians` on :func:`calibration_rollouts` (about 6 s for MT30 on 2 cores)."""
    return layer_hessians(model, calibration_rollouts(model, steps, seed), seed=seed)


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


# ------------------------------------------------------------------------------ our schemes
def quantize_state(model: WorldModel, scheme: str, fp16_layers: list[str] | tuple[str, ...] = (),
                   deployable: bool = False, hessians: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict a scheme of ours stores (module names of :class:`WorldModel`).

    ``fp16_layers`` (``mixed`` only): online layers kept in fp16 besides :func:`observation_layers`; their
    target-Q copies follow them. ``hessians`` (:func:`layer_hessians`): int8 layers that have one are
    rounded by :func:`gptq_per_channel` (target Qs with their online layer's), the others to nearest.
    ``deployable`` drops the target Qs.
    """
    if any(isinstance(m, (Int8Linear, Int8EnsembleLinear)) for m in model.modules()):
        raise ValueError("model is already int8-dynamic: quantize the float model (load_checkpoint) instead")
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


def _calibrated(scheme: str) -> bool:
    return scheme in ("int8", "int8-dynamic", "mixed")


def quantized_checkpoint(model: WorldModel, scheme: str, deployable: bool = False,
                         fp16_layers: list[str] | None = None, inputs: Inputs | None = None,
                         hessians: dict[str, torch.Tensor] | None = None) -> dict:
    """The object a scheme's file holds. ``mixed`` without ``fp16_layers`` runs :func:`mixed_plan` on ``inputs``;
    int8 schemes without ``hessians`` measure them (:func:`calibration_hessians`; pass ``{}`` to round to nearest)."""
    if scheme in PAPER_RECIPES:
        sd = {k: v.detach().cpu() for k, v in to_public(model, "old").items()
              if not (deployable and k.startswith("_target_Qs."))}
        return {"model": PAPER_RECIPES[scheme](sd)}
    if scheme == "mixed" and fp16_layers is None:
        fp16_layers = mixed_plan(model, inputs=inputs)[0]
    if _calibrated(scheme) and hessians is None:
        hessians = calibration_hessians(model)
    obj = {"model": quantize_state(model, scheme, fp16_layers or (), deployable, hessians),
           "config": model.cfg.to_dict(), "format": FORMAT, "quantized": scheme, "deployable": deployable}
    if scheme == "mixed":
        obj["fp16_layers"] = list(fp16_layers)
    if _calibrated(scheme):
        obj["rounding"] = "gptq" if hessians else "nearest"
    return obj


def save_quantized(model: WorldModel, scheme: str, path: str | os.PathLike, deployable: bool = False,
                   fp16_layers: list[str] | None = None, inputs: Inputs | None = None,
                   hessians: dict[str, torch.Tensor] | None = None) -> dict:
    """Write a scheme's file atomically; returns what was written."""
    obj = quantized_checkpoint(model, scheme, deployable, fp16_layers, inputs, hessians)
    atomic_save(obj, path)
    return obj


def _build(cfg: ModelConfig, stored: dict[str, torch.Tensor], scheme: str, path: Path,
           device: str | torch.device) -> WorldModel:
    if scheme not in OUR_SCHEMES:
        raise CheckpointError(f"{path}: unknown quantization scheme {scheme!r} (known: {', '.join(OUR_SCHEMES)})")
    sd = dequantize_state(stored)
    if not any(k.startswith("_target_Qs.") for k in sd):  # deployable file: target Qs only matter for training
        sd.update({f"_target_Qs.{k[4:]}": v.clone() for k, v in sd.items() if k.startswith("_Qs.")})
    model = WorldModel(cfg)
    check_state_dict(model, sd, path)
    model.load_state_dict(sd)
    if scheme == "int8-dynamic":
        to_int8_dynamic(model, stored)
    return model.to(device).eval()


def load_quantized(path: str | os.PathLike, device: str | torch.device = "cpu") -> WorldModel:
    """Load a file written by :func:`save_quantized` / :func:`write_variant` (schemes of this library).

    Weights are dequantized to float32 (``int8-dynamic``: int8 layers, see the module doc). A deployable
    file (no target Qs) gets target Qs copied from the online Qs. Paper-recipe and float files raise a
    :class:`CheckpointError` pointing to :func:`~tdmpc_opt_lib.checkpoints.load_checkpoint`.
    """
    path = Path(path)
    return _from_file_object(read_file(path), path, device)


def _from_file_object(obj: dict, path: Path, device: str | torch.device) -> WorldModel:
    if not is_quantized_file(obj):
        raise CheckpointError(f"{path} is not a quantized file of this library (no 'quantized' entry): "
                              "load it with tdmpc_opt_lib.checkpoints.load_checkpoint")
    return _build(ModelConfig.from_dict(obj["config"]), obj["model"], obj["quantized"], path, device)


def load_model(path: str | os.PathLike, task_set: str | None = None, model_size: int | None = None,
               device: str | torch.device = "cpu") -> WorldModel:
    """Any file or folder a user may hold: a safetensors export (folder), a quantized file of this library,
    or anything :func:`~tdmpc_opt_lib.checkpoints.load_checkpoint` reads. ``model_size`` is checked."""
    path = Path(path)
    if path.is_dir():
        model = load_safetensors(path, device)
    elif is_quantized_file(obj := read_file(path)):
        model = _from_file_object(obj, path, device)
    else:
        return model_from_file_object(obj, path, task_set, model_size, device)
    if model_size is not None and model.cfg.model_size != model_size:
        raise CheckpointError(f"{path} holds a size-{model.cfg.model_size} model, not the requested size {model_size}")
    if task_set is not None and resolve_task_set(task_set).tasks != model.cfg.tasks.tasks:
        raise CheckpointError(f"{path} was made for tasks {list(model.cfg.tasks.tasks)}, "
                              f"not for the requested task set {task_set!r}")
    return model


# ------------------------------------------------------------------------------ safetensors export
def export_safetensors(model: WorldModel, scheme: str, out_dir: str | os.PathLike,
                       fp16_layers: list[str] | None = None, inputs: Inputs | None = None,
                       hessians: dict[str, torch.Tensor] | None = None) -> Path:
    """Inference export without pickle: ``model.safetensors`` (deployable tensors as the ``.pt`` file stores them)
    and ``config.json`` (config, scheme); read back by :func:`load_safetensors`."""
    from safetensors.torch import save_file

    if scheme not in OUR_SCHEMES:
        raise ValueError(f"safetensors export supports {', '.join(OUR_SCHEMES)}; the paper recipes store "
                         "torch quantized tensors, which safetensors cannot hold")
    obj = quantized_checkpoint(model, scheme, deployable=True, fp16_layers=fp16_layers, inputs=inputs,
                               hessians=hessians)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in obj["model"].items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({k: v for k, v in obj.items() if k != "model"}, indent=1))
    return out


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> WorldModel:
    """Load an :func:`export_safetensors` folder into a :class:`WorldModel`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is not a safetensors export (needs config.json and model.safetensors)")
    meta = json.loads((path / "config.json").read_text())
    return _build(ModelConfig.from_dict(meta["config"]), load_file(path / "model.safetensors"),
                  meta.get("quantized", ""), path, device)


# ------------------------------------------------------------------------------ sensitivity, mixed scheme
def calibration_inputs(model: WorldModel, per_task: int = 8, seed: int = 0) -> Inputs:
    """``per_task`` random (obs, action) rows per task, drawn as the golden model I/O files draw them
    (per task: ``standard_normal((n, obs_dim))`` then ``uniform(-1, 1, (n, action_dim))``, zero-padded):
    for MT30 and seed 0 these are exactly the inputs of ``shared/golden/model_io_seed0.npz``."""
    rng = np.random.default_rng(seed)
    ts, c = model.cfg.tasks, model.cfg
    obs = np.zeros((len(ts.tasks), per_task, c.obs_dim), np.float32)
    act = np.zeros((len(ts.tasks), per_task, c.action_dim), np.float32)
    for k, (od, ad) in enumerate(zip(ts.obs_dims, ts.action_dims)):
        obs[k, :, :od] = rng.standard_normal((per_task, od))
        act[k, :, :ad] = rng.uniform(-1, 1, (per_task, ad))
    task = torch.arange(len(ts.tasks)).repeat_interleave(per_task)
    return torch.from_numpy(obs.reshape(-1, c.obs_dim)), torch.from_numpy(act.reshape(-1, c.action_dim)), task


@torch.no_grad()
def predictions(model: WorldModel, obs: torch.Tensor, action: torch.Tensor, task: torch.Tensor) -> dict[str, torch.Tensor]:
    """reward, Q of every head, next latent and policy mean for ``(obs, action, task)`` rows (z from obs)."""
    c = model.cfg
    z = model.encode(obs, task)
    return {"reward": math.two_hot_inv(model.reward(z, action, task), c.vmin, c.vmax),
            "q": math.two_hot_inv(model.Q(z, action, task, "all"), c.vmin, c.vmax),
            "next_z": model.next(z, action, task),
            "pi_mean": model.pi(z, task, torch.Generator().manual_seed(0))[1]["mean"]}


def prediction_errors(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max absolute error per prediction (``err_reward``, ``err_q``, ``err_next_z``, ``err_pi_mean``)."""
    return {f"err_{k}": (out[k] - ref[k]).abs().max().item() for k in ref}


def relative_errors(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, float]:
    """RMS(error) / RMS(reference) per prediction, in percent (``rel_reward``, ``rel_q``, ...)."""
    return {f"rel_{k}": 100 * ((out[k] - ref[k]).pow(2).mean() / ref[k].pow(2).mean().clamp(min=1e-12)).sqrt().item()
            for k in ref}


def _relative_rms(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> float:
    """Mean over predictions of RMS(error) / RMS(reference): one unitless sensitivity score."""
    return float(np.mean(list(relative_errors(ref, out).values()))) / 100


@torch.no_grad()
def layer_sensitivity(model: WorldModel, inputs: Inputs | None = None) -> pd.DataFrame:
    """Quantize one layer at a time to int8 (per channel) and measure the prediction errors on ``inputs``
    (default :func:`calibration_inputs`). Sorted by ``score`` (mean relative RMS error), most sensitive first."""
    m = copy.deepcopy(model).eval()
    inputs = inputs or calibration_inputs(m)
    ref = predictions(m, *inputs)
    rows = []
    for name in matmul_layers(m):
        layer = m.get_submodule(name)
        w = layer.weight.data.clone()
        layer.weight.data = dequantize_per_channel(*quantize_per_channel(w))
        out = predictions(m, *inputs)
        layer.weight.data = w
        rows.append({"layer": name, "params": w.numel(), "score": _relative_rms(ref, out), **prediction_errors(ref, out)})
    return pd.DataFrame(rows).sort_values("score", ascending=False, ignore_index=True)


def tensor_bytes(sd: dict) -> int:
    """Bytes of the tensors of a state dict (qint8 / int8 count 1 byte per element)."""
    return sum(v.numel() * v.element_size() for v in sd.values() if isinstance(v, torch.Tensor))


def mixed_plan(model: WorldModel, budget_mib: float | None = None,
               inputs: Inputs | None = None) -> tuple[list[str], pd.DataFrame]:
    """Layers to keep in fp16 besides :func:`observation_layers` (fp16 in every int8 scheme): the most
    sensitive first, each kept if the full checkpoint's tensor bytes stay within ``budget_mib`` (default
    ``MIXED_BUDGET_RATIO`` × the fp16 size). Returns (layers, sensitivity with an ``fp16`` column)."""
    sens = layer_sensitivity(model, inputs)
    budget = budget_mib * MiB if budget_mib is not None else MIXED_BUDGET_RATIO * tensor_bytes(quantize_state(model, "fp16"))
    base = observation_layers(model)
    keep: list[str] = []
    for name in sens["layer"]:
        if name not in base and tensor_bytes(quantize_state(model, "mixed", keep + [name])) <= budget:
            keep.append(name)
    sens["fp16"] = sens["layer"].isin(keep + base)
    return keep, sens


# ------------------------------------------------------------------------------ sizes and the table
def deploy_path(path: str | os.PathLike) -> Path:
    """Where :func:`write_variant` puts the deployable file of ``path``: ``<stem>-deploy<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-deploy{path.suffix}")


def write_variant(model: WorldModel, scheme: str, path: str | os.PathLike, fp16_layers: list[str] | None = None,
                  inputs: Inputs | None = None, hessians: dict[str, torch.Tensor] | None = None) -> dict:
    """Write a scheme's full file at ``path`` and its deployable file (no target Qs) at :func:`deploy_path`
    (``hessians`` as in :func:`quantized_checkpoint`, measured once for both).

    Returns sizes in MiB: on disk (``full_mib``, ``deployable_mib``) and tensor bytes (``*_tensor_mib``).
    """
    if scheme == "mixed" and fp16_layers is None:
        fp16_layers = mixed_plan(model, inputs=inputs)[0]
    if _calibrated(scheme) and hessians is None:
        hessians = calibration_hessians(model)
    row: dict = {"scheme": scheme}
    for kind, p, deployable in (("full", Path(path), False), ("deployable", deploy_path(path), True)):
        obj = save_quantized(model, scheme, p, deployable, fp16_layers, hessians=hessians)
        row[f"{kind}_mib"] = p.stat().st_size / MiB
        row[f"{kind}_tensor_mib"] = tensor_bytes(obj["model"]) / MiB
        row[f"{kind}_path"] = str(p)
    return row


def load_variant(path: str | os.PathLike, scheme: str, model_cfg: ModelConfig) -> WorldModel:
    """Load a file written for ``scheme``: paper recipes via load_checkpoint, ours via :func:`load_quantized`."""
    if scheme in PAPER_RECIPES:
        return load_checkpoint(path, task_set=list(model_cfg.tasks.tasks))
    return load_quantized(path)


def planning_latency_ms(model: WorldModel, planner_cfg=None, steps: int = 10, compile: bool = False) -> float:
    """Median wall time (ms) of one :class:`~tdmpc_opt_lib.planner.Planner` action for one environment
    (eager unless ``compile``; compiling happens in the warm-up calls)."""
    planner = Planner(model, planner_cfg, seed=0, compile=compile)
    obs, task = torch.zeros(1, model.cfg.obs_dim), torch.zeros(1, dtype=torch.long)
    for t in range(3 if compile else 1):  # warm-up
        planner.plan(obs, task, t0=t == 0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        planner.plan(obs, task)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def forward_latency_ms(model: WorldModel, inputs: Inputs, steps: int = 10) -> float:
    """Mean wall time (ms) of :func:`predictions` (all WorldModel heads, where int8-dynamic runs int8 matmuls)."""
    predictions(model, *inputs)
    start = time.perf_counter()
    for _ in range(steps):
        predictions(model, *inputs)
    return (time.perf_counter() - start) / steps * 1e3


def quantization_table(model: WorldModel, schemes: list[str] | tuple[str, ...] = SCHEMES,
                       out_dir: str | os.PathLike = "quantized", eval_kwargs: dict | None = None,
                       inputs: Inputs | None = None, latency_steps: int = 10, held_out: Inputs | None = None,
                       return_episodes: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame | None]:
    """Write, reload and measure each scheme; one row per scheme.

    Columns: sizes (:func:`write_variant`), max prediction errors (``err_*``) of the reloaded model vs
    ``model`` on ``inputs`` (default :func:`calibration_inputs`), relative RMS errors in % (``rel_*``) on
    real observations ``held_out`` (default: :func:`calibration_rollouts` of seed 1, apart from the seed-0
    rollouts GPTQ calibrates on), and, when ``eval_kwargs`` is given (keyword arguments
    of :func:`~tdmpc_opt_lib.evaluation.evaluate`), ``score`` (normalized score), ``plan_ms`` (Planner
    latency per action, with ``eval_kwargs["planner_cfg"]``) and ``forward_ms`` (:func:`forward_latency_ms`);
    with ``return_episodes`` it returns ``(table, per-episode results of all schemes with a scheme column)``.
    """
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown schemes {unknown}; known: {', '.join(SCHEMES)}")
    inputs = inputs or calibration_inputs(model)
    ref = predictions(copy.deepcopy(model).eval(), *inputs)
    held_out = held_out or calibration_rollouts(model, steps=40, seed=1)
    ref_held = predictions(copy.deepcopy(model).eval(), *held_out)
    hessians = calibration_hessians(model) if any(map(_calibrated, schemes)) else None
    out_dir = Path(out_dir)
    rows, episodes = [], []
    for scheme in schemes:
        row = write_variant(model, scheme, out_dir / f"{scheme}.pt", inputs=inputs, hessians=hessians)
        loaded = load_variant(row["full_path"], scheme, model.cfg)
        row.update(prediction_errors(ref, predictions(loaded, *inputs)))
        row.update(relative_errors(ref_held, predictions(loaded, *held_out)))
        if eval_kwargs is not None:
            episodes.append(evaluate(loaded, **eval_kwargs).assign(scheme=scheme))
            row["score"] = normalized_score(episodes[-1])
            row["plan_ms"] = planning_latency_ms(loaded, eval_kwargs.get("planner_cfg"), latency_steps)
            row["forward_ms"] = forward_latency_ms(loaded, inputs, latency_steps)
        rows.append(row)
    table = pd.DataFrame(rows)
    if return_episodes:
        return table, pd.concat(episodes, ignore_index=True) if episodes else None
    return table


RECORDED_COLUMNS = ("scheme", "protocol", "full_mib", "deployable_mib", "score", "plan_ms")


def recorded_table(path: str | os.PathLike) -> pd.DataFrame | None:
    """A summary written by ``benchmarks/quantized_mpc.py`` (None when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    if missing := [c for c in RECORDED_COLUMNS if c not in table.columns]:
        raise ValueError(f"{path}: not a quantization summary, missing columns {missing}")
    if unknown := sorted(set(table["scheme"]) - set(SCHEMES)):
        raise ValueError(f"{path}: unknown schemes {unknown}")
    return table


def paired_difference(df: pd.DataFrame, ref: pd.DataFrame) -> tuple[float, float]:
    """Normalized-score difference of per-episode results ``df`` to ``ref`` (same tasks, episodes, seeds) and
    its standard error over tasks: the per-task mean differences are the paired samples."""
    per_task = (df.groupby("task")["score"].mean() - ref.groupby("task")["score"].mean()).dropna()
    return float(per_task.mean()), float(per_task.std(ddof=1) / np.sqrt(len(per_task)))


def pooled_runs(runs: str | os.PathLike, schemes: list[str] | tuple[str, ...] = ("int8",),
                seeds: list[int] | None = None) -> pd.DataFrame:
    """fp16 and ``schemes`` with the per-episode results of several seeds pooled (``released_<scheme>_mpc_seed<S>.csv``
    in ``runs``, written by ``benchmarks/quantized_mpc.py``): score and paired gap to fp16 (± s.e.). Only the
    seeds of ``seeds`` (None: any) that every scheme and fp16 have are used, so the comparison stays paired."""
    runs = Path(runs)
    names = ["fp16", *[s for s in schemes if s != "fp16"]]
    found = sorted({int(f.stem.rsplit("seed", 1)[1]) for f in runs.glob("released_fp16_mpc_seed*.csv")})
    have = [s for s in (found if seeds is None else seeds)
            if all((runs / f"released_{k}_mpc_seed{s}.csv").is_file() for k in names)]
    if not have:
        raise FileNotFoundError(f"no seed of {seeds if seeds is not None else found} has per-episode CSVs "
                                f"for {names} in {runs}")
    frames = {k: pd.concat([pd.read_csv(runs / f"released_{k}_mpc_seed{s}.csv") for s in have], ignore_index=True)
              for k in names}
    rows = []
    for k, df in frames.items():
        gap, se = paired_difference(df, frames["fp16"]) if k != "fp16" else (float("nan"), float("nan"))
        rows.append({"scheme": k, "seeds": ",".join(map(str, have)), "episodes": len(df),
                     "score": normalized_score(df), "vs_fp16": gap, "vs_fp16_se": se})
    return pd.DataFrame(rows)


def recorded_pooled(runs: str | os.PathLike) -> pd.DataFrame | None:
    """One row per scheme of this library or the paper recorded in ``runs`` by ``benchmarks/quantized_mpc.py``:
    all its seeds pooled and compared with fp16 on those seeds (:func:`pooled_runs`; ``fp16_same_seeds``: fp16's
    score there), with the sizes and
    planning latency of the highest seed's summary (``quantization_released_mpc_seed<S>.csv``) that has it.
    None when nothing is recorded."""
    runs = Path(runs)
    summaries = sorted(((int(f.stem.rsplit("seed", 1)[1]), recorded_table(f))
                        for f in runs.glob("quantization_released_mpc_seed*.csv")), key=lambda st: st[0])
    latest = {row.scheme: row for _, table in summaries for row in table.itertuples()}
    rows = []
    for scheme in SCHEMES:
        if scheme not in latest or not any(runs.glob(f"released_{scheme}_mpc_seed*.csv")):
            continue
        fp16, pooled = pooled_runs(runs, [scheme]).iloc[[0, -1]].itertuples()
        rows.append({"scheme": scheme, "protocol": f"MPPI, seeds {pooled.seeds}, {pooled.episodes} episodes",
                     "full_mib": latest[scheme].full_mib, "deployable_mib": latest[scheme].deployable_mib,
                     "score": pooled.score, "plan_ms": latest[scheme].plan_ms, "fp16_same_seeds": fp16.score,
                     "vs_fp16": pooled.vs_fp16, "vs_fp16_se": pooled.vs_fp16_se})
    return pd.DataFrame(rows) if rows else None


# ------------------------------------------------------------------------------ command line
def _cli(args: argparse.Namespace) -> None:
    if args.export_safetensors and args.scheme not in OUR_SCHEMES:
        raise ValueError(f"--export-safetensors needs a scheme of this library ({', '.join(OUR_SCHEMES)}): "
                         "the paper recipes store torch quantized tensors, which safetensors cannot hold")
    model = load_checkpoint(args.checkpoint, task_set=args.task_set)
    fp16_layers = None
    if args.scheme == "mixed":
        fp16_layers, sens = mixed_plan(model, args.budget_mib)
        print(sens[["layer", "params", "score", "fp16"]].to_string(index=False))
    hessians = None
    if _calibrated(args.scheme):
        hessians = {} if args.rounding == "nearest" else calibration_hessians(model)
    row = write_variant(model, args.scheme, args.out, fp16_layers, hessians=hessians)
    for kind in ("full", "deployable"):
        print(f"{args.scheme} {kind:<10} {row[f'{kind}_mib']:7.3f} MiB on disk, "
              f"{row[f'{kind}_tensor_mib']:7.3f} MiB of tensors -> {row[f'{kind}_path']}")
    if args.export_safetensors:
        out = export_safetensors(model, args.scheme, args.export_safetensors, fp16_layers, hessians=hessians)
        size = sum(f.stat().st_size for f in out.iterdir()) / MiB
        print(f"safetensors export {size:7.3f} MiB on disk -> {out}")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``quantize`` to the ``python -m tdmpc_opt_lib`` command line."""
    p = subparsers.add_parser("quantize", help="write a quantized checkpoint (paper recipes or post-training quantization)")
    p.add_argument("--checkpoint", required=True, help="float or released checkpoint (anything load_checkpoint reads)")
    p.add_argument("--scheme", required=True, choices=SCHEMES)
    p.add_argument("--out", required=True, help="full file; the deployable one (no target Qs) is written as <stem>-deploy<suffix>")
    p.add_argument("--export-safetensors", default=None, metavar="DIR", help="also write a safetensors inference export")
    p.add_argument("--budget-mib", type=float, default=None, help="mixed: tensor-size budget of the full file "
                   f"(default {MIXED_BUDGET_RATIO:.3f} x the fp16 size)")
    p.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="int8 schemes: GPTQ on calibration rollouts in the model's environments (default), "
                   "or round to nearest (no environments needed)")
    p.add_argument("--task-set", default=None, help="task set of a public checkpoint (default mt30)")
    p.set_defaults(func=_cli)
