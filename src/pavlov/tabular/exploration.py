"""Exploration for discrete actions: ε schedules and action-selection strategies.

A strategy is a pair of functions over one row of action values ``q_row`` (length A):

* ``select(q_row, param, uniform) -> int`` draws an action, where ``uniform`` is a zero-argument
  callable returning floats in [0, 1) (``random.Random().random``: the trainers' hot loops call
  it directly, which is several times cheaper than a numpy draw per step);
* ``probs(q_row, param) -> list[float]`` gives the probability of each action under that same
  rule, which Expected SARSA needs for its target (Sutton & Barto §6.6).

``param`` is ε for the ε-greedy family, the temperature for softmax and ignored otherwise.
Rows are plain Python lists in the hot loops (``max``/``list.count`` on a list cost a fraction of
numpy's per-call overhead on a 4-element array); the public :func:`select_action` and
:func:`action_probs` also accept numpy arrays.

Greedy ties are broken uniformly at random: tables start at ``q_init`` everywhere, and a
first-index tie-break would make an untrained agent always push the same action.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pavlov.errors import ConfigError

Uniform = Callable[[], float]
Schedule = Callable[[int], float]

# ---------------------------------------------------------------------------------------------
# ε schedules: episode index (0-based) -> ε


def constant_schedule(start: float, end: float, episodes: int) -> Schedule:
    """ε = ``start`` for every episode (``end`` and ``episodes`` are ignored)."""
    return lambda episode: start


def linear_schedule(start: float, end: float, episodes: int) -> Schedule:
    """ε falls linearly from ``start`` at episode 0 to ``end`` at ``episodes``, then stays."""
    span = max(episodes, 1)
    return lambda episode: end + (start - end) * max(0.0, 1.0 - episode / span)


def exponential_schedule(start: float, end: float, episodes: int) -> Schedule:
    """ε = end + (start − end)·0.01^(episode / episodes).

    The gap to ``end`` shrinks geometrically and is 1 % of its initial size after ``episodes``
    episodes; unlike ``start·decay^k`` this works for ``end = 0`` and never jumps.
    """
    span = max(episodes, 1)
    return lambda episode: end + (start - end) * 0.01 ** (episode / span)


def glie_schedule(start: float, end: float, episodes: int) -> Schedule:
    """ε_k = 1/k with k = episode + 1 (``start``, ``end``, ``episodes`` are ignored).

    Greedy in the limit with infinite exploration: every action keeps being tried infinitely
    often while the policy becomes greedy, which with Robbins-Monro step sizes makes SARSA
    converge to Q* (Singh, Jaakkola, Littman & Szepesvári 2000, Theorem 1).
    """
    return lambda episode: 1.0 / (episode + 1)


SCHEDULES: dict[str, Callable[[float, float, int], Schedule]] = {
    "constant": constant_schedule,
    "linear": linear_schedule,
    "exponential": exponential_schedule,
    "glie": glie_schedule,
}


def epsilon_schedule(kind: str, start: float, end: float, episodes: int) -> Schedule:
    """Return ``schedule(episode) -> ε`` of the given kind (a key of :data:`SCHEDULES`).

    ``episodes`` is the number of episodes over which ε decays from ``start`` to ``end``.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"epsilon schedule must be one of {sorted(SCHEDULES)}, got {kind!r}")
    return SCHEDULES[kind](start, end, episodes)


# ---------------------------------------------------------------------------------------------
# Action selection on one row of action values


def greedy_action(q_row: list[float], uniform: Uniform) -> int:
    """argmax of ``q_row``, ties broken uniformly at random."""
    best = max(q_row)
    if q_row.count(best) == 1:  # the common case after learning: two C calls, no Python loop
        return q_row.index(best)
    ties = [a for a, q in enumerate(q_row) if q == best]
    return ties[int(uniform() * len(ties))]


def _greedy_select(q_row: list[float], param: float, uniform: Uniform) -> int:
    return greedy_action(q_row, uniform)


def _random_select(q_row: list[float], param: float, uniform: Uniform) -> int:
    return int(uniform() * len(q_row))


