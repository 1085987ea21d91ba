"""Hand-written C kernels for the CPU training hot path: LayerNorm + Mish / SimNorm, forward and backward.

Compiled on first use with the system C compiler (the one ``torch.compile`` needs too) into a small shared
library cached per source and CPU (``$TDMPC_OPT_KERNEL_CACHE``, default ``~/.cache/tdmpc_opt``), and called
through ctypes: ~10 µs per call instead of the ~100 µs a dynamo-guarded compiled function costs, and the
LayerNorm parameter gradients are summed inside the backward kernel. ``TDMPC_OPT_CKERNELS=0`` turns them off
(the layers then use their ``torch.compile``'d kernels). Float32 CPU tensors only; the layers check.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The parameter row (weight, bias, pre_bias) of row r is r / rows_per_group. */

/* exp(x), x clamped to [-87, 88]: x = k·ln2 + r (Cody-Waite, |r| <= ln2/2), e^r by its degree-6 Taylor
   polynomial, 2^k put into the exponent bits. ~2e-7 relative error (glibc's expf: 6e-8); plain arithmetic,
   so that loops calling it vectorise inline (libmvec's expf is a call per vector: ~45 % of the Mish kernel). */
static inline float fast_exp(float x) {
    x = fminf(fmaxf(x, -87.f), 88.f);
    float k = floorf(fmaf(x, 1.44269504f, 0.5f));
    float r = fmaf(k, -0.693145752f, x);
    r = fmaf(k, -1.42860677e-6f, r);
    float p = 1.f / 720;
    p = fmaf(p, r, 1.f / 120);
    p = fmaf(p, r, 1.f / 24);
    p = fmaf(p, r, 1.f / 6);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.f);
    p = fmaf(p, r, 1.f);
    union { float f; int i; } u = {p};
    u.i += (int)k << 23;
    return u.f;
}

/* softmax within each group of g consecutive features of o [D], in place; mx [D] is scratch */
static inline void simnorm_forward(float *o, float *mx, long D, long g) {
    for (long s = 0; s < D; s += g) {
        float m = o[s];
        for (long j = 1; j < g; j++) m = fmaxf(m, o[s + j]);
        for (long j = 0; j < g; j++) mx[s + j] = m;
    }
#pragma omp simd
    for (long j = 0; j < D; j++) o[j] = fast_exp(o[j] - mx[j]);
    for (long s = 0; s < D; s += g) {
        float sum = 0.f;
        for (long j = 0; j < g; j++) sum += o[s + j];
        float inv = 1.f / sum;
        for (long j = 0; j < g; j++) o[s + j] *= inv;
    }
}

/* u = (y + pre_bias)·scale of one row (either may be NULL) → its mean; u is written */
static inline float load_row(const float *yr, const float *pb, const float *sc, float *u, long D) {
    float s1 = 0.f;
    if (pb && sc) {
#pragma omp simd reduction(+:s1)
        for (long j = 0; j < D; j++) { u[j] = (yr[j] + pb[j]) * sc[j]; s1 += u[j]; }
    } else if (pb) {
#pragma omp simd reduction(+:s1)
        for (long j = 0; j < D; j++) { u[j] = yr[j] + pb[j]; s1 += u[j]; }
    } else if (sc) {
#pragma omp simd reduction(+:s1)
        for (long j = 0; j < D; j++) { u[j] = yr[j] * sc[j]; s1 += u[j]; }
    } else {
#pragma omp simd reduction(+:s1)
        for (long j = 0; j < D; j++) { u[j] = yr[j]; s1 += u[j]; }
    }
    return s1 / D;
}

void ln_act_forward(const float *y, const float *pre_bias, const float *scale, const float *weight,
                    const float *bias, float *out, float *mean, float *rstd, long rows, long D,
                    long rows_per_group, long simnorm, int threads) {
    float *scratch = simnorm ? malloc((size_t)threads * D * sizeof(float)) : NULL;
#pragma omp parallel num_threads(threads)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *mx = scratch ? scratch + (size_t)t * D : NULL;
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            long p = (r / rows_per_group) * D;
            const float *w = weight + p, *b = bias + p;
            float *u = out + r * D;
            float mu = load_row(y + r * D, pre_bias ? pre_bias + p : NULL, scale ? scale + r * D : NULL, u, D);
            float s2 = 0.f;
#pragma omp simd reduction(+:s2)
            for (long j = 0; j < D; j++) { float d = u[j] - mu; s2 += d * d; }
            float rs = 1.f / sqrtf(s2 / D + 1e-5f);
            if (simnorm) {
#pragma omp simd
                for (long j = 0; j < D; j++) u[j] = (u[j] - mu) * rs * w[j] + b[j];
                simnorm_forward(u, mx, D, simnorm);
            } else {
#pragma omp simd
                for (long j = 0; j < D; j++) {                  /* Mish: o·n/(n+2), n = eᵒ(eᵒ+2) */
                    float o = (u[j] - mu) * rs * w[j] + b[j], e = fast_exp(fminf(o, 20.f)), n = e * (e + 2.f);
                    u[j] = o * n / (n + 2.f);
                }
            }
            mean[r] = mu;
            rstd[r] = rs;
        }
    }
    free(scratch);
}

/* gy = d/dy; gw, gb, gpb ([groups, D], may be NULL): sums over each group's rows of go·x̂, go and gy. */
void ln_act_backward(const float *g, const float *y, const float *pre_bias, const float *scale,
                     const float *weight, const float *bias, const float *mean, const float *rstd, float *gy,
                     float *gw, float *gb, float *gpb, long rows, long D, long rows_per_group, long simnorm,
                     int threads) {
    long groups = (rows + rows_per_group - 1) / rows_per_group, P = groups * D;
    int sums = gw || gb || gpb;
    float *acc = sums ? calloc((size_t)threads * 3 * P, sizeof(float)) : NULL;
    float *scratch = malloc((size_t)threads * 3 * D * sizeof(float));
#pragma omp parallel num_threads(threads)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        long lo = rows * t / nt, hi = rows * (t + 1) / nt;
        float *xh = scratch + (size_t)t * 3 * D, *go = xh + D, *mx = go + D;
        float *aw = sums ? acc + (size_t)t * 3 * P : NULL, *ab = aw ? aw + P : NULL, *ap = aw ? aw + 2 * P : NULL;
        for (long r = lo; r < hi; r++) {
            long p = (r / rows_per_group) * D;
            const float *gr = g + r * D, *w = weight + p, *b = bias + p, *sc = scale ? scale + r * D : NULL;
            float mu = mean[r], rs = rstd[r], a = 0.f, c = 0.f;
            load_row(y + r * D, pre_bias ? pre_bias + p : NULL, sc, xh, D);
            /* go = g·act'(o) at the pre-activation o = x̂·w + b; a, c: the means of go·w and go·w·x̂ */
            if (!simnorm) {
#pragma omp simd reduction(+:a, c)
                for (long j = 0; j < D; j++) {
                    /* mish'(o) = t + o·(1 - t²)·σ(o), t = n/d, d = n + 2, σ = e/(1+e); as 1 - t² = 4(1+e)²/d²:
                       mish'(o) = (n + 4·o·e·(1+e)/d) / d */
                    float x = (xh[j] - mu) * rs, o = x * w[j] + b[j];
                    float e = fast_exp(fminf(o, 20.f)), n = e * (e + 2.f), q = 1.f / (n + 2.f);
                    float h = gr[j] * q * (n + 4.f * o * e * (1.f + e) * q), gx = h * w[j];
                    xh[j] = x;
                    go[j] = h;
                    a += gx;
                    c += gx * x;
                }
            } else {
#pragma omp simd
                for (long j = 0; j < D; j++) {
                    xh[j] = (xh[j] - mu) * rs;
                    go[j] = xh[j] * w[j] + b[j];
                }
                simnorm_forward(go, mx, D, simnorm);
                for (long s = 0; s < D; s += simnorm) {
                    float dot = 0.f;
                    for (long j = 0; j < simnorm; j++) dot += gr[s + j] * go[s + j];
                    for (long j = 0; j < simnorm; j++) go[s + j] *= gr[s + j] - dot;
                }
#pragma omp simd reduction(+:a, c)
                for (long j = 0; j < D; j++) { float gx = go[j] * w[j]; a += gx; c += gx * xh[j]; }
            }
            a /= D;
            c /= D;
            float *gyr = gy + r * D;
            if (aw) {
                float *pw = aw + p, *pb = ab + p, *pq = ap + p;
#pragma omp simd
                for (long j = 0; j < D; j++) {
                    float v = rs * (go[j] * w[j] - a - xh[j] * c);
                    gyr[j] = sc ? v * sc[j] : v;
                    pw[j] += go[j] * xh[j];
                    pb[j] += go[j];
                    pq[j] += gyr[j];
                }
            } else {
#pragma omp simd
                for (long j = 0; j < D; j++) gyr[j] = rs * (go[j] * w[j] - a - xh[j] * c);
                if (sc) {
#pragma omp simd
                    for (long j = 0; j < D; j++) gyr[j] *= sc[j];
                }
            }
        }
    }
    if (sums) {
        for (long i = 0; i < P; i++) {
            float w = 0.f, b = 0.f, q = 0.f;
            for (int t = 0; t < threads; t++) { w += acc[t * 3 * P + i]; b += acc[t * 3 * P + P + i]; q += acc[t * 3 * P + 2 * P + i]; }
            if (gw) gw[i] = w;
            if (gb) gb[i] = b;
            if (gpb) gpb[i] = q;
        }
    }
    free(acc);
    free(scratch);
}
"""

