"""Quantized files: writing every scheme (full file and deployable twin), the safetensors export, and reading
our quantized files back (for :func:`~tdmpc_opt_lib.checkpoints.load_checkpoint`, the one loader).

Paper recipes write ``{"model": sd}`` as the released files are. Our schemes write ``{"model", "config",
"format", "quantized": scheme, "deployable", ...}`` with our module names. A deployable file has no target Qs
(they only matter for training; loading copies them from the online Qs). The safetensors export is a folder
(``model.safetensors`` with the deployable tensors, ``config.json`` with the rest), without pickle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..checkpoints import (FORMAT, CheckpointError, atomic_file, atomic_save, atomic_write_text, build_model,
                           safetensors_digest, to_public)
from ..config import TaskSet
from ..world_model import WorldModel
from .calibration import Inputs, calibration_hessians
from .int8 import to_int8_dynamic
from .recipes import MiB, OUR_SCHEMES, PAPER_RECIPES, calibrated, dequantize_state, quantize_state, tensor_bytes


def resolve_defaults(model: WorldModel, scheme: str, fp16_layers: list[str] | None, inputs: Inputs | None,
                     hessians: dict[str, torch.Tensor] | None) -> tuple[list[str] | None, dict | None]:
    """``mixed`` without ``fp16_layers``: :func:`~tdmpc_opt_lib.quantize.analysis.mixed_plan` on ``inputs``;
    int8 schemes without ``hessians``: :func:`calibration_hessians` (``{}`` rounds to nearest)."""
    if scheme == "mixed" and fp16_layers is None:
        from .analysis import mixed_plan  # imported here: analysis writes its variants with this module
        fp16_layers = mixed_plan(model, inputs=inputs)[0]
    if calibrated(scheme) and hessians is None:
        hessians = calibration_hessians(model)
    return fp16_layers, hessians


def quantized_checkpoint(model: WorldModel, scheme: str, deployable: bool = False,
                         fp16_layers: list[str] | None = None, inputs: Inputs | None = None,
                         hessians: dict[str, torch.Tensor] | None = None) -> dict:
    """The object a scheme's file holds (defaults of ``fp16_layers`` and ``hessians``: :func:`resolve_defaults`)."""
    if scheme in PAPER_RECIPES:
        sd = {k: v.detach().cpu() for k, v in to_public(model, "old").items()
              if not (deployable and k.startswith("_target_Qs."))}
        return {"model": PAPER_RECIPES[scheme](sd)}
    fp16_layers, hessians = resolve_defaults(model, scheme, fp16_layers, inputs, hessians)
    obj = {"model": quantize_state(model, scheme, fp16_layers or (), deployable, hessians),
           "config": model.cfg.to_dict(), "format": FORMAT, "quantized": scheme, "deployable": deployable}
    if scheme == "mixed":
        obj["fp16_layers"] = list(fp16_layers)
    if calibrated(scheme):
        obj["rounding"] = "gptq" if hessians else "nearest"
    return obj


def save_quantized(model: WorldModel, scheme: str, path: str | os.PathLike, deployable: bool = False,
                   fp16_layers: list[str] | None = None, inputs: Inputs | None = None,
                   hessians: dict[str, torch.Tensor] | None = None) -> dict:
    """Write a scheme's file atomically; returns what was written."""
    obj = quantized_checkpoint(model, scheme, deployable, fp16_layers, inputs, hessians)
    atomic_save(obj, path)
    return obj


def save_paper(sd: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a paper recipe's output as the release files are: ``{"model": sd}``."""
    atomic_save({"model": sd}, path)


def deploy_path(path: str | os.PathLike) -> Path:
    """Where :func:`write_variant` puts the deployable file of ``path``: ``<stem>-deploy<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-deploy{path.suffix}")


def write_variant(model: WorldModel, scheme: str, path: str | os.PathLike, fp16_layers: list[str] | None = None,
                  inputs: Inputs | None = None, hessians: dict[str, torch.Tensor] | None = None) -> dict:
    """Write a scheme's full file at ``path`` and its deployable file (no target Qs) at :func:`deploy_path`
    (defaults resolved once for both, :func:`resolve_defaults`).

    Returns sizes in MiB: on disk (``full_mib``, ``deployable_mib``) and tensor bytes (``*_tensor_mib``).
    """
    fp16_layers, hessians = resolve_defaults(model, scheme, fp16_layers, inputs, hessians)
    row: dict = {"scheme": scheme}
    for kind, p, deployable in (("full", Path(path), False), ("deployable", deploy_path(path), True)):
        obj = save_quantized(model, scheme, p, deployable, fp16_layers, hessians=hessians)
        row[f"{kind}_mib"] = p.stat().st_size / MiB
        row[f"{kind}_tensor_mib"] = tensor_bytes(obj["model"]) / MiB
        row[f"{kind}_path"] = str(p)
    return row


def export_safetensors(model: WorldModel, scheme: str, out_dir: str | os.PathLike,
                       fp16_layers: list[str] | None = None, inputs: Inputs | None = None,
                       hessians: dict[str, torch.Tensor] | None = None) -> Path:
    """Inference export without pickle: ``model.safetensors`` (deployable tensors as the ``.pt`` file stores them)
    and ``config.json`` (config, scheme); read back by :func:`~tdmpc_opt_lib.checkpoints.load_checkpoint`."""
    from safetensors.torch import save

    if scheme not in OUR_SCHEMES:
        raise ValueError(f"safetensors export supports {', '.join(OUR_SCHEMES)}; the paper recipes store "
                         "torch quantized tensors, which safetensors cannot hold")
    obj = quantized_checkpoint(model, scheme, deployable=True, fp16_layers=fp16_layers, inputs=inputs,
                               hessians=hessians)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "model.safetensors") as f:      # a kill never leaves a torn tensor file
        f.write(save({k: v.contiguous() for k, v in obj["model"].items()}))
    config = {k: v for k, v in obj.items() if k != "model"}
    config["sha256"] = safetensors_digest(out / "model.safetensors", config)
    atomic_write_text(out / "config.json", json.dumps(config, indent=1))
    return out


def model_from_quantized(obj: dict, path: Path, task_set: str | TaskSet | list[str] | None = None,
                         model_size: int | None = None) -> WorldModel:
    """The :class:`WorldModel` of a quantized file or export of ours (read by ``read_file`` /
    ``read_safetensors``): weights dequantized to float32, or int8 layers for ``int8-dynamic``; a deployable
    file gets target Qs copied from the online Qs."""
    scheme = obj["quantized"]
    if scheme not in OUR_SCHEMES:
        raise CheckpointError(f"{path}: unknown quantization scheme {scheme!r} (known: {', '.join(OUR_SCHEMES)})")
    sd = dequantize_state(obj["model"])
    if not any(k.startswith("_target_Qs.") for k in sd):
        sd.update({f"_target_Qs.{k[4:]}": v.clone() for k, v in sd.items() if k.startswith("_Qs.")})
    model = build_model(sd, obj["config"], path, task_set, model_size)
    return to_int8_dynamic(model, obj["model"]) if scheme == "int8-dynamic" else model
