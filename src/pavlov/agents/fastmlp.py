"""Fast small-MLP training without autograd's per-op overhead (used by DQN and PPO).

DQN takes ~10^4 minibatch steps on nets this small, where autograd bookkeeping and
``Optimizer.step`` Python overhead cost as much as the matmuls. Here parameters live in one flat
vector (clipping, Adam and Polyak updates are one op each), the backward pass of an
:func:`~pavlov.agents.common.mlp` stack is written out by hand (:class:`MLPGrad`, checked
against autograd in tests/agents/test_dqn.py), and greedy actions come from a NumPy forward
(:class:`NumpyQ`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn


def flatten_parameters(net: nn.Module, with_grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """Re-point every parameter of ``net`` at a slice of one new flat vector, and (``with_grad``)
    its ``.grad`` at a slice of a second, zeroed one -> ``(flat, flat_grad)``, both ``(P,)``.

    The module works as before (``state_dict``, ``load_state_dict`` and the forward pass see
    the same numbers), while clipping, Adam and Polyak averaging become one op each.
    """
    params = list(net.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    flat_grad = torch.zeros_like(flat) if with_grad else None
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        if flat_grad is not None:
            p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    return flat, flat_grad


class MLPGrad:
    """Hand-written forward and backward pass of a :func:`~pavlov.agents.common.mlp` stack.

    DQN takes ~10^4 minibatch steps on nets this small, where autograd's bookkeeping costs as
    much as the matmuls; this does the same arithmetic in a dozen ops and writes the gradients
    into the parameters' existing ``.grad`` tensors (checked against autograd in the tests).
    """

    def __init__(self, net: nn.Sequential, activation: str) -> None:
        linears = [m for m in net if isinstance(m, nn.Linear)]
        self.weights = [m.weight.detach() for m in linears]  # same storage as the parameters
        self.biases = [m.bias.detach() for m in linears]
        self.weight_grads = [m.weight.grad for m in linears]
        self.bias_grads = [m.bias.grad for m in linears]
        # NumPy views for the weight gradients of narrow-input layers (the observation layer):
        # MKL takes ~22 µs for g^T @ x with x (256, 4), OpenBLAS ~5 µs
        self.narrow = [w.shape[1] <= 16 and w.device.type == "cpu" for w in self.weights]
        self.act_forward, self.act_backward, _ = _ACTIVATION_GRADS[activation]

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, in) -> the input and every layer's output, the last being (B, out)."""
        hs = [x]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.addmm(b, hs[-1], w.t())  # (B, out_i)
            hs.append(h if i == len(self.weights) - 1 else self.act_forward(h))
        return hs

    def backward(self, hs: list[Tensor], grad_out: Tensor) -> None:
        """Write d loss / d parameters into ``.grad`` given ``grad_out`` = d loss / d output."""
        g = grad_out  # (B, out_i): gradient at layer i's pre-activation
        for i in range(len(self.weights) - 1, -1, -1):
            if self.narrow[i]:
                np.matmul(g.numpy().T, hs[i].numpy(), out=self.weight_grads[i].numpy())
            else:
                torch.mm(g.t(), hs[i], out=self.weight_grads[i])  # (out_i, in_i)
            torch.sum(g, 0, out=self.bias_grads[i])
            if i > 0:
                g = self.act_backward(g @ self.weights[i], hs[i])


def _tanh_(h: Tensor) -> Tensor:
    """``torch.tanh_`` computed by NumPy on the same memory: on our CPUs torch's float32 tanh
    takes 70-90 µs on a (256, 64) block, NumPy's 7-10 µs (same values to an ulp or two)."""
    if h.device.type != "cpu" or h.requires_grad or not h.is_contiguous():
        return torch.tanh_(h)
    a = h.numpy()
    np.tanh(a, out=a)
    return h


_ACTIVATION_GRADS: dict[str, tuple[Callable, Callable, Callable]] = {
    # (in-place forward, backward given the output (autograd's own kernels), NumPy in place)
    "relu": (torch.relu_, lambda g, h: torch.ops.aten.threshold_backward(g, h, 0),
             lambda h: np.maximum(h, 0, out=h)),
    "tanh": (_tanh_, torch.ops.aten.tanh_backward, lambda h: np.tanh(h, out=h)),
}


class FlatAdam:
    """Adam (Kingma & Ba 2015, Algorithm 1; torch's defaults, as SB3's DQN) on one flat vector.

    Calls the kernel of ``torch.optim.Adam(fused=True)`` directly: that optimizer's ``step()``
    spends ~100 µs per call in Python bookkeeping, twice the kernel's own time on a 67k-weight
    net (a private op of the pinned torch; the tests check it against ``torch.optim.Adam``).
    """

    def __init__(self, params: Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(params), torch.zeros_like(params)
        self.steps = torch.zeros((), dtype=torch.float32, device=params.device)

    def step(self, grad: Tensor) -> None:
        self.steps += 1
        torch._fused_adam_(
            [self.params], [grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
            eps=self.eps, amsgrad=False, maximize=False)

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone(),
                "steps": self.steps.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            getattr(self, name).copy_(state[name])


class NumpyQ:
    """Greedy actions of a Q-MLP computed in NumPy on views of its (live) weights.

    Acting on one observation per env step, a NumPy forward costs ~10 µs where torch's costs
    40-150 µs (op dispatch); over 10^5 env steps that is most of the env loop's overhead.
    """

    def __init__(self, net: nn.Sequential, activation: str, obs_space: gym.Space) -> None:
        self.layers = [(m.weight.detach().numpy().T, m.bias.detach().numpy())
                       for m in net if isinstance(m, nn.Linear)]  # (in, out), (out,) views
        self.activation, self.obs_space = _ACTIVATION_GRADS[activation][2], obs_space

    def __call__(self, obs: Any) -> np.ndarray:
        """(N, *S) observations (or one) -> (N,) argmax-Q action indices."""
        space = self.obs_space
        if isinstance(space, gym.spaces.Discrete):  # one-hot, as encode_obs
            idx = np.asarray(obs).reshape(-1) - int(space.start)
            h = np.zeros((len(idx), int(space.n)), dtype=np.float32)
            h[np.arange(len(idx)), idx] = 1.0
        else:
            h = np.asarray(obs, dtype=np.float32)
            h = h.reshape(-1, int(np.prod(space.shape)))
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b  # (N, out_i)
            if i < len(self.layers) - 1:
                self.activation(h)
        return h.argmax(-1)
