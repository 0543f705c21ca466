"""Running normalizers: the parallel merge equals one pass over all the data."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pavlov.agents.normalize import RewardScaler, RunningMeanStd

PROPS = settings(max_examples=50, deadline=None)


@PROPS
@given(seed=st.integers(0, 2**31 - 1), sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_parallel_merge_matches_numpy_over_all_batches(seed, sizes):
    rng = np.random.default_rng(seed)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)) * rng.uniform(0.1, 10) for n in sizes]
    rms = RunningMeanStd((3,), epsilon=1e-12)  # a negligible prior: compare with plain numpy
    for b in batches:
        rms.update(b)
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-9, atol=1e-6)  # prior: 1e-12
    assert abs(rms.count - len(data)) < 1e-9


def test_default_prior_is_mean_zero_variance_one_with_tiny_weight():
    rms = RunningMeanStd(())
    assert rms.mean == 0.0 and rms.var == 1.0
    rms.update(np.array([10.0, 12.0]))
    # prior count 1e-4 at mean 0, var 1: the data dominate to ~5e-5 relative
    np.testing.assert_allclose(rms.mean, 11.0, rtol=1e-4)
    np.testing.assert_allclose(rms.var, 1.0, rtol=1e-2)


def test_empty_batch_changes_nothing_and_normalize_clips():
    rms = RunningMeanStd((2,))
    rms.update(np.array([[0.0, 0.0], [2.0, 4.0]]))
    before = rms.state_dict()
    rms.update(np.zeros((0, 2)))
    assert rms.count == before["count"]
    out = rms.normalize(np.array([[1.0, 2.0], [1e6, -1e6]]), clip=5.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.0, 0.0], atol=1e-3)
    np.testing.assert_array_equal(out[1], [5.0, -5.0])


def test_running_mean_std_state_dict_roundtrip():
    rng = np.random.default_rng(0)
    a = RunningMeanStd((4,))
    a.update(rng.normal(size=(50, 4)))
    b = RunningMeanStd((4,))
    b.load_state_dict(a.state_dict())
    x = rng.normal(size=(5, 4))
    np.testing.assert_array_equal(a.normalize(x, 10.0), b.normalize(x, 10.0))
    a.update(x)  # the copy is independent of the original
    assert not np.array_equal(a.mean, b.mean)


def test_reward_scaler_divides_by_the_std_of_the_discounted_return():
    gamma = 0.9
    scaler = RewardScaler(n_envs=2, gamma=gamma, clip=100.0)
    rewards = [np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([1.0, 2.0])]
    done = [np.array([False, True]), np.array([False, False]), np.array([False, False])]
    returns, seen = np.zeros(2), []
    for r, d in zip(rewards, done, strict=True):
        out = scaler(r, d)
        returns = returns * gamma + r
        seen.append(returns.copy())
        returns[d] = 0.0  # an ended episode's return restarts
        ref = RunningMeanStd(())
        ref.update(np.concatenate(seen))
        np.testing.assert_allclose(out, r / np.sqrt(ref.var + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(seen[-1], [1 + gamma + gamma**2, 2 + 2 * gamma])


def test_reward_scaler_clips_and_state_dict_keeps_the_returns():
    scaler = RewardScaler(n_envs=1, gamma=0.99, clip=1.0)
    for _ in range(5):
        scaler(np.array([0.01]), np.array([False]))
    assert scaler(np.array([1e6]), np.array([False]))[0] == 1.0
    other = RewardScaler(n_envs=1, gamma=0.99, clip=1.0)
    other.load_state_dict(scaler.state_dict())  # a resume that continues the episodes
    assert other.rms.count == scaler.rms.count and other.returns[0] == scaler.returns[0] != 0.0
    np.testing.assert_array_equal(other.scale(np.array([0.5])), scaler.scale(np.array([0.5])))
    other.restart()  # a resume whose envs start fresh episodes
    assert other.returns[0] == 0.0
