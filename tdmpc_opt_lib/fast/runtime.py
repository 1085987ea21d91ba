"""Process-level settings that make the CPU hot paths (training updates, planning calls) fast."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

import torch

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3      # glibc mallopt parameters (malloc.h)
SETTINGS = {M_MMAP_THRESHOLD: 1 << 25, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 1 << 28}
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    A training update or a planning call allocates and frees the same few-MB activations hundreds of
    times; with glibc's defaults the heap is trimmed and regrown, every regrowth touching fresh pages.
    With a 1 GiB trim threshold and a 256 MiB top pad, 30 size-1 updates at batch 256 took 232k instead
    of ~600k page faults and ran 10-20 % faster (benchmarks/bench_train.py). Freed memory stays resident
    up to the run's peak. Process-wide and idempotent; a no-op (returns False) off Linux/glibc or when
    ``TDMPC_OPT_MALLOC=0``."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and os.environ.get("TDMPC_OPT_MALLOC", "1") != "0":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _applied = all([libc.mallopt(k, v) for k, v in SETTINGS.items()])
            except (OSError, AttributeError):     # musl or another libc without mallopt
                _applied = False
    return _applied


_onednn_exact: bool | None = None
_onednn_active = False


def onednn_matmul_active() -> bool:
    """Whether :func:`onednn_fp32_matmul` is routing float32 matmuls to oneDNN right now."""
    return _onednn_active


def onednn_matmul_is_fp32() -> bool:
    """Whether float32 matmuls routed to oneDNN (``fp32_precision = "bf16"``) still compute in float32 here
    (measured on the first call, ~0.1 s; cached).

    ``"bf16"`` allows oneDNN to round the inputs to bfloat16. On our AMD EPYC (AVX-512 BF16, no AMX) it runs its
    float32 brgemm kernels anyway. Checked, not assumed: products of the training shapes'
    sizes must agree with float64 to float32 rounding (bfloat16 inputs miss by ~1e-3)."""
    global _onednn_exact
    if _onednn_exact is not None:
        return _onednn_exact
    _onednn_exact = _probe_onednn_matmul()
    return _onednn_exact


def _probe_onednn_matmul() -> bool:
    gen = torch.Generator().manual_seed(0)
    prev = torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        for m, k, n in ((768, 384, 384), (256, 134, 101), (1024, 128, 384)):
            a = torch.randn(2, m, k, generator=gen)
            b = torch.randn(2, n, k, generator=gen).transpose(1, 2)
            for got, want in ((torch.bmm(a, b), a.double() @ b.double()),
                              (torch.mm(a[0], b[0]), a[0].double() @ b[0].double()),
                              (torch.mm(a[1].t(), a[0]), a[1].t().double() @ a[0].double())):
                if ((got.double() - want).abs().max() / want.abs().max()).item() > 1e-5:
                    return False
        return True
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = prev


@contextlib.contextmanager
def onednn_fp32_matmul() -> Iterator[bool]:
    """Route CPU float32 matmuls through oneDNN meanwhile, where that keeps them float32 (yields whether it does).

    Torch sends float32 matmuls to MKL. On our 2-core AMD EPYC (AVX-512), oneDNN's brgemm kernels ran the
    training's products 5-20 % faster than MKL's (a size-1 update at batch 256: ×1.05). Torch only routes
    float32 matmuls to oneDNN when it may use reduced precision (``torch.backends.mkldnn.matmul.fp32_precision
    = "bf16"``), so this is switched on only where :func:`onednn_matmul_is_fp32` found the results exact to
    float32 rounding, and only while no other precision has been chosen.
    ``TDMPC_OPT_ONEDNN=0`` turns it off."""
    mkldnn = torch.backends.mkldnn
    if os.environ.get("TDMPC_OPT_ONEDNN", "1") == "0" or not mkldnn.is_available() or \
            mkldnn.matmul.fp32_precision not in ("none", "ieee") or not onednn_matmul_is_fp32():
        yield False
        return
    global _onednn_active
    prev, prev_active = mkldnn.matmul.fp32_precision, _onednn_active
    mkldnn.matmul.fp32_precision, _onednn_active = "bf16", True
    try:
        yield True
    finally:
        mkldnn.matmul.fp32_precision, _onednn_active = prev, prev_active
