"""Tests for pavlov.llm.cpu.native: the C row kernel computes ``x W^T + b`` like ``F.linear``."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from pavlov import native as pavlov_native
from pavlov.llm.cpu import native
from pavlov.llm.cpu.native import row_kernel_available, row_linear, row_linears


def test_the_kernel_builds_on_x86_linux_with_a_compiler():
    """CI and dev machines are x86-64 Linux with gcc: there the kernel must really be in use
    (a silent fallback would make the decode benchmarks measure something else)."""
    if platform.machine() != "x86_64" or not pavlov_native.cpu_supported():
        pytest.skip("not an AVX2 x86-64 Linux machine")
    assert row_kernel_available()


@pytest.fixture(params=["avx512", "avx2"])
def loops(request):
    """Both the AVX-512 loops (where the CPU has them) and the 8-float AVX2 ones."""
    native.use_avx512(request.param == "avx512")
    yield request.param
    native.use_avx512(True)


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 16, 24, 32])
@pytest.mark.parametrize(("n", "k"), [(64, 32), (37, 576), (96, 13), (1, 8)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_f_linear(rows, n, k, bias, dtype, loops):
    """float32 weights, or bfloat16 ones (widened exactly: ``F.linear`` on ``w.float()``)."""
    if not row_kernel_available():
        pytest.skip("native row kernel unavailable here")
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x = torch.randn(rows, k, generator=g)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g) if bias else None
    got = row_linear(x, w, b)
    assert got.shape == (rows, n)
    torch.testing.assert_close(got, F.linear(x, w.float(), b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 8, 11])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_several_weights_in_one_call_equal_their_concatenation(rows, threads):
    if not row_kernel_available():
        pytest.skip("native row kernel unavailable here")
    g = torch.Generator().manual_seed(rows + 10 * threads)
    x = torch.randn(2, rows, 1, 40, generator=g)
    ws = [torch.randn(n, 40, generator=g) for n in (48, 5, 16)]  # q/k/v-like, uneven
    bs = [torch.randn(48, generator=g), None, torch.randn(16, generator=g)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = row_linears(x, ws, bs)
    finally:
        torch.set_num_threads(before)
    expected = torch.cat([F.linear(x, w, b) for w, b in zip(ws, bs, strict=True)], dim=-1)
    assert got.shape == (2, rows, 1, 69)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError):  # mismatched K: F.linear's own error, not a crash
        row_linears(x, [ws[0], torch.randn(4, 39)])


def test_leading_dims_threads_and_noncontiguous_inputs():
    if not row_kernel_available():
        pytest.skip("native row kernel unavailable here")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 40, generator=g)
    w = torch.randn(48, 80, generator=g)[:, ::2]  # non-contiguous view
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            torch.testing.assert_close(row_linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(before)


def test_falls_back_where_the_kernel_does_not_apply():
    """Autograd, other dtypes: the result is F.linear's (and differentiable)."""
    x = torch.randn(2, 16, requires_grad=True)
    w = torch.randn(8, 16)
    y = row_linear(x, w)
    y.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(2, 16))
    xd = torch.randn(2, 16, dtype=torch.float64)
    assert row_linear(xd, w.double()).dtype == torch.float64


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("PAVLOV_NATIVE", "0")
    native._library.cache_clear()
    try:
        assert not row_kernel_available()
        x, w = torch.randn(2, 8), torch.randn(4, 8)
        torch.testing.assert_close(row_linear(x, w), F.linear(x, w))
    finally:
        monkeypatch.delenv("PAVLOV_NATIVE")
        native._library.cache_clear()


