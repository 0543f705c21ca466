"""Exact tests for pavlov.math.value: TD and double-Q targets, Huber, Polyak averaging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pavlov.math import double_q_target, huber, polyak_update, td_target

PROPS = settings(max_examples=50, deadline=None)


def test_td_target_hand_case_ignores_next_value_on_termination():
    r = torch.tensor([1.0, 1.0])
    next_v = torch.tensor([10.0, math.nan])
    out = td_target(r, next_v, torch.tensor([False, True]), gamma=0.9)
    torch.testing.assert_close(out, torch.tensor([10.0, 1.0]))


def test_double_q_target_uses_online_argmax_and_target_value():
    r = torch.tensor([0.0, 1.0, 2.0])
    online = torch.tensor([[1.0, 5.0], [3.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[7.0, 2.0], [4.0, 9.0], [1.0, 1.0]])
    term = torch.tensor([0, 0, 1])
    out = double_q_target(r, online, target, term, gamma=0.5)
    # online picks actions 1, 0, (1): target values 2, 4, (ignored)
    torch.testing.assert_close(out, torch.tensor([1.0, 3.0, 2.0]))
    # the max over the target net would give 7 and 9 instead: double Q is not max Q
    assert not torch.allclose(out, td_target(r, target.max(-1).values, term, 0.5))


@PROPS
@given(delta=st.floats(0.1, 5.0), seed=st.integers(0, 2**31 - 1))
def test_huber_matches_torch_and_bounds_gradient(delta, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(20, generator=g, dtype=torch.float64) * 4).requires_grad_()
    expected = F.huber_loss(x, torch.zeros_like(x), reduction="none", delta=delta)
    torch.testing.assert_close(huber(x, delta), expected)
    huber(x, delta).sum().backward()
    assert (x.grad.abs() <= delta + 1e-12).all()


def test_huber_hand_case_and_bad_delta():
    x = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    torch.testing.assert_close(huber(x), torch.tensor([2.5, 0.125, 0.0, 1.5]))
    with pytest.raises(ValueError, match="delta"):
        huber(x, 0.0)


def nets(seed):
    torch.manual_seed(seed)
    make = lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    target, online = make(), make()
    online.train()(torch.randn(8, 3))  # move BatchNorm running stats, bump num_batches_tracked
    return target, online


def test_polyak_tau_one_copies_and_tau_zero_keeps():
    target, online = nets(0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    polyak_update(target, online, tau=0.0)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k])
    polyak_update(target, online, tau=1.0)
    for k, v in target.state_dict().items():
        assert torch.equal(v, online.state_dict()[k]), k


def test_polyak_soft_update_on_tensor_lists():
    target = [torch.zeros(2, 3), torch.ones(4)]
    online = [torch.ones(2, 3), torch.full((4,), 3.0)]
    polyak_update(target, online, tau=0.25)
    torch.testing.assert_close(target[0], torch.full((2, 3), 0.25))
    torch.testing.assert_close(target[1], torch.full((4,), 1.5))


def test_polyak_updates_parameters_in_place_without_grad():
    target, online = nets(1)
    weight = target[0].weight
    expected = 0.9 * weight.detach().clone() + 0.1 * online[0].weight.detach()
    polyak_update(target.parameters(), online.parameters(), tau=0.1)
    assert target[0].weight is weight and weight.grad_fn is None
    torch.testing.assert_close(weight.detach(), expected)


def test_polyak_rejects_bad_tau_and_mismatched_structures():
    target, online = nets(2)
    with pytest.raises(ValueError, match="tau"):
        polyak_update(target, online, tau=1.5)
    with pytest.raises(ValueError):
        polyak_update(list(target.parameters())[:2], online.parameters(), tau=0.5)
    with pytest.raises(ValueError, match="shape"):
        polyak_update([torch.zeros(2)], [torch.zeros(3)], tau=0.5)
