"""MDP construction from arrays and from Gymnasium toy-text envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv

from pavlov.errors import ConfigError, PavlovError
from pavlov.tabular.mdp import MDP, mdp_from_env


class TableEnv(gym.Env):
    """Minimal env exposing a toy-text table; ``from_env`` never steps it."""

    def __init__(self, P, initial, n_states: int, n_actions: int = 1):
        self.P = P
        self.initial_state_distrib = np.asarray(initial, dtype=float)
        self.observation_space = gym.spaces.Discrete(n_states)
        self.action_space = gym.spaces.Discrete(n_actions)


def chain(p_stay: float = 0.75) -> MDP:
    """State 0 live, state 1 terminal; action 0 earns 1 and stays w.p. p_stay, action 1 earns 2."""
    P = np.zeros((2, 2, 2))
    P[0, 0] = [p_stay, 1 - p_stay]
    P[0, 1] = [0.0, 1.0]
    R = np.array([[1.0, 2.0], [0.0, 0.0]])
    return MDP(P=P, R=R, terminal=[False, True], initial=[1.0, 0.0], name="chain")


# --- construction from arrays -------------------------------------------------------------


def test_defaults_no_terminal_and_uniform_start():
    mdp = MDP(P=np.full((3, 2, 3), 1 / 3), R=np.zeros((3, 2)))
    assert not mdp.terminal.any()
    np.testing.assert_allclose(mdp.initial, [1 / 3] * 3)
    assert (mdp.n_states, mdp.n_actions, mdp.horizon, mdp.name) == (3, 2, None, "mdp")


def test_default_start_excludes_terminal_states():
    assert chain().initial.tolist() == [1.0, 0.0]
    mdp = MDP(P=np.full((3, 1, 3), 1 / 3), R=np.zeros((3, 1)), terminal=[False, True, False])
    assert mdp.initial.tolist() == [0.5, 0.0, 0.5]


def test_terminal_rows_become_reward_free_self_loops_and_inputs_are_untouched():
    P = np.zeros((2, 1, 2))
    P[0, 0, 1] = 1.0  # terminal row 1 left all zero, as a count-based model might
    R = np.array([[1.0], [5.0]])
    mdp = MDP(P=P, R=R, terminal=[False, True])
    assert mdp.P[1, 0].tolist() == [0.0, 1.0]
    assert mdp.R[1, 0] == 0.0
    assert R[1, 0] == 5.0 and P[1, 0].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        mdp.P[0, 0, 0] = 0.5  # read-only: the dataclass is frozen, so are its arrays


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"P": np.ones((2, 2)), "R": np.zeros((2, 2))}, "shape"),
        ({"P": np.full((2, 1, 3), 1 / 3), "R": np.zeros((2, 1))}, "shape"),
        ({"P": np.full((2, 1, 2), 0.5), "R": np.zeros((1, 2))}, "R must have shape"),
        ({"P": np.full((2, 1, 2), 0.4), "R": np.zeros((2, 1))}, "sums to 0.8"),
        ({"P": np.array([[[1.5, -0.5]], [[0.5, 0.5]]]), "R": np.zeros((2, 1))}, "negative"),
        ({"P": np.full((2, 1, 2), 0.5), "R": np.full((2, 1), np.nan)}, "finite"),
        ({"P": np.full((2, 1, 2), 0.5), "R": np.zeros((2, 1)), "initial": [0.5, 0.6]}, "initial"),
        ({"P": np.full((2, 1, 2), 0.5), "R": np.zeros((2, 1)), "initial": [1.0]}, "initial"),
        ({"P": np.full((2, 1, 2), 0.5), "R": np.zeros((2, 1)), "terminal": [True]}, "terminal"),
    ],
)
def test_invalid_arrays_raise_pavlov_error(kwargs, match):
    with pytest.raises(PavlovError, match=match):
        MDP(**kwargs)


def test_rows_within_tolerance_are_accepted():
    P = np.full((2, 1, 2), 0.5)
    P[0, 0, 0] += 5e-9
    MDP(P=P, R=np.zeros((2, 1)))


def test_horizon_must_be_positive():
    with pytest.raises(ConfigError, match="horizon"):
        MDP(P=np.full((2, 1, 2), 0.5), R=np.zeros((2, 1)), horizon=0)


# --- construction from Gymnasium envs -----------------------------------------------------


def test_frozenlake_tables():
    mdp = MDP.from_env(gym.make("FrozenLake-v1"))
    assert mdp.P.shape == (16, 4, 16) and mdp.R.shape == (16, 4)
    assert (mdp.name, mdp.horizon) == ("FrozenLake-v1", 100)
    assert np.flatnonzero(mdp.terminal).tolist() == [5, 7, 11, 12, 15]  # holes and goal
    assert mdp.initial.tolist() == [1.0] + [0.0] * 15
    # LEFT from the corner slips up (stay), left (stay) or down: the duplicate adds to 2/3.
    assert mdp.P[0, 0, 0] == pytest.approx(2 / 3) and mdp.P[0, 0, 4] == pytest.approx(1 / 3)
    assert mdp.R[14, 2] == pytest.approx(1 / 3)  # RIGHT next to the goal reaches it w.p. 1/3
    assert mdp.R.sum() == pytest.approx(3 * (1 / 3))  # only 14-RIGHT, 14-DOWN, 14-UP; 11 is a hole
    np.testing.assert_allclose(mdp.P.sum(axis=2), 1.0)


def test_taxi_allows_conflicts_among_unreachable_states():
    # Taxi enters each drop-off state with terminated=True, and (from states where the
    # passenger already sits at the destination, never visited) with terminated=False too.
    mdp = mdp_from_env(gym.make("Taxi-v4"))
    assert mdp.P.shape == (500, 6, 500)
    assert mdp.terminal.sum() == 4 and mdp.horizon == 200
    assert mdp.R.min() == -10 and mdp.R.max() == 20


def test_cliffwalking_has_no_step_limit():
    mdp = MDP.from_env(gym.make("CliffWalking-v1"))
    assert mdp.horizon is None
    assert np.flatnonzero(mdp.terminal).tolist() == [47]


def test_horizon_follows_the_time_limit_wrapper():
    assert MDP.from_env(gym.make("FrozenLake-v1", max_episode_steps=7)).horizon == 7
    assert MDP.from_env(gym.make("FrozenLake8x8-v1")).horizon == 200
    bare = MDP.from_env(FrozenLakeEnv())
    assert (bare.horizon, bare.name) == (None, "FrozenLakeEnv")


def test_box_observation_space_is_rejected():
    with pytest.raises(PavlovError, match=r"Discrete observation space; CartPole-v1 has Box"):
        MDP.from_env(gym.make("CartPole-v1"))


def test_env_without_table_is_rejected():
    env = TableEnv(P=None, initial=[1.0], n_states=1)
    del env.P
    with pytest.raises(PavlovError, match="no transition table"):
        MDP.from_env(env)


def test_malformed_table_is_rejected():
    env = TableEnv(P={0: {0: [(1.0, 0)]}}, initial=[1.0], n_states=1)
    with pytest.raises(PavlovError, match="reading it failed"):
        MDP.from_env(env)


def test_reachable_terminal_conflict_is_rejected():
    # 0 -> 1 terminates, 0 -> 2 continues, 2 -> 1 continues: state 1 is both.
    P = {
        0: {0: [(0.5, 1, 1.0, True), (0.5, 2, 0.0, False)]},
        1: {0: [(1.0, 1, 0.0, True)]},
        2: {0: [(1.0, 1, 0.0, False)]},
    }
    with pytest.raises(PavlovError, match="state 1 is entered both"):
        MDP.from_env(TableEnv(P, initial=[1.0, 0.0, 0.0], n_states=3))


def test_reward_on_terminating_transition_is_kept():
    P = {0: {0: [(0.5, 1, 4.0, True), (0.5, 0, -1.0, False)]}, 1: {0: [(1.0, 1, 9.0, True)]}}
    mdp = MDP.from_env(TableEnv(P, initial=[1.0, 0.0], n_states=2))
    assert mdp.R[:, 0].tolist() == [1.5, 0.0]  # terminal state's own reward dropped
    assert mdp.terminal.tolist() == [False, True]