def _torch_draw(z: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from pavlov.llm.generation.rollout import _draw

    tokens = _draw(torch.softmax(z, dim=-1), None, u)
    return tokens, z.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


@pytest.mark.parametrize("vocab", [1, 7, 64, 97, 1000, 49157])
@pytest.mark.parametrize("threads", [1, 2])
def test_sample_rows_draws_what_the_torch_sampler_draws(vocab, threads):
    """Same uniforms, same tokens as softmax + float64 cumsum + searchsorted (``_draw``), and
    log_softmax at the token, over peaked and flat rows, with -inf logits never drawn."""
    if not row_kernel_available():
        pytest.skip("native kernels unavailable here")
    g = torch.Generator().manual_seed(vocab)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for trial in range(40):
            z = torch.randn(9, vocab, generator=g) * (0.3 + trial % 9)
            if trial % 3 == 0 and vocab > 1:
                z[:, 1::3] = float("-inf")
            u = torch.rand((9, 1), dtype=torch.float64, generator=g)
            tokens, logp = native.sample_rows(z, u)
            want_tokens, want_logp = _torch_draw(z, u)
            assert torch.equal(tokens, want_tokens)
            torch.testing.assert_close(logp, want_logp, rtol=0, atol=1e-5)
            assert torch.isfinite(z.gather(-1, tokens[:, None])).all()
    finally:
        torch.set_num_threads(old)


def test_sample_rows_edges_of_the_cdf():
    """u = 0 takes the first token of positive probability, u just below 1 the last one; a row
    with a single finite logit always gives that token, with log-prob 0."""
    if not row_kernel_available():
        pytest.skip("native kernels unavailable here")
    z = torch.full((3, 200), float("-inf"))
    z[0, [5, 70, 150]] = torch.tensor([0.0, 1.0, 2.0])
    z[1, [5, 70, 150]] = torch.tensor([0.0, 1.0, 2.0])
    z[2, 131] = 3.0
    u = torch.tensor([[0.0], [1.0 - 1e-16], [0.5]], dtype=torch.float64)
    tokens, logp = native.sample_rows(z, u)
    assert tokens.tolist() == [5, 150, 131]
    assert logp[2] == 0.0
    torch.testing.assert_close(logp[:2], torch.log_softmax(z[:2], -1)[[0, 1], [5, 150]])


def test_sample_rows_leaves_other_inputs_to_torch():
    z = torch.randn(2, 10)
    u = torch.rand((2, 1), dtype=torch.float64)
    assert native.sample_rows(z.double(), u) is None
    assert native.sample_rows(z, u.float()) is None
    assert native.sample_rows(z.requires_grad_(), u) is None
    assert native.sample_rows(torch.randn(2, 3, 4), u) is None


@pytest.mark.parametrize("n", [1, 7, 8, 4099, 272 * 1536])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_swiglu_backward_equals_the_torch_expressions(n, threads):
    """One pass gives silu(g) u, gh silu(g) and gh u silu'(g) (written into gh), also where the
    sigmoid saturates (|g| ~ 100) and for lengths that are not multiples of 8 or of the threads."""
    if not row_kernel_available():
        pytest.skip("native kernels unavailable here")
    gen = torch.Generator().manual_seed(n)
    g = torch.randn(n, generator=gen) * 4
    g[: min(n, 4)] = torch.tensor([100.0, -100.0, 0.0, -30.0])[: min(n, 4)]
    u, gh = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    s = torch.sigmoid(g)
    want = (g * s * u, gh * g * s, gh * u * s * (1 + g * (1 - s)))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buffer = gh.clone()
        got = native.swiglu_backward(g, u, buffer)
    finally:
        torch.set_num_threads(old)
    assert got[2].data_ptr() == buffer.data_ptr()  # written in place
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert native.swiglu_backward(g.double(), u.double(), gh.double()) is None
    assert native.swiglu_backward(g[::2], u[::2], gh[::2]) is None or n == 1


@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 136, 576), (3, 5, 13), (7, 64)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_rmsnorm_backward_equals_autograd(shape, threads):
    """grad_x and grad_weight of w * x * rstd equal autograd's through the torch expression, for
    widths that are not multiples of 8 and more threads than rows."""
    if not row_kernel_available():
        pytest.skip("native kernels unavailable here")
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    w = torch.randn(shape[-1], generator=gen, requires_grad=True)
    gy = torch.randn(*shape, generator=gen)
    rstd = torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + 1e-5)
    (w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))).backward(gy)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gx, gw = native.rmsnorm_backward(x.detach(), rstd, w.detach(), gy)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-5)
    assert native.rmsnorm_backward(x.detach().double(), rstd.double(), w.detach().double(),
                                   gy.double()) is None  # fmt: skip


def test_l2_norm_is_the_exact_total_norm():
    """The total norm of many tensors (sizes not multiples of 8, 1024 or the threads, one large
    one) to 1e-6 of the float64 value; None for tensors it does not take."""
    if not row_kernel_available():
        pytest.skip("native kernels unavailable here")
    gen = torch.Generator().manual_seed(0)
    sizes = [(1, 3.0), (7, 1e-3), (1025, 1.0), (3_000_001, 1e-2), (0, 1.0), (96, 1e4)]
    tensors = [torch.randn(n, generator=gen) * s for n, s in sizes]
    exact = torch.stack([t.double().pow(2).sum() for t in tensors]).sum().sqrt()
    for threads in (1, 2, 3):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            got = native.l2_norm(tensors)
        finally:
            torch.set_num_threads(old)
        assert got.dtype == torch.float32 and got.dim() == 0
        assert abs(got.double() - exact) <= 1e-6 * exact
    assert native.l2_norm([]) == 0
    assert native.l2_norm([torch.ones(4, dtype=torch.float64)]) is None
    assert native.l2_norm([torch.ones(4, 2).t()]) is None


def test_weights_of_mixed_dtypes_in_one_call(loops):
    """A LoRA-adapted q (float32, ``W + s B A``) beside bf16 k and v: each weight is read as
    its own dtype."""
    if not row_kernel_available():
        pytest.skip("native row kernel unavailable here")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 40, generator=g)
    ws = [torch.randn(48, 40, generator=g), torch.randn(16, 40, generator=g).bfloat16(),
          torch.randn(16, 40, generator=g).bfloat16()]  # fmt: skip
    got = row_linears(x, ws)
    expected = torch.cat([F.linear(x, w.float()) for w in ws], dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
