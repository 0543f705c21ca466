"""Policies for actor-critic agents: the network and the heads that turn its outputs into
actions, log-probabilities and entropies.

:class:`ActorCritic` is the torch module (separate actor and critic MLPs or a shared trunk);
:class:`NumpyActorCritic` is a frozen NumPy copy of it for rollouts and evaluation.

A head is chosen by the action space (:data:`HEADS`): ``Discrete(n)`` -> :class:`CategoricalHead`
over ``n`` logits; ``Box`` -> :class:`GaussianHead`, a diagonal Gaussian whose mean is the network
output and whose log-std is a state-independent parameter (Schulman et al. 2017, PPO, Sec. 6.1;
SB3's ``DiagGaussianDistribution``). Each head works twice over:

* in NumPy, for rollouts: ``sample_np`` / ``mode_np`` on ``(N, k)`` outputs of one vector step
  (tiny matrices, where a NumPy op costs ~1 us and a torch op ~5 us). A rollout loop can go
  further: draw the noise of all its steps at once (``noise_np``), act with two ops per step
  (``act_np``) and compute every log-prob after the loop in one call (``log_prob_np``);
* in torch with autograd, for the update: ``log_prob`` and ``entropy`` on ``(B, k)`` outputs.

``log_std`` is ``None`` for the categorical head. Actions are stored flat: ``(N,)`` int64 indices
from 0, or ``(N, D)`` float32 (unclipped: the log-prob is of the sampled action; clipping to the
Box happens in :meth:`GaussianHead.to_env`, as in SB3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pavlov.agents.common import ACTIVATIONS, mlp
from pavlov.math import categorical_entropy

__all__ = [
    "HEADS",
    "NP_ACTIVATIONS",
    "ActorCritic",
    "CategoricalHead",
    "GaussianHead",
    "NumpyActorCritic",
    "gaussian_entropy",
    "gaussian_log_prob",
]

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(a | mean, diag(exp(log_std))^2), summed over the action dims.

    ``sum_d [-(a_d - mu_d)^2 / (2 sigma_d^2) - log sigma_d - log(2 pi) / 2]``.

    Args:
        actions: ``(B, D)``.
        mean: ``(B, D)``.
        log_std: ``(D,)`` or ``(B, D)``.

    Returns:
        ``(B,)``.
    """
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian, ``sum_d [log sigma_d + (1 + log 2 pi) / 2]``.

    Args:
        log_std: ``(..., D)``.

    Returns:
        ``(...)`` entropies in nats (independent of the mean).
    """
    return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)


class CategoricalHead:
    """``Discrete(n)`` actions from ``n`` logits."""

    def __init__(self, space: gym.spaces.Discrete) -> None:
        self.n_outputs = int(space.n)
        self.start = int(space.start)
        self.action_shape: tuple[int, ...] = ()
        self.action_dtype = np.int64

    def noise_np(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Standard Gumbel noise ``(*shape, n)`` for :meth:`act_np`."""
        return rng.gumbel(size=(*shape, self.n_outputs))

    def act_np(self, logits: np.ndarray, log_std: np.ndarray | None, noise: np.ndarray
               ) -> np.ndarray:
        """(..., n) logits + Gumbel noise -> (...) actions: ``argmax(logits + g)`` is a sample of
        ``Categorical(softmax(logits))`` (the Gumbel-max trick; Maddison et al. 2014)."""
        return (logits + noise).argmax(-1)

    def log_prob_np(self, logits: np.ndarray, log_std: np.ndarray | None, actions: np.ndarray
                    ) -> np.ndarray:
        """(..., n) logits, (...) actions -> (...) log-probs (stable log-softmax)."""
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return np.take_along_axis(logp, actions[..., None], -1)[..., 0]

    def sample_np(
        self, logits: np.ndarray, log_std: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, n) logits -> ((N,) sampled actions, (N,) their log-probs)."""
        actions = self.act_np(logits, log_std, self.noise_np(rng, logits.shape[:-1]))
        return actions, self.log_prob_np(logits, log_std, actions)

    def mode_np(self, logits: np.ndarray, log_std: np.ndarray | None) -> np.ndarray:
        return logits.argmax(-1)

    def log_prob(self, logits: Tensor, log_std: Tensor | None, actions: Tensor) -> Tensor:
        """(B, n) logits, (B,) int64 actions -> (B,)."""
        logp = torch.log_softmax(logits, dim=-1)
        return logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def entropy(self, logits: Tensor, log_std: Tensor | None) -> Tensor:
        return categorical_entropy(logits)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """(N,) indices -> actions the vector env takes."""
        return actions + self.start if self.start else actions


class GaussianHead:
    """``Box`` actions from a diagonal Gaussian: mean from the network, state-independent
    log-std (a parameter of the model)."""

    def __init__(self, space: gym.spaces.Box) -> None:
        self.space_shape = space.shape
        self.n_outputs = int(np.prod(space.shape))
        self.action_shape = (self.n_outputs,)
        self.action_dtype = np.float32
        self.low = space.low.reshape(-1).astype(np.float32)
        self.high = space.high.reshape(-1).astype(np.float32)

    def noise_np(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal noise ``(*shape, D)`` for :meth:`act_np`."""
        return rng.standard_normal((*shape, self.n_outputs), dtype=np.float32)

    def act_np(self, mean: np.ndarray, log_std: np.ndarray | None, noise: np.ndarray
               ) -> np.ndarray:
        """(..., D) means + standard normal noise -> (..., D) actions ``mean + sigma * noise``."""
        return mean + np.exp(log_std) * noise

    def log_prob_np(self, mean: np.ndarray, log_std: np.ndarray | None, actions: np.ndarray
                    ) -> np.ndarray:
        """NumPy :func:`gaussian_log_prob`: (..., D) -> (...)."""
        z = (actions - mean) * np.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * LOG_2PI).sum(-1)

    def sample_np(
        self, mean: np.ndarray, log_std: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) means -> ((N, D) actions, (N,) log-probs)."""
        actions = self.act_np(mean, log_std, self.noise_np(rng, mean.shape[:-1]))
        return actions, self.log_prob_np(mean, log_std, actions)

    def mode_np(self, mean: np.ndarray, log_std: np.ndarray | None) -> np.ndarray:
        return mean

    def log_prob(self, mean: Tensor, log_std: Tensor | None, actions: Tensor) -> Tensor:
        return gaussian_log_prob(actions, mean, log_std)

    def entropy(self, mean: Tensor, log_std: Tensor | None) -> Tensor:
        return gaussian_entropy(log_std).expand(mean.shape[0])

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """(N, D) -> clipped to the Box and shaped ``(N, *space.shape)``."""
        clipped = np.clip(actions, self.low, self.high)
        return clipped.reshape((actions.shape[0], *self.space_shape))


HEADS: dict[type[gym.Space], type[CategoricalHead] | type[GaussianHead]] = {
    gym.spaces.Discrete: CategoricalHead,
    gym.spaces.Box: GaussianHead,
}
"""Action-space type -> head class."""


# ----------------------------------------------------------------------------------- network


class ActorCritic(nn.Module):
    """Actor and critic MLPs (or a shared trunk with two heads); a log-std for Box actions.

    Orthogonal init (:func:`~pavlov.agents.common.mlp`) with the SB3/CleanRL output gains: 0.01
    for the policy (a near-uniform initial policy), 1 for the value.
    """

    def __init__(
        self,
        in_dim: int,
        n_out: int,
        hidden: Sequence[int],
        activation: str = "tanh",
        shared: bool = False,
        log_std_init: float | None = None,
    ) -> None:
        """``log_std_init=None``: no log-std parameter (discrete actions)."""
        super().__init__()
        self.activation = activation
        if shared:
            trunk = mlp([in_dim, *hidden], activation, out_gain=math.sqrt(2))
            self.trunk: nn.Module | None = nn.Sequential(*trunk, ACTIVATIONS[activation]())
            self.pi = mlp([hidden[-1], n_out], out_gain=0.01)
            self.v = mlp([hidden[-1], 1], out_gain=1.0)
        else:
            self.trunk = None
            self.pi = mlp([in_dim, *hidden, n_out], activation, out_gain=0.01)
            self.v = mlp([in_dim, *hidden, 1], activation, out_gain=1.0)
        self.log_std = (
            None if log_std_init is None else nn.Parameter(torch.full((n_out,), log_std_init))
        )

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(B, in_dim) -> ((B, n_out) logits or means, (B,) values)."""
        h = obs if self.trunk is None else self.trunk(obs)
        return self.pi(h), self.v(h).squeeze(-1)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _np_params(lin: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """(W^T, b) as NumPy copies, so that ``x @ W^T + b`` is the layer."""
    return lin.weight.detach().cpu().numpy().T.copy(), lin.bias.detach().cpu().numpy().copy()


def _block_diag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]), dtype=a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0] :, a.shape[1] :] = b
    return out


