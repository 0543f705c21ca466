"""Exact tests for pavlov.math.sequence and pavlov.math.masked."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pavlov.math import (
    KL_ESTIMATORS,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    projected_logprobs,
    selective_log_softmax,
)

PROPS = settings(max_examples=50, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def naive_logps(logits, index):
    return logits.log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


# --- selective_log_softmax --------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 4, 512])
def test_selective_log_softmax_float32_large_vocab(chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 50_000, generator=g) * 3  # (B, T, V)
    index = torch.randint(0, 50_000, (2, 5), generator=g)
    out = selective_log_softmax(logits, index, chunk_size=chunk_size)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, naive_logps(logits, index), atol=1e-6, rtol=1e-6)


@PROPS
@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    V=st.integers(1, 40),
    chunk=st.integers(1, 7),
    seed=seeds,
)
def test_selective_log_softmax_matches_naive_any_shape(shape, V, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, V, generator=g, dtype=torch.float64) * 5).requires_grad_()
    index = torch.randint(0, V, tuple(shape), generator=g)
    out = selective_log_softmax(logits, index, chunk_size=chunk)
    expected = naive_logps(logits, index)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad)


def test_selective_log_softmax_bf16_upcasts_to_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 4, 1000, generator=g) * 4).bfloat16()
    index = torch.randint(0, 1000, (3, 4), generator=g)
    out = selective_log_softmax(logits, index, chunk_size=5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_logps(logits.float(), index), atol=1e-5, rtol=1e-5)


def test_selective_log_softmax_shape_mismatch_raises():
    with pytest.raises(ValueError, match="index shape"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# --- KL penalty -------------------------------------------------------------------------------


def test_kl_penalty_reuses_policy_estimators():
    g = torch.Generator().manual_seed(2)
    logp, ref = -torch.rand(2, 6, generator=g) * 4, -torch.rand(2, 6, generator=g) * 4
    torch.testing.assert_close(kl_penalty(logp, ref), logp - ref)  # k1: log pi - log pi_ref
    for name, fn in KL_ESTIMATORS.items():
        torch.testing.assert_close(kl_penalty(logp, ref, name), fn(logp, ref))
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(logp, ref, "mse")


# --- masked reductions ------------------------------------------------------------------------


@PROPS
@given(B=st.integers(1, 4), T=st.integers(1, 12), seed=seeds, dim=st.sampled_from([None, 0, 1]))
def test_masked_mean_and_sum_match_reference(B, T, seed, dim):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < 0.6
    x = torch.where(mask, x, torch.nan)  # padding holds garbage that must not leak
    rows = [(i, j) for i in range(B) for j in range(T) if mask[i, j]]
    if dim is None:
        groups = {(): rows}
    else:
        kept = 1 - dim  # the dimension that survives the reduction
        groups = {(k,): [ij for ij in rows if ij[kept] == k] for k in range((B, T)[kept])}
    ref_sum = [sum(x[i, j].item() for i, j in members) for members in groups.values()]
    ref_mean = [s / max(len(m), 1) for s, m in zip(ref_sum, groups.values(), strict=True)]
    got_sum, got_mean = masked_sum(x, mask, dim).reshape(-1), masked_mean(x, mask, dim).reshape(-1)
    torch.testing.assert_close(got_sum, torch.tensor(ref_sum, dtype=torch.float64))
    torch.testing.assert_close(got_mean, torch.tensor(ref_mean, dtype=torch.float64))


def test_masked_mean_none_mask_broadcast_mask_and_empty_mask():
    x = torch.arange(6.0).reshape(2, 3)
    assert masked_mean(x, None).item() == pytest.approx(2.5)
    assert masked_mean(x, torch.tensor([[True], [False]])).item() == pytest.approx(1.0)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    x.requires_grad_()
    out = masked_mean(x, empty)
    assert out.item() == 0.0
    out.backward()
    assert (x.grad == 0).all()



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("shape", "dim"), [((7,), None), ((300,), None), ((4, 9), 1),
                                            ((3, 5, 2), (0, 2)), ((3, 0), 1), ((20, 300), 1)])
def test_no_mask_gives_the_bits_of_an_all_true_mask(dtype, shape, dim):
    """``mask=None`` divides by the entry count instead of summing a tensor of ones: the same
    bits as an all-true mask (where the dtype holds the count exactly; else it takes that path),
    for the mean and the Bessel-corrected variance."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype) * 3 + 1
    ones = torch.ones(shape, dtype=torch.bool)
    assert torch.equal(masked_mean(x, None, dim), masked_mean(x, ones, dim))
    if x.numel():
        assert torch.equal(masked_var(x, None), masked_var(x, ones))

@PROPS
@given(B=st.integers(1, 4), T=st.integers(2, 12), seed=seeds, shift=st.booleans())
def test_masked_whiten_standardises_kept_entries(B, T, seed, shift):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, generator=g, dtype=torch.float64) * 3 + 2
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0, :2] = True  # at least two kept entries
    kept = x[mask].tolist()
    mean = sum(kept) / len(kept)
    var = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    torch.testing.assert_close(masked_var(x, mask), torch.tensor(var, dtype=torch.float64))
    if var < 1e-6:
        return
    out = masked_whiten(x, mask, shift_mean=shift)
    expected = (x - mean) / math.sqrt(var + 1e-8) + (0.0 if shift else mean)
    torch.testing.assert_close(out, expected)


