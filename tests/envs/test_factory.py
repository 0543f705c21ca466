"""pavlov.envs.factory: making envs, with one-line errors and tuple observations flattened."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pavlov.envs.factory import make_env
from pavlov.errors import PavlovError


def test_tuples_of_discrete_observations_become_one_index():
    """Blackjack-v1: (player sum 0-31, dealer card 0-10, usable ace 0-1) -> 32 * 11 * 2 states,
    in tables, one-hot encoders and vector envs alike."""
    from pavlov.agents.common import make_vec_env

    env = make_env("Blackjack-v1")
    assert env.observation_space == gym.spaces.Discrete(704)
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped._get_obs()
    assert obs == (raw[0] * 11 + raw[1]) * 2 + raw[2]
    vec = make_vec_env("Blackjack-v1", 2)
    assert vec.single_observation_space == gym.spaces.Discrete(704)
    vec.close()


def test_q_learning_plays_blackjack_better_than_random():
    from pavlov.tabular.control import TabularConfig, train_tabular
    from pavlov.tabular.evaluate import evaluate_policy, greedy_q_policy

    env = make_env("Blackjack-v1")
    result = train_tabular(env, TabularConfig(algo="q-learning", episodes=20_000, seed=0))
    greedy = evaluate_policy(env, greedy_q_policy(result.Q), 4000, seed=1).mean_return
    rng = np.random.default_rng(0)
    random = evaluate_policy(env, lambda obs, t: int(rng.integers(2)), 4000, seed=1).mean_return
    assert greedy > -0.12 and greedy > random + 0.15  # basic strategy: about -0.05


def test_a_missing_optional_dependency_says_what_to_install():
    try:
        import Box2D  # noqa: F401
    except ImportError:
        with pytest.raises(PavlovError, match=r"^cannot make LunarLander-v3: Box2D is not "
                                              r"installed.*gymnasium\[box2d\]"):
            make_env("LunarLander-v3")
    else:
        pytest.skip("Box2D is installed here")
