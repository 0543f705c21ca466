"""Linear semi-gradient control: one-hot equals tabular exactly, tile coding, MountainCar."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pavlov.errors import ConfigError, PavlovError
from pavlov.tabular.control import UPDATE_RULES, TabularConfig, train_tabular
from pavlov.tabular.evaluate import evaluate_policy
from pavlov.tabular.linear import (
    FunctionFeatures,
    LinearQConfig,
    OneHot,
    TileCoding,
    default_features,
    train_linear_q,
)

SHARED = dict(
    episodes=300,
    gamma=0.99,
    alpha=0.1,
    epsilon_start=1.0,
    epsilon_end=0.05,
    epsilon_decay="linear",
    decay_fraction=0.5,
    seed=3,
)


@pytest.mark.parametrize("algo", sorted(UPDATE_RULES))
def test_one_hot_features_reproduce_tabular_q_exactly(algo):
    tabular = train_tabular(gym.make("FrozenLake-v1"), TabularConfig(algo=algo, **SHARED))
    linear = train_linear_q(gym.make("FrozenLake-v1"), LinearQConfig(algo=algo, **SHARED))
    assert isinstance(linear.features, OneHot)
    np.testing.assert_array_equal(linear.theta.T, tabular.Q)  # θ_a[s] is Q(s, a), bit for bit
    np.testing.assert_array_equal(linear.returns, tabular.returns)


def test_bare_callable_features_match_one_hot():
    one_hot = lambda s: np.eye(16)[s]
    via_callable = train_linear_q(gym.make("FrozenLake-v1"), LinearQConfig(**SHARED), one_hot)
    default = train_linear_q(gym.make("FrozenLake-v1"), LinearQConfig(**SHARED))
    assert via_callable.features.n_features == 16
    np.testing.assert_array_equal(via_callable.theta, default.theta)


def test_semi_gradient_update_by_hand_with_dense_features():
    """CliffWalking's first step from the start (state 36) with one always-on feature pair."""
    phi = FunctionFeatures(lambda s: [1.0, s / 47.0], n_features=2)
    cfg = LinearQConfig(episodes=1, alpha=0.5, gamma=0.9, theta_init=0.25, exploration="random")
    env = gym.wrappers.TimeLimit(gym.make("CliffWalking-v1").unwrapped, max_episode_steps=1)
    result = train_linear_q(env, cfg, phi)
    f0 = np.array([1.0, 36 / 47.0])
    q0 = 0.25 * f0.sum()  # every action: θ_a = (0.25, 0.25)
    changed = np.flatnonzero((result.theta != 0.25).any(axis=1))
    assert changed.size == 1  # only the taken action's weights move
    action = changed[0]
    next_state = {0: 24, 1: 37, 2: 36, 3: 36}[action]  # up, right (cliff), down, left
    reward = -100.0 if action == 1 else -1.0
    next_state = 36 if action == 1 else next_state  # the cliff sends the agent back to start
    target = reward + 0.9 * 0.25 * (1.0 + next_state / 47.0)  # truncated: bootstrap
    np.testing.assert_allclose(result.theta[action], 0.25 + 0.5 * (target - q0) * f0)


# --- tile coding -------------------------------------------------------------------------------


def test_tile_coding_activates_one_tile_per_tiling():
    coder = TileCoding(low=[-1.2, -0.07], high=[0.6, 0.07], n_tilings=8, tiles_per_dim=8)
    assert coder.n_features == 8 * 9 * 9
    rng = np.random.default_rng(0)
    for obs in rng.uniform(coder.low, coder.high, size=(200, 2)):
        active = coder.active(obs)
        assert active.shape == (8,)
        tiling = active // 81
        np.testing.assert_array_equal(tiling, np.arange(8))  # one tile in each tiling
        phi = coder(obs)
        assert phi.sum() == 8 and set(np.flatnonzero(phi)) == set(active)
    # out-of-box observations use the edge tiles instead of indexing out of range
    assert coder.active([5.0, -5.0]).max() < coder.n_features


def test_tile_coding_generalises_locally():
    coder = TileCoding(low=[0.0, 0.0], high=[1.0, 1.0], n_tilings=8, tiles_per_dim=4)
    shared = lambda a, b: np.intersect1d(coder.active(a), coder.active(b)).size
    assert shared([0.5, 0.5], [0.5, 0.5]) == 8
    assert 0 < shared([0.5, 0.5], [0.56, 0.53]) < 8  # tilings are offset from each other
    assert shared([0.1, 0.1], [0.9, 0.9]) == 0


def test_unbounded_box_needs_explicit_bounds():
    with pytest.raises(PavlovError, match="finite bounds"):
        default_features(gym.make("CartPole-v1"))


def test_continuous_actions_are_rejected():
    with pytest.raises(PavlovError, match="Discrete action space"):
        train_linear_q(gym.make("Pendulum-v1"), LinearQConfig(episodes=1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gamma", 1.5),
        ("epsilon_start", -0.1),
        ("episodes", 0),
        ("alpha", 0.0),
        ("n_tilings", 0),
        ("algo", "dqn"),
        ("theta_init", float("nan")),
    ],
)
def test_config_rejects_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        LinearQConfig(**{field: value})


# --- MountainCar -------------------------------------------------------------------------------

# Sutton & Barto Fig. 10.1 settings: 8 tilings of 8x8 tiles, α = 0.5/8, ε = 0, θ = 0 (optimistic:
# every reward is −1), γ = 1. Gymnasium's 200-step limit makes a random policy score −200.
MOUNTAIN_CAR = dict(gamma=1.0, alpha=0.5 / 8, epsilon_start=0.0, epsilon_decay="constant")


def test_mountain_car_tile_coded_q_learning_beats_random_within_300_episodes():
    """Seeds 0-3: greedy mean return −122 to −135 after 300 episodes (≈ 2 s)."""
    env = gym.make("MountainCar-v0")
    result = train_linear_q(env, LinearQConfig(algo="q-learning", episodes=300, **MOUNTAIN_CAR))
    assert result.returns[:20].mean() < -190  # it starts no better than random
    evaluation = evaluate_policy(env, result.policy, episodes=100, seed=1000)
    assert evaluation.mean_return > -150


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mountain_car_tile_coded_sarsa_reaches_minus_130(seed):
    """Seeds 0-3: greedy mean return −106 to −114 after 1000 episodes (≈ 5 s each)."""
    env = gym.make("MountainCar-v0")
    cfg = LinearQConfig(algo="sarsa", episodes=1000, seed=seed, **MOUNTAIN_CAR)
    result = train_linear_q(env, cfg)
    evaluation = evaluate_policy(env, result.policy, episodes=100, seed=1000)
    assert evaluation.mean_return > -130
