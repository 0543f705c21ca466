"""Exact tests for pavlov.math.returns: hand cases, special cases and a naive reference loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pavlov.math import (
    discounted_returns,
    gae,
    lambda_returns,
    nstep_targets,
    reward_to_go,
    td_target,
)

PROPS = settings(max_examples=50, deadline=None)
F64 = torch.float64


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64), atol=tol, rtol=tol
    )


def rollout(T, N, seed, p_term=0.0, p_trunc=0.0, nan_final=True):
    """Random (T, N) rollout; final_values is NaN wherever it must not be read."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=F64)
    values = torch.randn(T, N, generator=g, dtype=F64)
    last = torch.randn(N, generator=g, dtype=F64)
    term = torch.rand(T, N, generator=g) < p_term
    trunc = torch.rand(T, N, generator=g) < p_trunc
    final = torch.randn(T, N, generator=g, dtype=F64)
    if nan_final:
        final = torch.where(trunc & ~term, final, torch.nan)
    return rewards, values, term, trunc, last, final


# --- naive references: explicit sums from the textbook definitions, one env at a time -----
# Not the recursions the library uses, so a shared mistake is unlikely. Lists indexed [t][n].


def to_lists(*tensors: torch.Tensor) -> list:
    return [t.tolist() for t in tensors]


def _next_value(t, n, values, term, trunc, last, final):
    """Bootstrap value of s_{t+1}: 0 if terminated, final if truncated, else V(s_{t+1})."""
    if term[t][n]:
        return 0.0
    if trunc[t][n]:
        return final[t][n]
    return values[t + 1][n] if t + 1 < len(values) else last[n]


def _episode_end(t, n, term, trunc):
    return bool(term[t][n]) or bool(trunc[t][n])


