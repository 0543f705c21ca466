"""Exact tests for pavlov.math.preference: Bradley-Terry and the DPO family."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pavlov.math.preference import (
    DPO_LOSSES,
    bradley_terry_loss,
    dpo_hinge_loss,
    dpo_ipo_loss,
    dpo_loss,
    dpo_sigmoid_loss,
)

LN2 = math.log(2.0)


def logps(seed, n=6, dtype=torch.float64):
    """Four ``(n,)`` sequence log-prob tensors: pi_w, pi_l, ref_w, ref_l."""
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=dtype) * 20 + 1) for _ in range(4)]


# --- Bradley-Terry ----------------------------------------------------------------------------


def test_bradley_terry_hand_case():
    chosen = torch.tensor([2.0, 0.0, 1.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 3.0, -2.0])
    loss, m = bradley_terry_loss(chosen, rejected)
    diff = torch.tensor([1.0, 0.0, -2.0, 1.0])
    expected = torch.stack([math.log1p(math.exp(-d)) * torch.ones(()) for d in diff]).mean()
    torch.testing.assert_close(loss, expected)
    assert m["accuracy"].item() == 0.5  # 2 of 4 strictly larger; the tie counts as wrong
    assert m["margin"].item() == pytest.approx(0.0)
    assert m["loss"].item() == pytest.approx(loss.item())


def test_bradley_terry_equal_rewards_is_ln2_and_margin_shifts():
    r = torch.tensor([0.3, -1.2, 5.0])
    loss, m = bradley_terry_loss(r, r)
    assert loss.item() == pytest.approx(LN2)
    assert m["accuracy"].item() == 0.0
    # A margin m is a shift: BT(r_w, r_l, m) == BT(r_w - m, r_l).
    w, lo, margin = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0]), torch.tensor([0.2, 3.0])
    torch.testing.assert_close(
        bradley_terry_loss(w, lo, margin)[0], bradley_terry_loss(w - margin, lo)[0]
    )
    torch.testing.assert_close(
        bradley_terry_loss(w, lo, 0.7)[0], bradley_terry_loss(w - 0.7, lo)[0]
    )


def test_bradley_terry_gradient_is_sigmoid_of_negative_gap():
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    lo = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    bradley_terry_loss(w, lo)[0].backward()
    expected = -torch.sigmoid(-(w - lo)).detach() / 3
    torch.testing.assert_close(w.grad, expected)
    torch.testing.assert_close(lo.grad, -expected)


def test_bradley_terry_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))


# --- DPO family -------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_dpo_sigmoid_at_step_zero_is_ln2(beta, label_smoothing):
    pi_w, pi_l, _, _ = logps(0)
    loss, m = dpo_sigmoid_loss(pi_w, pi_l, pi_w.clone(), pi_l.clone(), beta, label_smoothing)
    assert loss.item() == pytest.approx(LN2, abs=1e-15)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert m[key].item() == 0.0
    assert m["rewards/accuracies"].item() == 0.0


def test_dpo_sigmoid_matches_formula_and_trl_metrics():
    pi_w, pi_l, ref_w, ref_l = logps(1)
    beta, eps = 0.1, 0.2
    loss, m = dpo_sigmoid_loss(pi_w, pi_l, ref_w, ref_l, beta, eps)
    h = (pi_w - ref_w) - (pi_l - ref_l)
    expected = (-(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)).mean()
    torch.testing.assert_close(loss, expected)
    rw, rl = beta * (pi_w - ref_w), beta * (pi_l - ref_l)
    torch.testing.assert_close(m["rewards/chosen"], rw.mean())
    torch.testing.assert_close(m["rewards/rejected"], rl.mean())
    torch.testing.assert_close(m["rewards/margins"], (rw - rl).mean())
    torch.testing.assert_close(m["rewards/accuracies"], (rw > rl).double().mean().float())


def test_dpo_label_smoothing_half_is_symmetric_with_minimum_ln2_at_zero():
    # eps = 0.5: L(h) = (softplus(-bh) + softplus(bh)) / 2, even in h, >= ln 2, = ln 2 at h = 0.
    # (It is *not* constant in h; its gradient is (sigmoid(bh) - 1/2) * b.)
    pi_w, pi_l, ref_w, ref_l = logps(2)
    beta = 0.3
    loss, _ = dpo_sigmoid_loss(pi_w, pi_l, ref_w, ref_l, beta, 0.5)
    swapped, _ = dpo_sigmoid_loss(pi_l, pi_w, ref_l, ref_w, beta, 0.5)
    torch.testing.assert_close(loss, swapped)
    assert loss.item() > LN2
    h = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros_like(h)
    per_h, _ = dpo_sigmoid_loss(h, zeros, zeros, zeros, 1.0, 0.5)
    (grad,) = torch.autograd.grad(per_h * h.numel(), h)
    torch.testing.assert_close(grad, torch.sigmoid(h.detach()) - 0.5)
    assert abs(grad[50].item()) < 1e-15  # h = 0


def test_dpo_ipo_at_zero_and_formula():
    pi_w, pi_l, ref_w, ref_l = logps(3)
    for beta in (0.1, 0.5, 2.0):
        loss, _ = dpo_ipo_loss(pi_w, pi_l, pi_w, pi_l, beta)
        assert loss.item() == pytest.approx((1 / (2 * beta)) ** 2, rel=1e-12)
    loss, _ = dpo_ipo_loss(pi_w, pi_l, ref_w, ref_l, 0.1)
    h = (pi_w - ref_w) - (pi_l - ref_l)
    torch.testing.assert_close(loss, ((h - 5.0) ** 2).mean())


def test_dpo_hinge_formula_and_zero_past_margin():
    pi_w, pi_l, ref_w, ref_l = logps(4)
    loss, _ = dpo_hinge_loss(pi_w, pi_l, ref_w, ref_l, 0.1)
    h = (pi_w - ref_w) - (pi_l - ref_l)
    torch.testing.assert_close(loss, torch.relu(1 - 0.1 * h).mean())
    at_zero, _ = dpo_hinge_loss(pi_w, pi_l, pi_w, pi_l, 0.1)
    assert at_zero.item() == 1.0
    far = torch.full((3,), 10.5, dtype=torch.float64)  # h = 10.5 > 1 / beta = 10
    zero = torch.zeros(3, dtype=torch.float64)
    assert dpo_hinge_loss(far, zero, zero, zero, 0.1)[0].item() == 0.0


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_dpo_gradients_match_finite_differences(name):
    pi_w, pi_l, ref_w, ref_l = logps(5, n=4)
    pi_w = (ref_w + torch.tensor([0.3, -2.0, 1.0, 4.0], dtype=torch.float64)).requires_grad_()
    pi_l = (ref_l + torch.tensor([-1.0, 0.5, 2.5, -4.0], dtype=torch.float64)).requires_grad_()
    fn = DPO_LOSSES[name]
    kwargs = {"label_smoothing": 0.1} if name == "sigmoid" else {}
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, b, ref_w, ref_l, 0.2, **kwargs)[0], (pi_w, pi_l)
    )


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_dpo_reference_is_detached(name):
    pi_w, pi_l, ref_w, ref_l = (t.requires_grad_() for t in logps(6))
    loss, _ = DPO_LOSSES[name](pi_w, pi_l, ref_w, ref_l, 0.1)
    loss.backward()
    assert ref_w.grad is None and ref_l.grad is None
    assert pi_w.grad is not None and torch.isfinite(pi_w.grad).all()


def test_dpo_loss_lookup_and_validation():
    assert dpo_loss("ipo") is dpo_ipo_loss
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss("kto")
    a = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        dpo_sigmoid_loss(a, a, a, a, 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_sigmoid_loss(a, a, a, a, 0.1, label_smoothing=0.6)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_ipo_loss(a, a, a, a, 0.1, label_smoothing=0.1)
    with pytest.raises(ValueError, match="one shape"):
        dpo_hinge_loss(a, torch.zeros(3), a, a, 0.1)
