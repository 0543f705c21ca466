"""Small C kernels for the decode step: ``y = x W^T + b`` with a handful of rows, and a whole
one-token step through every layer of a Llama-family model.

Why: sampling one token for ``B`` sequences multiplies ``B`` rows (8 in the GRPO benchmark) by
every weight matrix of the model, so a decode step is a pass over all the weights (538 MB for
SmolLM2-135M in float32) with only ``2 B`` FLOPs per weight. On the 2-core AMD EPYC VMs we
measured, that pass ran at 4-8 GB/s through MKL and 6-9 GB/s through oneDNN on weights
re-packed for it (the repacking itself costing ~0.3-1 s per batch), while a plain read of the
same memory runs at 16-19 GB/s a core. ``row_linear`` below reaches 21-25 GB/s at 8 rows on
2 cores, on the weights as they are (numbers in docs/benchmarks.md): each weight row is loaded
once per 8 floats and multiplied into up to 8 accumulators (one per input row), the weight
stream is prefetched 2 KB ahead into L1 and 8 KB ahead into L2 (with the first alone: 14-18
GB/s), and the rows of ``W`` are split evenly over the threads torch uses. On a CPU with
AVX-512 the same loop runs on 16-float vectors (chosen at run time, one build): half the loads
per FMA, which bound the 8-float loop at 8 and more rows. Weights may be bfloat16 (the rollout's
copies under bf16 precision): half the bytes, each widened to float32 exactly.
``decode_layers`` (:class:`DecodeLayers`) runs a whole decode step (norms, RoPE, cache writes,
attention, residuals around those matmuls) in one call: as ~25 torch ops per layer the same
work cost ~20 ms of dispatch per token of a 30-layer model, a third of the step.

The C source (``native.c``, package data next to this module) is compiled on first use with the
system C compiler (``cc -O3 -mavx2 -mfma -fopenmp``, about a second) into
``$PAVLOV_CACHE/native/`` (default ``~/.cache/pavlov``) and loaded with :mod:`ctypes`
(:mod:`pavlov.native`, shared with PPO's kernel); it links the OpenMP runtime torch already
loaded (same soname).
:func:`row_kernel_available` is False (and callers use :func:`torch.nn.functional.linear`)
off x86-64 Linux, without AVX2/FMA, without a C compiler, when the build fails, or when
``PAVLOV_NATIVE=0``. Results equal ``F.linear`` to float32 round-off (summation order differs;
tested).
"""

from __future__ import annotations

import ctypes
import functools
from importlib import resources

import torch
from torch import Tensor

from pavlov import native

__all__ = [
    "LAYER_SLOTS",
    "MAX_ROWS",
    "STREAM_ROWS",
    "DecodeLayers",
    "l2_norm",
    "row_kernel_available",
    "row_linear",
    "row_linears",
    "rmsnorm_backward",
    "sample_rows",
    "swiglu_backward",
]

MAX_ROWS = 16
"""Largest batch a decode step runs through the row kernel (above it the decoder takes oneDNN on
weights packed for the batch)."""

STREAM_ROWS = 32
"""Largest row count :func:`row_linear` is meant for: blocks of 8 rows take turns over ~32 KB
chunks of weight rows that stay in L2, so the weights stream from memory once; the linears of a
135M model took 41 vs 63 ms (oneDNN) at 16 rows, 73 vs 91 ms at 32. Further up the work is a
GEMM's (MKL, oneDNN)."""

_SOURCE = (resources.files(__package__) / "native.c").read_text()
"""The C source, shipped as package data next to this module."""


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native.load(_SOURCE, "row_linear")
    if lib is None:
        return None
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.row_linear.argtypes = [p, p, p, p, i, p, i, i, i, i]
    lib.row_linear.restype = None
    lib.decode_layers.argtypes = [p, i, i, i, i, i, i, i, p, f, i, i, p, p, i, p, f, p, i, p,
                                  ctypes.c_int64, ctypes.c_int64, i]  # fmt: skip
    lib.decode_layers.restype = None
    lib.native_use_avx512.argtypes = [i]
    lib.native_use_avx512.restype = None
    lib.sample_rows.argtypes = [p, p, i, i, p, p, p, i]
    lib.sample_rows.restype = None
    lib.swiglu_backward.argtypes = [p, p, p, p, p, p, ctypes.c_int64, i]
    lib.swiglu_backward.restype = None
    lib.rmsnorm_backward.argtypes = [p, p, p, p, p, p, ctypes.c_int64, i, p, i]
    lib.rmsnorm_backward.restype = None
    lib.sum_squares.argtypes = [p, p, i, i]
    lib.sum_squares.restype = ctypes.c_double
    return lib


_POINTERS = [ctypes.c_void_p * n for n in range(9)]
_INTS = [ctypes.c_int * n for n in range(9)]


