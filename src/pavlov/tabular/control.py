"""Model-free tabular control: Q-learning, SARSA and Expected SARSA on Gymnasium envs.

Works on any env whose observation and action spaces are ``Discrete`` (FrozenLake, Taxi,
CliffWalking, pavlov's grids). One episode of each algorithm is a small function, picked from
:data:`UPDATE_RULES` by ``cfg.algo``; they share the exploration strategies of
:mod:`pavlov.tabular.exploration`.

Speed: env.step through ``gymnasium.make``'s wrappers costs a few µs, and the learning loop is
meant to cost no more than that (``benchmarks/tabular.py``). So the hot loop keeps Q as a list of
Python lists, draws from ``random.Random`` and uses the builtins ``max``/``list.count``: on
4-element rows each numpy call (``argmax``, scalar indexing, ``Generator.random``) costs more
than the whole update. Q is returned as a numpy array.

Terminal handling follows Gymnasium: on ``terminated`` the target is r (V(terminal) = 0); on
``truncated`` (a time limit) the next state is an ordinary state, so the target still bootstraps
from it (Pardo et al. 2018, "Time Limits in Reinforcement Learning").
"""

from __future__ import annotations

import math
import operator
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from pavlov.errors import (
    ConfigError,
    PavlovError,
    check_choice,
    check_count,
    check_positive,
    check_range,
)
from pavlov.tabular.exploration import (
    EXPLORATION,
    Schedule,
    constant_schedule,
    epsilon_schedule,
)

EpisodeCallback = Callable[[int, float, int, bool, float], Any]
"""``on_episode(episode_index, episode_return, length, success, epsilon)``."""

STEP_SIZES = ("constant", "visits")
EPSILON_DECAYS = ("constant", "linear", "exponential")


@dataclass
class TabularConfig:
    """Hyperparameters of :func:`train_tabular`."""

    algo: str = "q-learning"
    """Update rule: ``"q-learning"`` (off-policy, Watkins 1989), ``"sarsa"`` or
    ``"expected-sarsa"`` (on-policy; Sutton & Barto §6.4-6.6)."""
    episodes: int = 10_000
    """Number of training episodes (> 0)."""
    gamma: float = 0.99
    """Discount factor in [0, 1]."""
    alpha: float = 0.1
    """Step size in (0, 1] when ``step_size == "constant"``; unused for ``"visits"``."""
    step_size: str = "constant"
    """``"constant"`` (α = alpha) or ``"visits"`` (α = 1/N(s,a), the sample average of the
    targets; satisfies the Robbins-Monro conditions, Sutton & Barto §2.7, but makes Q-learning
    converge very slowly for γ near 1: Even-Dar & Mansour 2003, "Learning Rates for
    Q-learning")."""
    exploration: str = "epsilon-greedy"
    """Behaviour policy: ``"epsilon-greedy"``, ``"random"``, ``"greedy"``, ``"glie"`` (ε = 1/k in
    episode k = 1, 2, ...) or ``"softmax"``."""
    epsilon_start: float = 1.0
    """ε of the first episode, in [0, 1] (epsilon-greedy only)."""
    epsilon_end: float = 0.05
    """ε once the decay is over, in [0, 1] (epsilon-greedy only)."""
    epsilon_decay: str = "linear"
    """Shape of the ε decay: ``"constant"`` (ε = epsilon_start), ``"linear"`` or
    ``"exponential"`` (see :mod:`pavlov.tabular.exploration`)."""
    decay_fraction: float = 0.5
    """Fraction of ``episodes`` over which ε decays from start to end, in (0, 1]."""
    temperature: float = 1.0
    """Softmax temperature (> 0): larger is more uniform (softmax only)."""
    q_init: float = 0.0
    """Initial value of every Q(s, a); values above the best return explore optimistically."""
    seed: int = 0
    """Seeds the first ``env.reset``, ``env.action_space`` and the agent's own RNG."""

    def __post_init__(self) -> None:
        check_choice("algo", self.algo, UPDATE_RULES)
        check_choice("step_size", self.step_size, STEP_SIZES)
        check_choice("exploration", self.exploration, EXPLORATION)
        check_choice("epsilon_decay", self.epsilon_decay, EPSILON_DECAYS)
        check_count("episodes", self.episodes)
        check_range("gamma", self.gamma, 0.0, 1.0)
        _check_step(self.alpha)
        check_range("epsilon_start", self.epsilon_start, 0.0, 1.0)
        check_range("epsilon_end", self.epsilon_end, 0.0, 1.0)
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction!r}")
        check_positive("temperature", self.temperature)
        if not math.isfinite(self.q_init):
            raise ConfigError(f"q_init must be finite, got {self.q_init!r}")

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


