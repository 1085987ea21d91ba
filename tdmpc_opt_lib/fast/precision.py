"""The frozen teacher's forward in a lower precision on CUDA (TF32 matmuls or bfloat16 autocast), only where it
stays close to float32.

TOLERANCE: the largest change allowed on a batch, against the float32 forward, of the teacher's expected reward
(absolute, in reward units; MT30 rewards per agent step lie in [0, 2]) and of its latents (SimNorm outputs in
[0, 1]). :func:`precision_within_tolerance` measures it on the run's first batch.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .. import math
from ..world_model import WorldModel

PRECISIONS = ("fp32", "tf32", "bf16")
TOLERANCE = 1e-2


@contextlib.contextmanager
def lowered_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """Meanwhile, float32 work on ``device`` runs in ``precision``: 'fp32' (unchanged), 'tf32' (CUDA matmuls with
    TF32 inputs) or 'bf16' (autocast to bfloat16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "fp32":
        yield
    elif precision == "bf16":
        with torch.autocast(kind, dtype=torch.bfloat16):
            yield
    else:
        if kind != "cuda":
            raise ValueError("tf32 applies to CUDA matmuls only")
        matmul = torch.backends.cuda.matmul
        prev = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = prev


@torch.no_grad()
def teacher_precision_error(teacher: WorldModel, obs: torch.Tensor, action: torch.Tensor, task: torch.Tensor,
                            precision: str) -> dict[str, float]:
    """Largest absolute change of the teacher's expected reward and of its latents (``obs``, ``action`` one
    step, ``task`` per row) in ``precision`` against float32."""
    def forward():
        z = teacher.encode(obs, task).float()
        r = math.two_hot_inv(teacher.reward(z, action, task).float(), teacher.cfg.vmin, teacher.cfg.vmax)
        return z, r, teacher.next(z, action, task).float()

    ref = forward()
    with lowered_precision(precision, obs.device):
        low = forward()
    return {"reward": float((low[1] - ref[1]).abs().max()),
            "latent": float(max((a - b).abs().max() for a, b in ((low[0], ref[0]), (low[2], ref[2]))))}


def precision_within_tolerance(teacher: WorldModel, batch: dict[str, torch.Tensor], precision: str,
                               tolerance: float = TOLERANCE) -> tuple[bool, dict[str, float]]:
    """Whether the teacher's forward in ``precision`` on ``batch``'s first step stays within ``tolerance``."""
    if precision == "fp32":
        return True, {"reward": 0.0, "latent": 0.0}
    err = teacher_precision_error(teacher, batch["obs"][0], batch["action"][0], batch["task"], precision)
    return max(err.values()) <= tolerance, err
