"""Exact planning: hand cases with closed forms, and verified optima of Gymnasium toy-text envs."""

from __future__ import annotations

import time
from functools import cache

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pavlov.errors import ConfigError, PavlovError
from pavlov.tabular.mdp import MDP
from pavlov.tabular.planning import (
    SOLVERS,
    FiniteHorizonResult,
    PlanResult,
    finite_horizon,
    greedy,
    policy_evaluation,
    policy_evaluation_direct,
    policy_iteration,
    q_from_v,
    solve,
    value_iteration,
)


@cache
def env_mdp(env_id: str) -> MDP:
    return MDP.from_env(gym.make(env_id))


def chain(p_stay: float = 0.75) -> MDP:
    """State 0 live, state 1 terminal. Action 0: reward 1, stay w.p. p_stay, else end.
    Action 1: reward 2, end. V_stay = 1 / (1 - gamma * p_stay), so staying wins iff
    gamma > 2/3 (for p_stay = 0.75)."""
    P = np.zeros((2, 2, 2))
    P[0, 0] = [p_stay, 1 - p_stay]
    P[0, 1] = [0.0, 1.0]
    R = np.array([[1.0, 2.0], [0.0, 0.0]])
    return MDP(P=P, R=R, terminal=[False, True], initial=[1.0, 0.0], name="chain")


# --- hand cases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gamma", "value", "action"), [(1.0, 4.0, 0), (0.9, 1 / 0.325, 0), (0.5, 2.0, 1)]
)
@pytest.mark.parametrize("planner", [value_iteration, policy_iteration])
def test_chain_closed_form(planner, gamma, value, action):
    result = planner(chain(), gamma)
    assert isinstance(result, PlanResult) and result.converged
    np.testing.assert_allclose(result.V, [value, 0.0], atol=1e-8)
    assert result.start_value == pytest.approx(value, abs=1e-8)
    assert result.policy[0] == action
    np.testing.assert_allclose(result.Q[0], [1 + gamma * 0.75 * value, 2.0], atol=1e-8)


def test_chain_finite_horizon_closed_form():
    # V_k = max(1 + 0.75 V_{k-1}, 2): 0, 2, 2.5, 2.875; one step left -> take the 2.
    result = finite_horizon(chain(), horizon=3)
    assert isinstance(result, FiniteHorizonResult) and result.horizon == 3
    np.testing.assert_allclose(result.V[:, 0], [0.0, 2.0, 2.5, 2.875])
    assert result.policy[:, 0].tolist() == [1, 0, 0]
    assert result.start_value == pytest.approx(2.875)
    assert [result.action(0, t) for t in range(3)] == [0, 0, 1]
    with pytest.raises(PavlovError, match=r"t must be in \[0, 2\]"):
        result.action(0, 3)


def test_chain_policy_evaluation_closed_form():
    mdp = chain(p_stay=0.5)
    stay = np.array([0, 0])
    for gamma in (1.0, 0.8):
        exact = 1 / (1 - 0.5 * gamma)
        iterative = policy_evaluation(mdp, stay, gamma)
        assert iterative.converged
        np.testing.assert_allclose(iterative.V, [exact, 0.0], atol=1e-9)
        np.testing.assert_allclose(policy_evaluation_direct(mdp, stay, gamma).V, [exact, 0.0])
    mixed = np.array([[0.5, 0.5], [1.0, 0.0]])  # V = 0.5 (1 + 0.5 V) + 0.5 * 2 -> V = 2
    assert policy_evaluation_direct(mdp, mixed, 1.0).start_value == pytest.approx(2.0)


def test_q_from_v_masks_terminal_values():
    Q = q_from_v(chain(), np.array([10.0, 100.0]), gamma=1.0)
    assert Q.tolist() == [[1 + 0.75 * 10, 2.0], [0.0, 0.0]]


def test_greedy_breaks_ties_toward_lowest_index():
    Q = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 1.0 - 1e-12, 1.0]])
    assert greedy(Q).tolist() == [1, 0, 2]
    assert greedy(Q, atol=1e-9).tolist() == [1, 0, 1]


