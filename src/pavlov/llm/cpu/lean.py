"""Memory-lean backward for the Llama MLP and RMSNorm: the same forward, fewer saved tensors.

Autograd keeps what each small op needs for its backward. In a Llama block that is, per token:

* MLP ``down(silu(gate(x)) * up(x))``: ``x``, ``gate(x)``, ``silu(gate(x))``, ``up(x)`` and
  the product — four intermediate-size vectors (1536 floats each in SmolLM2) and ``x``;
* RMSNorm ``w * x / rms(x)``: ``x``, ``1 / rms(x)`` and the normalised ``x`` (twice a layer).

:func:`lean_blocks` swaps, for the duration of a ``with`` block, those modules' forward for one
autograd function each that saves only ``x``, ``gate(x)``, ``up(x)`` (the MLP) or ``x`` and
``1 / rms(x)`` (the norm) and recomputes the cheap rest (a sigmoid, two products) in backward.
For SmolLM2-135M that is 2 x 1536 + 2 x 576 fewer floats per token and layer: ~18 KB, so ~220 MB
less at the peak of a GRPO update over 8 x 50 tokens. The forward runs the same operations in the
same order (bitwise the same outputs); gradients equal autograd's to float32 round-off (tested).

Applies to float32 CPU tensors outside autocast with gradients on; anything else runs the
module's own forward. The elementwise part of each backward runs as one C pass where the native
kernels are available (:func:`pavlov.llm.cpu.native.swiglu_backward`,
:func:`~pavlov.llm.cpu.native.rmsnorm_backward`), else as torch ops. Matmuls are split as in
:mod:`pavlov.llm.cpu.kernels`: forward ``x W^T`` through oneDNN when available, input gradients
``g W`` and weight gradients ``g^T x`` on MKL.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pavlov.llm.cpu.kernels import (
    _on_cpu,
    dnn_linear,
    inplace_tied_embedding,
    masked_gqa_sdpa,
    onednn_available,
    onednn_linears,
)
from pavlov.llm.cpu.native import rmsnorm_backward, swiglu_backward

__all__ = ["lean_blocks"]


def _mm(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` (autograd is off inside the functions below): oneDNN when available."""
    return dnn_linear(x, weight) if onednn_available() else F.linear(x, weight)


class _SwiGLU(torch.autograd.Function):
    """``down(silu(gate(x)) * up(x))`` saving ``x``, ``gate(x)``, ``up(x)``. ``x`` ``(N, H)``;
    ``wg``, ``wu`` ``(I, H)``; ``wd`` ``(H, I)``."""

    @staticmethod
    def forward(ctx, x, wg, wu, wd):  # type: ignore[override]
        g, u = _mm(x, wg), _mm(x, wu)  # (N, I)
        y = _mm(F.silu(g) * u, wd)  # (N, H)
        ctx.save_for_backward(x, g, u, wg, wu, wd)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, g, u, wg, wu, wd = ctx.saved_tensors
        need_x, need_g, need_u, need_d = ctx.needs_input_grad[:4]
        gy = gy.contiguous()
        gh = gy @ wd  # dL/d(silu(g) * u), (N, I); input gradients on MKL (see kernels)
        fused = swiglu_backward(g, u, gh)  # one C pass for the nine elementwise ops below
        if fused is not None:
            h, gu, gg = fused
        else:
            sig = torch.sigmoid(g)
            act = g * sig  # silu(g)
            h = act * u
            gu = gh * act
            gg = gh.mul_(u).mul_(sig * (1 + g * (1 - sig)))  # silu'(g) = s (1 + g (1 - s))
        grad_wd = gy.t() @ h if need_d else None
        grad_x = torch.addmm(gg @ wg, gu, wu) if need_x else None  # gg Wg + gu Wu
        grad_wg = gg.t() @ x if need_g else None
        grad_wu = gu.t() @ x if need_u else None
        return grad_x, grad_wg, grad_wu, grad_wd