# fast-math at compile time only: linking with it would pull in crtfastmath.o (GCC < 13), which switches
# the whole process to flush-denormals-to-zero
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
LINK_FLAGS = ["-shared", "-fopenmp"]
_lib: ctypes.CDLL | None | bool = None      # None: not tried yet; False: unavailable


def _cpu_fingerprint() -> str:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def compiler() -> str | None:
    """``$CC``, else gcc or cc from PATH."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _build(cache: Path) -> Path:
    """Compile :data:`SOURCE` into ``cache`` (atomically: concurrent builders do not clash) and return the path."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    key = hashlib.sha256("\0".join([SOURCE, cc, *COMPILE_FLAGS, *LINK_FLAGS, _cpu_fingerprint()]).encode()).hexdigest()[:16]
    so = cache / f"ln_act_{key}.so"
    if so.exists():
        return so
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        c, o, out = Path(tmp, "ln_act.c"), Path(tmp, "ln_act.o"), Path(tmp, "ln_act.so")
        c.write_text(SOURCE)
        for cmd in ([cc, *COMPILE_FLAGS, "-c", str(c), "-o", str(o)], [cc, *LINK_FLAGS, str(o), "-o", str(out), "-lm"]):
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed: {run.stderr.strip()[-400:]}")
        os.replace(out, so)
    return so


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, or no working compiler: warned once)."""
    global _lib
    if _lib is None:
        _lib = False
        if os.environ.get("TDMPC_OPT_CKERNELS", "1") != "0":
            cache = Path(os.environ.get("TDMPC_OPT_KERNEL_CACHE", Path.home() / ".cache" / "tdmpc_opt"))
            try:
                lib = ctypes.CDLL(str(_build(cache)))
            except (OSError, RuntimeError) as e:
                warnings.warn(f"C kernels unavailable ({e}); LayerNorm tails use torch.compile")
            else:
                P, L = ctypes.c_void_p, ctypes.c_long
                lib.ln_act_forward.argtypes = [P] * 8 + [L] * 4 + [ctypes.c_int]
                lib.ln_act_backward.argtypes = [P] * 12 + [L] * 4 + [ctypes.c_int]
                lib.ln_act_forward.restype = lib.ln_act_backward.restype = None
                _lib = lib
    return _lib or None


def supports(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None = None,
             pre_bias: torch.Tensor | None = None) -> bool:
    """Whether the kernels take these tensors: float32 on the CPU, contiguous, ``scale`` shaped as ``y``, and
    ``weight``, ``bias``, ``pre_bias`` all of shape ``[D]`` or ``[n, 1, ..., 1, D]`` (one parameter row per
    leading index of ``y``). The C code trusts these shapes, so anything else goes to the compiled kernels."""
    if y.device.type != "cpu" or y.dtype != torch.float32 or y.numel() == 0 or library() is None:
        return False
    D = y.shape[-1]
    grouped = weight.dim() == y.dim() and weight.shape[0] == y.shape[0] and all(s == 1 for s in weight.shape[1:-1])
    if weight.shape[-1] != D or not (weight.dim() == 1 or grouped):
        return False
    if bias.shape != weight.shape or (pre_bias is not None and pre_bias.shape != weight.shape) or \
            (scale is not None and scale.shape != y.shape):
        return False
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous())
               for t in (y, weight, bias, scale, pre_bias))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _layout(y: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int]:
    D = y.shape[-1]
    rows = y.numel() // D
    return rows, D, rows // (weight.numel() // D)


def ln_act_forward(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None,
                   pre_bias: torch.Tensor | None, simnorm: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """act(LayerNorm((y + pre_bias)·scale)·weight + bias) → (output, row mean, row 1/std); as
    :func:`tdmpc_opt_lib.fast.fused._ln_act_forward` (``mean``/``rstd`` flat over rows)."""
    rows, D, per_group = _layout(y, weight)
    out, mean, rstd = torch.empty_like(y), y.new_empty(rows), y.new_empty(rows)
    library().ln_act_forward(_ptr(y), _ptr(pre_bias), _ptr(scale), _ptr(weight), _ptr(bias), _ptr(out), _ptr(mean),
                             _ptr(rstd), rows, D, per_group, simnorm, torch.get_num_threads())
    return out, mean, rstd


def ln_act_backward(g: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    scale: torch.Tensor | None, pre_bias: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
                    simnorm: int, param_grads: bool, pre_bias_grad: bool) -> tuple[torch.Tensor | None, ...]:
    """Gradients w.r.t. ``y``, ``weight``, ``bias`` (with ``param_grads``) and ``pre_bias`` (with
    ``pre_bias_grad``), the parameter gradients already summed over their broadcast rows."""
    rows, D, per_group = _layout(y, weight)
    gy = torch.empty_like(y)
    gw, gb = (torch.empty_like(weight), torch.empty_like(bias)) if param_grads else (None, None)
    gpb = torch.empty_like(pre_bias) if pre_bias_grad else None
    library().ln_act_backward(_ptr(g), _ptr(y), _ptr(pre_bias), _ptr(scale), _ptr(weight), _ptr(bias), _ptr(mean),
                              _ptr(rstd), _ptr(gy), _ptr(gw), _ptr(gb), _ptr(gpb), rows, D, per_group, simnorm,
                              torch.get_num_threads())
    return gy, gw, gb, gpb
