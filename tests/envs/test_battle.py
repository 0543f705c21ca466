"""BattleMDP: tables match the documented dynamics, optimal values, episodes, registration."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from pavlov.envs import BattleMDP
from pavlov.envs.battle import (
    BACK,
    DEAD,
    DEFAULT_DYNAMICS,
    FLED,
    FORWARD,
    HEAL,
    S0,
    S1,
    S2,
    S3,
    USE_SWORD,
    WIN,
)
from pavlov.errors import ConfigError, PavlovError

# The table, written out independently of the module: state -> action -> {next: prob}.
DOCUMENTED = {
    S0: {
        USE_SWORD: {S2: 0.5, S3: 0.1, S1: 0.3, DEAD: 0.1},
        FORWARD: {WIN: 0.3, DEAD: 0.7},
        BACK: {FLED: 1.0},
        HEAL: {S0: 0.9, DEAD: 0.1},
    },
    S1: {
        USE_SWORD: {S1: 0.8, DEAD: 0.2},
        FORWARD: {S0: 0.5, S1: 0.3, DEAD: 0.2},
        BACK: {FLED: 1.0},
        HEAL: {S1: 0.9, DEAD: 0.1},
    },
    S2: {USE_SWORD: {S2: 1.0}, FORWARD: {WIN: 0.9, S2: 0.1}, BACK: {FLED: 1.0}, HEAL: {S2: 1.0}},
    S3: {USE_SWORD: {S3: 1.0}, FORWARD: {WIN: 0.8, S3: 0.2}, BACK: {FLED: 1.0}, HEAL: {S3: 1.0}},
}
END_REWARD = {WIN: 10.0, FLED: 1.0, DEAD: -10.0}


def test_tables_match_documented_dynamics():
    env = BattleMDP()
    assert env.observation_space == gym.spaces.Discrete(7)
    assert env.action_space == gym.spaces.Discrete(4)
    np.testing.assert_array_equal(env.initial_state_distrib, [1, 0, 0, 0, 0, 0, 0])
    for s, row in DOCUMENTED.items():
        for a, expected in row.items():
            trans = env.P[s][a]
            assert {ns: p for p, ns, _, _ in trans} == pytest.approx(expected)
            assert len(trans) == len(expected)  # no duplicate outcomes
            for _, ns, reward, terminated in trans:
                assert reward == END_REWARD.get(ns, 0.0)
                assert terminated == (ns in END_REWARD)
    for s in (WIN, FLED, DEAD):
        for a in range(4):
            assert env.P[s][a] == [(1.0, s, 0.0, True)]


def value_iteration(P: dict, n_states: int, gamma: float, sweeps: int = 2000) -> np.ndarray:
    """Q-values (nS, nA) by synchronous value iteration on toy-text tables."""

    def backup(v: np.ndarray, s: int, a: int) -> float:  # E[r + gamma * V(s')], 0 past the end
        return sum(p * (r + gamma * (not t) * v[ns]) for p, ns, r, t in P[s][a])

    q = np.zeros((n_states, 4))
    for _ in range(sweeps):
        v = q.max(axis=1)
        q = np.array([[backup(v, s, a) for a in range(4)] for s in range(n_states)])
    return q


def test_optimal_values_at_gamma_one():
    q = value_iteration(BattleMDP().P, 7, gamma=1.0)
    v = q.max(axis=1)
    np.testing.assert_allclose(v, [5.3, 1.0, 10.0, 10.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert q[S0].argmax() == USE_SWORD
    assert q[S1].argmax() == BACK
    # In S2/S3 waiting (sword, heal) ties with forward at gamma = 1: the value is reached only
    # in the limit. Any discount makes walking forward strictly best.
    assert q[S2, FORWARD] == pytest.approx(10.0) and q[S3, FORWARD] == pytest.approx(10.0)
    q_discounted = value_iteration(BattleMDP().P, 7, gamma=0.99)
    assert q_discounted[S2].argmax() == FORWARD and q_discounted[S3].argmax() == FORWARD
    # The docstring's runners-up.
    np.testing.assert_allclose(q[S0], [5.3, -4.0, 1.0, 0.9 * 5.3 - 1], atol=1e-6)
    assert q[S1, FORWARD] == pytest.approx(0.95, abs=1e-6)


def test_episode_outcomes_and_is_success():
    env = BattleMDP()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(BACK)
    assert (obs, reward, terminated, truncated) == (FLED, 1.0, True, False)
    assert info["is_success"] is False

    env.reset(seed=0)
    env.s = S2  # sword in hand, monster dead: walk forward until the treasure
    for _ in range(100):
        obs, reward, terminated, _, info = env.step(FORWARD)
        if terminated:
            break
        assert (obs, reward, "is_success" in info) == (S2, 0.0, False)
    assert (obs, reward, info["is_success"]) == (WIN, 10.0, True)


def test_step_frequencies_match_table():
    env, n = BattleMDP(), 6000
    env.reset(seed=5)
    counts = dict.fromkeys(range(7), 0)
    for _ in range(n):
        env.reset()
        counts[env.step(USE_SWORD)[0]] += 1
    for ns in range(7):
        # 4 standard errors at p = 0.5: 4 * sqrt(0.25 / 6000) ~ 0.026.
        assert counts[ns] / n == pytest.approx(DOCUMENTED[S0][USE_SWORD].get(ns, 0.0), abs=0.026)


def test_same_seed_same_trajectory():
    def rollout(seed: int) -> list:
        env = BattleMDP()
        actions = np.random.default_rng(seed).integers(0, 4, 80)
        out = [env.reset(seed=seed)[0]]
        for a in actions:
            obs, reward, terminated, _, _ = env.step(int(a))
            out.append((obs, reward))
            if terminated:
                out.append(env.reset()[0])
        return out

    assert rollout(3) == rollout(3)
    assert rollout(3) != rollout(4)


def test_ansi_render_names_state():
    env = BattleMDP(render_mode="ansi")
    env.reset(seed=0)
    assert env.render() == "S0 (sword, monster alive)\n"
    env.step(BACK)
    assert env.render() == "FLED (ran away) (after move back)\n"
    assert BattleMDP().render() is None


def test_reward_and_dynamics_overrides():
    env = BattleMDP(win_reward=100.0, death_reward=-1.0)
    assert env.P[S0][FORWARD] == [(0.3, WIN, 100.0, True), (0.7, DEAD, -1.0, True)]
    dynamics = {s: dict(row) for s, row in DEFAULT_DYNAMICS.items()}
    dynamics[S0] = {**dynamics[S0], FORWARD: ((1.0, WIN),)}
    assert BattleMDP(dynamics=dynamics).P[S0][FORWARD] == [(1.0, WIN, 10.0, True)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({FORWARD: ((0.5, WIN),)}, "S0/move forward: probabilities sum to 0.5, expected 1"),
        ({FORWARD: ((1.0, 9),)}, "S0/move forward: unknown state 9"),
        ({FORWARD: ((1.5, WIN), (-0.5, DEAD))}, r"probability 1.5 not in \[0, 1\]"),
        ({FORWARD: (1.0,)}, "expected \\(prob, next_state\\) pairs"),
    ],
)
def test_bad_dynamics_raise_pavlov_error(change, message):
    dynamics = {s: dict(row) for s, row in DEFAULT_DYNAMICS.items()}
    dynamics[S0] = {**dynamics[S0], **change}
    with pytest.raises(PavlovError, match=message):
        BattleMDP(dynamics=dynamics)


def test_missing_dynamics_and_bad_config():
    with pytest.raises(PavlovError, match="no entry for state S3"):
        BattleMDP(dynamics={s: DEFAULT_DYNAMICS[s] for s in (S0, S1, S2)})
    with pytest.raises(PavlovError, match="no action 'heal' in state S0"):
        BattleMDP(dynamics={**DEFAULT_DYNAMICS, S0: {a: DEFAULT_DYNAMICS[S0][a] for a in range(3)}})
    with pytest.raises(ConfigError, match="win_reward must be finite"):
        BattleMDP(win_reward=float("nan"))
    with pytest.raises(ConfigError, match="render_mode must be None or one of"):
        BattleMDP(render_mode="rgb_array")


def test_gym_make_and_check_env():
    env = gym.make("pavlov/Battle-v0")
    assert env.spec.max_episode_steps == 50
    assert isinstance(env.unwrapped, BattleMDP)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped)


def test_heal_forever_is_truncated_by_time_limit():
    env = gym.make("pavlov/Battle-v0")
    env.reset(seed=0)
    env.unwrapped.s = S2  # healing in S2 is a certain self-loop
    for t in range(50):
        _, _, terminated, truncated, _ = env.step(HEAL)
        assert not terminated
        assert truncated == (t == 49)
