"""Linear action values and semi-gradient Q-learning / SARSA (Sutton & Barto §9.4, §10.1).

Q_θ(s, a) = θ_a · φ(s): a state feature vector φ(s) of size d and one weight vector per action,
θ of shape (A, d). This is the linear model θ · f(s, a) with f(s, a) = e_a ⊗ φ(s), the
"stacked" state-action features of S&B §10.1, stored without the zeros. The semi-gradient
update moves only the taken action's weights, ∇_θ Q_θ(s, a) = e_a ⊗ φ(s):

    θ_a += α [target − Q_θ(s, a)] φ(s)

with the same targets as :mod:`pavlov.tabular.control` (r on ``terminated``; on ``truncated``
the next state still bootstraps). Feature maps:

* :class:`OneHot` for Discrete observations, φ(s) = e_s: θ_a[s] *is* Q(s, a) and the update is
  tabular Q-learning's, operation for operation, so with the same seed and schedule
  :func:`train_linear_q` returns exactly the Q of :func:`~pavlov.tabular.control.train_tabular`;
* :class:`TileCoding` for Box observations with finite bounds (S&B §9.5.4);
* :class:`FunctionFeatures`: any ``obs -> np.ndarray (d,)`` callable of your own.
"""

from __future__ import annotations

import math
import operator
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from pavlov.errors import ConfigError, PavlovError, check_count, check_positive, check_range
from pavlov.tabular.control import EPSILON_DECAYS, EpisodeCallback, exploration_schedule
from pavlov.tabular.exploration import EXPLORATION, Schedule


class Features(Protocol):
    """A state feature map φ: ``features(obs) -> np.ndarray`` of shape (n_features,)."""

    n_features: int

    def __call__(self, obs: Any) -> np.ndarray: ...


class OneHot:
    """φ(s) = e_s for a Discrete observation s in [0, n)."""

    def __init__(self, n: int):
        self.n_features = int(n)

    def __call__(self, obs: int) -> np.ndarray:
        phi = np.zeros(self.n_features)
        phi[obs] = 1.0
        return phi


class TileCoding:
    """Binary tile-coding features of a bounded Box observation (Sutton & Barto §9.5.4).

    ``n_tilings`` grids of ``tiles_per_dim`` tiles per dimension cover [low, high]; each is
    shifted by a fraction of a tile with the asymmetric displacement (1, 3, 5, ...) / n_tilings
    recommended in §9.5.4 (uniform diagonal offsets give diagonal artefacts). A grid needs
    ``tiles_per_dim + 1`` tiles per dimension to cover the box after its shift, so
    d = n_tilings · (tiles_per_dim + 1)^D. Tiles are indexed densely, not hashed: fine for the
    few-dimensional boxes tile coding suits (MountainCar: 8 · 9² = 648 features).
    Exactly ``n_tilings`` features are 1, so a step size of α / n_tilings moves Q(s, a) a
    fraction ≈ α of the way to the target (§9.6).
    """

    def __init__(self, low, high, n_tilings: int = 8, tiles_per_dim: int = 8):
        self.low = np.asarray(low, dtype=np.float64).ravel()
        self.high = np.asarray(high, dtype=np.float64).ravel()
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()):
            raise PavlovError(
                f"tile coding needs finite bounds, got low={self.low}, high={self.high}; pass "
                "features=TileCoding(low, high) with the range you care about"
            )
        if (self.high <= self.low).any():
            raise PavlovError(f"tile coding needs high > low, got {self.low} and {self.high}")
        check_count("n_tilings", n_tilings)
        check_count("tiles_per_dim", tiles_per_dim)
        dims = self.low.size
        self.n_tilings, self.tiles_per_dim = int(n_tilings), int(tiles_per_dim)
        side = self.tiles_per_dim + 1
        self.n_features = self.n_tilings * side**dims
        displacement = 2 * np.arange(dims) + 1  # (D,): 1, 3, 5, ...
        self._offsets = (np.arange(self.n_tilings)[:, None] * displacement / n_tilings) % 1.0
        self._scale = self.tiles_per_dim / (self.high - self.low)  # (D,) tiles per unit
        self._strides = side ** np.arange(dims)  # (D,) ravel a tile's coordinates
        self._bases = np.arange(self.n_tilings) * side**dims  # (n,) first index of each tiling

    def active(self, obs) -> np.ndarray:
        """(n_tilings,) int: the index of the one active tile in each tiling."""
        scaled = (np.asarray(obs, dtype=np.float64) - self.low) * self._scale  # (D,) in [0, T]
        scaled = np.clip(scaled, 0.0, self.tiles_per_dim)  # out-of-box obs use the edge tiles
        coords = (scaled + self._offsets).astype(np.int64)  # (n, D), floor of positives
        return self._bases + coords @ self._strides

    def __call__(self, obs) -> np.ndarray:
        phi = np.zeros(self.n_features)
        phi[self.active(obs)] = 1.0
        return phi


