"""GridWorld: map parsing, tables vs. dynamics, rewards, observations, rendering, registration."""

from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import pavlov.envs
from pavlov.envs import GridWorld, grid2x3
from pavlov.envs.gridworld import DOWN, LEFT, RIGHT, UP
from pavlov.errors import ConfigError, PavlovError

OPEN_3X3 = ["...", ".S.", "..."]


def outcomes(env: GridWorld, s: int, a: int) -> dict[int, float]:
    """``P[s][a]`` as {next_state: prob}, summing duplicates if any."""
    out: dict[int, float] = {}
    for p, ns, _, _ in env.P[s][a]:
        out[ns] = out.get(ns, 0.0) + p
    return out


# ---------------------------------------------------------------- map parsing and config errors


@pytest.mark.parametrize(
    ("grid_map", "message"),
    [
        (["S..", ".#..", "..G"], "grid map row 1 has 4 cells, expected 3"),
        ([".RG", "...", "..G"], "grid map has no start cell 'S'"),
        (["SQ.", "..G"], "unknown cell 'Q' at row 0, col 1"),
        (["S.G", ". G"], "unknown cell ' ' at row 1, col 1"),
        ([], "grid map is empty"),
        ("\n  \n", "grid map is empty"),
        (["", ""], "grid map row 0 is empty"),
        (["S.", 7], "grid map row 1 must be a string"),
        (42, "grid map must be a string or a list of strings"),
    ],
)
def test_bad_maps_raise_one_line_pavlov_error(grid_map, message):
    with pytest.raises(PavlovError, match=message) as info:
        GridWorld(map=grid_map)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slip": 1.5}, "slip must be in"),
        ({"slip": float("nan")}, "slip must be finite"),
        ({"goal_reward": "big"}, "goal_reward must be a number"),
        ({"step_cost": float("inf")}, "step_cost must be finite"),
        ({"obs_type": "pixels"}, "obs_type must be one of"),
        ({"render_mode": "human"}, "render_mode must be None or one of"),
        ({"cell_rewards": {"#": 1.0}}, "cell_rewards keys must be single non-wall characters"),
        ({"cell_rewards": {"AB": 1.0}}, "cell_rewards keys must be single non-wall characters"),
        ({"terminal_cells": "G#"}, "terminal_cells must be a string of letters other than"),
        ({"terminal_cells": "S"}, "terminal_cells must be a string of letters other than"),
        ({"cell_size": 0}, "cell_size must be positive"),
    ],
)
def test_bad_config_raises_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GridWorld(**kwargs)


def test_gym_make_passes_map_errors_through():
    with pytest.raises(PavlovError, match="no start cell"):
        gym.make("pavlov/GridWorld-v0", map=["..G"])


def test_multiline_string_map_equals_list_map():
    text = """
        .RG
        S..
    """
    assert GridWorld(map=text).grid == GridWorld(map=[".RG", "S.."]).grid == (".RG", "S..")


def test_custom_letters_rewards_and_terminals():
    env = GridWorld(map=["STX"], cell_rewards={"T": 2.0, "X": -3.0}, terminal_cells="X")
    # T: non-terminal bonus; X: terminal penalty; G/H are no longer terminal (not in the map).
    assert env.P[0][RIGHT] == [(1.0, 1, 2.0, False)]
    assert env.P[1][RIGHT] == [(1.0, 2, -3.0, True)]
    assert env.P[2][LEFT] == [(1.0, 2, 0.0, True)]  # terminal cell: absorbing self-loop


# ---------------------------------------------------------------- tables and transitions


def test_moves_off_grid_or_into_walls_stay():
    env = grid2x3()
    start = env.to_state(1, 0)
    assert outcomes(env, start, LEFT) == {start: 1.0}
    assert outcomes(env, start, DOWN) == {start: 1.0}
    assert outcomes(env, start, UP) == {env.to_state(0, 0): 1.0}
    walled = GridWorld(map=["S#G", "..."])
    assert outcomes(walled, 0, RIGHT) == {0: 1.0}
    assert outcomes(walled, 0, DOWN) == {3: 1.0}
    assert walled.P[1][UP] == [(1.0, 1, 0.0, True)]  # the wall itself: never reached


