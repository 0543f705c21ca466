"""The stochastic actor shared by the policy-gradient agents (REINFORCE, A2C) and its greedy
evaluation policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pavlov.agents.common import encode_obs, mlp
from pavlov.agents.distributions import HEADS

PG_ACTION_SPACES = (gym.spaces.Discrete, gym.spaces.Box)


class Actor(nn.Module):
    """Stochastic policy: an MLP from ``(B, in_dim)`` features to the parameters of the action
    space's head (:data:`pavlov.agents.distributions.HEADS`: Categorical logits, or a Gaussian
    mean with a learned state-independent ``log_std``). Sampling runs in NumPy on rollout-sized
    batches; log-probs and entropies in torch for the update. The last layer has gain 0.01 so
    the initial policy is near uniform / zero-mean (Andrychowicz et al. 2021)."""

    def __init__(
        self,
        in_dim: int,
        action_space: gym.Space,
        hidden: Sequence[int],
        activation: str = "tanh",
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.head = HEADS[type(action_space)](action_space)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        k = self.head.n_outputs
        self.net = mlp([in_dim, *hidden, k], activation, out_gain=0.01)
        self.log_std = None if self.discrete else nn.Parameter(torch.full((k,), log_std_init))

    def log_prob_entropy(self, x: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(B, in_dim) features, (B,) | (B, A) actions -> ((B,) log pi(a|s), (B,) entropy)."""
        out = self.net(x)  # (B, k)
        return self.head.log_prob(out, self.log_std, actions), self.head.entropy(out, self.log_std)

    @torch.no_grad()
    def sample(self, x: Tensor, rng: np.random.Generator) -> np.ndarray:
        """(N, in_dim) -> (N,) | (N, A) sampled actions (unclipped)."""
        log_std = None if self.log_std is None else self.log_std.numpy()
        return self.head.sample_np(self.net(x).numpy(), log_std, rng)[0]

    @torch.no_grad()
    def mode(self, x: Tensor) -> np.ndarray:
        """(N, in_dim) -> deterministic actions: argmax, or the Gaussian mean."""
        log_std = None if self.log_std is None else self.log_std.numpy()
        return self.head.mode_np(self.net(x).numpy(), log_std)


def greedy_policy(
    actor: Actor, obs_space: gym.Space, body: nn.Module | None = None
) -> Callable[[Any, int], Any]:
    """``policy(obs, t) -> action`` acting with :meth:`Actor.mode` (``body``: a shared trunk)."""

    @torch.no_grad()
    def policy(obs: Any, t: int) -> Any:
        x = encode_obs(obs_space, obs)  # (1, obs_dim)
        a = actor.head.to_env(actor.mode(x if body is None else body(x)))[0]
        return int(a) if actor.discrete else a

    return policy