def test_policy_shapes_are_validated():
    with pytest.raises(PavlovError, match="shape"):
        policy_evaluation(chain(), np.zeros(3, dtype=int), 0.9)
    with pytest.raises(PavlovError, match=r"int actions in \[0, 2\)"):
        policy_evaluation(chain(), np.array([0, 2]), 0.9)
    with pytest.raises(PavlovError, match="probabilities"):
        policy_evaluation(chain(), np.full((2, 2), 0.6), 0.9)


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
def test_gamma_out_of_range(gamma):
    for plan in (value_iteration, policy_iteration, finite_horizon):
        with pytest.raises(ConfigError, match="gamma must be in"):
            plan(chain(), gamma=gamma, **({"horizon": 3} if plan is finite_horizon else {}))


def test_value_iteration_reports_non_convergence():
    loop = MDP(P=np.ones((1, 1, 1)), R=np.ones((1, 1)))  # reward 1 forever: diverges at gamma 1
    result = value_iteration(loop, gamma=1.0, max_iter=50)
    assert not result.converged and result.iterations == 50 and result.V[0] == 50.0
    assert value_iteration(loop, gamma=0.5).V[0] == pytest.approx(2.0)


# --- improper policies at gamma = 1 -------------------------------------------------------


def test_zero_reward_loop_is_evaluated_exactly():
    mdp = env_mdp("FrozenLake-v1")
    up = np.full(16, 3)  # UP in the top row slips only left/right: a closed, reward-free loop
    direct = policy_evaluation_direct(mdp, up, 1.0)
    iterative = policy_evaluation(mdp, up, 1.0)
    assert direct.converged and iterative.converged
    np.testing.assert_allclose(direct.V[:4], 0.0, atol=1e-12)
    np.testing.assert_allclose(direct.V, iterative.V, atol=1e-8)


def test_negative_reward_loop_is_reported():
    mdp = env_mdp("CliffWalking-v1")
    left = np.full(48, 3)  # LEFT at the start cell bumps the wall forever at -1 a step
    direct = policy_evaluation_direct(mdp, left, 1.0)
    assert not direct.converged and np.isnan(direct.V).all()
    iterative = policy_evaluation(mdp, left, 1.0, max_iter=200)
    assert not iterative.converged and iterative.iterations == 200
    assert iterative.V[36] == pytest.approx(-200.0)


# --- verified optima (NOTES.md) -----------------------------------------------------------


def test_frozenlake_value_iteration_gamma_1():
    result = value_iteration(env_mdp("FrozenLake-v1"), gamma=1.0)
    assert result.converged
    assert result.start_value == pytest.approx(14 / 17, abs=1e-8)  # 0.823529


def test_frozenlake_4x4_within_100_steps():
    mdp = env_mdp("FrozenLake-v1")
    assert finite_horizon(mdp).start_value == pytest.approx(0.744190, abs=5e-7)


def test_frozenlake_8x8_within_200_steps_is_fast():
    mdp = env_mdp("FrozenLake8x8-v1")
    start = time.perf_counter()
    result = finite_horizon(mdp)  # horizon 200 from the env's TimeLimit
    elapsed = time.perf_counter() - start
    assert result.horizon == 200
    assert result.start_value == pytest.approx(0.913220, abs=5e-7)
    assert elapsed < 0.5  # ~5 ms measured: 200 matmuls of (64,4,64) @ (64,)


def test_taxi_optimal_mean_return():
    result = value_iteration(env_mdp("Taxi-v4"), gamma=1.0)
    assert result.converged
    assert result.start_value == pytest.approx(7.93, abs=1e-9)  # 7.930000000000001 measured


