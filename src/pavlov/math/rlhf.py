"""RL from a scalar score on sampled text: token rewards with a KL penalty, GAE over response
tokens, KL-coefficient control and the per-token loss reductions of PPO-RLHF and GRPO.

Shapes: ``B`` responses of ``T`` tokens (right-aligned after their prompts, as in a
:class:`~pavlov.llm.generation.rollout.Rollout`); per-token tensors are ``(B, T)`` with a ``(B, T)``
response ``mask`` that is true from the first response token up to and including the EOS
(or the last token when the response was cut at the length limit). A response has >= 1 token.

The RLHF reward (Ziegler et al. 2019, arXiv:1909.08593, eq. 2; Stiennon et al. 2020; Ouyang
et al. 2022) gives the reward model's score once, at the last response token, and charges every
token ``beta * KL_t`` for drifting from the frozen reference::

    r_t = -beta * KL_t + [t = last] * score,       KL_t = log pi(y_t|.) - log pi_ref(y_t|.)  (k1)

GRPO (Shao et al. 2024, arXiv:2402.03300) instead keeps the score out of the token rewards,
gives every token its response's group-relative advantage
(:func:`~pavlov.math.group.group_advantages`) and adds ``beta * k3`` to the *loss*.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pavlov.math.masked import masked_mean, masked_sum
from pavlov.math.returns import gae
from pavlov.math.sequence import kl_penalty

__all__ = [
    "LOSS_AGGREGATIONS",
    "adaptive_kl_coef",
    "aggregate_token_loss",
    "apply_missing_eos_penalty",
    "last_token_index",
    "rlhf_token_rewards",
    "token_gae",
]


def last_token_index(mask: Tensor) -> Tensor:
    """``(B,)`` column of each row's last true entry in a ``(B, T)`` response mask: a prefix
    (single-turn rollouts) or with holes (a multi-turn episode's agent tokens, the environment's
    tokens masked out); a row with no true entry gives -1.
    """
    cols = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), cols, -1).amax(dim=1)


def apply_missing_eos_penalty(scores: Tensor, eos_reached: Tensor, penalty: float) -> Tensor:
    """``scores - penalty`` for responses cut at the length limit (no EOS), else unchanged.

    A response that never ends is usually unfinished; without a penalty the policy can learn to
    ramble up to the limit when longer text scores higher (TRL's ``missing_eos_penalty``;
    Huang et al. 2024, "The N+ implementation details of RLHF with PPO", arXiv:2403.17031).

    Args:
        scores: ``(B,)`` sequence scores.
        eos_reached: ``(B,)`` bool.
        penalty: subtracted, >= 0.
    """
    return torch.where(eos_reached.bool(), scores, scores - penalty)


def rlhf_token_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token RLHF rewards: the KL penalty everywhere, the score on the last token.

    ``r_t = -kl_coef * KL_t`` on response tokens, plus ``scores[b]`` at the row's last response
    token; 0 outside the mask. ``KL_t`` is :func:`~pavlov.math.sequence.kl_penalty` (``"k1"``:
    ``logp - ref_logp``, whose sum over a response is an unbiased estimate of the sequence KL;
    ``"k3"``: non-negative, lower variance).

    Args:
        scores: ``(B,)`` reward-model (or reward-function) score of each response.
        logp: ``(B, T)`` log-probs of the sampled tokens under the policy that sampled them.
        ref_logp: ``(B, T)`` log-probs of the same tokens under the frozen reference.
        mask: ``(B, T)`` response mask (>= 1 token; the score goes on its last true entry).
        kl_coef: ``beta`` >= 0.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        ``(rewards, kl)``, both ``(B, T)`` float, 0 outside the mask.
    """
    m = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    kl = torch.where(m, kl_penalty(logp, ref_logp, estimator), zero)
    rewards = -kl_coef * kl
    last = last_token_index(m).clamp_min(0).unsqueeze(1)  # (B, 1)
    rewards = rewards.scatter_add(1, last, scores.to(rewards.dtype).unsqueeze(1))
    return rewards, kl