def ref_gae(rewards, values, term, trunc, last, final, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, the sum stopping after an episode end."""
    T, N = len(rewards), len(rewards[0])
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T):
            total = 0.0
            for s in range(t, T):
                nv = _next_value(s, n, values, term, trunc, last, final)
                delta = rewards[s][n] + gamma * nv - values[s][n]
                total += (gamma * lam) ** (s - t) * delta
                if _episode_end(s, n, term, trunc):
                    break
            adv[t][n] = total
    return adv


def ref_nstep(rewards, values, term, trunc, last, final, gamma, nsteps):
    """Sum up to n rewards, stop at episode or rollout end, then bootstrap."""
    T, N = len(rewards), len(rewards[0])
    out = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T):
            total, disc = 0.0, 1.0
            for k in range(nsteps):
                s = t + k
                total += disc * rewards[s][n]
                disc *= gamma
                if _episode_end(s, n, term, trunc) or s == T - 1 or k == nsteps - 1:
                    total += disc * _next_value(s, n, values, term, trunc, last, final)
                    break
            out[t][n] = total
    return out


def ref_lambda_returns(rewards, values, term, trunc, last, final, gamma, lam):
    """(1 - lam) sum_{k<h} lam^(k-1) G^(k) + lam^(h-1) G^(h).

    h = number of steps from t to the episode or rollout end (Sutton & Barto eq. 12.3 form).
    """
    T, N = len(rewards), len(rewards[0])
    out = [[0.0] * N for _ in range(T)]
    nstep = {
        k: ref_nstep(rewards, values, term, trunc, last, final, gamma, k) for k in range(1, T + 1)
    }
    for n in range(N):
        for t in range(T):
            h = next(
                s - t + 1 for s in range(t, T) if _episode_end(s, n, term, trunc) or s == T - 1
            )
            total = sum((1 - lam) * lam ** (k - 1) * nstep[k][t][n] for k in range(1, h))
            out[t][n] = total + lam ** (h - 1) * nstep[h][t][n]
    return out


def ref_reward_to_go(rewards, dones, gamma):
    T, N = len(rewards), len(rewards[0])
    out = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T):
            total = 0.0
            for s in range(t, T):
                total += gamma ** (s - t) * rewards[s][n]
                if dones[s][n]:
                    break
            out[t][n] = total
    return out


def ref_discounted_returns(rewards, gamma, bootstrap):
    T, N = len(rewards), len(rewards[0])
    return [
        [
            sum(gamma ** (s - t) * rewards[s][n] for s in range(t, T))
            + gamma ** (T - t) * bootstrap[n]
            for n in range(N)
        ]
        for t in range(T)
    ]


# --- hand cases -------------------------------------------------------------------------------


def test_gae_hand_case_no_dones():
    # gamma = lam = 0.5, r = [1, 2, 3], V = [0.5, 1, 1.5], V(s_3) = 2.
    # deltas: 1 + .5*1 - .5 = 1;  2 + .5*1.5 - 1 = 1.75;  3 + .5*2 - 1.5 = 2.5
    # A_2 = 2.5;  A_1 = 1.75 + .25*2.5 = 2.375;  A_0 = 1 + .25*2.375 = 1.59375
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[0.5], [1.0], [1.5]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = gae(r, v, no, no, torch.tensor([2.0]), gamma=0.5, lam=0.5)
    close(adv, [[1.59375], [2.375], [2.5]])
    close(ret, adv + v)
    assert adv.dtype == torch.float32


def test_truncation_bootstraps_final_value_but_termination_does_not():
    # One env, episode ends after step 1, a new one starts at step 2.
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.tensor([[0.0], [0.0], [5.0]])  # V of the reset obs (row 2) must not leak into row 1
    last = torch.tensor([0.0])
    flag = torch.tensor([[False], [True], [False]])
    no = torch.zeros_like(flag)
    final = torch.full((3, 1), torch.nan)
    final[1, 0] = 10.0
    gamma, lam = 0.9, 0.95
    adv_term, _ = gae(r, v, flag, no, last, gamma, lam, final)
    adv_trunc, _ = gae(r, v, no, flag, last, gamma, lam, final)
    assert adv_term[1, 0].item() == pytest.approx(1.0)  # r only
    assert adv_trunc[1, 0].item() == pytest.approx(1.0 + gamma * 10.0)  # r + gamma V(final)
    # Row 0 sees row 1 through the trace in both cases; the difference is the bootstrap.
    assert (adv_trunc[0] - adv_term[0]).item() == pytest.approx(gamma * lam * gamma * 10.0)
    # Row 2 is a new episode: identical in both cases, and no NaN anywhere.
    assert adv_term[2].item() == adv_trunc[2].item()
    assert torch.isfinite(adv_term).all() and torch.isfinite(adv_trunc).all()


def test_termination_wins_when_both_flags_set():
    r, v, _, _, last, _ = rollout(4, 2, seed=0)
    both = torch.zeros(4, 2, dtype=torch.bool)
    both[2, 1] = True
    final = torch.full((4, 2), 123.0, dtype=F64)
    adv_both, _ = gae(r, v, both, both, last, 0.99, 0.9, final)
    adv_term, _ = gae(r, v, both, torch.zeros_like(both), last, 0.99, 0.9)
    close(adv_both, adv_term, tol=1e-12)


def test_truncation_without_final_values_raises():
    r, v, term, _, last, _ = rollout(3, 2, seed=1)
    trunc = torch.zeros(3, 2, dtype=torch.bool)
    trunc[1, 0] = True
    for fn in (gae, lambda_returns):
        with pytest.raises(ValueError, match="final_values"):
            fn(r, v, term, trunc, last, 0.99, 0.95)
    with pytest.raises(ValueError, match="final_values"):
        nstep_targets(r, v, term, trunc, last, 0.99, 3)


def test_float_flags_match_bool_flags():
    r, v, term, trunc, last, final = rollout(6, 3, seed=2, p_term=0.3, p_trunc=0.3)
    a_bool, _ = gae(r, v, term, trunc, last, 0.9, 0.8, final)
    a_float, _ = gae(r, v, term.to(F64), trunc.to(F64), last, 0.9, 0.8, final)
    close(a_bool, a_float, tol=0)


def test_reward_to_go_hand_case():
    # Two episodes in one column: [1, 2] then [3, 4 (unfinished)], gamma = 0.5.
    r = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    d = torch.tensor([[0], [1], [0], [0]])
    close(reward_to_go(r, d, gamma=0.5), [[2.0], [2.0], [5.0], [4.0]])
    close(reward_to_go(r, d), [[3.0], [2.0], [7.0], [4.0]])


def test_discounted_returns_hand_case_and_1d():
    r = torch.tensor([1.0, 1.0, 1.0])
    close(discounted_returns(r, 0.5), [1.75, 1.5, 1.0])
    close(discounted_returns(r, 0.5, bootstrap=torch.tensor(8.0)), [2.75, 3.5, 5.0])


def test_nstep_rejects_n_below_one():
    r, v, term, trunc, last, final = rollout(3, 1, seed=3)
    with pytest.raises(ValueError, match="n must be"):
        nstep_targets(r, v, term, trunc, last, 0.9, 0, final)


# --- special cases: lambda = 0, lambda = 1, n = 1, n >= T -------------------------------------


@PROPS
@given(T=st.integers(1, 12), N=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_gae_lambda_one_is_discounted_return_minus_values(T, N, seed):
    r, v, term, trunc, last, _ = rollout(T, N, seed)  # no episode ends
    adv, ret = gae(r, v, term, trunc, last, gamma=0.97, lam=1.0)
    mc = discounted_returns(r, 0.97, bootstrap=last)
    close(ret, mc)
    close(adv, mc - v)


@PROPS
@given(T=st.integers(1, 12), N=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_gae_lambda_zero_is_one_step_td(T, N, seed):
    r, v, term, trunc, last, final = rollout(T, N, seed, p_term=0.3, p_trunc=0.3, nan_final=False)
    adv, _ = gae(r, v, term, trunc, last, 0.9, 0.0, final)
    next_v = torch.cat([v[1:], last[None]])
    next_v = torch.where(trunc, final, next_v)  # truncated: caller passes V(final obs)
    close(adv, td_target(r, next_v, term, 0.9) - v)
    close(nstep_targets(r, v, term, trunc, last, 0.9, 1, final), td_target(r, next_v, term, 0.9))


@PROPS
@given(T=st.integers(1, 12), N=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_nstep_with_long_horizon_is_bootstrapped_monte_carlo(T, N, seed):
    r, v, term, trunc, last, _ = rollout(T, N, seed)
    out = nstep_targets(r, v, term, trunc, last, 0.95, T + 3)
    close(out, discounted_returns(r, 0.95, bootstrap=last))


# --- property tests against the naive reference loop -----------------------------------------

rollouts = st.fixed_dictionaries(
    {
        "T": st.integers(1, 12),
        "N": st.integers(1, 4),
        "seed": st.integers(0, 2**31 - 1),
        "p_term": st.sampled_from([0.0, 0.2, 0.5]),
        "p_trunc": st.sampled_from([0.0, 0.2, 0.5]),
    }
)
unit = st.floats(0.0, 1.0)


@PROPS
@given(ro=rollouts, gamma=unit, lam=unit)
def test_gae_matches_reference(ro, gamma, lam):
    r, v, term, trunc, last, final = rollout(**ro)
    adv, ret = gae(r, v, term, trunc, last, gamma, lam, final)
    close(adv, ref_gae(*to_lists(r, v, term, trunc, last, final), gamma, lam))
    close(ret, adv + v)
    assert torch.isfinite(adv).all()


@PROPS
@given(ro=rollouts, gamma=unit, lam=unit)
def test_lambda_returns_match_reference_and_gae(ro, gamma, lam):
    r, v, term, trunc, last, final = rollout(**ro)
    out = lambda_returns(r, v, term, trunc, last, gamma, lam, final)
    close(out, ref_lambda_returns(*to_lists(r, v, term, trunc, last, final), gamma, lam))
    close(out, gae(r, v, term, trunc, last, gamma, lam, final)[1])


@PROPS
@given(ro=rollouts, gamma=unit, n=st.integers(1, 6))
def test_nstep_matches_reference(ro, gamma, n):
    r, v, term, trunc, last, final = rollout(**ro)
    out = nstep_targets(r, v, term, trunc, last, gamma, n, final)
    close(out, ref_nstep(*to_lists(r, v, term, trunc, last, final), gamma, n))


@PROPS
@given(ro=rollouts, gamma=unit)
def test_reward_to_go_matches_reference(ro, gamma):
    r, _, term, trunc, _, _ = rollout(**ro)
    dones = term | trunc
    close(reward_to_go(r, dones, gamma), ref_reward_to_go(*to_lists(r, dones), gamma))


@PROPS
@given(T=st.integers(1, 12), N=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), gamma=unit)
def test_discounted_returns_match_reference(T, N, seed, gamma):
    r, _, _, _, last, _ = rollout(T, N, seed)
    close(discounted_returns(r, gamma), ref_discounted_returns(r.tolist(), gamma, [0.0] * N))
    close(
        discounted_returns(r, gamma, bootstrap=last),
        ref_discounted_returns(r.tolist(), gamma, last.tolist()),
    )


def test_float32_matches_float64():
    r, v, term, trunc, last, final = rollout(12, 4, seed=7, p_term=0.2, p_trunc=0.2)
    a64, _ = gae(r, v, term, trunc, last, 0.99, 0.95, final)
    a32, _ = gae(r.float(), v.float(), term, trunc, last.float(), 0.99, 0.95, final.float())
    assert a32.dtype == torch.float32
    close(a32, a64, tol=1e-5)
    assert math.isfinite(a32.sum().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(9,), (9, 4), (9, 2, 3)])
def test_numpy_scan_is_bitwise_the_torch_scan(dtype, shape):
    """Without autograd the scan runs on NumPy views: the same roundings, the same bits, as
    the torch loop that runs where a gradient is wanted (and the gradient still flows)."""
    g = torch.Generator().manual_seed(3)
    r = torch.randn(shape, generator=g, dtype=dtype)
    v = torch.randn(shape, generator=g, dtype=dtype)
    term = torch.rand(shape, generator=g) < 0.2
    trunc = torch.rand(shape, generator=g) < 0.2
    last = torch.randn(shape[1:], generator=g, dtype=dtype)
    final = torch.randn(shape, generator=g, dtype=dtype)
    plain = gae(r, v, term, trunc, last, 0.98, 0.8, final)
    traced = gae(r.requires_grad_(), v, term, trunc, last, 0.98, 0.8, final)
    for a, b in zip(plain, traced, strict=True):
        assert a.dtype == dtype and a.shape == shape and not a.requires_grad
        assert torch.equal(a, b.detach())
    traced[0].sum().backward()
    assert r.grad is not None and torch.isfinite(r.grad).all()
    with torch.no_grad():  # a tensor that wants a gradient, under no_grad: the NumPy path
        assert torch.equal(lambda_returns(r, v, term, trunc, last, 0.98, 0.8, final),
                           lambda_returns(r.detach(), v, term, trunc, last, 0.98, 0.8, final))
