"""Tests for pavlov.agents.ppo_native: PPO's minibatch gradient in one C call equals the torch
closed-form step (and through it autograd: tests/agents/test_ppo.py)."""

from __future__ import annotations

import copy
import dataclasses
import platform

import gymnasium as gym
import numpy as np
import pytest
import torch

from pavlov import native
from pavlov.agents import ppo, ppo_fast, ppo_native
from pavlov.agents.distributions import ActorCritic, CategoricalHead, GaussianHead

CFG = ppo.Config(total_steps=2048, n_envs=4, n_steps=64, batch_size=64, n_epochs=2)

needs_kernel = pytest.mark.skipif(not ppo_native.available(), reason="no C kernel here")


def test_the_kernel_builds_on_x86_linux_with_a_compiler():
    """CI and dev machines are x86-64 Linux with gcc: the kernel must be the path PPO takes
    there (a silent fallback would make the speed figures measure something else)."""
    if platform.machine() != "x86_64" or not native.cpu_supported():
        pytest.skip("not an AVX2 x86-64 Linux machine")
    assert ppo_native.available()
    model = ActorCritic(4, 2, [64, 64], "tanh", False, None)
    head = CategoricalHead(gym.spaces.Discrete(2))
    assert ppo.make_backend(model, head, _opt(model), True).kernel is not None


@pytest.fixture(params=["avx512", "avx2"])
def loops(request):
    """Both matmul loops: AVX-512 (where the CPU has it) and AVX2."""
    if ppo_native.available() and request.param == "avx512" and not ppo_native._use_avx512(True):
        pytest.skip("no AVX-512 here")
    ppo_native._use_avx512(request.param == "avx512")
    yield request.param
    ppo_native._use_avx512(True)


def test_tanh_and_both_loops_agree_with_torch(loops):
    """The kernel's vectorised tanh (a polynomial below |x| 0.625, exp above) through a whole
    step: gradients of a tanh net with pre-activations spread over [-6, 6]."""
    backend, batch = _setup(64, hidden=(48, 40))
    with torch.no_grad():
        backend.model.pi[0].weight.mul_(8.0)  # wide pre-activations: both tanh branches
    cfg = dataclasses.replace(CFG, batch_size=64)
    mb = backend.split(backend.pack(batch), cfg)
    ref_loss, _, ref_grad, _ = _torch_step(backend, mb, cfg)
    loss, _, _ = backend.loss(mb, cfg, 0.2)
    torch.testing.assert_close(backend.flat_grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(float(ref_loss), rel=1e-5, abs=1e-6)


def _opt(model):
    return torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-5, fused=True)


def _setup(n, obs_dim=5, k=3, hidden=(16, 8), activation="tanh", seed=0):
    """(closed-form backend with the kernel, packed batch): old log-probs and values off the
    current ones, so that the policy and value clips bind."""
    torch.manual_seed(seed)
    head = CategoricalHead(gym.spaces.Discrete(k))
    model = ActorCritic(obs_dim, k, list(hidden), activation, False, None)
    for lin in (model.pi[-1], model.v[-1]):  # larger output layers than the 0.01 init
        torch.nn.init.normal_(lin.weight, std=0.5)
    obs = torch.randn(n, obs_dim)
    with torch.no_grad():
        out, values = model(obs)
        actions = torch.distributions.Categorical(logits=out).sample()
        logp = head.log_prob(out, None, actions)
    batch = {"obs": obs, "actions": actions, "logp": logp + 0.3 * torch.randn_like(logp),
             "values": values + 0.5 * torch.randn_like(values),
             "advantages": torch.randn(n), "returns": torch.randn(n)}
    backend = ppo_fast.ClosedFormGrad(model, head, _opt(model))
    return backend, batch


def _torch_step(backend, mb, cfg):
    """The torch ops' loss, gradient and metrics on the same backend (kernel off for a call)."""
    kernel, backend.kernel = backend.kernel, None
    try:
        loss, kl, record = backend.loss(mb, cfg, 0.2)
        return loss, kl, backend.flat_grad.clone(), backend.metrics([record], 0.2)
    finally:
        backend.kernel = kernel


