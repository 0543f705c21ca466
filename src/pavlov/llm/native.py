"""A small C kernel for the decode step's matmuls: ``y = x W^T + b`` with a handful of rows.

Why: sampling one token for ``B`` sequences multiplies ``B`` rows (8 in the GRPO benchmark) by
every weight matrix of the model, so a decode step is a pass over all the weights (538 MB for
SmolLM2-135M in float32) with only ``2 B`` FLOPs per weight. On the 2-core AMD EPYC VMs we
measured, that pass ran at 4-8 GB/s through MKL and 6-9 GB/s through oneDNN on weights
re-packed for it (the repacking itself costing ~0.3-1 s per batch), while a plain read of the
same memory runs at 16-19 GB/s. The kernel below reaches 11-12 GB/s at 8 rows and 15-17 GB/s
at 1 row on the weights as they are (numbers in docs/benchmarks.md): each weight row is loaded
once per 8 floats and multiplied into up to 8 accumulators (one per input row), and the rows of
``W`` are split evenly over the threads torch uses.

The C source is compiled on first use with the system C compiler (``cc -O3 -mavx2 -mfma
-fopenmp``, about a second) into ``$PAVLOV_CACHE/native/`` (default ``~/.cache/pavlov``) and
loaded with :mod:`ctypes`; it links the OpenMP runtime torch already loaded (same soname).
:func:`row_kernel_available` is False (and callers use :func:`torch.nn.functional.linear`)
off x86-64 Linux, without AVX2/FMA, without a C compiler, when the build fails, or when
``PAVLOV_NATIVE=0``. Results equal ``F.linear`` to float32 round-off (summation order differs;
tested).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["MAX_ROWS", "row_kernel_available", "row_linear", "row_linears"]

MAX_ROWS = 16
"""Largest row count :func:`row_linear` is meant for: above it the weights are re-read per block
of 8 rows and a blocked GEMM (MKL, oneDNN) is the better tool."""

_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

/* y[m, n] = sum_k x[m, k] W[n, k] + b[n] for rows m < M (M <= 8) and weight rows n0 <= n < n1.
   x (M, K) and W (N, K) row-major; y has row stride ldy. Called with a literal M so that the
   compiler unrolls the row loop and keeps the M accumulators in registers. */
static inline void block(const float *x, const float *W, const float *b, float *y,
                         int M, int ldy, int K, int n0, int n1) {
    int K8 = K & ~7;
    for (int n = n0; n < n1; n++) {
        const float *w = W + (int64_t)n * K;
        __m256 acc[8];
        for (int m = 0; m < 8; m++) acc[m] = _mm256_setzero_ps();
        for (int k = 0; k < K8; k += 8) {
            __m256 wv = _mm256_loadu_ps(w + k);
            for (int m = 0; m < M; m++)
                acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (int64_t)m * K + k), acc[m]);
        }
        for (int m = 0; m < M; m++) {
            float s = hsum(acc[m]) + (b ? b[n] : 0.0f);
            for (int k = K8; k < K; k++) s += w[k] * x[(int64_t)m * K + k];
            y[(int64_t)m * ldy + n] = s;
        }
    }
}

static void rows(const float *x, const float *W, const float *b, float *y,
                 int M, int ldy, int K, int n0, int n1) {
    for (int m0 = 0; m0 < M; m0 += 8) {
        const float *xm = x + (int64_t)m0 * K;
        float *ym = y + (int64_t)m0 * ldy;
        switch (M - m0 < 8 ? M - m0 : 8) {
        case 1: block(xm, W, b, ym, 1, ldy, K, n0, n1); break;
        case 2: block(xm, W, b, ym, 2, ldy, K, n0, n1); break;
        case 3: block(xm, W, b, ym, 3, ldy, K, n0, n1); break;
        case 4: block(xm, W, b, ym, 4, ldy, K, n0, n1); break;
        case 5: block(xm, W, b, ym, 5, ldy, K, n0, n1); break;
        case 6: block(xm, W, b, ym, 6, ldy, K, n0, n1); break;
        case 7: block(xm, W, b, ym, 7, ldy, K, n0, n1); break;
        default: block(xm, W, b, ym, 8, ldy, K, n0, n1); break;
        }
    }
}

/* y = x [W_0; W_1; ...]^T + [b_0; b_1; ...]: nw weights (N_j, K) sharing the input x (M, K),
   outputs side by side in y (M, sum N_j). The stacked weight rows are split evenly over the
   threads (one parallel region, however many weights: q/k/v or gate/up in one call). */
void row_linear(const float *x, const float *const *W, const float *const *b, const int *N,
                int nw, float *y, int M, int K, int threads) {
    int64_t total = 0;
    for (int j = 0; j < nw; j++) total += N[j];
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        int64_t g0 = total * t / threads, g1 = total * (t + 1) / threads, start = 0;
        for (int j = 0; j < nw; j++) {
            int64_t lo = g0 > start ? g0 : start, hi = g1 < start + N[j] ? g1 : start + N[j];
            if (lo < hi)
                rows(x, W[j], b[j], y + start, M, (int)total, K, (int)(lo - start),
                     (int)(hi - start));
            start += N[j];
        }
    }
}
"""