class FunctionFeatures:
    """Wraps a user callable ``obs -> array-like (n_features,)`` as a feature map."""

    def __init__(self, fn: Callable[[Any], Any], n_features: int):
        self.fn, self.n_features = fn, int(n_features)

    def __call__(self, obs: Any) -> np.ndarray:
        return np.asarray(self.fn(obs), dtype=np.float64)


def default_features(env: gym.Env, n_tilings: int = 8, tiles_per_dim: int = 8) -> Features:
    """One-hot for a Discrete observation space, tile coding for a bounded Box."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Discrete):
        return OneHot(int(space.n))
    if isinstance(space, gym.spaces.Box):
        return TileCoding(space.low, space.high, n_tilings, tiles_per_dim)
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    raise PavlovError(f"no default features for {name}'s observation space {space}")


@dataclass
class LinearQConfig:
    """Hyperparameters of :func:`train_linear_q`."""

    algo: str = "q-learning"
    """``"q-learning"``, ``"sarsa"`` or ``"expected-sarsa"`` (semi-gradient, S&B §10.1)."""
    episodes: int = 500
    """Number of training episodes (> 0)."""
    gamma: float = 1.0
    """Discount factor in [0, 1]."""
    alpha: float = 0.1
    """Step size in (0, 1]; with tile coding use α / n_tilings (S&B Fig. 10.1: 0.5 / 8)."""
    exploration: str = "epsilon-greedy"
    """``"epsilon-greedy"``, ``"random"``, ``"greedy"``, ``"glie"`` or ``"softmax"``."""
    epsilon_start: float = 0.1
    """ε of the first episode, in [0, 1]."""
    epsilon_end: float = 0.0
    """ε once the decay is over, in [0, 1]."""
    epsilon_decay: str = "linear"
    """``"constant"``, ``"linear"`` or ``"exponential"``."""
    decay_fraction: float = 0.5
    """Fraction of ``episodes`` over which ε decays, in (0, 1]."""
    temperature: float = 1.0
    """Softmax temperature (> 0)."""
    theta_init: float = 0.0
    """Initial value of every weight; 0 is optimistic when rewards are negative (MountainCar)."""
    n_tilings: int = 8
    """Tilings of the default tile coder of a Box observation (> 0)."""
    tiles_per_dim: int = 8
    """Tiles per dimension of each tiling of the default tile coder (> 0)."""
    seed: int = 0
    """Seeds the first ``env.reset``, ``env.action_space`` and the agent's own RNG."""

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("algo", self.algo, LINEAR_RULES),
            ("exploration", self.exploration, EXPLORATION),
            ("epsilon_decay", self.epsilon_decay, EPSILON_DECAYS),
        ):
            if value not in choices:
                raise ConfigError(f"{name} must be one of {sorted(choices)}, got {value!r}")
        check_count("episodes", self.episodes)
        check_range("gamma", self.gamma, 0.0, 1.0)
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha!r}")
        check_range("epsilon_start", self.epsilon_start, 0.0, 1.0)
        check_range("epsilon_end", self.epsilon_end, 0.0, 1.0)
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction!r}")
        check_positive("temperature", self.temperature)
        if not math.isfinite(self.theta_init):
            raise ConfigError(f"theta_init must be finite, got {self.theta_init!r}")
        check_count("n_tilings", self.n_tilings)
        check_count("tiles_per_dim", self.tiles_per_dim)

    def schedule(self) -> Schedule:
        """The exploration parameter of each episode: ``schedule(episode) -> float``."""
        return exploration_schedule(
            self.exploration,
            self.epsilon_start,
            self.epsilon_end,
            self.epsilon_decay,
            max(1, round(self.decay_fraction * self.episodes)),
            self.temperature,
        )