def test_masked_whiten_flat_advantages():
    adv = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = masked_whiten(adv, None)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std().item() == pytest.approx(1.0, abs=1e-6)


# --- projected_logprobs: the fused hidden-state -> token log-prob path ---------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_projected_logprobs_equals_log_softmax_and_gradchecks(temperature, with_bias):
    g = torch.Generator().manual_seed(0)
    R, H, V = 6, 5, 11
    h = torch.randn(R, H, generator=g, dtype=torch.double, requires_grad=True)
    w = torch.randn(V, H, generator=g, dtype=torch.double, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.double, requires_grad=True) if with_bias else None
    idx = torch.randint(0, V, (R,), generator=g)
    logp, ent = projected_logprobs(h, w, idx, b, temperature)
    z = (h @ w.t() + (0 if b is None else b)) / temperature
    expected = z.log_softmax(-1).gather(-1, idx[:, None]).squeeze(-1)
    torch.testing.assert_close(logp, expected)
    torch.testing.assert_close(ent, -(z.softmax(-1) * z.log_softmax(-1)).sum(-1))
    assert not ent.requires_grad  # a metric only
    inputs = (h, w) if b is None else (h, w, b)

    def fn(*args):
        return projected_logprobs(args[0], args[1], idx, args[2] if b is not None else None,
                                  temperature)[0]  # fmt: skip

    assert torch.autograd.gradcheck(fn, inputs)


def test_projected_logprobs_gradients_match_autograd_float32():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(300, 16, generator=g, requires_grad=True)
    idx = torch.randint(0, 300, (40,), generator=g)
    weights = torch.randn(40, generator=g)
    (projected_logprobs(h, w, idx)[0] * weights).sum().backward()
    got = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = selective_log_softmax(h @ w.t(), idx)
    (ref * weights).sum().backward()
    torch.testing.assert_close(got[0], h.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], w.grad, rtol=1e-4, atol=1e-5)


def test_projected_logprobs_project_hook_gives_the_same_values_and_gradients():
    """``project`` (e.g. an lm_head running a faster kernel) replaces only the forward product."""
    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(8, 30)
    h = torch.randn(12, 8, generator=g, requires_grad=True)
    idx = torch.randint(0, 30, (12,), generator=g)
    calls = []

    def project(x):
        calls.append(x.shape)
        return head(x)

    out = projected_logprobs(h, head.weight, idx, head.bias, 0.7, project)
    out[0].sum().backward()
    got = h.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()
    h.grad = head.weight.grad = head.bias.grad = None
    ref = projected_logprobs(h, head.weight, idx, head.bias, 0.7)
    ref[0].sum().backward()
    assert calls == [(12, 8)]
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1])
    for a, b in zip(got, (h.grad, head.weight.grad, head.bias.grad), strict=True):
        torch.testing.assert_close(a, b)


def test_projected_logprobs_rejects_bad_shapes():
    with pytest.raises(ValueError, match="hidden must be"):
        projected_logprobs(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        projected_logprobs(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long),
                           temperature=0.0)  # fmt: skip


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_projected_logprobs_without_entropy(bias, temperature):
    """``with_entropy=False``: the same log-probs (no-grad fast path and with grad), no
    entropy."""
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(9, 6, generator=g), torch.randn(1003, 6, generator=g)
    b = torch.randn(1003, generator=g) if bias else None
    idx = torch.randint(0, 1003, (9,), generator=g)
    full, _ = projected_logprobs(h, w, idx, b, temperature)
    with torch.no_grad():
        fast, ent = projected_logprobs(h, w, idx, b, temperature, with_entropy=False)
    assert ent is None
    assert torch.equal(fast, full)  # bitwise: a reference equal to the policy has KL exactly 0
    logits = (h @ w.t() + (0 if b is None else b)) / temperature
    torch.testing.assert_close(fast, logits.log_softmax(-1).gather(-1, idx[:, None])[:, 0])
    hg = h.clone().requires_grad_(True)
    logp, ent = projected_logprobs(hg, w, idx, b, temperature, with_entropy=False)
    assert ent is None and logp.requires_grad
    torch.testing.assert_close(logp.detach(), full)


@pytest.mark.parametrize("shift", [True, False])
def test_masked_whiten_of_a_split_batch_with_summed_statistics_equals_the_whole(shift):
    """Data parallel: a part whitened with ``total`` adding the other part's statistics (what
    the collective returns) is the whole batch whitened."""
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(6, 5, generator=g), torch.rand(6, 5, generator=g) > 0.3
    whole = masked_whiten(x, mask, shift_mean=shift)
    keep = mask.float()
    mean = (x * keep).sum() / keep.sum()
    other = iter([  # the second half's contribution to each of the two collectives, in order
        torch.stack([(x[3:] * keep[3:]).sum(), keep[3:].sum()]),
        ((x[3:] - mean) ** 2 * keep[3:]).sum().reshape(1),
    ])
    first = masked_whiten(x[:3], mask[:3], shift_mean=shift, total=lambda t: t + next(other))
    torch.testing.assert_close(first, whole[:3], rtol=1e-6, atol=1e-6)