def _check_step(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"alpha must be in (0, 1], got {alpha!r}")


def exploration_schedule(
    exploration: str,
    epsilon_start: float,
    epsilon_end: float,
    epsilon_decay: str,
    decay_episodes: int,
    temperature: float,
) -> Schedule:
    """Per-episode parameter of ``exploration``: ε, the temperature, or 1/0 for random/greedy.

    Shared by the tabular, linear and model-based trainers so the same settings give the same
    behaviour policy (and, with the same seed, the same random stream).
    """
    decay = "glie" if exploration == "glie" else epsilon_decay  # GLIE is ε-greedy, ε_k = 1/k
    by_param: dict[str, Callable[[], Schedule]] = {
        "epsilon": lambda: epsilon_schedule(decay, epsilon_start, epsilon_end, decay_episodes),
        "temperature": lambda: constant_schedule(temperature, temperature, decay_episodes),
        # the ε each amounts to: random is ε = 1, greedy ε = 0
        "none": lambda: constant_schedule(float(exploration == "random"), 0.0, decay_episodes),
    }
    return by_param[EXPLORATION[exploration].param]()


def discrete_sizes(env: gym.Env, who: str = "tabular methods") -> tuple[int, int]:
    """(n_states, n_actions) of an env with Discrete spaces, else a one-line PavlovError."""
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    for kind, space in (("observation", env.observation_space), ("action", env.action_space)):
        if not isinstance(space, gym.spaces.Discrete):
            raise PavlovError(
                f"{who} need Discrete observation and action spaces; {name} has {kind} space "
                f"{space}"
            )
    return int(env.observation_space.n), int(env.action_space.n)


@dataclass
class TabularResult:
    """What :func:`train_tabular` learned and how the training episodes went."""

    Q: np.ndarray
    """Action values (S, A)."""
    returns: np.ndarray
    """Undiscounted return of each training episode (E,)."""
    lengths: np.ndarray
    """Steps in each training episode (E,)."""
    successes: np.ndarray
    """(E,) bool: the episode terminated with a positive last reward (FrozenLake's goal)."""
    steps: int
    """Total env steps."""
    seconds: float
    """Wall time of the training loop (resets, steps, updates and callbacks)."""
    config: TabularConfig = field(repr=False)
    """The config that produced this result."""
    resume: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """The final :func:`resume_state` (saved in the final checkpoint, so that ``--resume`` of
    a run killed after it only finishes the evaluation)."""

    def greedy_policy(self) -> np.ndarray:
        """(S,) int: argmax_a Q(s, a), lowest index on ties."""
        return self.Q.argmax(axis=1)


@dataclass
class _Loop:
    """What an episode function needs; unpacked into locals once per episode."""

    step: Callable[[int], tuple]
    q: list[list[float]]  # (S, A)
    counts: list[list[int]] | None  # (S, A) visit counts when α = 1/N(s,a), else None
    select: Callable[[list[float], float, Callable[[], float]], int]
    probs: Callable[[list[float], float], list[float]]
    uniform: Callable[[], float]
    gamma: float
    alpha: float


