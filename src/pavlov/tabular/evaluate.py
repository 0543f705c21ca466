"""Tabular policies as ``policy(obs, t)`` callables, for :func:`pavlov.evaluation.evaluate_policy`.

The evaluation itself lives in :mod:`pavlov.evaluation` (shared with the deep agents); it is
re-exported here so tabular code has one place to import from.
"""

from __future__ import annotations

import numpy as np

from pavlov.errors import PavlovError
from pavlov.evaluation import (  # noqa: F401  re-exported
    Z95,
    EvalResult,
    Policy,
    evaluate_policy,
    mean_ci95,
    regret,
    wilson_interval,
)
from pavlov.tabular.planning import FiniteHorizonResult, greedy


def table_policy(actions: np.ndarray) -> Policy:
    """(S,) int action table -> ``policy(obs, t)`` that ignores ``t``."""
    table = np.asarray(actions).astype(int).tolist()  # Python ints: fast lookup, valid actions
    return lambda obs, t: table[obs]


def greedy_q_policy(Q: np.ndarray) -> Policy:
    """(S, A) action values -> greedy ``policy(obs, t)`` (ties toward the lowest action)."""
    return table_policy(greedy(np.asarray(Q)))


def finite_horizon_policy(result: FiniteHorizonResult) -> Policy:
    """Non-stationary policy of :func:`~pavlov.tabular.planning.finite_horizon`.

    After ``t`` steps, ``H - t`` steps are left, so it acts by ``result.policy[H - t - 1]``.
    Raises :class:`PavlovError` when ``t >= H`` (the env runs longer than the plan).
    """
    table = result.policy.tolist()  # (H, S) nested lists of Python ints
    H = result.horizon

    def policy(obs: int, t: int) -> int:
        if t >= H:
            raise PavlovError(f"finite-horizon policy planned for {H} steps, asked at step {t}")
        return table[H - t - 1][obs]

    return policy
