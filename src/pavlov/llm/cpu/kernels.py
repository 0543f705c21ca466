"""Faster float32 linear layers on CPU for the LLM trainers, with the same results.

PyTorch computes a float32 ``nn.Linear`` on CPU with MKL's ``sgemm``. On the 2-core AMD EPYC
machines we measured, oneDNN's matmul (which PyTorch ships, and uses for bf16) ran the forward
``x W^T`` of a 135M-model training step 1.1-1.3x faster. The gradients stay on MKL: the weight
gradient ``g^T x`` is no faster through oneDNN, and the input gradient ``g W`` was 1.7x slower
inside a training step (oneDNN takes ``W`` as a transposed weight and reorders it every call:
8.3-8.7 vs 4.9 ms for a ``(328 x 1536) @ (1536 x 576)`` in a GRPO step, though close in
isolation), so it runs as MKL's ``g @ W``. :func:`onednn_linears` routes a
model's plain ``nn.Linear`` layers through it for the duration of a ``with`` block; the outputs
and gradients equal ``F.linear``'s to float32 round-off (tested).

It applies only to float32 CPU tensors outside autocast, and falls back to ``F.linear`` for
anything else (bf16 autocast, other devices, builds without oneDNN).
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "can_pack",
    "dnn_linear",
    "eager_attention",
    "inplace_tied_embedding",
    "linear_grads",
    "masked_gqa_sdpa",
    "onednn_available",
    "onednn_linears",
    "pack_weight",
    "packed_linear",
]


def onednn_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _dnn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` through oneDNN; ``weight`` plain ``(out, in)`` or pre-packed by
    :func:`pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices fast: oneDNN's bf16 kernels need AVX-512
    (native with AVX-512 BF16 / AMX). Without it (AVX2-only CPUs such as some AMD EPYC VMs)
    PyTorch falls back to a scalar bf16 GEMM: 1.2 GFLOP/s against 47 in fp32, measured."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def can_pack() -> bool:
    """Whether :func:`pack_weight` is available in this build."""
    return onednn_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack_weight(weight: Tensor, rows: int) -> Tensor:
    """A float32 ``(out, in)`` weight reordered by oneDNN for inputs of about ``rows`` rows; a
    copy, usable only through :func:`packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ W^T + b`` with ``W`` from :func:`pack_weight` (no autograd through ``W``)."""
    return _dnn(x, packed, None if bias is None else bias.detach())


class _DnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return _dnn(x2d, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return linear_grads(ctx, grad)


def linear_grads(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The backward of ``y = x W^T + b`` for an autograd function that saved ``(x2d, weight)``
    and set ``ctx.has_bias``: ``(g W, g^T x, sum g)`` where asked for, on MKL."""
    x2d, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grad @ weight if ctx.needs_input_grad[0] else None  # g W, MKL
    grad_w = grad.t() @ x2d if ctx.needs_input_grad[1] else None  # g^T x, MKL
    grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b


def _eligible(x: Tensor, weight: Tensor) -> bool:
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )


def dnn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN when eligible (float32 CPU, no autocast),
    differentiable; ``F.linear`` otherwise. ``x`` ``(..., in)``, ``weight`` ``(out, in)``."""
    if not _eligible(x, weight):
        return F.linear(x, weight, bias)
    x2d = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (
            bias is not None and bias.requires_grad)):  # fmt: skip
        y = _DnnLinear.apply(x2d, weight, bias)
    else:
        y = _dnn(x2d, weight, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _forward(self: nn.Linear, x: Tensor) -> Tensor:
    return dnn_linear(x, self.weight, self.bias)


@contextlib.contextmanager
def onednn_linears(*models: nn.Module | None, enabled: bool = True) -> Iterator[None]:
    """Within the block, the plain ``nn.Linear`` layers of ``models`` (``None`` entries are
    skipped) compute through :func:`dnn_linear`. Layers are patched per instance and restored
    on exit; subclasses (LoRA, quantized layers) keep their own forward."""
    if not enabled or not onednn_available():
        yield
        return
    patched: list[nn.Linear] = []
    try:
        for model in models:
            if model is None:
                continue
            for module in model.modules():
                if type(module) is nn.Linear and "forward" not in module.__dict__:
                    module.forward = types.MethodType(_forward, module)
                    patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def _add_rows(weight: Tensor, ids: Tensor, padding_idx: int | None, grad: Tensor) -> None:
    """Backward hook of :func:`_tied_lookup`'s output: ``weight.grad[ids] += grad`` in place."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "a tied embedding under pavlov's fast kernels supports loss.backward() only "
            "(not create_graph / higher-order gradients)"
        )
    rows, index = grad.reshape(-1, grad.shape[-1]), ids.reshape(-1)
    if padding_idx is not None:  # F.embedding gives the padding row no gradient
        keep = index != padding_idx
        rows, index = rows[keep], index[keep]
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    weight.grad.index_add_(0, index, rows.to(weight.grad.dtype))


def _tied_lookup(self: nn.Embedding, ids: Tensor) -> Tensor:
    """``F.embedding`` off the autograd graph of the weight: the output is a leaf whose
    gradient a hook adds into ``weight.grad`` (see :func:`inplace_tied_embedding`)."""
    x = F.embedding(ids, self.weight.detach(), self.padding_idx)
    if torch.is_grad_enabled() and self.weight.requires_grad:
        x.requires_grad_(True)
        x.register_hook(functools.partial(_add_rows, self.weight, ids, self.padding_idx))
    return x


@contextlib.contextmanager
def inplace_tied_embedding(model: nn.Module) -> Iterator[bool]:
    """Within the block, a trainable input embedding that shares its weight with the output
    projection (SmolLM2, GPT-2, ...) adds its gradient rows into that weight's ``.grad`` in
    place; yields whether it applied.

    Why: the embedding's own gradient touches only the looked-up rows, but ``nn.Embedding``
    builds it as a dense ``(V, H)`` zero tensor (113 MB for SmolLM2) that autograd then adds to
    the projection's dense gradient, and a sparse gradient is no better: autograd sums the two
    out of place (a fresh 113 MB buffer, ~0.1-0.16 s of page faults and copying per backward on
    a 2-core VM, and 113 MB more at the end of backward, when the gradients are all there). The
    lookup's output is computed from the detached weight as a leaf, so the weight's gradient
    comes from the projection alone and reaches ``.grad`` as soon as the projection's backward
    has run; a hook on the lookup's output, whose gradient is the last of the pass, then adds
    its rows into ``.grad`` (into zeros if the loss did not use the projection). Use
    ``loss.backward()`` inside the block: ``torch.autograd.grad`` would not see the embedding's
    part, and ``create_graph`` is refused. Untied embeddings, and ones
    with ``max_norm`` or ``scale_grad_by_freq``, are left as they are.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = (
        type(emb) is nn.Embedding
        and out is not None
        and getattr(out, "weight", None) is emb.weight
        and emb.weight.requires_grad
        and not emb.sparse
        and emb.max_norm is None
        and not emb.scale_grad_by_freq
        and "forward" not in emb.__dict__
    )
    if not tied:
        yield False
        return
    emb.forward = types.MethodType(_tied_lookup, emb)
    try:
        yield True
    finally:
        del emb.forward


GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"
"""The environment switch Hugging Face's SDPA attention reads at every call."""


@contextlib.contextmanager
def masked_gqa_sdpa(enabled: bool = True) -> Iterator[None]:
    """Within the block, Hugging Face's SDPA attention hands grouped key/value heads to
    ``torch.nn.functional.scaled_dot_product_attention`` as they are (``enable_gqa=True``) also
    under an attention mask, instead of first copying them out to every query head
    (``repeat_kv``, and a sum of those copies' gradients in backward).

    Why: Transformers takes the copy whenever there is a mask, because masked GQA falls back to
    the slow math kernel on CUDA; on the CPU the flash kernel handles it, and every pavlov scoring
    pass has a mask (padding, packed prompts). For SmolLM2 (9 query / 3 key-value heads) in the
    packed GRPO batch: 5.3 -> 4.7 ms per layer forward and backward, 1.56 -> 1.42 ms forward;
    outputs equal, gradients to float32 round-off (tested). Sets the ``TRANSFORMERS_SDPA_FORCE_GQA``
    environment variable for the duration of the block (restored on exit)."""
    if not enabled:
        yield
        return
    before = os.environ.get(GQA_SWITCH)
    os.environ[GQA_SWITCH] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(GQA_SWITCH, None)
        else:
            os.environ[GQA_SWITCH] = before


@contextlib.contextmanager
def eager_attention(*models: nn.Module | None, enabled: bool = True) -> Iterator[None]:
    """Within the block, the Hugging Face models inside ``models`` that attend through SDPA
    attend through their eager path instead (batched matmuls, a float32 softmax); restored on
    exit.

    Why: under bf16 autocast, PyTorch's CPU flash-attention backward is ~9x slower than its
    float32 one at the short sequences here (torch 2.13, 2 AVX-512-BF16 cores, MiniLM
    reward-model step of 16 pairs x 64 tokens: 3.0 vs 0.35 s of attention backward over 12
    steps), so a bf16 step spent a third of its time there; the eager path's bf16 matmuls are
    fast. Measured: reward-model step 0.68 -> 0.42 s; the demo's SFT stage (LoRA SmolLM2) 72-82
    -> 58-61 s. In float32 SDPA is as fast or faster, so the offline trainers ask for this
    under bf16 only (:class:`pavlov.llm.cpu.CpuConfig` says why the online ones do not). Same
    attention, computed another way: outputs agree to bf16 round-off (tested)."""
    switched = []
    if enabled:
        for model in models:
            for module in [] if model is None else model.modules():
                config = getattr(module, "config", None)
                if (hasattr(module, "set_attn_implementation") and _on_cpu(module)
                        and getattr(config, "_attn_implementation", None) == "sdpa"):
                    module.set_attn_implementation("eager")
                    switched.append(module)
                    break  # the outermost model switches its submodules too
    try:
        yield
    finally:
        for module in switched:
            module.set_attn_implementation("sdpa")


def _on_cpu(model: nn.Module) -> bool:
    first = next(model.parameters(), None)
    return first is None or first.device.type == "cpu"
