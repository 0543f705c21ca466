"""Monte-Carlo policy evaluation in real Gymnasium envs, and the interval math behind it."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

from pavlov.errors import ConfigError, PavlovError
from pavlov.tabular.evaluate import (
    EvalResult,
    evaluate_policy,
    finite_horizon_policy,
    greedy_q_policy,
    mean_ci95,
    regret,
    table_policy,
    wilson_interval,
)
from pavlov.tabular.mdp import MDP
from pavlov.tabular.planning import finite_horizon, value_iteration

FROZENLAKE_100_STEPS = 0.744190  # exact optimum within the TimeLimit (test_planning.py)


class CoinEnv(gym.Env):
    """One-step env: reward ``reward`` and, if given, ``info["is_success"] = flag``."""

    observation_space = gym.spaces.Discrete(1)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, reward: float, flag: bool | None):
        self.reward, self.flag = reward, flag

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        info = {} if self.flag is None else {"is_success": self.flag}
        return 0, self.reward, True, False, info


# --- interval math ------------------------------------------------------------------------


def test_wilson_interval_hand_cases():
    z = 1.959963984540054
    # 5/10 -> (0.2366, 0.7634), as tabulated by Brown, Cai & DasGupta (2001).
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    # At k = 0 the interval is [0, (z^2/n) / (1 + z^2/n)] exactly; k = n mirrors it.
    upper = (z * z / 10) / (1 + z * z / 10)  # 0.277533
    assert wilson_interval(0, 10) == (0.0, pytest.approx(upper, rel=1e-12))
    assert wilson_interval(10, 10) == (pytest.approx(1 - upper, rel=1e-12), 1.0)
    assert wilson_interval(1, 1) == (pytest.approx(1 / (1 + z * z)), 1.0)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(PavlovError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ConfigError, match="n must be positive"):
        wilson_interval(0, 0)


def test_mean_ci95_hand_cases():
    mean, half = mean_ci95(np.array([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(5 / 3)  # sample std, ddof = 1
    assert mean == 2.5 and half == pytest.approx(1.959963984540054 * std / 2)
    assert mean_ci95(np.array([7.0])) == (7.0, 0.0)
    assert mean_ci95(np.full(5, 3.0)) == (3.0, 0.0)


# --- policy adapters ----------------------------------------------------------------------


def test_adapters_return_python_ints():
    act = table_policy(np.array([2, 0, 1]))
    assert act(0, 0) == 2 and type(act(np.int64(2), 5)) is int
    assert greedy_q_policy(np.array([[0.0, 1.0], [1.0, 1.0]]))(1, 0) == 0


def test_finite_horizon_policy_is_non_stationary():
    mdp = MDP.from_env(gym.make("FrozenLake-v1"))
    plan = finite_horizon(mdp, horizon=5)
    act = finite_horizon_policy(plan)
    assert [act(s, t) for t in range(5) for s in range(16)] == [
        plan.action(s, t) for t in range(5) for s in range(16)
    ]
    with pytest.raises(PavlovError, match="planned for 5 steps, asked at step 5"):
        act(0, 5)


# --- evaluation in real envs --------------------------------------------------------------


def test_optimal_frozenlake_policy_matches_the_exact_optimum():
    env = gym.make("FrozenLake-v1")
    plan = finite_horizon(MDP.from_env(env))
    result = evaluate_policy(env, finite_horizon_policy(plan), episodes=2000, seed=0)
    lo, hi = result.success_ci95
    assert lo <= FROZENLAKE_100_STEPS <= hi  # fixed seed: deterministic, 0.7495 measured
    assert result.mean_return == result.success_rate  # reward 1 exactly at the goal
    assert abs(regret(FROZENLAKE_100_STEPS, result)) <= result.return_ci95
    assert result.capped == 0 and 1 <= result.mean_length <= 100
    assert result.episodes == 2000 and result.seed == 0


def test_always_left_never_succeeds_on_frozenlake():
    result = evaluate_policy(gym.make("FrozenLake-v1"), lambda obs, t: 0, episodes=50)
    assert result.success_rate == 0.0 and result.mean_return == 0.0
    assert result.success_ci95[0] == 0.0 and result.success_ci95[1] > 0.0
    assert result.return_ci95 == 0.0


def test_taxi_optimal_policy_succeeds_every_time():
    env = gym.make("Taxi-v4")
    result = evaluate_policy(env, greedy_q_policy(value_iteration(MDP.from_env(env), 1.0).Q), 300)
    assert result.success_rate == 1.0
    assert abs(result.mean_return - 7.93) <= 3 * result.return_ci95


def test_evaluation_is_reproducible_from_the_seed():
    env = gym.make("FrozenLake-v1")
    act = table_policy(value_iteration(MDP.from_env(env), 1.0).policy)
    first, again = (evaluate_policy(env, act, 100, seed=3) for _ in range(2))
    assert first == again
    assert evaluate_policy(env, act, 100, seed=4) != first


def test_truncation_ends_episodes():
    env = gym.make("FrozenLake-v1", max_episode_steps=3)
    result = evaluate_policy(env, lambda obs, t: 0, episodes=20)
    assert result.mean_length <= 3 and result.capped == 0


def test_max_steps_caps_envs_without_a_limit():
    env = gym.make("CliffWalking-v1")  # no TimeLimit; UP forever never terminates
    result = evaluate_policy(env, lambda obs, t: 0, episodes=3, max_steps=50)
    assert (result.capped, result.mean_length, result.mean_return) == (3, 50.0, -50.0)
    assert result.success_rate == 0.0


@pytest.mark.parametrize(
    ("reward", "flag", "success"),
    [(0.0, True, 1.0), (5.0, False, 0.0), (5.0, None, 1.0), (-1.0, None, 0.0)],
)
def test_success_prefers_is_success_then_positive_terminal_reward(reward, flag, success):
    result = evaluate_policy(CoinEnv(reward, flag), lambda obs, t: 0, episodes=4)
    assert result.success_rate == success and result.mean_return == reward


@pytest.mark.parametrize("episodes", [0, -3, 2.5, True])
def test_bad_episode_count_raises(episodes):
    with pytest.raises(ConfigError, match="episodes must be a positive integer"):
        evaluate_policy(CoinEnv(1.0, None), lambda obs, t: 0, episodes=episodes)


def test_result_round_trips_through_json():
    result = EvalResult(0.5, 0.1, 0.5, (0.25, 0.75), 12.0, 10, seed=1)
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload == {
        "mean_return": 0.5,
        "return_ci95": 0.1,
        "success_rate": 0.5,
        "success_ci95": [0.25, 0.75],
        "mean_length": 12.0,
        "episodes": 10,
        "seed": 1,
        "capped": 0,
    }
    assert regret(0.75, result) == 0.25


@pytest.mark.parametrize(
    ("env_id", "policy", "expected"),
    [("CliffWalking-v1", None, 1.0), ("Acrobot-v1", None, None),
     ("Pendulum-v1", lambda obs, t: np.zeros(1, np.float32), "undefined")],
)
def test_success_is_defined_per_env(env_id, policy, expected):
    """CliffWalking: the optimal path (up, 11 x right, down) reaches the goal with reward -1,
    a success; Pendulum defines none; Acrobot succeeds when it terminates."""
    env = gym.make(env_id)
    if env_id == "CliffWalking-v1":
        path = [0] + [1] * 11 + [2]
        result = evaluate_policy(env, lambda obs, t: path[t], episodes=3)
        assert result.success_rate == expected and result.mean_return == -13
    elif env_id == "Acrobot-v1":
        swing = lambda obs, t: 2 if obs[5] > 0 else 0  # noqa: E731  push with the swing
        result = evaluate_policy(env, swing, episodes=3, seed=0)
        assert result.mean_length < 500 and result.success_rate == 1.0
    else:
        result = evaluate_policy(env, policy, episodes=2)
        assert result.success_rate is None and result.success_ci95 is None
        assert result.to_dict()["success_rate"] is None
