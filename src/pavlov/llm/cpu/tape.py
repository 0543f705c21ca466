"""Replay the rollout's forward in the policy's update: the training forward without its matmuls.

With one update per batch (the online trainers' default) the policy samples its responses and is
then differentiated, with the same weights, at those very tokens: the training forward computes
again, to float32 round-off, every linear layer's output that the decode steps just computed.
On SmolLM2-135M those matmuls are ~2 N T of the update's ~6 N T FLOPs (N parameters, T tokens).

Recording (:class:`DecodeTape`, filled by :class:`pavlov.llm.cpu.decoder.LlamaDecoder` when asked):
the prefill and each one-call C decode step copy the outputs of q/k/v (before RoPE), o_proj,
gate, up and down_proj (``S = (H + 2 KV) D + 2 E + 2 I`` floats a token and layer: 5184 in
SmolLM2) into a ``(rows, S)`` tensor per layer, and the LM head's logits into ``(B, T, V)``:
~220 MB for the 8 x (9 + 32)-token GRPO batch of SmolLM2. The replay frees each layer's tensor
once its MLP has been replayed, so the forward's activations take the place of the tape.

Replaying (:func:`replaying`, entered by :mod:`pavlov.llm.scoring.logprobs` around the policy's
forward):
the policy's attention projections and SwiGLU MLPs return the recorded outputs for the rows of
that forward's token layout (the plain ``(B, L)`` rows or the packed shared-prompt rows) through
autograd functions with the usual backward (``g W`` and ``g^T x``, the lean SwiGLU backward);
norms, RoPE, attention and residual adds run as always (a few percent of the FLOPs), so the graph
is autograd's own and every input of a weight gradient is recomputed from the replayed outputs.
The LM head's logits are replayed likewise (:meth:`DecodeTape.head`).

Gradients and log-probs equal the plain path's to float32 round-off (tested on tiny models): the
decode computed each replayed output from inputs equal to the recomputed ones to round-off. A
tape is valid only for the weights that sampled (the parameters' in-place version counters are
recorded; any optimizer step invalidates it), for plain linears (no LoRA), without gradient
checkpointing and without attention dropout; :meth:`DecodeTape.usable` checks all of it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pavlov.llm.cpu.kernels import linear_grads
from pavlov.llm.cpu.lean import _SwiGLU, _swiglu_mlp

__all__ = ["ATTENTION", "DecodeTape", "replayable", "replaying"]

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
"""A Llama-family attention block's projections, in the decode tape's order."""


def _versions(model: nn.Module) -> tuple[int, ...]:
    return tuple(p._version for p in model.parameters())


@dataclass
class DecodeTape:
    """The linear outputs and logits of one sampling call (module docstring).

    Rows of each layer's tensor: the ``U`` distinct prompts' ``P`` columns (``u * P + column``),
    then each row's decoded columns (``U * P + b * T + k`` for response column ``k``), then one
    zero row for columns never run through the model (the last sampled token, padding of the
    packed layout)."""

    model: nn.Module
    layers: list[Tensor | None]
    """Per layer ``(U * P + B * T + 1, S)`` float32; None once replayed."""
    rows: int
    """Rows of each layer's tensor, ``U * P + B * T + 1``."""
    logits: Tensor | None
    """``(B, T, V)``: the logits that sampled response token ``k`` of row ``b``; None once
    replayed."""
    prompt_rows: Tensor
    """``(B,)`` long: the distinct prompt (``0 .. U - 1``) of each row."""
    prompt_length: int
    widths: tuple[int, int, int, int]
    """``(q, kv, hidden, intermediate)`` output sizes: the slices of ``S``."""
    decoded: int = 0
    """Response columns run through the model (decode steps so far)."""
    sampled: int = 0
    """Response columns whose logits are recorded."""
    versions: tuple[int, ...] = field(default_factory=tuple)
    sequences: Tensor | None = None
    """``(B, P + T)`` the sampled sequences (set by
    :func:`~pavlov.llm.generation.rollout.generate`)."""

    @property
    def zero_row(self) -> int:
        return self.rows - 1

    def seal(self) -> None:
        """Zero the zero row and record the weights' versions the tape belongs to."""
        for t in self.layers:
            t[-1].zero_()
        self.versions = _versions(self.model)

    def usable(self, model: nn.Module, ids: Tensor, start: int) -> bool:
        """Whether the tape replays ``model``'s forward over ``ids`` ``(B, start + n)``."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
        B, L = ids.shape
        checkpointing = (base.is_activation_checkpointing  # transformers >= 5.x's name
                         if hasattr(type(base), "is_activation_checkpointing")
                         else getattr(base, "is_gradient_checkpointing", False))  # fmt: skip
        dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in base.modules())
        return (
            base is self.model
            and self.logits is not None
            and all(t is not None for t in self.layers)
            and not hasattr(model, "peft_config")
            and torch.is_grad_enabled()
            and not checkpointing
            and not dropout
            and not getattr(config, "attention_dropout", 0.0)
            and start == self.prompt_length
            and self.logits.shape[0] == B
            and L - start == self.sampled
            and self.sequences is not None
            and torch.equal(ids, self.sequences)
            and self.decoded >= self.sampled - 1
            and _versions(self.model) == self.versions
        )

    def sources(self, mask: Tensor) -> Tensor:
        """``(B, L)`` long: the tape row of each column of the sampled sequences (``mask``
        ``(B, L)``: their attention mask; masked columns map to the zero row)."""
        B, L = mask.shape
        P, T = self.prompt_length, self.logits.shape[1]
        decoded_from = self.zero_row - B * T  # U * P: the prompts' rows come first
        column = torch.arange(L)
        prompt = self.prompt_rows[:, None] * P + column[None, :P]
        k = column[None, P:] - P
        response = decoded_from + torch.arange(B)[:, None] * T + k
        response = torch.where(k < self.decoded, response, self.zero_row)
        out = torch.cat([prompt, response], dim=1)
        return torch.where(mask.bool(), out, self.zero_row)

    def head(self, keep: Tensor) -> Tensor:
        """The recorded logits at the scored response positions ``keep`` ``(B, n)`` bool, as
        ``(R, V)``: what the LM head gives there (position ``j`` predicts response token ``j``).
        Hands over the tape's buffer itself when every position is scored (the caller may
        modify it: the logits are spent either way)."""
        logits, self.logits = self.logits, None
        n = keep.shape[1]
        if n == logits.shape[1] and bool(keep.all()):
            return logits.view(-1, logits.shape[-1])  # (B T, V), row-major like keep
        return logits[:, :n][keep]


class _ReplayLinear(torch.autograd.Function):
    """``y = x W^T + b`` with ``y`` given: the backward of a linear layer, no forward matmul."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, y):  # type: ignore[override]
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return (*linear_grads(ctx, grad), None)


