"""The replay buffer: circular overwrite, fields kept apart, sampling, state roundtrip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pavlov.agents.replay import ReplayBuffer
from pavlov.errors import PavlovError


def _add(buf: ReplayBuffer, values: list[int], terminated=None, truncated=None) -> None:
    """Add len(values) transitions whose obs, action, reward and next obs encode the value."""
    v = np.asarray(values)
    n = len(v)
    obs = np.stack([v, -v], axis=1).astype(np.float32)  # (n, 2)
    buf.add(obs, v % 3, v.astype(np.float64), obs + 0.5,
            np.zeros(n, bool) if terminated is None else np.asarray(terminated),
            np.zeros(n, bool) if truncated is None else np.asarray(truncated))


def test_fills_then_overwrites_oldest_first():
    buf = ReplayBuffer(5, (2,))
    _add(buf, [0, 1, 2])
    assert (buf.pos, buf.size, len(buf)) == (3, 3, 3)
    for i in range(3, 7):
        _add(buf, [i])
    assert (buf.pos, buf.size) == (2, 5)
    assert buf.tensors["obs"][:, 0].tolist() == [5, 6, 2, 3, 4]
    assert buf.tensors["rewards"].tolist() == [5, 6, 2, 3, 4]
    assert buf.tensors["actions"].tolist() == [2, 0, 2, 0, 1]
    assert torch.equal(buf.tensors["next_obs"], buf.tensors["obs"] + 0.5)


def test_vector_add_wraps_around():
    buf = ReplayBuffer(5, (2,))
    _add(buf, [0, 1, 2, 3])
    _add(buf, [4, 5, 6])  # rows 4, 0, 1
    assert buf.tensors["obs"][:, 0].tolist() == [5, 6, 2, 3, 4]
    assert (buf.pos, buf.size) == (2, 5)
    with pytest.raises(PavlovError, match="cannot add 6"):
        _add(buf, list(range(6)))


def test_terminated_and_truncated_are_stored_apart():
    buf = ReplayBuffer(4, (2,))
    _add(buf, [0, 1, 2], terminated=[True, False, False], truncated=[False, True, False])
    assert buf.tensors["terminated"][:3].tolist() == [True, False, False]
    assert buf.tensors["truncated"][:3].tolist() == [False, True, False]
    assert buf.tensors["terminated"].dtype == buf.tensors["truncated"].dtype == torch.bool


def test_sample_shapes_dtypes_and_only_filled_rows():
    torch.manual_seed(0)
    buf = ReplayBuffer(100, (2,))
    with pytest.raises(PavlovError, match="empty"):
        buf.sample(4)
    _add(buf, [10, 11, 12])
    b = buf.sample(256)
    assert b.obs.shape == b.next_obs.shape == (256, 2) and b.obs.dtype == torch.float32
    assert b.actions.shape == (256,) and b.actions.dtype == torch.int64
    assert b.rewards.shape == (256,) and b.rewards.dtype == torch.float32
    assert b.terminated.shape == b.truncated.shape == (256,)
    assert set(b.rewards.tolist()) == {10.0, 11.0, 12.0}  # never an empty row
    assert torch.equal(b.obs[:, 0], b.rewards)  # fields of one row stay together
    assert torch.equal(b.next_obs, b.obs + 0.5)


def test_discrete_observations_are_int_indices():
    buf = ReplayBuffer(8, (), torch.int64)
    buf.add(np.array([3, 7]), np.array([0, 1]), np.array([0.0, 1.0]), np.array([4, 0]),
            np.array([False, True]), np.array([False, False]))
    b = buf.sample(5)
    assert b.obs.shape == (5,) and b.obs.dtype == torch.int64


def test_state_roundtrip_restores_contents_position_and_size():
    buf = ReplayBuffer(5, (2,))
    _add(buf, [0, 1, 2, 3], terminated=[True, False, True, False])
    _add(buf, [4, 5, 6], truncated=[False, True, False])
    state = buf.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    other = ReplayBuffer(5, (2,))
    other.load_state_dict(state)
    assert (other.pos, other.size) == (buf.pos, buf.size)
    for name, t in buf.tensors.items():
        assert torch.equal(other.tensors[name], t), name
    _add(buf, [7])
    _add(other, [7])  # continues writing at the same row
    assert torch.equal(other.tensors["obs"], buf.tensors["obs"])
    with pytest.raises(PavlovError, match="buffer_size is 6"):
        ReplayBuffer(6, (2,)).load_state_dict(state)


def test_state_while_filling_holds_only_filled_rows():
    buf = ReplayBuffer(10, (2,))
    _add(buf, [1, 2, 3])
    state = buf.state_dict()
    assert state["obs"].shape == (3, 2) and int(state["pos"]) == int(state["size"]) == 3
    other = ReplayBuffer(10, (2,))
    other.load_state_dict(state)
    assert torch.equal(other.tensors["obs"], buf.tensors["obs"])