NP_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
"""NumPy twins of :data:`pavlov.agents.common.ACTIVATIONS` for :class:`NumpyActorCritic`."""


class NumpyActorCritic:
    """A frozen NumPy copy of an :class:`ActorCritic` computing ``[pi_out, value]`` in one pass.

    Separate actor and critic layers are fused (side by side for the layer that reads the
    input, block-diagonal after), so a forward is one matmul + bias + activation per depth. For
    rollouts and evaluation, where batches are tiny and a torch op's dispatch (~5 us) costs more
    than its math; a torch forward of the two MLPs takes ~3x as long per vector step.
    """

    def __init__(self, model: ActorCritic) -> None:
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        if model.trunk is not None:
            layers += [_np_params(lin) for lin in _linears(model.trunk)]
        for i, (a, c) in enumerate(zip(_linears(model.pi), _linears(model.v), strict=True)):
            (wa, ba), (wc, bc) = _np_params(a), _np_params(c)
            same_input = model.trunk is not None or i == 0
            layers.append((np.hstack([wa, wc]) if same_input else _block_diag(wa, wc),
                           np.concatenate([ba, bc])))
        self.layers = layers
        self.act = NP_ACTIVATIONS[model.activation]
        self.log_std = (None if model.log_std is None
                        else model.log_std.detach().cpu().numpy().copy())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, in_dim) float32 -> (N, n_out + 1): the policy outputs, then the value."""
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < last:
                x = self.act(x)
        return x