def _bootstrap_episode(
    loop: _Loop, state: int, param: float, bootstrap: Callable[[list[float]], float]
) -> tuple[float, int, bool]:
    """Q(s,a) += α [r + γ·bootstrap(Q(s',·)) − Q(s,a)], acting after each update.

    With bootstrap = max this is Q-learning (Sutton & Barto §6.5); with the expectation under the
    behaviour policy it is Expected SARSA (§6.6; van Seijen et al. 2009).
    """
    step, q, counts, uniform = loop.step, loop.q, loop.counts, loop.uniform
    select, gamma, alpha = loop.select, loop.gamma, loop.alpha
    episode_return, length = 0.0, 0
    while True:
        row = q[state]
        action = select(row, param, uniform)
        next_state, reward, terminated, truncated, info = step(action)
        episode_return += reward
        length += 1
        if counts is not None:
            visits = counts[state]
            visits[action] += 1
            alpha = 1.0 / visits[action]
        if terminated:  # V(terminal) = 0
            row[action] += alpha * (reward - row[action])
            return episode_return, length, info.get("is_success", reward > 0)
        row[action] += alpha * (reward + gamma * bootstrap(q[next_state]) - row[action])
        if truncated:
            return episode_return, length, info.get("is_success", False)
        state = next_state


def _q_learning_episode(loop: _Loop, state: int, param: float) -> tuple[float, int, bool]:
    return _bootstrap_episode(loop, state, param, max)


def _expected_sarsa_episode(loop: _Loop, state: int, param: float) -> tuple[float, int, bool]:
    probs = loop.probs

    def expected_value(row: list[float]) -> float:
        return sum(map(operator.mul, probs(row, param), row))

    return _bootstrap_episode(loop, state, param, expected_value)


def _sarsa_episode(loop: _Loop, state: int, param: float) -> tuple[float, int, bool]:
    """Q(s,a) += α [r + γ Q(s',a') − Q(s,a)], a' drawn before the update (Sutton & Barto §6.4)."""
    step, q, counts, uniform = loop.step, loop.q, loop.counts, loop.uniform
    select, gamma, alpha = loop.select, loop.gamma, loop.alpha
    episode_return, length = 0.0, 0
    action = select(q[state], param, uniform)
    while True:
        next_state, reward, terminated, truncated, info = step(action)
        episode_return += reward
        length += 1
        row = q[state]
        if counts is not None:
            visits = counts[state]
            visits[action] += 1
            alpha = 1.0 / visits[action]
        if terminated:
            row[action] += alpha * (reward - row[action])
            return episode_return, length, info.get("is_success", reward > 0)
        next_row = q[next_state]
        next_action = select(next_row, param, uniform)
        row[action] += alpha * (reward + gamma * next_row[next_action] - row[action])
        if truncated:
            return episode_return, length, info.get("is_success", False)
        state, action = next_state, next_action


UPDATE_RULES: dict[str, Callable[[_Loop, int, float], tuple[float, int, bool]]] = {
    "q-learning": _q_learning_episode,
    "sarsa": _sarsa_episode,
    "expected-sarsa": _expected_sarsa_episode,
}
"""One training episode of each algorithm: ``run(loop, first_state, param) ->
(return, length, success)``, updating ``loop.q`` in place."""