@needs_kernel
@pytest.mark.parametrize("options", [{}, {"clip_range_vf": 0.2, "ent_coef": 0.01},
                                     {"ent_coef": 0.05, "vf_coef": 0.5}])
@pytest.mark.parametrize(("n", "obs_dim", "k", "hidden", "activation"), [
    (1, 5, 3, (16, 8), "tanh"),
    (7, 4, 2, (64, 64), "tanh"),  # the CartPole nets, rows not a multiple of 4
    (128, 4, 2, (64, 64), "tanh"),
    (256, 4, 2, (64, 64), "relu"),
    (37, 20, 6, (24, 40, 9), "relu"),  # a wide input (>= 16: the other weight-gradient form)
    (50, 3, 4, (8,), "tanh"),  # one hidden layer, narrower than a vector
])
def test_gradient_loss_and_metrics_equal_the_torch_ops(n, obs_dim, k, hidden, activation,
                                                       options, loops):
    backend, batch = _setup(n, obs_dim, k, hidden, activation)
    assert backend.kernel is not None
    cfg = dataclasses.replace(CFG, batch_size=n, **options)
    mb = backend.split(backend.pack(batch), cfg)
    ref_loss, ref_kl, ref_grad, ref_metrics = _torch_step(backend, mb, cfg)
    backend.flat_grad.fill_(float("nan"))  # every gradient entry must be written
    loss, kl, out = backend.loss(mb, cfg, 0.2)
    torch.testing.assert_close(backend.flat_grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(float(ref_loss), rel=1e-5, abs=1e-6)
    assert kl == pytest.approx(float(ref_kl), rel=1e-4, abs=1e-6)
    metrics = backend.metrics([out], 0.2)
    assert metrics.keys() == ref_metrics.keys()
    for name, value in ref_metrics.items():
        assert metrics[name] == pytest.approx(float(value), rel=1e-4, abs=1e-6), name
    if n > 30:
        assert 0.1 < metrics["losses/clip_fraction"] < 0.9  # the clip is active


@needs_kernel
def test_minibatch_views_of_a_shuffled_packed_batch():
    """Column views with the packed row stride and non-contiguous advantages, as ppo_update
    passes them for shuffled minibatches."""
    backend, batch = _setup(96)
    packed = backend.pack(batch)
    idx = torch.randperm(96)[:40]
    adv = torch.randn(80)[::2]  # a strided view
    mb = backend.minibatch(packed, idx, adv)
    cfg = dataclasses.replace(CFG, batch_size=40)
    ref_loss, _, ref_grad, _ = _torch_step(backend, mb, cfg)
    loss, _, _ = backend.loss(mb, cfg, 0.2)
    torch.testing.assert_close(backend.flat_grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(float(ref_loss), rel=1e-5, abs=1e-6)


@needs_kernel
@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clip_equals_torch_clip_grad_norm(max_norm):
    backend, _ = _setup(8)
    g = torch.randn(backend.flat_grad.numel())
    param = torch.nn.Parameter(torch.zeros_like(g))
    param.grad = g.clone()
    torch.nn.utils.clip_grad_norm_([param], max_norm)  # clips .grad in place
    backend.flat_grad.copy_(g)
    backend.kernel.clip_(backend.flat_grad, max_norm)
    torch.testing.assert_close(backend.flat_grad, param.grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(backend.flat_grad, g) == (max_norm > 1e3)


@needs_kernel
@pytest.mark.parametrize("batch_size", [64, 24])
def test_whole_update_equals_the_torch_ops(batch_size):
    """Three epochs of shuffled minibatches with the gradient clip binding: the same parameters
    and metrics as the torch closed-form step to float32 round-off."""
    cfg = dataclasses.replace(CFG, batch_size=batch_size, n_epochs=3, max_grad_norm=0.05,
                              clip_range_vf=0.5, ent_coef=0.01)
    backend, batch = _setup(64)
    ref, _ = _setup(64)
    ref.kernel = ref.adam_kernel = None
    torch.manual_seed(1)
    metrics = ppo.ppo_update(backend, batch, cfg, 0.2, 0)
    torch.manual_seed(1)
    ref_metrics = ppo.ppo_update(ref, batch, cfg, 0.2, 0)
    assert metrics.keys() == ref_metrics.keys()
    for name, value in ref_metrics.items():
        assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    torch.testing.assert_close(backend.flat, ref.flat, rtol=1e-5, atol=1e-5)
    assert not torch.equal(backend.flat, _setup(64)[0].flat)  # the update moved them


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("n", "beta1", "weight_decay", "ranks", "max_norm"), [
    (9155, 0.9, 0.0, 1, 0.5), (9155, 0.9, 0.01, 3, None), (1, 0.9, 0.0, 2, None),
    (17, 0.3, 0.0, 1, 0.05), (1003, 0.3, 0.1, 2, 0.5), (40_000, 0.9, 0.0, 1, None)])
def test_c_adam_is_torch_fused_adam_bit_for_bit(threads, n, beta1, weight_decay, ranks,
                                                max_norm):
    """``AdamKernel`` against ``ClosedFormGrad``'s torch step (``div_``, the C clip, then
    ``torch._fused_adam_``) over 25 steps with gradients from 1e-6 to 10: the same bits in the
    parameters, both moments and the step counts, for torch's vector loop and its scalar tail
    (any n), both lerp branches (beta1 0.9 / 0.3), weight decay and 1 or 2 threads' chunks."""
    if torch.backends.cpu.get_cpu_capability() not in ppo_native.TORCH_VECTOR_WIDTH:
        pytest.skip("torch's kernels here are not AVX2 / AVX-512")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(n)
        start = torch.randn(n, generator=gen)
        pair = []
        for _ in range(2):
            flat = torch.nn.Parameter(start.clone())
            opt = torch.optim.Adam([flat], lr=3e-3, betas=(beta1, 0.999), eps=1e-5,
                                   weight_decay=weight_decay, fused=True)
            pair.append((ppo_fast.AdamView(opt, flat.data), torch.zeros(n)))
        (view, grad), (ref, ref_grad) = pair
        kernel = ppo_native.AdamKernel(view, grad)
        clip = _setup(4)[0].kernel.clip_
        for k in range(25):
            g = torch.randn(n, generator=gen) * 10.0 ** (k % 8 - 6)
            grad.copy_(g)
            kernel.clip_and_step(max_norm, ranks)
            ref_grad.copy_(g).div_(ranks)
            if max_norm is not None:
                clip(ref_grad, max_norm)
            ref.step(ref_grad)
        for a, b in [(view.flat, ref.flat), (view.exp_avg, ref.exp_avg),
                     (view.exp_avg_sq, ref.exp_avg_sq), (view.steps, ref.steps)]:
            assert torch.equal(a, b)
        assert not torch.equal(view.flat, start) and float(view.steps[0]) == 25.0
        assert torch.equal(grad, ref_grad)  # divided and clipped alike
    finally:
        torch.set_num_threads(before)


def test_not_used_for_gaussian_heads_float64_or_when_switched_off(monkeypatch):
    box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    model = ActorCritic(3, 2, [8], "tanh", False, -0.5)
    assert ppo_fast.ClosedFormGrad(model, GaussianHead(box), _opt(model)).kernel is None
    backend, _ = _setup(4)
    model = copy.deepcopy(backend.model).double()
    head = CategoricalHead(gym.spaces.Discrete(3))
    assert ppo_fast.ClosedFormGrad(model, head, _opt(model)).kernel is None
    assert ppo_fast.ClosedFormGrad(backend.model, head, _opt(backend.model),
                                   native=False).kernel is None
    monkeypatch.setenv("PAVLOV_NATIVE", "0")
    ppo_native._library.cache_clear()
    try:
        assert not ppo_native.available()
        assert _setup(4)[0].kernel is None
    finally:
        monkeypatch.delenv("PAVLOV_NATIVE")
        ppo_native._library.cache_clear()
