"""pavlov.envs.factory: making envs, with one-line errors and tuple observations flattened."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np

from pavlov.envs.factory import make_env


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
    """Box2D hidden from a fresh interpreter: the env id exists, so the error names what to
    install (not "unknown env ... did you mean" the very id the user typed)."""
    code = ("import sys; sys.modules['Box2D'] = None\n"
            "from pavlov.envs.factory import make_env\n"
            "try:\n    make_env('LunarLander-v3')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout.strip()
    assert out.startswith("PavlovError cannot make LunarLander-v3: Box2D is not installed"), out
    assert "pip install 'pavlov[box2d]'" in out and "did you mean" not in out
