"""Value-based targets and helpers: TD and double-Q targets, the Huber loss, Polyak averaging.

Shapes are batch-major here: ``(B,)`` for one transition per row, ``(B, A)`` for Q-values over
``A`` discrete actions. ``terminated`` (bool or 0/1) means ``s'`` is terminal: no bootstrap. A
time-limit truncation is *not* termination (Pardo et al. 2018): pass ``terminated=False`` for it
and the value of the real final observation as the next value.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pavlov.math.masked import masked_var

__all__ = ["double_q_target", "explained_variance", "huber", "polyak_update", "td_target"]


def td_target(rewards: Tensor, next_values: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """One-step TD target ``r + gamma * (1 - terminated) * V(s')`` (Sutton & Barto 2018, eq. 6.2).

    DQN (Mnih et al. 2015) uses ``next_values = Q_target(s').max(-1).values``.

    Args:
        rewards: ``(B,)``.
        next_values: ``(B,)`` value of the next state (of the final observation if truncated).
        terminated: ``(B,)``; where true the next value is ignored (even if NaN).
        gamma: discount in ``[0, 1]``.

    Returns:
        ``(B,)`` targets.
    """
    term = terminated.bool()
    bootstrap = torch.where(term, torch.zeros_like(next_values), next_values)
    return rewards + gamma * bootstrap


def double_q_target(
    rewards: Tensor,
    next_q_online: Tensor,
    next_q_target: Tensor,
    terminated: Tensor,
    gamma: float,
) -> Tensor:
    """Double DQN target: the online net picks the action, the target net values it.

    van Hasselt, Guez & Silver 2016, "Deep Reinforcement Learning with Double Q-learning", AAAI,
    eq. 4: ``Y = r + gamma * Q_target(s', argmax_a Q_online(s', a))``, no bootstrap if terminated.
    Decoupling selection from evaluation removes the max operator's overestimation bias.

    Args:
        rewards: ``(B,)``.
        next_q_online: ``(B, A)`` online-network Q-values at ``s'``.
        next_q_target: ``(B, A)`` target-network Q-values at ``s'``.
        terminated: ``(B,)``.
        gamma: discount in ``[0, 1]``.

    Returns:
        ``(B,)`` targets.
    """
    best = next_q_online.argmax(dim=-1, keepdim=True)  # (B, 1)
    next_values = next_q_target.gather(-1, best).squeeze(-1)  # (B,)
    return td_target(rewards, next_values, terminated, gamma)


def huber(x: Tensor, delta: float = 1.0) -> Tensor:
    """Elementwise Huber loss of the error ``x`` (Huber 1964), no reduction.

    ``0.5 x^2`` for ``|x| <= delta``, ``delta (|x| - 0.5 delta)`` beyond: quadratic near zero,
    linear in the tails, so large TD errors have gradient at most ``delta`` (DQN's error clipping,
    Mnih et al. 2015). Equals ``F.huber_loss(x, 0, reduction="none", delta=delta)``.
    """
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    abs_x = x.abs()
    quadratic = torch.clamp(abs_x, max=delta)
    return 0.5 * quadratic**2 + delta * (abs_x - quadratic)


def _tensors(x: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(x, nn.Module):
        return [*x.parameters(), *x.buffers()]
    return list(x)


@torch.no_grad()
def polyak_update(
    target_params: nn.Module | Iterable[Tensor],
    online_params: nn.Module | Iterable[Tensor],
    tau: float,
) -> None:
    """In place, ``target <- (1 - tau) * target + tau * online`` for every tensor pair.

    Soft target-network update (Lillicrap et al. 2016, DDPG, arXiv:1509.02971); ``tau = 1`` is
    DQN's hard copy, ``tau = 0`` leaves the target unchanged. Runs under ``torch.no_grad()``.

    Args:
        target_params: a module (its parameters then buffers) or an iterable of tensors.
        online_params: the same structure, paired in order.
        tau: interpolation weight in ``[0, 1]``. Non-float buffers (e.g. BatchNorm's
            ``num_batches_tracked``) are copied whenever ``tau > 0``.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    targets, onlines = _tensors(target_params), _tensors(online_params)
    if len(targets) != len(onlines):
        raise ValueError(f"got {len(targets)} target tensors but {len(onlines)} online tensors")
    if tau == 0.0:
        return
    for target, online in zip(targets, onlines, strict=True):
        if target.shape != online.shape:
            raise ValueError(f"shape mismatch: target {target.shape} vs online {online.shape}")
        if tau == 1.0 or not target.is_floating_point():
            target.copy_(online)
        else:
            target.lerp_(online, tau)


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """``1 - Var[target - pred] / Var[target]`` over the (masked) entries: 1 is a perfect value
    function, 0 no better than a constant, < 0 worse. NaN when the target is constant.
    """
    var = float(masked_var(target.float(), mask))
    if var == 0:
        return float("nan")
    return 1.0 - float(masked_var((target - pred).float(), mask)) / var
