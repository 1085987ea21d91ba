"""The speed layer: everything that makes training and planning fast, none of it needed to read the algorithm.

Entry points switch it on explicitly (``train``, ``evaluate``, the benchmarks):

- :func:`accelerate` — the same model with the task embedding folded into the first layers (:mod:`.fold`) and
  fused LayerNorm+activation kernels (:mod:`.fused`, C kernels on CPU: :mod:`.kernels`);
- :func:`cpu_runtime` — process settings for the CPU hot paths (:mod:`.runtime`): float32 matmuls through
  oneDNN where a probe finds them exact, and glibc's malloc keeping freed memory (a no-op off the CPU);
- :func:`lowered_precision` — the frozen teacher's forward in TF32/bf16 on CUDA (:mod:`.precision`);
- :class:`.graphs.CapturedUpdate` — a training update captured once as a CUDA graph and replayed.

On CUDA the fused layers run ``torch.compile``'d kernels instead of the C ones, dropout draws one number per
element, and nothing of :mod:`.runtime` is touched.

Every piece computes what the plain model computes, to float rounding, and has a switch: ``TDMPC_OPT_COMPILE=0``
(no acceleration at the entry points), ``TDMPC_OPT_CKERNELS=0``, ``TDMPC_OPT_ONEDNN=0``, ``TDMPC_OPT_MALLOC=0``.
Measured gains are in ``docs/performance.md``.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator

import torch

from ..world_model import WorldModel
from .fused import FUSED
from .precision import lowered_precision, precision_within_tolerance
from .runtime import keep_freed_memory, onednn_fp32_matmul
from .world_model import FastWorldModel

__all__ = ["FastWorldModel", "accelerate", "cpu_runtime", "lowered_precision", "precision_within_tolerance"]


def accelerate(model: WorldModel) -> FastWorldModel:
    """A :class:`FastWorldModel` over the same parameter and buffer tensors as ``model`` (which stays as it is):
    updating weights in place (training, ``load_state_dict``) changes both. Module state is copied, not shared:
    call it after ``.to(device)`` and quantization; train/eval modes are set on each. Layers of other types
    (quantized ones) are kept as they are."""
    if isinstance(model, FastWorldModel):
        return model
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    fast = copy.deepcopy(model, memo=shared)
    fast.__class__ = FastWorldModel
    for mod in fast.modules():
        if type(mod) in FUSED:
            mod.__class__ = FUSED[type(mod)]
    return fast


@contextlib.contextmanager
def cpu_runtime(device: torch.device | str = "cpu") -> Iterator[None]:
    """Meanwhile, CPU float32 matmuls go through oneDNN where that keeps them float32 (×1.05 per training update,
    ×1.07-1.09 per planning call on the 2-core CPU), and freed memory is kept for reuse (process-wide, once:
    10-20 % faster updates). A no-op for other devices."""
    if torch.device(device).type != "cpu":
        yield
        return
    keep_freed_memory()
    with onednn_fp32_matmul():
        yield
