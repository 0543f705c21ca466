"""A differentiable point mass in 2D: the task of the analytic-policy-gradient agent.

State ``s = (x, v, g)`` in R^6: position ``x``, velocity ``v`` and target ``g``, each in R^2.
Action ``a`` in [-max_force, max_force]^2 is a force. Explicit Euler with linear drag::

    r  = -||x - g||^2 - action_cost * ||a||^2      # the cost of the state the action is taken in
    x' = x + dt * v
    v' = v + dt * (a - drag * v)

Episodes start at rest, at ``x ~ U[-init_range, init_range]^2`` with a target
``g ~ U[-init_range, init_range]^2``, and last ``H`` steps (the ``TimeLimit`` of the
registration; no termination).

:func:`pointmass_step` is pure batched torch, differentiable end to end, so returns can be
backpropagated through whole rollouts (:mod:`pavlov.agents.apg`); :class:`PointMassEnv` wraps the
*same* function as a Gymnasium env so that model-free agents (PPO, A2C, ...) train on exactly
the same task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pavlov.errors import check_positive, check_range

__all__ = ["HORIZON", "PointMassEnv", "PointMassParams", "pointmass_reset", "pointmass_step"]

HORIZON = 50
"""Steps per episode of ``pavlov/PointMass-v0`` (its ``max_episode_steps``)."""


@dataclass(frozen=True)
class PointMassParams:
    """Physical constants of the point mass."""

    dt: float = 0.1
    """Integration step in seconds (> 0)."""
    drag: float = 0.5
    """Linear drag coefficient (>= 0)."""
    action_cost: float = 0.01
    """Weight (>= 0) of the squared force in the per-step cost."""
    max_force: float = 1.0
    """Force bound per axis (> 0); actions are clamped to it."""
    init_range: float = 1.0
    """Start positions and targets are uniform in ``[-init_range, init_range]^2`` (> 0)."""

    def __post_init__(self) -> None:
        check_positive("dt", self.dt)
        check_range("drag", self.drag, 0.0, np.inf)
        check_range("action_cost", self.action_cost, 0.0, np.inf)
        check_positive("max_force", self.max_force)
        check_positive("init_range", self.init_range)


def pointmass_step(state: Tensor, action: Tensor, params: PointMassParams) -> tuple[Tensor, Tensor]:
    """One Euler step of a batch of point masses, differentiable in ``state`` and ``action``.

    Args:
        state: ``(..., 6)``: ``(x, v, g)``.
        action: ``(..., 2)`` forces, clamped to ``[-max_force, max_force]``.
        params: the constants.

    Returns:
        ``(next_state (..., 6), reward (...))``.
    """
    x, v, g = state[..., 0:2], state[..., 2:4], state[..., 4:6]
    a = action.clamp(-params.max_force, params.max_force)
    reward = -((x - g) ** 2).sum(-1) - params.action_cost * (a**2).sum(-1)
    x_next = x + params.dt * v
    v_next = v + params.dt * (a - params.drag * v)
    return torch.cat([x_next, v_next, g], dim=-1), reward


def pointmass_reset(
    n: int,
    params: PointMassParams,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(n, 6)`` start states: uniform position and target, zero velocity."""
    u = torch.rand(n, 4, generator=generator, dtype=dtype) * 2.0 - 1.0
    u = u * params.init_range
    return torch.cat([u[:, 0:2], torch.zeros(n, 2, dtype=dtype), u[:, 2:4]], dim=-1)


class PointMassEnv(gym.Env):
    """Gymnasium view of :func:`pointmass_step` (float64 state, float32 observations).

    Observation: the state ``(x, v, g)`` as a ``(6,)`` float32 Box. Action: ``(2,)`` Box in
    ``[-max_force, max_force]``. Keyword arguments are the fields of :class:`PointMassParams`.

    Agents that differentiate through the dynamics (:mod:`pavlov.agents.apg`) use
    ``dynamics``, ``initial_states`` and ``observe`` of ``env.unwrapped``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, **params: float) -> None:
        self.params = PointMassParams(**params)
        f = np.float32(self.params.max_force)
        self.action_space = gym.spaces.Box(-f, f, shape=(2,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32)
        self._state = np.zeros(6)

    # The differentiable interface (batched torch).
    def dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        return pointmass_step(state, action, self.params)

    def initial_states(self, n: int, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
        return pointmass_reset(n, self.params, generator, dtype)

    @staticmethod
    def observe(state: Tensor) -> Tensor:
        """``(..., 6)`` states -> ``(..., 6)`` observations (fully observed)."""
        return state

    # The Gymnasium interface.
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        r = self.params.init_range
        x, g = self.np_random.uniform(-r, r, size=(2, 2))
        self._state = np.concatenate([x, np.zeros(2), g])
        return self._state.astype(np.float32), {}

    def step(self, action):
        state = torch.as_tensor(self._state, dtype=torch.float64)
        a = torch.as_tensor(np.asarray(action, dtype=np.float64).reshape(2))
        with torch.no_grad():
            nxt, reward = pointmass_step(state, a, self.params)
        self._state = nxt.numpy()
        distance = float(np.linalg.norm(self._state[0:2] - self._state[4:6]))
        return self._state.astype(np.float32), float(reward), False, False, {"distance": distance}
