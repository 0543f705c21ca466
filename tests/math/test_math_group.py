"""Exact tests for pavlov.math.group: GRPO and RLOO advantages."""

from __future__ import annotations

import math

import pytest
import torch

from pavlov.math.group import group_advantages, rloo_advantages


def test_grpo_hand_case():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3)
    std = math.sqrt(1 / 3)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 4), expected)
    torch.testing.assert_close(
        group_advantages(rewards, 4, eps=0.0),
        torch.tensor([1.0, -1.0, -1.0, 1.0]) * math.sqrt(3) / 2,
    )
    torch.testing.assert_close(
        group_advantages(rewards, 4, scale_std=False), torch.tensor([0.5, -0.5, -0.5, 0.5])
    )


def test_grpo_groups_are_independent_and_contiguous():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 2.0, 4.0, 6.0, 8.0])
    adv = group_advantages(rewards, 4)
    torch.testing.assert_close(adv[:4], group_advantages(rewards[:4], 4))
    assert adv[4:8].abs().max().item() == 0.0  # constant group -> 0, no NaN
    torch.testing.assert_close(adv[8:], group_advantages(rewards[8:], 4))
    # pairs of two: [1, 0] -> mean .5, std sqrt(.5)
    torch.testing.assert_close(
        group_advantages(rewards[:2], 2, eps=0.0), torch.tensor([1.0, -1.0]) / math.sqrt(2)
    )


def test_grpo_matches_reference_formula():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(24, generator=g, dtype=torch.float64)
    grouped = rewards.view(6, 4)
    mean = grouped.mean(1, keepdim=True)
    std = torch.sqrt(((grouped - mean) ** 2).sum(1, keepdim=True) / 3)
    expected = ((grouped - mean) / (std + 1e-4)).reshape(-1)
    torch.testing.assert_close(group_advantages(rewards, 4), expected)


def test_rloo_hand_case():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # r_0 = 1, others mean 1/3 -> 2/3; r_1 = 0, others mean 2/3 -> -2/3
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    torch.testing.assert_close(rloo_advantages(rewards, 4), expected)
    assert rloo_advantages(torch.full((6,), 2.5), 3).abs().max().item() == 0.0
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([3.0, 1.0, 7.0, 7.0]), 2),
        torch.tensor([2.0, -2.0, 0.0, 0.0]),
    )


def test_rloo_equals_scaled_mean_baseline():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(15, generator=g, dtype=torch.float64)
    G = 5
    expected = G / (G - 1) * group_advantages(rewards, G, scale_std=False)
    torch.testing.assert_close(rloo_advantages(rewards, G), expected)


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
def test_bad_shapes_raise(fn):
    with pytest.raises(ValueError, match="divisible"):
        fn(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="group_size"):
        fn(torch.zeros(4), 1)