def _float32_cpu(*tensors: Tensor, contiguous: bool = False) -> bool:
    """Whether every tensor is a dense float32 CPU tensor (and contiguous, if asked): what the
    kernels take."""
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided
        and (t.is_contiguous() or not contiguous)
        for t in tensors
    )


def use_avx512(on: bool) -> None:
    """Let the row kernels use AVX-512 where the CPU has it (the default), or keep to their
    AVX2 loops (``on=False``: tests run both paths on an AVX-512 machine)."""
    lib = _library()
    if lib is not None:
        lib.native_use_avx512(int(on))


def row_kernel_available() -> bool:
    """Whether :func:`row_linear` runs the C kernel here (builds it on the first call)."""
    return _library() is not None


def row_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` for float32 CPU tensors with few rows, no autograd.

    ``x`` ``(..., K)`` with at most about :data:`STREAM_ROWS` rows in all, ``weight`` ``(N, K)``,
    ``bias`` ``(N,)`` or None; returns ``(..., N)``. Falls back to
    :func:`torch.nn.functional.linear` when the kernel is unavailable or the inputs are not
    plain float32 CPU tensors. ``weight`` may be bfloat16: the kernel streams half the bytes and
    widens each weight to float32 exactly, so the result is ``x @ weight.float().T`` to float32
    round-off.
    """
    return row_linears(x, [weight], [bias])


def row_linears(
    x: Tensor, weights: list[Tensor], biases: list[Tensor | None] | None = None
) -> Tensor:
    """``x`` times several weights that share it (q/k/v, gate/up) in one kernel call:
    ``cat([x @ W_j.T + b_j for j], -1)`` as ``(..., sum N_j)``, without concatenating the
    weights. At most 8 weights; the same fallback as :func:`row_linear`."""
    lib = _library()
    fn = None if lib is None else lib.row_linear
    biases = [None] * len(weights) if biases is None else biases
    bf16 = sum(1 << j for j, w in enumerate(weights) if w.dtype == torch.bfloat16)  # bit j: W_j
    tensors = [x, *(b for b in biases if b is not None)]
    if (
        fn is None
        or not 1 <= len(weights) <= 8
        or any(w.dim() != 2 or w.shape[1] != x.shape[-1] for w in weights)
        or not _float32_cpu(*tensors)
        or not all(w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16)
                   for w in weights)  # fmt: skip
        or (torch.is_grad_enabled() and any(t.requires_grad for t in [*tensors, *weights]))
    ):
        outs = [torch.nn.functional.linear(x, w.to(x.dtype), b)
                for w, b in zip(weights, biases, strict=True)]  # fmt: skip
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
           y.data_ptr(), M, K, torch.get_num_threads(), bf16)  # fmt: skip
    return y.reshape(*x.shape[:-1], sum(sizes))


def sample_rows(logits: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor] | None:
    """One draw per row from ``softmax(logits)`` by inverse CDF, in one C pass per row.

    ``logits`` ``(B, V)`` float32 CPU; ``uniforms`` ``(B,)`` or ``(B, 1)`` float64 in [0, 1).
    Returns ``(tokens, logprobs)`` (long, float32; ``log_softmax(logits)`` at the token), or
    None where the kernel does not apply (unavailable, other dtypes or devices) so the caller
    samples with torch. The same draw as ``pavlov.llm.generation.rollout._draw`` on
    ``softmax(logits)``
    with the same uniforms, up to float32 round-off in the cumulative sums (a token can differ
    only when ``u`` falls within ~1e-7 of a boundary of the CDF): ~0.2 ms for 8 x 49152 on 2
    cores against ~1.4 ms for torch's softmax, float64 cumsum, searchsorted and logsumexp.
    A token with logit ``-inf`` is never drawn.
    """
    lib = _library()
    if (
        lib is None
        or logits.dim() != 2
        or not _float32_cpu(logits)
        or uniforms.dtype != torch.float64
        or uniforms.numel() != logits.shape[0]
        or logits.shape[1] == 0
        or logits.requires_grad
    ):
        return None
    z = logits.contiguous()
    u = uniforms.reshape(-1).contiguous()
    B, V = z.shape
    tokens = torch.empty(B, dtype=torch.long)
    logp = torch.empty(B, dtype=torch.float32)
    work = torch.empty(B * ((V + 63) // 64), dtype=torch.float64)
    lib.sample_rows(z.data_ptr(), u.data_ptr(), B, V, tokens.data_ptr(), logp.data_ptr(),
                    work.data_ptr(), min(torch.get_num_threads(), max(B, 1)))  # fmt: skip
    return tokens, logp


def swiglu_backward(g: Tensor, u: Tensor, gh: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """The elementwise part of the SwiGLU MLP's backward in one C pass (see
    :class:`pavlov.llm.cpu.lean._SwiGLU`): for ``h = silu(g) * u`` and the gradient ``gh`` of ``h``,
    returns ``(silu(g) * u, gh * silu(g), gh * u * silu'(g))``, the last one written into ``gh``.
    Equal to the torch expressions to float32 round-off (tested); ~0.2 vs 1.2 ms for 272 x 1536
    floats on 2 cores (nine torch ops). None where it does not apply (kernel unavailable; not
    same-shaped contiguous float32 CPU tensors; autograd on)."""
    lib = _library()
    tensors = (g, u, gh)
    if (
        lib is None
        or not _float32_cpu(*tensors, contiguous=True)
        or any(t.shape != g.shape for t in tensors)
        or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    ):
        return None
    p, gu = torch.empty_like(g), torch.empty_like(g)
    if g.numel():
        lib.swiglu_backward(g.data_ptr(), u.data_ptr(), gh.data_ptr(), p.data_ptr(),
                            gu.data_ptr(), gh.data_ptr(), g.numel(),
                            torch.get_num_threads())  # fmt: skip
    return p, gu, gh


def rmsnorm_backward(x: Tensor, rstd: Tensor, weight: Tensor, gy: Tensor
                     ) -> tuple[Tensor, Tensor] | None:  # fmt: skip
    """Gradients of ``y = weight * x * rstd`` (RMSNorm, ``rstd = 1 / rms(x)`` per row) in one C
    pass over the rows: ``(grad_x, grad_weight)`` for the output gradient ``gy``, equal to
    autograd's to float32 round-off (tested); ~9 torch ops otherwise (see
    :class:`pavlov.llm.cpu.lean._RMSNorm`). ``x``, ``gy`` ``(..., E)``, ``rstd`` ``(..., 1)``,
    ``weight`` ``(E,)``. None where it does not apply (kernel unavailable, not float32 CPU)."""
    lib = _library()
    if (
        lib is None
        or not _float32_cpu(x, rstd, weight, gy)
        or gy.shape != x.shape
        or weight.shape != x.shape[-1:]
        or rstd.numel() * x.shape[-1] != x.numel()
        or (torch.is_grad_enabled() and any(t.requires_grad for t in (x, rstd, weight, gy)))
    ):
        return None
    E = x.shape[-1]
    xc, rc, wc, gc = (t.contiguous() for t in (x, rstd, weight, gy))
    threads = max(1, min(torch.get_num_threads(), xc.numel() // max(E, 1)))
    gx, gw = torch.empty_like(xc), torch.empty(E, dtype=torch.float32)
    work = torch.empty(threads * E, dtype=torch.float32)
    lib.rmsnorm_backward(xc.data_ptr(), rc.data_ptr(), wc.data_ptr(), gc.data_ptr(),
                         gx.data_ptr(), gw.data_ptr(), xc.numel() // max(E, 1), E,
                         work.data_ptr(), threads)  # fmt: skip
    return gx, gw


def l2_norm(tensors: list[Tensor]) -> Tensor | None:
    """The L2 norm of all elements of ``tensors`` together (the total gradient norm of
    clipping), one read of each at the memory's pace: ~25 ms for SmolLM2-135M's 538 MB of
    float32 gradients on 2 cores against ~45 ms for ``torch.nn.utils.get_total_norm`` (a norm
    per tensor). Equal to it to float32 round-off (squares summed in float32 runs of 1024, the
    runs in double). A float32 scalar tensor; None unless every tensor is a contiguous float32
    CPU tensor (and the kernel is available)."""
    lib = _library()
    if lib is None or not _float32_cpu(*tensors, contiguous=True):
        return None
    tensors = [t for t in tensors if t.numel()]
    n = len(tensors)
    pointers = (ctypes.c_void_p * max(n, 1))(*[t.data_ptr() for t in tensors])
    lengths = (ctypes.c_int64 * max(n, 1))(*[t.numel() for t in tensors])
    total = lib.sum_squares(pointers, lengths, n, torch.get_num_threads()) if n else 0.0
    return torch.tensor(total, dtype=torch.float64).sqrt().to(torch.float32)


LAYER_SLOTS = ("wq", "wk", "wv", "wo", "wg", "wu", "wd", "bq", "bk", "bv", "bo", "bg", "bu", "bd",
               "n1", "n2", "k_cache", "v_cache")  # fmt: skip
"""The tensors of one layer that :class:`DecodeLayers` reads, in the C function's order: the
seven projection weights ``(out, in)``, their biases (None allowed), the two RMSNorm weights and
the layer's ``(B, kv_heads, length, head_dim)`` key and value caches."""
WEIGHT_SLOTS = LAYER_SLOTS[:7]


class DecodeLayers:
    """One decode step through every layer of a Llama-family model in a single C call.

    Why: a decode step of a 30-layer model runs ~25 small torch ops per layer around the matmuls
    (norms, RoPE, cache writes, attention, residual adds), ~20 ms of dispatch per token on the
    2-core VMs we measured against ~55 ms of weight streaming; in C they cost ~1-2 ms. Computes
    exactly what :class:`pavlov.llm.cpu.decoder.LlamaDecoder` computes for one new token per row
    (SiLU MLP, RMSNorm, half-split RoPE, GQA), to float32 round-off (tested).

    ``layers``: one dict per layer with the keys of :data:`LAYER_SLOTS` (float32, contiguous,
    on the CPU; they must outlive this object's use, which keeps references; a projection's
    weights may instead be bfloat16 in every layer: half the bytes streamed per token, each
    widened to float32 exactly). ``keys`` ``(B, length)`` bool: the columns each row may attend;
    ``cos``/``sin`` ``(B, length, head_dim)`` rotary tables by column.
    """

    def __init__(self, layers: list[dict[str, Tensor | None]], heads: int, kv_heads: int,
                 head_dim: int, eps: float, scale: float, keys: Tensor, cos: Tensor,
                 sin: Tensor) -> None:  # fmt: skip
        lib = _library()
        if lib is None:
            raise RuntimeError("the native kernels are unavailable here")
        B, length = keys.shape
        first = layers[0]
        self.hidden, self.inter = first["wq"].shape[1], first["wg"].shape[0]
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.eps, self.scale, self.batch, self.length = eps, scale, B, length
        self.keys = keys.to(torch.bool).contiguous()
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        kept = [self.cos, self.sin]
        pointers = []
        bf16 = {s for s in WEIGHT_SLOTS if first[s].dtype == torch.bfloat16}
        self.mask = sum(1 << i for i, s in enumerate(WEIGHT_SLOTS) if s in bf16)  # the C wmask
        for layer in layers:
            for slot in LAYER_SLOTS:
                t = layer[slot]
                dtype = torch.bfloat16 if slot in bf16 else torch.float32
                if t is not None and (t.dtype != dtype or t.device.type != "cpu"
                                      or not t.is_contiguous()):  # fmt: skip
                    raise ValueError(f"{slot} must be a contiguous {dtype} CPU tensor")
                pointers.append(None if t is None else t.data_ptr())
                kept.append(t)
        self._kept = kept
        self._table = (ctypes.c_void_p * len(pointers))(*pointers)
        self._fn = lib.decode_layers
        E, F, H, KV, D = self.hidden, self.inter, heads, kv_heads, head_dim
        self._work = torch.empty(B * ((H + 2 * KV) * D + H * D + 2 * E + 3 * F) + B * H * length)
        self.n_layers = len(layers)

    def __call__(self, x: Tensor, col: int, save: list[Tensor] | None = None, first: int = 0,
                 stride: int = 0) -> None:  # fmt: skip
        """Run every layer on ``x`` ``(B, hidden)`` (contiguous float32, updated in place) for
        the token at cache column ``col``. ``save``: optionally one contiguous float32 ``(rows,
        S)`` tensor per layer that receives the layer's linear outputs for row ``b`` at row
        ``first + b * stride``, ``S = (heads + 2 kv_heads) head_dim + 2 hidden + 2
        intermediate``."""
        fits = x.shape == (self.batch, self.hidden) and x.is_contiguous()
        fits = fits and x.dtype == torch.float32
        if not fits or not 0 <= col < self.length:
            raise ValueError(f"x {tuple(x.shape)} at column {col} does not fit this decoder")
        pointers, width = None, 0
        if save is not None:
            width = (self.heads + 2 * self.kv_heads) * self.head_dim + 2 * self.hidden
            width += 2 * self.inter
            last = first + (self.batch - 1) * stride
            if len(save) != self.n_layers or not _float32_cpu(*save, contiguous=True) or any(
                    t.dim() != 2 or t.shape[1] != width or not 0 <= first <= last < t.shape[0]
                    for t in save):  # fmt: skip
                raise ValueError(f"save does not fit this decoder's {self.n_layers} x {width}")
            pointers = (ctypes.c_void_p * len(save))(*[t.data_ptr() for t in save])
        D = self.head_dim
        at = col * D * 4  # bytes into each row's rotary table
        self._fn(x.data_ptr(), self.batch, self.hidden, self.n_layers, self.heads, self.kv_heads,
                 D, self.inter, self._table, self.eps, self.length, col,
                 self.cos.data_ptr() + at, self.sin.data_ptr() + at, self.length * D,
                 self.keys.data_ptr(), self.scale, self._work.data_ptr(),
                 torch.get_num_threads(), pointers, first * width, stride * width,
                 self.mask)  # fmt: skip
