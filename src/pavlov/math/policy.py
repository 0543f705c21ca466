"""Policy-gradient losses, KL estimators and entropies.

Shapes: log-probabilities, advantages and masks share one shape, ``(B,)`` for a flat minibatch of
environment steps or ``(B, T)`` for tokens; a ``mask`` (bool or 0/1, optional) marks the entries
that count, and every reduction is :func:`~pavlov.math.masked.masked_mean`.

Losses return ``(loss, metrics)``: ``loss`` is a scalar to minimise, ``metrics`` a dict of
detached scalar tensors for the loop to log (``.item()`` there, not here). Advantages and old
log-probabilities are treated as constants (detached) inside the losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pavlov.math.masked import masked_mean

__all__ = [
    "KL_ESTIMATORS",
    "approx_kl",
    "categorical_entropy",
    "clipped_value_loss",
    "entropy",
    "importance_ratio",
    "kl_estimator",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "ppo_clip_loss",
    "ppo_clip_terms",
    "reinforce_loss",
]

Metrics = dict[str, Tensor]


def reinforce_loss(
    logp: Tensor, advantages: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Metrics]:
    """REINFORCE / vanilla policy-gradient surrogate, ``-mean(log pi(a|s) * A)``.

    Its gradient is the score-function estimator of the policy gradient (Williams 1992;
    Sutton et al. 2000). ``advantages`` may be the reward-to-go, a baselined return or GAE.

    Args:
        logp: log pi(a_t | s_t) of the taken actions, with grad; ``(B,)`` or ``(B, T)``.
        advantages: same shape; detached here.
        mask: optional, same shape.

    Returns:
        ``(loss, {"policy_loss"})``.
    """
    loss = -masked_mean(logp * advantages.detach(), mask)
    return loss, {"policy_loss": loss.detach()}


def importance_ratio(new_logp: Tensor, old_logp: Tensor) -> Tensor:
    """``pi_new(a|s) / pi_old(a|s) = exp(new_logp - old_logp)``, elementwise."""
    return torch.exp(new_logp - old_logp)


def ppo_clip_terms(
    new_logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Unreduced PPO clip loss ``-min(r * A, clip(r, 1 - eps, 1 + eps_high) * A)`` and ``r``.

    The per-entry terms of :func:`ppo_clip_loss`, for callers that reduce them their own way
    (per token, per sequence: :func:`pavlov.math.rlhf.aggregate_token_loss`). Old log-probs and
    advantages are detached here.

    Returns:
        ``(loss_terms, ratio)``, both the shape of ``new_logp``.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    old_logp, advantages = old_logp.detach(), advantages.detach()
    ratio = importance_ratio(new_logp, old_logp)
    surrogate = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * advantages
    return -torch.minimum(surrogate, clipped), ratio


def ppo_clip_loss(
    new_logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_eps: float,
    mask: Tensor | None = None,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate objective, negated to a loss.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347, eq. 7::

        L = -E[min(r * A, clip(r, 1 - eps, 1 + eps_high) * A)],   r = pi_new / pi_old

    Args:
        new_logp: log-probs under the current policy, with grad; ``(B,)`` or ``(B, T)``.
        old_logp: log-probs under the policy that collected the data; same shape; detached.
        advantages: same shape (normalise beforehand if wanted); detached.
        clip_eps: clip range eps, e.g. 0.2.
        mask: optional, same shape.
        clip_eps_high: upper clip range if asymmetric ("clip-higher", Yu et al. 2025, DAPO,
            arXiv:2503.14476); ``None`` uses ``clip_eps``.

    Returns:
        ``(loss, metrics)`` with ``policy_loss``, ``clip_fraction`` (share of entries whose ratio
        lies outside the clip range), ``approx_kl`` (k3 estimate of KL(old || new), as CleanRL
        logs it) and ``ratio_mean``.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    per_entry, ratio = ppo_clip_terms(new_logp, old_logp, advantages, clip_eps, eps_high)
    loss = masked_mean(per_entry, mask)
    with torch.no_grad():
        outside = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + eps_high)
        metrics = {
            "policy_loss": loss.detach(),
            "clip_fraction": masked_mean(outside.to(ratio.dtype), mask),
            "approx_kl": approx_kl(new_logp, old_logp, "k3", mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, metrics


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip_eps: float | None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """Value loss with the PPO2 clip, ``0.5 * E[max((V - R)^2, (V_clip - R)^2)]``.

    ``V_clip = V_old + clip(V - V_old, -eps, eps)`` keeps the value function near the one that
    collected the data (OpenAI baselines ``ppo2``; CleanRL ``clip_vloss``). Note ``eps`` is in
    the units of the returns. Engstrom et al. 2020 and Andrychowicz et al. 2021 found the clip
    rarely helps; ``clip_eps=None`` gives the plain ``0.5 * E[(V - R)^2]``.

    Args:
        values: predictions with grad, ``(B,)``.
        old_values: predictions at collection time; detached.
        returns: targets (e.g. GAE returns); detached.
        clip_eps: clip range, or ``None`` for no clip.
        mask: optional, same shape.

    Returns:
        ``(loss, {"value_loss", "value_clip_fraction"})``.
    """
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_entry, clip_frac = unclipped, values.new_zeros(())
    else:
        delta = values - old_values
        v_clipped = old_values + torch.clamp(delta, -clip_eps, clip_eps)
        per_entry = torch.maximum(unclipped, (v_clipped - returns) ** 2)
        clip_frac = masked_mean((delta.detach().abs() > clip_eps).to(values.dtype), mask)
    loss = 0.5 * masked_mean(per_entry, mask)
    return loss, {"value_loss": loss.detach(), "value_clip_fraction": clip_frac}


# --- KL estimators --------------------------------------------------------------------------
# Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.
# Each estimates KL(q || p) from samples x ~ q, per sample, with log r = log p(x) - log q(x).
# PPO: samples come from the old policy, so q = old, p = new. RLHF: q = policy, p = reference.


def kl_k1(logq: Tensor, logp: Tensor) -> Tensor:
    """k1 = -log r: unbiased, high variance, can be negative per sample."""
    return logq - logp


def kl_k2(logq: Tensor, logp: Tensor) -> Tensor:
    """k2 = (log r)^2 / 2: biased, low variance, >= 0; accurate when p is close to q."""
    return 0.5 * (logp - logq) ** 2


def kl_k3(logq: Tensor, logp: Tensor) -> Tensor:
    """k3 = (r - 1) - log r: unbiased, low variance, >= 0 for every sample (GRPO's KL term)."""
    log_r = logp - logq
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimator(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Look up ``KL_ESTIMATORS[name]``, with a ``ValueError`` naming the choices."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"estimator must be one of {sorted(KL_ESTIMATORS)}, got {name!r}"
        ) from None


def approx_kl(
    new_logp: Tensor, old_logp: Tensor, estimator: str = "k1", mask: Tensor | None = None
) -> Tensor:
    """Sample estimate of KL(pi_old || pi_new) from actions drawn by pi_old, a scalar.

    The mean over (masked) entries of ``KL_ESTIMATORS[estimator](old_logp, new_logp)``. k1 and k3
    are 0 when the policies agree; k3 is never negative.

    Args:
        new_logp: log pi_new(a|s), any shape.
        old_logp: log pi_old(a|s), same shape (the sampling policy).
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
        mask: optional, same shape.
    """
    return masked_mean(kl_estimator(estimator)(old_logp, new_logp), mask)


# --- entropy ----------------------------------------------------------------------------------


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy ``-sum_a p(a) log p(a)`` of ``Categorical(logits=logits)`` over the last dim.

    Stable for any logits, including ``-inf`` for masked-out actions: log-probs are clamped to
    the dtype's most negative finite value so that ``0 * log 0`` is 0 with a finite gradient (as
    ``torch.distributions.Categorical.entropy`` does).

    Args:
        logits: ``(..., A)`` unnormalised log-probabilities.

    Returns:
        ``(...)`` entropies in nats.
    """
    logp = F.log_softmax(logits, dim=-1).clamp_min(torch.finfo(logits.dtype).min)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Per-position entropy of ``softmax(logits)``, computed ``chunk_size`` rows at a time.

    Same result as :func:`categorical_entropy`; for a ``(B, T, V)`` language-model output under
    ``torch.no_grad()`` only one ``(chunk_size, V)`` block of probabilities exists at a time (the
    idea of TRL's ``entropy_from_logits``). With autograd on, every chunk is kept for backward,
    so chunking saves nothing there.

    Args:
        logits: ``(..., V)``.
        chunk_size: rows of the flattened ``(-1, V)`` logits per chunk.

    Returns:
        ``(...)`` entropies in nats; ``log V`` for uniform logits.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (R, V)
    chunks = [categorical_entropy(chunk) for chunk in flat.split(chunk_size, dim=0)]
    out = torch.cat(chunks) if chunks else flat.new_empty(0)
    return out.reshape(logits.shape[:-1])
