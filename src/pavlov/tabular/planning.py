"""Exact planning on a known :class:`~pavlov.tabular.mdp.MDP`: evaluation, value and policy
iteration, and finite-horizon backward induction (Sutton & Barto 2018, ch. 4).

Every backup is ``Q = R + gamma * P @ (V * ~terminal)`` over the dense ``(S, A, S)`` table, so a
sweep is one matmul. ``gamma = 1`` is allowed on episodic MDPs: it converges when the policies
involved are *proper* (reach a terminal state with probability 1 from every state). See
:func:`policy_evaluation` and :func:`policy_iteration` for what happens otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pavlov.errors import ConfigError, PavlovError, check_positive, check_range
from pavlov.tabular.mdp import MDP

#: Ties in Q closer than this keep the current action in policy iteration, so floating-point
#: noise in the evaluation cannot make it cycle between equally good policies.
PI_TIE_TOL = 1e-9


@dataclass(frozen=True)
class PolicyValue:
    """Result of :func:`policy_evaluation`."""

    V: np.ndarray
    """(S,) value of the policy; 0 on terminal states."""
    iterations: int
    """Sweeps performed."""
    converged: bool
    """Whether the last sweep changed V by less than ``tol`` (sup norm)."""
    residual: float
    """Sup-norm change of V in the last sweep."""
    initial: np.ndarray
    """(S,) the MDP's start distribution, for :attr:`start_value`."""

    @property
    def start_value(self) -> float:
        """Expected return from the start distribution, ``initial @ V``."""
        return float(self.initial @ self.V)


@dataclass(frozen=True)
class PlanResult:
    """Result of :func:`value_iteration` and :func:`policy_iteration` (stationary policy)."""

    V: np.ndarray
    """(S,) optimal state values; 0 on terminal states."""
    Q: np.ndarray
    """(S, A) action values ``q_from_v(mdp, V, gamma)``."""
    policy: np.ndarray
    """(S,) int, a greedy action per state (ties toward the lowest index)."""
    iterations: int
    """Sweeps of value iteration, or improvement steps of policy iteration."""
    converged: bool
    """Whether the stopping rule was met before ``max_iter``."""
    initial: np.ndarray
    """(S,) the MDP's start distribution, for :attr:`start_value`."""

    @property
    def start_value(self) -> float:
        """Optimal expected return from the start distribution, ``initial @ V``."""
        return float(self.initial @ self.V)


@dataclass(frozen=True)
class FiniteHorizonResult:
    """Result of :func:`finite_horizon`: a non-stationary optimal policy for H steps."""

    V: np.ndarray
    """(H+1, S) ``V[k]`` is the optimal value with k steps left; ``V[0] = 0``."""
    Q: np.ndarray
    """(H, S, A) ``Q[k-1]`` is the action value with k steps left (this one included)."""
    policy: np.ndarray
    """(H, S) int, ``policy[k-1]`` is the optimal action with k steps left."""
    initial: np.ndarray
    """(S,) the MDP's start distribution, for :attr:`start_value`."""

    @property
    def horizon(self) -> int:
        """Number of steps H."""
        return self.policy.shape[0]

    @property
    def start_value(self) -> float:
        """Optimal expected return within H steps from the start, ``initial @ V[H]``."""
        return float(self.initial @ self.V[-1])

    def action(self, state: int, t: int) -> int:
        """Optimal action in ``state`` after ``t`` steps already taken, ``0 <= t < H``."""
        if not 0 <= t < self.horizon:
            raise PavlovError(f"t must be in [0, {self.horizon - 1}], got {t}")
        return int(self.policy[self.horizon - t - 1, state])


def q_from_v(mdp: MDP, V: np.ndarray, gamma: float) -> np.ndarray:
    """One Bellman backup: ``Q = R + gamma * P @ (V * ~terminal)``.

    V: (S,) -> Q: (S, A). Terminal states' rows are 0 (the MDP stores them as reward-0
    self-loops and their value is masked out).
    """
    return mdp.R + gamma * (mdp.P @ np.where(mdp.terminal, 0.0, V))  # (S,A,S) @ (S,) -> (S,A)


def greedy(Q: np.ndarray, atol: float = 0.0) -> np.ndarray:
    """(S, A) -> (S,) int: the lowest-index action within ``atol`` of each row's maximum."""
    threshold = Q.max(axis=1, keepdims=True) - atol  # (S, 1)
    return np.argmax(np.greater_equal(Q, threshold), axis=1)  # argmax of bool: first True