def _cpu_supported() -> bool:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((ln for ln in flags.splitlines() if ln.startswith("flags")), "")
    return {"avx2", "fma"} <= set(line.split())


def _build(cache: Path) -> Path | None:
    """Compile the source into ``cache`` (once per source/flags version); None on failure."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    tag = hashlib.sha1((_SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:12]
    lib = cache / f"row_linear-{tag}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src, out = Path(tmp) / "row_linear.c", Path(tmp) / "row_linear.so"
        src.write_text(_SOURCE)
        done = subprocess.run([compiler, *_FLAGS, str(src), "-o", str(out)],
                              capture_output=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            return None
        os.replace(out, lib)  # atomic: a concurrent process sees all of it or none
    return lib


@functools.cache
def _library():
    if os.environ.get("PAVLOV_NATIVE", "1") == "0" or not _cpu_supported():
        return None
    from pavlov.llm.assets import cache_root

    try:
        path = _build(cache_root() / "native")
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    fn = lib.row_linear
    p, i = ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [p, p, p, p, i, p, i, i, i]
    fn.restype = None
    return fn


_POINTERS = [ctypes.c_void_p * n for n in range(9)]
_INTS = [ctypes.c_int * n for n in range(9)]


def row_kernel_available() -> bool:
    """Whether :func:`row_linear` runs the C kernel here (builds it on the first call)."""
    return _library() is not None


def row_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` for float32 CPU tensors with few rows, no autograd.

    ``x`` ``(..., K)`` with at most about :data:`MAX_ROWS` rows in all, ``weight`` ``(N, K)``,
    ``bias`` ``(N,)`` or None; returns ``(..., N)``. Falls back to
    :func:`torch.nn.functional.linear` when the kernel is unavailable or the inputs are not
    plain float32 CPU tensors.
    """
    return row_linears(x, [weight], [bias])


def row_linears(
    x: Tensor, weights: list[Tensor], biases: list[Tensor | None] | None = None
) -> Tensor:
    """``x`` times several weights that share it (q/k/v, gate/up) in one kernel call:
    ``cat([x @ W_j.T + b_j for j], -1)`` as ``(..., sum N_j)``, without concatenating the
    weights. At most 8 weights; the same fallback as :func:`row_linear`."""
    fn = _library()
    biases = [None] * len(weights) if biases is None else biases
    tensors = [x, *weights, *(b for b in biases if b is not None)]
    if (
        fn is None
        or not 1 <= len(weights) <= 8
        or any(w.dim() != 2 or w.shape[1] != x.shape[-1] for w in weights)
        or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors)
        or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    ):
        outs = [torch.nn.functional.linear(x, w, b) for w, b in zip(weights, biases, strict=True)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    K = x.shape[-1]
    x2 = x.reshape(-1, K).contiguous()
    ws = [w.detach().contiguous() for w in weights]
    bs = [None if b is None else b.detach().contiguous() for b in biases]
    M, n = x2.shape[0], len(ws)
    sizes = [w.shape[0] for w in ws]
    y = torch.empty((M, sum(sizes)), dtype=torch.float32)
    if M and sum(sizes):
        fn(x2.data_ptr(), _POINTERS[n](*[w.data_ptr() for w in ws]),
           _POINTERS[n](*[None if b is None else b.data_ptr() for b in bs]), _INTS[n](*sizes), n,
           y.data_ptr(), M, K, torch.get_num_threads())  # fmt: skip
    return y.reshape(*x.shape[:-1], sum(sizes))