class _ReplaySwiGLU(torch.autograd.Function):
    """``down(silu(gate(x)) * up(x))`` with ``gate(x)``, ``up(x)`` and the output given; the
    backward is :class:`pavlov.llm.cpu.lean._SwiGLU`'s."""

    @staticmethod
    def forward(ctx, x, wg, wu, wd, g, u, y):  # type: ignore[override]
        ctx.save_for_backward(x, g, u, wg, wu, wd)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        return (*_SwiGLU.backward(ctx, gy), None, None, None)


@contextlib.contextmanager
def replaying(tape: DecodeTape, rows: Tensor) -> Iterator[None]:
    """Within the block, the policy's forward over tokens whose tape rows are ``rows`` (any
    shape: the forward's batch and sequence dimensions, e.g. ``(U, width)``) takes its linear
    outputs from ``tape``, freeing each layer's tensor once its MLP is replayed (the tape is
    spent after one forward). Patches the layers per instance and restores them on exit."""
    flat = rows.reshape(-1)
    q, kv, hidden, inter = tape.widths
    spans = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv),
             "o_proj": (q + 2 * kv, q + 2 * kv + hidden)}  # fmt: skip
    mlp_at = q + 2 * kv + hidden
    saved: list[tuple[nn.Module, object]] = []

    def patch(module: nn.Module, forward) -> None:
        saved.append((module, module.__dict__.get("forward")))
        module.forward = types.MethodType(forward, module)

    def linear(index: int, lo: int, hi: int):
        def forward(self: nn.Linear, x: Tensor) -> Tensor:
            y = tape.layers[index][:, lo:hi].index_select(0, flat)  # (M, out), contiguous
            y = _ReplayLinear.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias, y)
            return y.view(*x.shape[:-1], hi - lo)

        return forward

    def mlp(index: int):
        def forward(self: nn.Module, x: Tensor) -> Tensor:
            rec, tape.layers[index] = tape.layers[index], None  # the last use of the layer's
            g = rec[:, mlp_at : mlp_at + inter].index_select(0, flat)
            u = rec[:, mlp_at + inter : mlp_at + 2 * inter].index_select(0, flat)
            y = rec[:, mlp_at + 2 * inter : mlp_at + 2 * inter + hidden].index_select(0, flat)
            del rec
            wg, wu, wd = self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
            y = _ReplaySwiGLU.apply(x.reshape(-1, x.shape[-1]), wg, wu, wd, g, u, y)
            return y.view(*x.shape[:-1], hidden)

        return forward

    try:
        for index, layer in enumerate(tape.model.model.layers):
            for name in ATTENTION:
                lo, hi = spans[name]
                patch(getattr(layer.self_attn, name), linear(index, lo, hi))
            patch(layer.mlp, mlp(index))
        yield
    finally:
        for module, forward in reversed(saved):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def replayable(model: nn.Module) -> bool:
    """Whether :func:`replaying` can stand in for ``model``'s layers: a Llama-family causal LM
    whose attention projections are plain linears and whose MLPs are SwiGLUs without biases."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        return False
    return all(
        all(type(getattr(layer.self_attn, n, None)) is nn.Linear for n in ATTENTION)
        and _swiglu_mlp(layer.mlp)
        for layer in layers
    )
