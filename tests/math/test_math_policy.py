"""Exact tests for pavlov.math.policy: PPO/REINFORCE losses, KL estimators, entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pavlov.math import (
    KL_ESTIMATORS,
    approx_kl,
    categorical_entropy,
    clipped_value_loss,
    entropy,
    importance_ratio,
    ppo_clip_loss,
    reinforce_loss,
)

PROPS = settings(max_examples=50, deadline=None)
F64 = torch.float64
seeds = st.integers(0, 2**31 - 1)


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64), atol=tol, rtol=tol
    )


def batch(seed, shape=(5, 7)):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(shape, generator=g, dtype=F64) * 3
    new = old + 0.5 * torch.randn(shape, generator=g, dtype=F64)
    adv = torch.randn(shape, generator=g, dtype=F64)
    mask = torch.rand(shape, generator=g) < 0.7
    mask.view(-1)[0] = True
    return new, old, adv, mask


# --- REINFORCE --------------------------------------------------------------------------------


def test_reinforce_loss_value_gradient_and_detached_advantages():
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    loss, metrics = reinforce_loss(logp, adv)
    assert loss.item() == pytest.approx(-(-1.0 + 4.0 - 1.5) / 3)
    loss.backward()
    close(logp.grad, -adv.detach() / 3)
    assert adv.grad is None  # advantages are constants
    assert not metrics["policy_loss"].requires_grad


def test_reinforce_loss_mask():
    logp, adv = torch.tensor([-1.0, -2.0, 99.0]), torch.tensor([1.0, 1.0, 1.0])
    loss, _ = reinforce_loss(logp, adv, mask=torch.tensor([True, True, False]))
    assert loss.item() == pytest.approx(1.5)


# --- PPO --------------------------------------------------------------------------------------


def test_ppo_ratio_one_gives_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -0.3], [-2.0, -4.0]])
    adv = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    loss, m = ppo_clip_loss(logp.clone().requires_grad_(), logp, adv, clip_eps=0.2)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert m["clip_fraction"].item() == 0.0
    assert m["approx_kl"].item() == 0.0
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    assert set(m) == {"policy_loss", "clip_fraction", "approx_kl", "ratio_mean"}


def ref_ppo(new, old, adv, mask, eps_low, eps_high):
    terms, clipped = [], 0
    for n, o, a, keep in zip(*(t.flatten().tolist() for t in (new, old, adv, mask)), strict=True):
        if not keep:
            continue
        r = math.exp(n - o)
        terms.append(min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a))
        clipped += r < 1 - eps_low or r > 1 + eps_high
    return -sum(terms) / len(terms), clipped / len(terms)


@PROPS
@given(seed=seeds, eps=st.floats(0.05, 0.5), high=st.one_of(st.none(), st.floats(0.05, 0.5)))
def test_ppo_matches_reference(seed, eps, high):
    new, old, adv, mask = batch(seed)
    loss, m = ppo_clip_loss(new, old, adv, eps, mask=mask, clip_eps_high=high)
    ref_loss, ref_frac = ref_ppo(new, old, adv, mask, eps, eps if high is None else high)
    close(loss, ref_loss)
    close(m["clip_fraction"], ref_frac)
    close(m["approx_kl"], approx_kl(new, old, "k3", mask))


def test_ppo_gradient_is_zero_where_clipped():
    old = torch.zeros(4)
    # ratio 1.5 with A > 0 and ratio 0.5 with A < 0 are clipped; the others are not.
    new = torch.log(torch.tensor([1.5, 0.5, 1.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, m = ppo_clip_loss(new, old, adv, clip_eps=0.2)
    loss.backward()
    assert new.grad[0] == 0 and new.grad[1] == 0
    assert new.grad[2] != 0 and new.grad[3] != 0
    assert m["clip_fraction"].item() == pytest.approx(0.75)


def test_importance_ratio():
    close(importance_ratio(torch.tensor([0.0, math.log(2.0)]), torch.zeros(2)), [1.0, 2.0])


# --- value loss -------------------------------------------------------------------------------


def test_clipped_value_loss_hand_case():
    values = torch.tensor([1.0, 3.0, 0.0], requires_grad=True)
    old = torch.tensor([0.0, 0.0, 0.0])
    ret = torch.tensor([2.0, 0.0, 1.0])
    # entry 0: v-old = 1 clipped to .5 -> max((1-2)^2, (.5-2)^2) = 2.25
    # entry 1: clipped v = .5 -> max(9, .25) = 9;  entry 2: unclipped, max(1, 1) = 1
    loss, m = clipped_value_loss(values, old, ret, clip_eps=0.5)
    assert loss.item() == pytest.approx(0.5 * (2.25 + 9 + 1) / 3)
    assert m["value_clip_fraction"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert values.grad[0] == 0  # the clipped branch won: no gradient to V
    plain, m0 = clipped_value_loss(values, old, ret, clip_eps=None)
    assert plain.item() == pytest.approx(0.5 * (1 + 9 + 1) / 3)
    assert m0["value_clip_fraction"].item() == 0.0


# --- KL estimators ----------------------------------------------------------------------------


def test_kl_estimators_zero_when_equal():
    logp = -torch.rand(3, 4) * 5
    for name in ("k1", "k2", "k3"):
        assert approx_kl(logp, logp.clone(), name).item() == 0.0


def test_kl_estimator_values_and_direction():
    new, old = torch.tensor([math.log(2.0)]), torch.tensor([0.0])  # log r = log(p_new / p_old)
    assert approx_kl(new, old, "k1").item() == pytest.approx(-math.log(2.0))
    assert approx_kl(new, old, "k2").item() == pytest.approx(0.5 * math.log(2.0) ** 2)
    assert approx_kl(new, old, "k3").item() == pytest.approx(1.0 - math.log(2.0))


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k1"):
        approx_kl(torch.zeros(2), torch.zeros(2), "k4")


@PROPS
@given(seed=seeds, scale=st.floats(0.0, 5.0))
def test_k3_and_k2_are_nonnegative(seed, scale):
    new, old, _, mask = batch(seed)
    new = old + scale * (new - old)
    for name in ("k2", "k3"):
        assert (KL_ESTIMATORS[name](old, new) >= 0).all()
        assert approx_kl(new, old, name, mask).item() >= 0


def test_k1_and_k3_are_unbiased_for_exact_kl():
    g = torch.Generator().manual_seed(0)
    q_logits, p_logits = torch.randn(6, generator=g), torch.randn(6, generator=g)
    logq, logp = F.log_softmax(q_logits, -1), F.log_softmax(p_logits, -1)
    exact = (logq.exp() * (logq - logp)).sum().item()
    x = torch.multinomial(logq.exp(), 200_000, replacement=True, generator=g)  # x ~ q
    for name in ("k1", "k3"):
        # approx_kl(new, old) estimates KL(old || new) from samples of old: old = q, new = p.
        estimate = approx_kl(logp[x], logq[x], name).item()
        assert estimate == pytest.approx(exact, abs=0.02), name


# --- entropy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("V", [1, 2, 7, 1000])
def test_entropy_of_uniform_logits_is_log_v(V):
    logits = torch.full((3, 4, V), 2.5)
    close(entropy(logits), torch.full((3, 4), math.log(V)))
    close(categorical_entropy(logits), torch.full((3, 4), math.log(V)))


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_entropy_matches_torch_distributions(chunk_size):
    logits = torch.randn(4, 5, 11, dtype=F64) * 10
    expected = torch.distributions.Categorical(logits=logits).entropy()
    close(entropy(logits, chunk_size=chunk_size), expected, tol=1e-10)


def test_entropy_with_masked_actions_is_finite_with_finite_gradient():
    logits = torch.tensor([[0.0, 0.0, -math.inf], [1e4, -1e4, 0.0]], requires_grad=True)
    h = categorical_entropy(logits)
    close(h[0], math.log(2.0))
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