def test_slip_outcomes_in_table():
    env = GridWorld(map=OPEN_3X3, slip=0.4)
    centre = env.to_state(1, 1)
    up, down, left, right = (env.to_state(0, 1), env.to_state(2, 1),
                             env.to_state(1, 0), env.to_state(1, 2))  # fmt: skip
    assert outcomes(env, centre, UP) == pytest.approx({up: 0.6, left: 0.2, right: 0.2})
    assert outcomes(env, centre, LEFT) == pytest.approx({left: 0.6, up: 0.2, down: 0.2})
    # In a corner, a slip off the grid merges with staying put.
    assert outcomes(env, 0, UP) == pytest.approx({0: 0.8, 1: 0.2})


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.text(alphabet=".#GHR", min_size=3, max_size=3), min_size=1, max_size=4),
    slip=st.floats(0.0, 1.0),
    step_cost=st.floats(-1.0, 1.0),
)
def test_tables_are_distributions_consistent_with_cells(rows, slip, step_cost):
    rows = ["S" + rows[0][1:]] + rows[1:]
    env = GridWorld(map=rows, slip=slip, step_cost=step_cost, goal_reward=3.0)
    assert env.initial_state_distrib.shape == (env.n_states,)
    assert env.initial_state_distrib.sum() == pytest.approx(1.0)
    for s in range(env.n_states):
        for a in range(4):
            trans = env.P[s][a]
            assert sum(p for p, *_ in trans) == pytest.approx(1.0)
            for p, ns, reward, terminated in trans:
                assert 0 < p <= 1
                row, col = env.to_cell(ns)
                cell = env.grid[row][col]
                if env.grid[s // 3][s % 3] in "#GH":
                    assert (ns, reward, terminated) == (s, 0.0, True)
                    continue
                assert cell != "#"
                assert terminated == (cell in "GH")
                assert reward == pytest.approx(env.cell_rewards[cell] - step_cost)


def test_step_frequencies_match_table():
    env = GridWorld(map=OPEN_3X3, slip=0.4)
    centre, n = env.to_state(1, 1), 6000
    env.reset(seed=123)
    counts: dict[int, int] = {}
    for _ in range(n):
        env.reset()
        obs, *_ = env.step(UP)
        counts[obs] = counts.get(obs, 0) + 1
    expected = outcomes(env, centre, UP)
    assert set(counts) == set(expected)
    for ns, p in expected.items():
        # 4 standard errors: sqrt(0.24 / 6000) ~ 0.0063.
        assert counts[ns] / n == pytest.approx(p, abs=0.025)


# ---------------------------------------------------------------- rewards and episodes


def test_grid2x3_red_square_is_a_nonterminal_penalty_and_goal_ends_with_plus_10():
    env = grid2x3()
    obs, _ = env.reset(seed=0)
    assert obs == env.to_state(1, 0)
    assert env.step(UP)[1:4] == (0.0, False, False)
    obs, reward, terminated, truncated, info = env.step(RIGHT)
    assert (obs, reward, terminated) == (env.to_state(0, 1), -10.0, False)
    assert "is_success" not in info
    assert env.step(UP)[1:3] == (-10.0, False)  # bumping the edge re-enters the red square
    obs, reward, terminated, truncated, info = env.step(RIGHT)
    assert (obs, reward, terminated, truncated) == (env.to_state(0, 2), 10.0, True, False)
    assert info["is_success"] is True


def test_hazard_terminates_without_success_and_step_cost_subtracts():
    env = GridWorld(map=["SH", ".G"], step_cost=0.1, hazard_reward=-2.0, goal_reward=1.0)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(RIGHT)
    assert (reward, terminated, info["is_success"]) == (pytest.approx(-2.1), True, False)
    env.reset()
    assert env.step(DOWN)[1] == pytest.approx(-0.1)
    _, reward, terminated, _, info = env.step(RIGHT)
    assert (reward, terminated, info["is_success"]) == (pytest.approx(0.9), True, True)


def test_grid2x3_optimal_policy_reaches_goal_in_three_steps_avoiding_red():
    env, gamma = grid2x3(), 0.9
    q = np.zeros((env.n_states, 4))
    for _ in range(200):  # value iteration on the env's own tables
        v = q.max(axis=1)
        q = np.array([[sum(p * (r + gamma * (not t) * v[ns]) for p, ns, r, t in env.P[s][a])
                       for a in range(4)] for s in range(env.n_states)])  # fmt: skip
    obs, _ = env.reset(seed=0)
    rewards, visited = [], []
    for _ in range(10):
        obs, reward, terminated, _, _ = env.step(int(q[obs].argmax()))
        rewards.append(reward)
        visited.append(obs)
        if terminated:
            break
    assert rewards == [0.0, 0.0, 10.0]
    assert env.to_state(0, 1) not in visited


def test_multiple_start_cells_are_uniform():
    env = GridWorld(map=["S.S", "..G"])
    np.testing.assert_allclose(env.initial_state_distrib, [0.5, 0, 0.5, 0, 0, 0])
    env.reset(seed=0)
    starts = {env.reset()[0] for _ in range(50)}
    assert starts == {0, 2}


# ---------------------------------------------------------------- observations and rendering


def test_onehot_observations():
    env = grid2x3(obs_type="onehot")
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (6,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (6,)
    assert obs.sum() == 1.0 and int(obs.argmax()) == env.to_state(1, 0)
    obs2, *_ = env.step(RIGHT)
    assert int(obs2.argmax()) == env.to_state(1, 1) and obs2 in env.observation_space
    assert obs.argmax() == env.to_state(1, 0)  # the earlier array was not reused


def test_ansi_render_marks_agent():
    env = grid2x3(render_mode="ansi")
    env.reset(seed=0)
    assert env.render() == " .  R  G\n[S] .  .\n"
    env.step(UP)
    assert env.render() == "(up)\n[.] R  G\n S  .  .\n"


def test_rgb_render_shape_and_agent_colour():
    env = grid2x3(render_mode="rgb_array", cell_size=20)
    env.reset(seed=0)
    img = env.render()
    assert img.shape == (40, 60, 3) and img.dtype == np.uint8
    env.step(RIGHT)  # agent leaves (1, 0) for (1, 1)
    moved = env.render()
    centre_start, centre_next = (30, 10), (30, 30)
    assert not np.array_equal(img[centre_start], moved[centre_start])
    assert not np.array_equal(img[centre_next], moved[centre_next])
    assert np.array_equal(img[centre_start], moved[centre_next])  # the agent's colour
    # Cell kinds get distinct colours: red square, goal, floor.
    assert len({tuple(moved[10, x]) for x in (10, 30, 50)}) == 3


def test_render_none_without_mode():
    env = grid2x3()
    env.reset(seed=0)
    assert env.render() is None


# ---------------------------------------------------------------- seeding and registration


def rollout(env: gym.Env, seed: int, steps: int = 60) -> list:
    actions = np.random.default_rng(seed).integers(0, 4, steps)
    obs, _ = env.reset(seed=seed)
    trajectory = [obs]
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(int(a))
        trajectory.append((obs, reward))
        if terminated or truncated:
            obs, _ = env.reset()
            trajectory.append(obs)
    return trajectory


def test_same_seed_same_trajectory():
    env = GridWorld(map=OPEN_3X3 + ["..G"], slip=0.5)
    assert rollout(env, 7) == rollout(env, 7)
    assert rollout(env, 7) != rollout(env, 8)


@pytest.mark.parametrize(
    ("env_id", "kwargs", "max_steps"),
    [
        ("pavlov/GridWorld-v0", {}, 100),
        ("pavlov/GridWorld-v0", {"obs_type": "onehot", "slip": 0.2}, 100),
        ("pavlov/Grid2x3-v0", {}, 100),
        ("pavlov/Grid2x3-v0", {"obs_type": "onehot", "render_mode": "rgb_array"}, 100),
    ],
)
def test_gym_make_and_check_env(env_id, kwargs, max_steps):
    env = gym.make(env_id, **kwargs)
    assert env.spec.max_episode_steps == max_steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped)


def test_grid2x3_preset_via_make_matches_function():
    made = gym.make("pavlov/Grid2x3-v0").unwrapped
    assert made.grid == grid2x3().grid == (".RG", "S..")
    assert made.P == grid2x3().P
    assert gym.make("pavlov/Grid2x3-v0", slip=0.2).unwrapped.slip == 0.2


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(pavlov.envs)
        pavlov.envs.register_envs()
    for env_id in ("pavlov/GridWorld-v0", "pavlov/Grid2x3-v0", "pavlov/Battle-v0"):
        assert env_id in gym.registry