@dataclass
class LinearQResult:
    """Weights learned by :func:`train_linear_q` and how the training episodes went."""

    theta: np.ndarray
    """(A, d) weights: Q(s, a) = theta[a] @ features(s)."""
    features: Features = field(repr=False)
    """The feature map φ the weights belong to."""
    returns: np.ndarray
    """Undiscounted return of each training episode (E,)."""
    lengths: np.ndarray
    """Steps in each training episode (E,)."""
    successes: np.ndarray
    """(E,) bool: ``info["is_success"]``, else terminated with a positive last reward."""
    steps: int
    """Total env steps."""
    seconds: float
    """Wall time of the training loop."""
    config: LinearQConfig = field(repr=False)
    """The config that produced this result."""

    def q_values(self, obs: Any) -> np.ndarray:
        """(A,) action values of one observation."""
        return self.theta @ self.features(obs)

    def policy(self, obs: Any, t: int = 0) -> int:
        """Greedy action (lowest index on ties); matches the ``policy(obs, t)`` convention."""
        return int(np.argmax(self.q_values(obs)))


@dataclass
class _Loop:
    """What an episode function needs; unpacked into locals once per episode."""

    step: Callable[[int], tuple]
    theta: np.ndarray  # (A, d), updated in place
    features: Features
    select: Callable[[list[float], float, Callable[[], float]], int]
    probs: Callable[[list[float], float], list[float]]
    uniform: Callable[[], float]
    gamma: float
    alpha: float


def _bootstrap_episode(
    loop: _Loop, obs: Any, param: float, bootstrap: Callable[[list[float]], float]
) -> tuple[float, int, bool]:
    """Semi-gradient Q-learning (bootstrap = max) or Expected SARSA, acting after each update."""
    step, theta, features, uniform = loop.step, loop.theta, loop.features, loop.uniform
    select, gamma, alpha = loop.select, loop.gamma, loop.alpha
    episode_return, length = 0.0, 0
    phi = features(obs)  # (d,)
    while True:
        q = (theta @ phi).tolist()  # (A,)
        action = select(q, param, uniform)
        obs, reward, terminated, truncated, info = step(action)
        episode_return += reward
        length += 1
        if terminated:
            theta[action] += (alpha * (reward - q[action])) * phi
            return episode_return, length, info.get("is_success", reward > 0)
        next_phi = features(obs)
        target = reward + gamma * bootstrap((theta @ next_phi).tolist())
        theta[action] += (alpha * (target - q[action])) * phi
        if truncated:
            return episode_return, length, info.get("is_success", False)
        phi = next_phi


def _q_learning_episode(loop: _Loop, obs: Any, param: float) -> tuple[float, int, bool]:
    return _bootstrap_episode(loop, obs, param, max)


def _expected_sarsa_episode(loop: _Loop, obs: Any, param: float) -> tuple[float, int, bool]:
    probs = loop.probs

    def expected_value(q: list[float]) -> float:
        return sum(map(operator.mul, probs(q, param), q))

    return _bootstrap_episode(loop, obs, param, expected_value)