def train_tabular(
    env: gym.Env,
    cfg: TabularConfig,
    on_episode: EpisodeCallback | None = None,
    *,
    checkpoint: Callable[[int, dict[str, np.ndarray]], Any] | None = None,
    checkpoint_every: int = 0,
    resume: dict[str, np.ndarray] | None = None,
) -> TabularResult:
    """Learn Q on ``env`` (Discrete spaces) with ``cfg.algo``; same seed, same Q.

    ``on_episode(episode_index, episode_return, length, success, epsilon)`` is called after each
    episode if given (``epsilon`` is the episode's exploration parameter).

    ``checkpoint(episodes_done, state)`` gets a resumable state (arrays, see
    :func:`resume_state`) every ``checkpoint_every`` episodes, and once more before the run stops
    on SIGINT/SIGTERM (:mod:`pavlov.run.interrupt`); ``resume=state`` continues such a run bit
    for bit. Checkpoints fall between episodes, where an env's only state is its RNG.
    """
    from pavlov.run import interrupt

    n_states, n_actions = discrete_sizes(env, "train_tabular")
    strategy = EXPLORATION[cfg.exploration]
    rng = random.Random(cfg.seed)
    env.action_space.seed(cfg.seed)
    loop = _Loop(
        step=env.step,
        q=[[float(cfg.q_init)] * n_actions for _ in range(n_states)],
        counts=[[0] * n_actions for _ in range(n_states)] if cfg.step_size == "visits" else None,
        select=strategy.select,
        probs=strategy.probs,
        uniform=rng.random,
        gamma=cfg.gamma,
        alpha=cfg.alpha,
    )
    run_episode = UPDATE_RULES[cfg.algo]
    schedule = cfg.schedule()
    returns, lengths, successes = [], [], []
    if resume is not None:
        _restore(resume, loop, rng, env, returns, lengths, successes)
    start = time.perf_counter()
    for episode in range(len(returns), cfg.episodes):
        state, _ = env.reset(seed=cfg.seed if episode == 0 else None)
        param = schedule(episode)
        episode_return, length, success = run_episode(loop, int(state), param)
        returns.append(episode_return)
        lengths.append(length)
        successes.append(success)
        if on_episode is not None:
            on_episode(episode, episode_return, length, success, param)
        if checkpoint is not None and (
            (checkpoint_every and (episode + 1) % checkpoint_every == 0)
            or interrupt.requested() is not None
        ):
            checkpoint(episode + 1, resume_state(loop, rng, env, returns, lengths, successes))
        interrupt.check(episode + 1)
    seconds = time.perf_counter() - start
    final = {}
    if cfg.episodes > 0 and env.unwrapped.np_random.bit_generator.state["bit_generator"] == "PCG64":
        final = resume_state(loop, rng, env, returns, lengths, successes)
    return TabularResult(
        Q=np.array(loop.q, dtype=np.float64),
        returns=np.array(returns, dtype=np.float64),
        lengths=np.array(lengths, dtype=np.int64),
        successes=np.array(successes, dtype=bool),
        steps=int(sum(lengths)),
        seconds=seconds,
        config=cfg,
        resume=final,
    )


def resume_state(loop: _Loop, rng: random.Random, env: gym.Env, returns: list[float],
                 lengths: list[int], successes: list[bool]) -> dict[str, np.ndarray]:
    """Everything :func:`train_tabular` needs to continue after the episodes done so far, as
    plain arrays (an ``.npz`` checkpoint): Q (and visit counts), the per-episode records, the
    exploration RNG (Mersenne Twister words) and the env's RNG (its PCG64 state)."""
    version, words, gauss = rng.getstate()
    bits = env.unwrapped.np_random.bit_generator.state
    if bits["bit_generator"] != "PCG64":
        raise PavlovError(f"cannot checkpoint an env whose RNG is {bits['bit_generator']}")
    state = {
        "Q": np.array(loop.q, dtype=np.float64),
        "returns": np.array(returns, dtype=np.float64),
        "lengths": np.array(lengths, dtype=np.int64),
        "successes": np.array(successes, dtype=bool),
        "rng_words": np.array(words, dtype=np.int64),
        "rng_gauss": np.array([np.nan if gauss is None else gauss]),
        "env_rng": np.array([bits["state"]["state"], bits["state"]["inc"], bits["has_uint32"],
                             bits["uinteger"]], dtype=object).astype(str),
    }
    if loop.counts is not None:
        state["counts"] = np.array(loop.counts, dtype=np.int64)
    return state


def _restore(state: dict[str, np.ndarray], loop: _Loop, rng: random.Random, env: gym.Env,
             returns: list, lengths: list, successes: list) -> None:
    q = np.asarray(state["Q"])
    if q.shape != (len(loop.q), len(loop.q[0])):
        raise PavlovError(f"resume state's Q is {q.shape}, this env needs "
                          f"{(len(loop.q), len(loop.q[0]))}")
    loop.q[:] = q.tolist()
    if (loop.counts is None) != ("counts" not in state):
        raise PavlovError("resume state and config disagree on step_size")
    if loop.counts is not None:
        loop.counts[:] = np.asarray(state["counts"]).tolist()
    returns += state["returns"].tolist()
    lengths += state["lengths"].tolist()
    successes += state["successes"].tolist()
    gauss = float(state["rng_gauss"][0])
    rng.setstate((3, tuple(int(w) for w in state["rng_words"]),
                  None if math.isnan(gauss) else gauss))
    s, inc, has32, uint = (int(x) for x in state["env_rng"])
    gen = np.random.Generator(np.random.PCG64())
    gen.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": s, "inc": inc},
                               "has_uint32": has32, "uinteger": uint}
    env.unwrapped.np_random = gen