def _epsilon_greedy_select(q_row: list[float], epsilon: float, uniform: Uniform) -> int:
    if uniform() < epsilon:
        return int(uniform() * len(q_row))
    return greedy_action(q_row, uniform)


def _softmax_weights(q_row: Sequence[float], temperature: float) -> list[float]:
    top = max(q_row)  # shift by the max so exp never overflows
    return [math.exp((q - top) / temperature) for q in q_row]


def _softmax_select(q_row: list[float], temperature: float, uniform: Uniform) -> int:
    weights = _softmax_weights(q_row, temperature)
    threshold = uniform() * sum(weights)
    for action, weight in enumerate(weights):
        threshold -= weight
        if threshold < 0.0:
            return action
    return len(weights) - 1  # rounding left threshold at ~0


def _greedy_probs(q_row: Sequence[float], param: float) -> list[float]:
    best = max(q_row)
    n_best = sum(1 for q in q_row if q == best)
    return [1.0 / n_best if q == best else 0.0 for q in q_row]


def _random_probs(q_row: Sequence[float], param: float) -> list[float]:
    return [1.0 / len(q_row)] * len(q_row)


def _epsilon_greedy_probs(q_row: Sequence[float], epsilon: float) -> list[float]:
    # ε/A to every action, plus 1 − ε shared by the tied greedy actions (Sutton & Barto §5.4)
    floor = epsilon / len(q_row)
    return [floor + (1.0 - epsilon) * p for p in _greedy_probs(q_row, epsilon)]


def _softmax_probs(q_row: Sequence[float], temperature: float) -> list[float]:
    weights = _softmax_weights(q_row, temperature)
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True)
class Exploration:
    """One exploration strategy: a sampler and the distribution it samples from."""

    select: Callable[[list[float], float, Uniform], int]
    """Draw an action: ``select(q_row, param, uniform) -> int``."""
    probs: Callable[[Sequence[float], float], list[float]]
    """Probability of each action: ``probs(q_row, param) -> list[float]`` (sums to 1)."""
    param: str
    """Which config value ``param`` is: ``"epsilon"``, ``"temperature"`` or ``"none"``."""


EXPLORATION: dict[str, Exploration] = {
    "random": Exploration(_random_select, _random_probs, "none"),
    "greedy": Exploration(_greedy_select, _greedy_probs, "none"),
    "epsilon-greedy": Exploration(_epsilon_greedy_select, _epsilon_greedy_probs, "epsilon"),
    # GLIE is ε-greedy whose ε follows glie_schedule; the trainer picks the schedule
    "glie": Exploration(_epsilon_greedy_select, _epsilon_greedy_probs, "epsilon"),
    "softmax": Exploration(_softmax_select, _softmax_probs, "temperature"),
}
"""Exploration strategies by config name (Sutton & Barto §2.2-2.3 ε-greedy, §13.1 softmax)."""


def get_exploration(name: str) -> Exploration:
    """The strategy called ``name``; :class:`ConfigError` listing the choices otherwise."""
    if name not in EXPLORATION:
        raise ConfigError(f"exploration must be one of {sorted(EXPLORATION)}, got {name!r}")
    return EXPLORATION[name]


def _as_list(q_row: Sequence[float]) -> list[float]:
    return q_row.tolist() if hasattr(q_row, "tolist") else list(q_row)


def select_action(
    q_row: Sequence[float], strategy: str, param: float = 0.0, rng: random.Random | None = None
) -> int:
    """Draw an action for one state from its action values ``q_row`` (A,).

    ``param`` is ε (``"epsilon-greedy"``/``"glie"``) or the temperature (``"softmax"``);
    ``rng`` defaults to a fresh, unseeded ``random.Random``.
    """
    uniform = (rng or random.Random()).random
    return get_exploration(strategy).select(_as_list(q_row), param, uniform)


def action_probs(q_row: Sequence[float], strategy: str, param: float = 0.0) -> list[float]:
    """Probabilities (A,) with which ``strategy`` picks each action given ``q_row`` (A,).

    Ties among greedy actions share the greedy mass equally, matching :func:`greedy_action`.
    """
    return get_exploration(strategy).probs(_as_list(q_row), param)