def _sarsa_episode(loop: _Loop, obs: Any, param: float) -> tuple[float, int, bool]:
    """Episodic semi-gradient SARSA (Sutton & Barto §10.1, boxed algorithm)."""
    step, theta, features, uniform = loop.step, loop.theta, loop.features, loop.uniform
    select, gamma, alpha = loop.select, loop.gamma, loop.alpha
    episode_return, length = 0.0, 0
    phi = features(obs)  # (d,)
    q = (theta @ phi).tolist()  # (A,)
    action = select(q, param, uniform)
    while True:
        obs, reward, terminated, truncated, info = step(action)
        episode_return += reward
        length += 1
        if terminated:
            theta[action] += (alpha * (reward - q[action])) * phi
            return episode_return, length, info.get("is_success", reward > 0)
        next_phi = features(obs)
        next_q = (theta @ next_phi).tolist()
        next_action = select(next_q, param, uniform)
        theta[action] += (alpha * (reward + gamma * next_q[next_action] - q[action])) * phi
        if truncated:
            return episode_return, length, info.get("is_success", False)
        phi, action = next_phi, next_action
        q = (theta @ phi).tolist()  # after the update, as the tabular Q row would be


LINEAR_RULES: dict[str, Callable[[_Loop, Any, float], tuple[float, int, bool]]] = {
    "q-learning": _q_learning_episode,
    "sarsa": _sarsa_episode,
    "expected-sarsa": _expected_sarsa_episode,
}
"""One training episode per algorithm: ``run(loop, first_obs, param) -> (return, length,
success)``, updating ``loop.theta`` in place."""


def _resolve_features(env: gym.Env, cfg: LinearQConfig, features: Any) -> Features:
    if features is None:
        return default_features(env, cfg.n_tilings, cfg.tiles_per_dim)
    if hasattr(features, "n_features"):
        return features
    if callable(features):  # a bare callable: size it on one sample observation
        env.observation_space.seed(cfg.seed)
        size = np.asarray(features(env.observation_space.sample())).size
        return FunctionFeatures(features, size)
    raise PavlovError(f"features must be None, a feature map or a callable, got {features!r}")


def train_linear_q(
    env: gym.Env,
    cfg: LinearQConfig,
    features: Features | Callable[[Any], Any] | None = None,
    on_episode: EpisodeCallback | None = None,
) -> LinearQResult:
    """Learn linear action values on ``env`` (Discrete actions) with ``cfg.algo``.

    ``features`` is a feature map (:class:`OneHot`, :class:`TileCoding`, ...), a bare callable
    ``obs -> array (d,)``, or None for :func:`default_features`. ``on_episode(episode_index,
    episode_return, length, success, epsilon)`` is called after each episode if given.
    """
    if not isinstance(env.action_space, gym.spaces.Discrete):
        name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        raise PavlovError(
            f"train_linear_q needs a Discrete action space; {name} has {env.action_space}"
        )
    phi = _resolve_features(env, cfg, features)
    strategy = EXPLORATION[cfg.exploration]
    rng = random.Random(cfg.seed)
    env.action_space.seed(cfg.seed)
    loop = _Loop(
        step=env.step,
        theta=np.full((int(env.action_space.n), phi.n_features), float(cfg.theta_init)),
        features=phi,
        select=strategy.select,
        probs=strategy.probs,
        uniform=rng.random,
        gamma=cfg.gamma,
        alpha=cfg.alpha,
    )
    run_episode = LINEAR_RULES[cfg.algo]
    schedule = cfg.schedule()
    returns, lengths, successes = [], [], []
    start = time.perf_counter()
    for episode in range(cfg.episodes):
        obs, _ = env.reset(seed=cfg.seed if episode == 0 else None)
        param = schedule(episode)
        episode_return, length, success = run_episode(loop, obs, param)
        returns.append(episode_return)
        lengths.append(length)
        successes.append(success)
        if on_episode is not None:
            on_episode(episode, episode_return, length, success, param)
    return LinearQResult(
        theta=loop.theta,
        features=phi,
        returns=np.array(returns, dtype=np.float64),
        lengths=np.array(lengths, dtype=np.int64),
        successes=np.array(successes, dtype=bool),
        steps=int(sum(lengths)),
        seconds=time.perf_counter() - start,
        config=cfg,
    )
