"""Token-level helpers for language-model trainers: log-probs, masked statistics, KL penalty.

Shapes: ``(B, T)`` for per-token quantities (batch of sequences, time) and ``(B, T, V)`` for
logits over a vocabulary of size ``V``; a ``(B, T)`` mask marks real (non-padding, usually
completion-only) tokens. The masked reductions are defined in :mod:`pavlov.math.masked` and the
KL estimators in :mod:`pavlov.math.policy`; they are re-exported or reused here, not copied.
"""

from __future__ import annotations

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
