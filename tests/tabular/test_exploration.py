"""Exploration strategies and ε schedules: exact values, tie-breaking, sampled vs stated probs."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pavlov.errors import ConfigError
from pavlov.tabular.exploration import (
    EXPLORATION,
    SCHEDULES,
    action_probs,
    epsilon_schedule,
    greedy_action,
    select_action,
)

q_rows = st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False), min_size=1, max_size=8)


# --- schedules ---------------------------------------------------------------------------------


def test_constant_schedule_ignores_episode():
    schedule = epsilon_schedule("constant", 0.3, 0.0, 10)
    assert [schedule(k) for k in (0, 5, 10, 1000)] == [0.3] * 4


def test_linear_schedule_endpoints_and_midpoint():
    schedule = epsilon_schedule("linear", 1.0, 0.1, 100)
    assert schedule(0) == 1.0
    assert schedule(50) == pytest.approx(0.55)
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(10_000) == pytest.approx(0.1)


def test_exponential_schedule_gap_is_one_percent_after_decay_and_works_with_zero_end():
    schedule = epsilon_schedule("exponential", 1.0, 0.0, 200)
    assert schedule(0) == 1.0
    assert schedule(200) == pytest.approx(0.01)
    values = [schedule(k) for k in range(0, 400, 7)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    shifted = epsilon_schedule("exponential", 0.5, 0.1, 200)
    assert shifted(200) == pytest.approx(0.1 + 0.4 * 0.01)


def test_glie_schedule_is_one_over_k_with_k_from_one():
    schedule = epsilon_schedule("glie", 1.0, 0.0, 10)
    assert [schedule(k) for k in range(4)] == [1.0, 0.5, 1 / 3, 0.25]


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ConfigError, match="epsilon schedule"):
        epsilon_schedule("cosine", 1.0, 0.0, 10)
    assert set(SCHEDULES) == {"constant", "linear", "exponential", "glie"}


# --- greedy and tie-breaking -------------------------------------------------------------------


def test_greedy_picks_the_unique_maximum():
    rng = random.Random(0)
    assert all(greedy_action([0.1, 0.7, 0.3, 0.7 - 1e-12], rng.random) == 1 for _ in range(100))


def test_greedy_breaks_ties_uniformly_at_random():
    rng = random.Random(0)
    counts = Counter(greedy_action([0.0, 0.0, -1.0, 0.0], rng.random) for _ in range(30_000))
    assert set(counts) == {0, 1, 3}
    for action in (0, 1, 3):  # 10_000 expected each; sd ≈ 82
        assert abs(counts[action] - 10_000) < 500


def test_select_action_accepts_numpy_rows():
    action = select_action(np.array([0.0, 2.0, 1.0]), "greedy", rng=random.Random(0))
    assert action == 1


# --- stated probabilities match sampled frequencies --------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "param"),
    [("epsilon-greedy", 0.3), ("glie", 0.5), ("softmax", 0.5), ("random", 0.0), ("greedy", 0.0)],
)
def test_action_probs_match_sampled_frequencies(strategy, param):
    q_row = [1.0, 0.5, 1.0, -0.2]  # two tied greedy actions
    rng = random.Random(1)
    n = 40_000
    counts = Counter(select_action(q_row, strategy, param, rng) for _ in range(n))
    probs = action_probs(q_row, strategy, param)
    for action, p in enumerate(probs):
        assert abs(counts[action] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_epsilon_greedy_probs_by_hand():
    assert action_probs([0.0, 1.0, 0.0, 0.0], "epsilon-greedy", 0.2) == pytest.approx(
        [0.05, 0.85, 0.05, 0.05]
    )
    # tied greedy actions share 1 − ε
    assert action_probs([1.0, 1.0, 0.0], "epsilon-greedy", 0.3) == pytest.approx(
        [0.1 + 0.35, 0.1 + 0.35, 0.1]
    )


def test_softmax_probs_formula_and_limits():
    q_row = [1.0, 2.0, 0.0]
    expected = np.exp(np.array(q_row) / 0.7)
    assert action_probs(q_row, "softmax", 0.7) == pytest.approx(expected / expected.sum())
    assert action_probs(q_row, "softmax", 1e6) == pytest.approx([1 / 3] * 3, abs=1e-5)
    assert action_probs(q_row, "softmax", 1e-3) == pytest.approx([0.0, 1.0, 0.0])
    assert action_probs([1000.0, 0.0], "softmax", 1.0)[0] == pytest.approx(1.0)  # no overflow


@given(q_row=q_rows, param=st.floats(min_value=0.0, max_value=1.0))
def test_action_probs_are_distributions(q_row, param):
    for strategy in EXPLORATION:
        temperature_ok = param if strategy != "softmax" else max(param, 1e-3)
        probs = action_probs(q_row, strategy, temperature_ok)
        assert len(probs) == len(q_row)
        assert min(probs) >= 0.0
        assert sum(probs) == pytest.approx(1.0)


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="exploration must be one of"):
        action_probs([0.0], "thompson")