def test_cliffwalking_optimal_return_gamma_1():
    mdp = env_mdp("CliffWalking-v1")
    for planner in (value_iteration, policy_iteration):
        result = planner(mdp, gamma=1.0)
        assert result.converged and result.start_value == pytest.approx(-13.0, abs=1e-9)


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "FrozenLake8x8-v1"])
@pytest.mark.parametrize("gamma", [0.9, 0.99])
def test_policy_iteration_agrees_with_value_iteration(env_id, gamma):
    mdp = env_mdp(env_id)
    vi, pi = value_iteration(mdp, gamma), policy_iteration(mdp, gamma)
    assert vi.converged and pi.converged
    # VI stops at a sweep change < 1e-10, so its error is < 1e-10 * gamma / (1 - gamma).
    np.testing.assert_allclose(pi.V, vi.V, atol=1e-7)
    # VI's greedy policy is optimal: evaluating it reproduces the optimum.
    np.testing.assert_allclose(policy_evaluation_direct(mdp, vi.policy, gamma).V, pi.V, atol=1e-7)


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Taxi-v4", "CliffWalking-v1"])
def test_evaluating_the_optimal_policy_gives_the_optimal_value(env_id):
    mdp = env_mdp(env_id)
    vi = value_iteration(mdp, gamma=1.0)
    value = policy_evaluation(mdp, vi.policy, gamma=1.0)
    assert value.converged
    np.testing.assert_allclose(value.V, vi.V, atol=1e-7)
    assert value.start_value == pytest.approx(vi.start_value, abs=1e-7)


def test_finite_horizon_approaches_the_infinite_horizon_value():
    mdp = env_mdp("FrozenLake-v1")
    result = finite_horizon(mdp, horizon=3000)
    assert result.start_value == pytest.approx(14 / 17, abs=1e-8)
    assert (np.diff(result.V, axis=0) >= -1e-15).all()  # rewards >= 0: more time never hurts
    assert result.V[0].tolist() == [0.0] * 16


def test_finite_horizon_needs_a_horizon():
    with pytest.raises(ConfigError, match="CliffWalking-v1 has no step limit"):
        finite_horizon(env_mdp("CliffWalking-v1"))
    with pytest.raises(ConfigError, match="horizon must be positive"):
        finite_horizon(chain(), horizon=0)


# --- dispatcher ---------------------------------------------------------------------------


def test_solve_dispatches_by_name():
    mdp = env_mdp("FrozenLake-v1")
    assert set(SOLVERS) == {"value_iteration", "policy_iteration", "finite_horizon"}
    assert solve(mdp, gamma=1.0).start_value == pytest.approx(14 / 17, abs=1e-8)
    assert solve(mdp, "policy_iteration", gamma=1.0).start_value == pytest.approx(14 / 17)
    fh = solve(mdp, "finite_horizon", gamma=1.0)
    assert fh.start_value == pytest.approx(0.744190, abs=5e-7)
    assert solve(mdp, "finite_horizon", gamma=1.0, horizon=10).horizon == 10
    assert solve(mdp, "value_iteration", gamma=1.0, max_iter=3).iterations == 3


def test_solve_rejects_bad_requests():
    mdp = chain()
    with pytest.raises(ConfigError, match="method must be one of"):
        solve(mdp, "q_learning", gamma=1.0)
    with pytest.raises(ConfigError, match="horizon applies only"):
        solve(mdp, "value_iteration", gamma=1.0, horizon=5)
    with pytest.raises(ConfigError, match="no options"):
        solve(mdp, "finite_horizon", gamma=1.0, horizon=5, tol=1e-3)


# --- property: random discounted MDPs ----------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), gamma=st.floats(0.0, 0.95))
def test_random_mdps_satisfy_bellman_optimality(seed, gamma):
    rng = np.random.default_rng(seed)
    S, A = rng.integers(1, 7), rng.integers(1, 4)
    P = rng.dirichlet(np.full(S, 0.5), size=(S, A))  # (S, A, S)
    R = rng.normal(size=(S, A))
    mdp = MDP(P=P, R=R, terminal=rng.random(S) < 0.2, initial=np.full(S, 1 / S))
    vi, pi = value_iteration(mdp, gamma), policy_iteration(mdp, gamma)
    np.testing.assert_allclose(vi.V, pi.V, atol=1e-8)
    np.testing.assert_allclose(q_from_v(mdp, pi.V, gamma).max(axis=1), pi.V, atol=1e-9)
    assert (pi.V[mdp.terminal] == 0).all()