class _RMSNorm(torch.autograd.Function):
    """``w * x / sqrt(mean(x^2) + eps)`` (float32) saving ``x`` and ``1 / rms``."""

    @staticmethod
    def forward(ctx, x, weight, eps):  # type: ignore[override]
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, rstd, weight)
        return weight * (x * rstd)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, rstd, weight = ctx.saved_tensors
        fused = rmsnorm_backward(x, rstd, weight, gy)  # one C pass for the ops below
        if fused is not None:
            grad_x, grad_w = fused
            return (grad_x if ctx.needs_input_grad[0] else None,
                    grad_w if ctx.needs_input_grad[1] else None, None)  # fmt: skip
        n = x * rstd
        grad_w = (gy * n).reshape(-1, n.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            gn = gy * weight
            grad_x = rstd * (gn - n * (gn * n).mean(-1, keepdim=True))
        return grad_x, grad_w, None


def _active(x: Tensor, *weights: Tensor) -> bool:
    return (
        torch.is_grad_enabled()
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and all(w.dtype == torch.float32 for w in weights)
        and not torch.is_autocast_enabled("cpu")
    )


def _mlp_forward(self: nn.Module, x: Tensor) -> Tensor:
    wg, wu, wd = self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
    if not _active(x, wg, wu, wd):
        return type(self).forward(self, x)
    y = _SwiGLU.apply(x.reshape(-1, x.shape[-1]), wg, wu, wd)
    return y.reshape(*x.shape[:-1], wd.shape[0])


def _norm_forward(self: nn.Module, x: Tensor) -> Tensor:
    if not _active(x, self.weight):
        return type(self).forward(self, x)
    return _RMSNorm.apply(x, self.weight, self.variance_epsilon)


def _swiglu_mlp(module: nn.Module) -> bool:
    names = ("gate_proj", "up_proj", "down_proj")
    if not all(type(getattr(module, n, None)) is nn.Linear for n in names):
        return False
    if any(getattr(module, n).bias is not None for n in names):
        return False
    act = getattr(module, "act_fn", None)
    return type(act).__name__ in ("SiLU", "SiLUActivation") and type(module).__name__.endswith(
        "MLP"
    )


def _llama_rms_norm(module: nn.Module) -> bool:
    # Gemma's (1 + w) variant and norms with extra options have other class names
    return type(module).__name__ in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm") and hasattr(
        module, "variance_epsilon"
    )


@contextlib.contextmanager
def lean_blocks(*models: nn.Module | None, enabled: bool = True) -> Iterator[int]:
    """Within the block, the Llama-style MLPs and RMSNorms of ``models`` save fewer tensors for
    backward (module doc); yields how many modules were patched. Restored on exit."""
    patched: list[tuple[nn.Module, types.MethodType]] = []
    try:
        if enabled:
            for model in models:
                for module in () if model is None else model.modules():
                    if "forward" in module.__dict__:
                        continue
                    if _swiglu_mlp(module):
                        forward = types.MethodType(_mlp_forward, module)
                    elif _llama_rms_norm(module):
                        forward = types.MethodType(_norm_forward, module)
                    else:
                        continue
                    module.forward = forward
                    patched.append((module, forward))
        yield len(patched)
    finally:
        for module, forward in patched:
            if module.__dict__.get("forward") is forward:  # not replaced meanwhile
                del module.forward


@contextlib.contextmanager
def fast_kernels(policy: nn.Module, *others: nn.Module | None, enabled: bool = True):
    """:func:`onednn_linears` on ``policy`` and ``others``, plus :func:`inplace_tied_embedding`
    and the leaner MLP / RMSNorm backward of :func:`pavlov.llm.cpu.lean.lean_blocks` on ``policy``,
    and :func:`masked_gqa_sdpa` for a model on the CPU, for a training loop; nothing when
    ``enabled`` is false. (Here, not in :mod:`pavlov.llm.cpu.kernels`: lean builds on kernels.)"""
    with contextlib.ExitStack() as stack:
        if enabled:
            stack.enter_context(onednn_linears(policy, *others))
            stack.enter_context(inplace_tied_embedding(policy))
            stack.enter_context(lean_blocks(policy))
            stack.enter_context(masked_gqa_sdpa(_on_cpu(policy)))
        yield
