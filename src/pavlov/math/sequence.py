"""Token-level helpers for language-model trainers: log-probs, masked statistics, KL penalty.

Shapes: ``(B, T)`` for per-token quantities (batch of sequences, time) and ``(B, T, V)`` for
logits over a vocabulary of size ``V``; a ``(B, T)`` mask marks real (non-padding, usually
completion-only) tokens. The masked reductions are defined in :mod:`pavlov.math.masked` and the
KL estimators in :mod:`pavlov.math.policy`; they are re-exported or reused here, not copied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pavlov.math.masked import masked_mean, masked_sum, masked_var, masked_whiten
from pavlov.math.policy import kl_estimator

__all__ = [
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "projected_logprobs",
    "selective_log_softmax",
]

_UPCAST = (torch.float16, torch.bfloat16)


def selective_log_softmax(logits: Tensor, index: Tensor, chunk_size: int = 512) -> Tensor:
    """``log_softmax(logits)[..., index]`` without materialising the full log-softmax.

    Equivalent to ``logits.log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)``, but
    computed as ``logits[index] - logsumexp(logits)`` over ``chunk_size`` rows of the flattened
    logits at a time, so at most one ``(chunk_size, V)`` temporary exists and autograd saves no
    ``(B, T, V)`` log-softmax (the same idea as TRL's ``selective_log_softmax``).

    16-bit logits (fp16/bf16) are upcast to float32 chunk by chunk and the result is float32:
    ``x - logsumexp(x)`` cancels badly in bf16, and bf16 log-probs (about 3 significant digits)
    are too coarse for PPO importance ratios. Under autograd those float32 chunks are kept for
    backward.

    Args:
        logits: ``(..., V)``, e.g. ``(B, T, V)``.
        index: ``(...)`` integer token ids, e.g. ``(B, T)``.
        chunk_size: rows of the flattened ``(-1, V)`` logits per chunk.

    Returns:
        ``(...)`` log-probabilities of the selected tokens, same shape as ``index``.
    """
    if logits.shape[:-1] != index.shape:
        raise ValueError(
            f"index shape {tuple(index.shape)} must equal logits shape without the vocab dim, "
            f"{tuple(logits.shape[:-1])}"
        )
    flat = logits.reshape(-1, logits.shape[-1])  # (R, V)
    flat_index = index.reshape(-1, 1)  # (R, 1)
    out = []
    for rows, ids in zip(flat.split(chunk_size), flat_index.split(chunk_size), strict=True):
        if rows.dtype in _UPCAST:
            rows = rows.float()
        selected = rows.gather(-1, ids).squeeze(-1)  # (C,)
        out.append(selected - torch.logsumexp(rows, dim=-1))
    dtype = torch.float32 if logits.dtype in _UPCAST else logits.dtype
    result = torch.cat(out) if out else flat.new_empty(0, dtype=dtype)
    return result.reshape(index.shape)


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float,
            project: Callable[[Tensor], Tensor] | None) -> Tensor:  # fmt: skip
    """``(hidden W^T + b) / temperature`` as float32 ``(R, V)`` (even when autocast computed the
    product in bf16); a fresh tensor the callers may modify in place."""
    z = hidden @ weight.t() if project is None else project(hidden)
    if z.dtype in _UPCAST:
        z = z.float()
    if bias is not None and project is None:
        z += bias
    if temperature != 1.0:
        z /= temperature
    return z


class _ProjectedLogProbs(torch.autograd.Function):
    """Token log-probs and entropies straight from final hidden states and the vocabulary
    projection, with a hand-written backward (see :func:`projected_logprobs`)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, index, temperature, project):  # type: ignore[override]
        z = _logits(hidden, weight, bias, temperature, project)  # (R, V)
        z -= z.amax(-1, keepdim=True)  # in place; exp cannot overflow
        e = z.exp()  # (R, V), normalised into p below
        s = e.sum(-1)  # (R,)
        log_s = s.log()  # log_softmax(z) = z - log s
        logp = z.gather(-1, index[:, None]).squeeze(-1) - log_s
        # H = -sum_v p log p = log s - sum_v e z / s: two non-negative terms (no cancellation),
        # no (R, V) log-softmax (one pass fewer than logsumexp, then subtract, then exp)
        entropy = log_s - torch.linalg.vecdot(e, z) / s
        del z
        p = e.div_(s[:, None])
        ctx.save_for_backward(hidden, weight, index, p)
        ctx.has_bias, ctx.temperature = bias is not None, temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):  # type: ignore[override]
        hidden, weight, index, p = ctx.saved_tensors
        # d logp_r / d z_rv = 1[v = index_r] - p_rv, then the chain rule through z = h W^T / T.
        grad_z = p * -grad_logp[:, None]
        grad_z.scatter_add_(-1, index[:, None], grad_logp[:, None])
        if ctx.temperature != 1.0:
            grad_z /= ctx.temperature
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad_z @ weight.to(grad_z.dtype)).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_z.t() @ hidden.to(grad_z.dtype)).to(weight.dtype)
        grad_bias = grad_z.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def projected_logprobs(
    hidden: Tensor,
    weight: Tensor,
    index: Tensor,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    project: Callable[[Tensor], Tensor] | None = None,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of chosen tokens and the entropy of each next-token distribution, computed from
    final hidden states and the output projection in one fused step.

    Equals ``logits = (hidden @ weight.T + bias) / temperature`` followed by
    ``log_softmax(logits)[index]`` and ``-(softmax(logits) * log_softmax(logits)).sum(-1)``,
    but autograd keeps a single ``(R, V)`` buffer (the probabilities) instead of the logits plus
    the saved inputs and outputs of each op, and backward is one pass over it plus two
    matmuls: ``dlogits = g (onehot - p) / temperature``. The same idea as fused linear
    cross-entropy kernels (e.g. Liger). The entropy is a metric: it carries no gradient (use
    :func:`selective_log_softmax` on real logits for an entropy bonus).

    Args:
        hidden: ``(R, H)`` final hidden states (after the final norm), one row per scored token.
        weight: ``(V, H)`` output projection (``lm_head.weight``).
        index: ``(R,)`` long, the token each row predicts.
        bias: optional ``(V,)`` projection bias.
        temperature: logits are divided by it, > 0.
        project: optional ``hidden -> hidden @ weight.T + bias`` for the forward pass (e.g. the
            ``lm_head`` module itself, when it runs a faster kernel than ``@``); it must compute
            exactly that product with these ``weight`` and ``bias``, which the backward uses.
        with_entropy: False returns ``None`` for the entropy; with no gradient to compute either
            (a reference model's pass) only ``z[index] - logsumexp(z)`` is computed then,
            skipping the ``(R, V)`` softmax (a third of the projection's time at V = 49152).

    Returns:
        ``(logp, entropy)``, both ``(R,)`` (``entropy`` None without ``with_entropy``), float32
        for 16-bit inputs; ``logp`` is differentiable in ``hidden``, ``weight`` and ``bias``.
    """
    if hidden.dim() != 2 or index.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden must be (R, H) and index (R,), got {tuple(hidden.shape)} and "
            f"{tuple(index.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    if not with_entropy and not grad:
        z = _logits(hidden, weight, bias, temperature, project)  # (R, V)
        z -= z.amax(-1, keepdim=True)  # the grad path's steps, in place: bitwise its values
        picked = z.gather(-1, index[:, None]).squeeze(-1)
        return picked - z.exp_().sum(-1).log(), None
    logp, entropy = _ProjectedLogProbs.apply(
        hidden, weight, bias, index, float(temperature), project
    )
    return logp, entropy if with_entropy else None


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from the policy pi.

    ``KL_ESTIMATORS[estimator](logp, ref_logp)`` from :mod:`pavlov.math.policy`: ``"k1"`` is
    ``logp - ref_logp``, the per-token penalty in RLHF rewards (Ziegler et al. 2019; Ouyang et al.
    2022); ``"k3"`` is the always-non-negative estimator GRPO adds to its loss (Shao et al. 2024,
    DeepSeekMath, eq. 4).

    Args:
        logp: ``(B, T)`` log-probs of the sampled tokens under the policy.
        ref_logp: ``(B, T)`` log-probs of the same tokens under the reference model.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        ``(B, T)``, unreduced; mask and reduce with :func:`masked_mean` or :func:`masked_sum`.
    """
    return kl_estimator(estimator)(logp, ref_logp)