def policy_evaluation(
    mdp: MDP,
    policy: np.ndarray,
    gamma: float,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> PolicyValue:
    """Iterative policy evaluation, ``V <- r_pi + gamma * P_pi @ (V * ~terminal)`` from V = 0.

    ``policy`` is (S,) int actions or (S, A) action probabilities. Stops when a sweep changes V
    by less than ``tol`` (sup norm); for gamma < 1 the remaining error is at most
    ``tol * gamma / (1 - gamma)``. At gamma = 1 it converges for a proper policy (one that
    terminates with probability 1 from every state). For an improper one the sweeps converge
    to the true total reward when rewards are >= 0 (a zero-reward loop stays at 0) and drift
    without bound when a loop's rewards are negative; then ``converged`` is False after
    ``max_iter`` sweeps. :func:`policy_evaluation_direct` is exact and faster for small S.
    """
    check_range("gamma", gamma, 0.0, 1.0)
    check_positive("tol", tol)
    r_pi, P_pi = _policy_tables(mdp, policy)
    P_pi = P_pi * ~mdp.terminal  # terminal columns zeroed once: each sweep is one (S,S) @ (S,)
    V = np.zeros(mdp.n_states)
    residual = np.inf
    for it in range(1, max_iter + 1):
        V_new = r_pi + gamma * (P_pi @ V)
        residual = float(np.max(np.abs(V_new - V)))
        V = V_new
        if residual < tol:
            return PolicyValue(V, it, True, residual, mdp.initial)
    return PolicyValue(V, max_iter, False, residual, mdp.initial)


def policy_evaluation_direct(mdp: MDP, policy: np.ndarray, gamma: float) -> PolicyValue:
    """Exact policy evaluation by one linear solve, ``(I - gamma * P_pi') V = r_pi``.

    ``P_pi'`` is ``P_pi`` with terminal columns zeroed; O(S^3), a few ms at S = 500. At
    gamma = 1, states that cannot reach a terminal state under the policy form a closed set;
    if the policy earns no reward there their value is exactly 0 and the solve is exact. If it
    does earn reward there the total is undefined or infinite: V is all NaN and ``converged``
    False. ``iterations`` is 0 and ``residual`` is the Bellman residual of the solution.
    """
    check_range("gamma", gamma, 0.0, 1.0)
    r_pi, P_pi = _policy_tables(mdp, policy)
    S = mdp.n_states
    stuck = np.zeros(S, dtype=bool)
    if gamma == 1.0:
        stuck = ~_reaches(P_pi > 0, mdp.terminal)
        if np.any(r_pi[stuck] != 0):
            return PolicyValue(np.full(S, np.nan), 0, False, np.inf, mdp.initial)
    # Pin terminal and stuck states to 0: their rows become V[s] = 0.
    pinned = mdp.terminal | stuck
    M = np.eye(S) - gamma * P_pi * ~pinned[None, :] * ~pinned[:, None]  # (S, S)
    V = np.linalg.solve(M, np.where(pinned, 0.0, r_pi))
    residual = float(np.max(np.abs(r_pi + gamma * (P_pi @ np.where(pinned, 0.0, V)) - V)))
    return PolicyValue(V, 0, True, residual, mdp.initial)


def value_iteration(
    mdp: MDP, gamma: float, tol: float = 1e-10, max_iter: int = 100_000
) -> PlanResult:
    """Value iteration, ``V <- max_a Q(V)``, from ``V = 0`` until a sweep moves V by < ``tol``.

    At gamma = 1 this converges on episodic MDPs whose optimal policy is proper and where
    improper policies earn no more than proper ones (stochastic shortest path; Bertsekas &
    Tsitsiklis 1996, ch. 2), e.g. FrozenLake, Taxi, CliffWalking.
    """
    check_range("gamma", gamma, 0.0, 1.0)
    check_positive("tol", tol)
    V = np.zeros(mdp.n_states)
    converged, iterations = False, max_iter
    for it in range(1, max_iter + 1):
        V_new = q_from_v(mdp, V, gamma).max(axis=1)
        residual = np.max(np.abs(V_new - V))
        V = V_new
        if residual < tol:
            converged, iterations = True, it
            break
    Q = q_from_v(mdp, V, gamma)
    return PlanResult(V, Q, greedy(Q), iterations, converged, mdp.initial)


def policy_iteration(mdp: MDP, gamma: float, max_iter: int = 1_000) -> PlanResult:
    """Howard's policy iteration: evaluate exactly, act greedily, repeat until stable.

    Each policy is evaluated by :func:`policy_evaluation_direct`. The first policy is greedy
    with respect to the uniform-random policy's value; the random policy is proper whenever any
    policy is (it follows every path with positive probability), so at gamma = 1 the first
    evaluation is safe, and on stochastic shortest-path MDPs (improper policies earn -inf) every
    later policy stays proper (Bertsekas & Tsitsiklis 1996, prop. 2.2). Improper policies whose
    loops earn 0 (FrozenLake) are evaluated exactly too. An action changes only when another
    beats it by more than :data:`PI_TIE_TOL`, so floating-point ties cannot make it cycle.
    ``converged`` is False after ``max_iter`` improvements or if a policy's value is undefined
    (an improper policy that earns reward forever).
    """
    check_range("gamma", gamma, 0.0, 1.0)
    check_positive("max_iter", max_iter)
    uniform = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    value = policy_evaluation_direct(mdp, uniform, gamma)
    policy = greedy(q_from_v(mdp, value.V, gamma))
    converged, iterations = False, max_iter
    for it in range(1, max_iter + 1):
        value = policy_evaluation_direct(mdp, policy, gamma)
        if not value.converged:
            iterations = it
            break
        Q = q_from_v(mdp, value.V, gamma)
        current = np.take_along_axis(Q, policy[:, None], axis=1)[:, 0]  # (S,)
        better = Q.max(axis=1) > current + PI_TIE_TOL
        if not better.any():
            converged, iterations = True, it
            break
        policy = np.where(better, greedy(Q), policy)
    Q = q_from_v(mdp, value.V, gamma)
    return PlanResult(value.V, Q, policy, iterations, converged, mdp.initial)


def finite_horizon(mdp: MDP, horizon: int | None = None, gamma: float = 1.0) -> FiniteHorizonResult:
    """Backward induction over ``horizon`` steps (default ``mdp.horizon``).

    ``V[k] = max_a Q[k-1]``, ``Q[k-1] = R + gamma * P @ (V[k-1] * ~terminal)``, ``V[0] = 0``.
    With an env's TimeLimit as the horizon, ``start_value`` is the exact optimum of the env as
    it runs (e.g. the best success probability within the step limit), which a stationary
    policy from value iteration can miss.
    """
    horizon = mdp.horizon if horizon is None else horizon
    if horizon is None:
        raise ConfigError(f"finite_horizon needs a horizon; {mdp.name} has no step limit")
    check_positive("horizon", horizon)
    check_range("gamma", gamma, 0.0, 1.0)
    S, A = mdp.n_states, mdp.n_actions
    V = np.zeros((horizon + 1, S))
    Q = np.empty((horizon, S, A))
    for k in range(1, horizon + 1):
        Q[k - 1] = q_from_v(mdp, V[k - 1], gamma)
        V[k] = Q[k - 1].max(axis=1)
    policy = np.argmax(Q, axis=2)  # (H, S), ties toward the lowest index
    return FiniteHorizonResult(V, Q, policy, mdp.initial)


def _policy_tables(mdp: MDP, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reward (S,) and transition matrix (S, S) under ``policy`` ((S,) int or (S, A) probs)."""
    pi = _policy_matrix(mdp, policy)  # (S, A)
    return np.einsum("sa,sa->s", pi, mdp.R), np.einsum("sa,sat->st", pi, mdp.P)


def _policy_matrix(mdp: MDP, policy: np.ndarray) -> np.ndarray:
    """(S,) int actions or (S, A) probabilities -> (S, A) probabilities, validated."""
    policy = np.asarray(policy)
    S, A = mdp.n_states, mdp.n_actions
    if policy.shape == (S,):
        if not np.issubdtype(policy.dtype, np.integer) or policy.min() < 0 or policy.max() >= A:
            raise PavlovError(f"a deterministic policy must hold int actions in [0, {A})")
        return np.eye(A)[policy]
    if policy.shape == (S, A):
        if (policy < 0).any() or not np.allclose(policy.sum(axis=1), 1.0, atol=1e-8):
            raise PavlovError("a stochastic policy's rows must be probabilities summing to 1")
        return policy.astype(np.float64)
    raise PavlovError(f"policy must have shape {(S,)} or {(S, A)}, got {policy.shape}")


def _reaches(edges: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(S,) bool: states with a path to ``targets`` in the (S, S) bool graph ``edges``."""
    reach = targets.copy()
    while True:
        new = edges[:, reach].any(axis=1) & ~reach
        if not new.any():
            return reach
        reach |= new


Solver = Callable[..., PlanResult | FiniteHorizonResult]

SOLVERS: dict[str, Solver] = {
    "value_iteration": lambda mdp, gamma, horizon, **kw: value_iteration(mdp, gamma, **kw),
    "policy_iteration": lambda mdp, gamma, horizon, **kw: policy_iteration(mdp, gamma, **kw),
    "finite_horizon": lambda mdp, gamma, horizon, **kw: finite_horizon(mdp, horizon, gamma),
}
"""Planner by name; each takes ``(mdp, gamma, horizon, **kwargs)``."""


def solve(
    mdp: MDP,
    method: str = "value_iteration",
    *,
    gamma: float,
    horizon: int | None = None,
    **kwargs,
) -> PlanResult | FiniteHorizonResult:
    """Plan with ``SOLVERS[method]``; extra keyword arguments (``tol``, ``max_iter``) pass on.

    ``horizon`` applies only to ``"finite_horizon"`` (default there: ``mdp.horizon``).
    """
    if method not in SOLVERS:
        raise ConfigError(f"method must be one of {sorted(SOLVERS)}, got {method!r}")
    if horizon is not None and method != "finite_horizon":
        raise ConfigError(f"horizon applies only to method='finite_horizon', not {method!r}")
    if method == "finite_horizon" and kwargs:
        raise ConfigError(f"finite_horizon takes no options {sorted(kwargs)}")
    return SOLVERS[method](mdp, gamma, horizon, **kwargs)