def token_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE over the tokens of each response, ``(advantages, returns)``, both ``(B, T)``.

    Each response is one episode that terminates after its last token (the EOS, or the length
    limit: the text is scored as it stands, so there is nothing to bootstrap from). This is
    :func:`~pavlov.math.returns.gae` on the time-major transpose with ``terminated`` at the last
    token; ``returns = advantages + values`` are the value targets. Entries outside the mask are
    0 (values there are ignored).

    A mask with holes (a multi-turn episode: the environment's answers between the agent's
    turns are not the agent's actions) is compacted first: the agent's tokens are the time
    steps, so each one bootstraps from the value of the agent's *next* token, across the
    environment's text (the answer is part of the transition). A prefix mask is unchanged by it.

    Args:
        rewards: ``(B, T)`` per-token rewards (:func:`rlhf_token_rewards`).
        values: ``(B, T)`` value estimates of the state before each token.
        mask: ``(B, T)`` response mask (a prefix per row, or with holes: see above).
        gamma: discount over tokens; RLHF uses 1.
        lam: GAE lambda.
    """
    m = mask.bool()
    order = torch.sort((~m).to(torch.int8), dim=1, stable=True).indices  # agent tokens first
    if not torch.equal(order, torch.arange(m.shape[1], device=m.device).expand_as(order)):
        adv, ret = token_gae(rewards.gather(1, order), values.gather(1, order), m.gather(1, order),
                             gamma, lam)  # fmt: skip
        return adv.new_zeros(adv.shape).scatter(1, order, adv), ret.new_zeros(ret.shape).scatter(
            1, order, ret)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(m, values, zero)
    rewards = torch.where(m, rewards, zero)
    B, T = m.shape
    last = last_token_index(m)  # (B,)
    terminated = torch.arange(T, device=m.device).unsqueeze(1) == last.unsqueeze(0)  # (T, B)
    adv, _ = gae(
        rewards.T, values.T, terminated, torch.zeros_like(terminated),
        values.new_zeros(B), gamma, lam,
    )  # fmt: skip
    adv = torch.where(m, adv.T, zero)
    return adv, torch.where(m, adv + values, zero)


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int,
                     minimum: float = 0.0, maximum: float = 0.0) -> float:
    """The adaptive KL controller of Ziegler et al. 2019 (arXiv:1909.08593, sec. 2.2).

    ``max(minimum, coef * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon))``: the
    coefficient grows while the measured KL is above the target and shrinks while below, by at
    most 20% per ``horizon`` samples, never below ``minimum`` and, with ``maximum`` > 0, never
    above it. The controller integrates the error, so a KL peak winds the coefficient up and
    it keeps pulling the policy back long after the peak (integral windup); a ceiling bounds
    that.

    Args:
        coef: the current ``beta``.
        kl: the measured KL to the reference of this batch (mean per-response sum, nats).
        target: the KL wanted, > 0.
        horizon: samples over which a full 20% correction applies.
        n_steps: samples in this batch (responses).
        minimum: the floor (0: Ziegler et al.'s controller).
        maximum: the ceiling (0: none, Ziegler et al.'s controller).
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    coef = max(minimum, coef * (1.0 + error * n_steps / horizon))
    return min(coef, maximum) if maximum > 0 else coef


def _token_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over every valid token of the batch: long responses weigh more (DAPO)."""
    return masked_mean(x, mask)


def _sequence_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over each response's tokens, then over responses (the GRPO paper's eq. 3)."""
    return masked_mean(x, mask, dim=1).mean()


def _constant_length(x: Tensor, mask: Tensor) -> Tensor:
    """Sum over valid tokens / (B * T): no length bias at all (Dr. GRPO, arXiv:2503.20783)."""
    return masked_sum(x, mask) / x.numel()


LOSS_AGGREGATIONS = {
    "token": _token_mean,
    "sequence": _sequence_mean,
    "constant": _constant_length,
}
"""How a ``(B, T)`` per-token loss becomes a scalar; see :func:`aggregate_token_loss`."""


def aggregate_token_loss(per_token: Tensor, mask: Tensor, mode: str = "token") -> Tensor:
    """Reduce a ``(B, T)`` per-token loss over the response mask.

    ``"token"``: mean over all valid tokens (PPO-RLHF, DAPO, TRL's ``"dapo"``); ``"sequence"``:
    mean per response, then over responses (GRPO as published: a token of a short response
    weighs more); ``"constant"``: sum / ``(B * T)`` (Dr. GRPO).
    """
    try:
        reduce = LOSS_AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(
            f"loss aggregation must be one of {sorted(LOSS_AGGREGATIONS)}, got {mode!r}"
        ) from None
    return reduce(per_token, mask.bool())
