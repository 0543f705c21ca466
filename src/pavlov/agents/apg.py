"""Analytic policy gradient: backpropagate the return through differentiable dynamics.

When the simulator is a differentiable function ``s', r = f(s, a)``, the exact gradient of the
return of a deterministic policy ``a = pi_theta(s)`` is available by backpropagation through
time over the whole rollout (Nguyen & Widrow 1990, "Neural networks for self-learning control
systems"; Deisenroth & Rasmussen 2011, PILCO; Freeman et al. 2021, Brax; Xu et al. 2022, SHAC,
arXiv:2204.07137 on its pitfalls). Each update:

1. draw ``batch_size`` start states, roll the policy out for the env's horizon ``H`` in the
   differentiable dynamics (``B * H`` env steps),
2. ``loss = -mean_b sum_t r_t`` (the undiscounted return the env reports), one Adam step with the
   gradient clipped to ``max_grad_norm``.

No sampling noise and no value function: the gradient is exact, but it is only as useful as the
dynamics are smooth (contact-rich or chaotic systems make BPTT gradients explode).

Works with any env whose ``env.unwrapped`` provides ``dynamics(state, action) -> (state',
reward)``, ``initial_states(n, generator, dtype)`` and ``observe(state)`` in batched torch (see
:class:`pavlov.envs.pointmass.PointMassEnv`), a Box action space and a time limit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pavlov.agents.common import (
    EVAL_SEED_OFFSET,
    Hooks,
    TrainClock,
    TrainOutput,
    check_device,
    check_hidden,
    evaluate_in_env,
    mlp,
    obs_dim,
    require_action_space,
    resolve_device,
    rng_state,
    seed_all,
    set_rng_state,
)
from pavlov.devices import flush_denormals
from pavlov.errors import PavlovError, check_choice, check_count, check_finite, check_positive

ACTION_SPACES = (gym.spaces.Box,)
"""Action spaces this agent supports (checked before a run directory is made)."""

DIFFERENTIABLE_API = ("dynamics", "initial_states", "observe")


@dataclass
class Config:
    """Hyperparameters of APG (defaults: ``pavlov/PointMass-v0``)."""

    total_steps: int = 100_000
    """Env steps to train for (> 0); one update takes ``batch_size * H`` of them."""
    batch_size: int = 32
    """Rollouts per update (> 0)."""
    learning_rate: float = 1e-2
    """Adam step size (> 0)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (> 0; ``inf`` disables)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the policy."""
    activation: str = "tanh"
    """Hidden activation: ``"tanh"`` or ``"relu"``."""
    device: str = "cpu"
    """Where networks and updates run: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"``
    (cuda when torch sees a GPU); envs always step on the CPU."""
    seed: int = 0
    """Seeds torch/numpy/python (start states are drawn from torch's RNG)."""

    def __post_init__(self) -> None:
        check_device("device", self.device)
        for name in ("total_steps", "batch_size"):
            check_count(name, getattr(self, name))
        for name in ("learning_rate", "max_grad_norm"):
            check_positive(name, getattr(self, name))
        self.hidden_sizes = check_hidden("hidden_sizes", self.hidden_sizes)
        check_choice("activation", self.activation, ("tanh", "relu"))


class DeterministicPolicy(nn.Module):
    """``(..., obs_dim)`` -> ``(..., A)`` actions ``center + scale * tanh(mlp(obs))`` inside the
    Box bounds (smooth, so gradients pass through, unlike clipping)."""

    def __init__(self, obs_space: gym.Space, action_space: gym.spaces.Box, cfg: Config) -> None:
        super().__init__()
        low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten()
        high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten()
        self.net = mlp([obs_dim(obs_space), *cfg.hidden_sizes, low.numel()], cfg.activation,
                       out_gain=0.01)
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("scale", (high - low) / 2)

    def forward(self, obs: Tensor) -> Tensor:
        return self.center + self.scale * torch.tanh(self.net(obs))


def rollout_return(
    policy: Callable[[Tensor], Tensor],
    dynamics: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    observe: Callable[[Tensor], Tensor],
    state: Tensor,
    horizon: int,
) -> Tensor:
    """``(B, S)`` start states -> ``(B,)`` undiscounted returns ``sum_{t<H} r_t`` of the
    deterministic ``policy`` in ``dynamics``, keeping the autograd graph (BPTT)."""
    total = torch.zeros(state.shape[0], dtype=state.dtype, device=state.device)
    for _ in range(horizon):
        state, reward = dynamics(state, policy(observe(state)))
        total = total + reward
    return total


def _differentiable_env(env_id: str, env_kwargs: dict[str, Any] | None):
    """(unwrapped env, horizon, observation space, action space) or a PavlovError."""
    from pavlov.envs.factory import make_env

    env = make_env(env_id, env_kwargs)
    try:
        require_action_space(env.action_space, "APG", [gym.spaces.Box])
        inner = env.unwrapped
        if not all(hasattr(inner, name) for name in DIFFERENTIABLE_API):
            raise PavlovError(
                f"APG needs a differentiable env (with {', '.join(DIFFERENTIABLE_API)} in torch, "
                f"e.g. pavlov/PointMass-v0); {env_id} is not one"
            )
        horizon = env.spec.max_episode_steps if env.spec is not None else None
        if horizon is None:
            raise PavlovError(f"APG needs a time limit (the BPTT horizon); {env_id} has none")
        return inner, int(horizon), env.observation_space, env.action_space
    finally:
        env.close()


@flush_denormals()
def train(
    env_id: str,
    cfg: Config,
    *,
    env_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainOutput:
    """Train a deterministic policy by BPTT through ``env_id``'s dynamics for
    ``cfg.total_steps`` env steps (or until ``hooks.stop``)."""
    hooks = hooks or Hooks()
    sim, horizon, obs_space, act_space = _differentiable_env(env_id, env_kwargs)
    if resume is None:
        seed_all(cfg.seed)
    device = resolve_device(cfg.device)  # the differentiable sim runs there too: it is the loss
    policy = DeterministicPolicy(obs_space, act_space, cfg).to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    counters = {"env_steps": 0, "updates": 0}
    if resume is not None:
        resume = copy.deepcopy(resume)  # Optimizer.load_state_dict keeps and updates its tensors
        if resume.get("algo") != "apg":
            raise PavlovError(f"cannot resume APG from a {resume.get('algo')!r} state")
        policy.load_state_dict(resume["policy"])
        opt.load_state_dict(resume["optimizer"])
        counters.update(env_steps=resume["env_steps"], updates=resume["updates"])
        set_rng_state(resume["rng"])
    clock = TrainClock(hooks, counters["env_steps"])

    def state() -> dict[str, Any]:
        return copy.deepcopy({
            "algo": "apg", "policy": policy.state_dict(), "optimizer": opt.state_dict(),
            **counters, "rng": rng_state(), "config": asdict(cfg),
        })

    def evaluate() -> float:
        return evaluate_in_env(env_id, _numpy_policy(policy), hooks.eval_episodes,
                               cfg.seed + EVAL_SEED_OFFSET, env_kwargs).mean_return

    while clock.steps < cfg.total_steps:
        start = sim.initial_states(cfg.batch_size).to(device)  # (B, S)
        returns = rollout_return(policy, sim.dynamics, sim.observe, start, horizon)  # (B,)
        loss = -returns.mean()
        check_finite("APG loss", loss, clock.steps, unit="env step")
        opt.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        clock.advance(cfg.batch_size * horizon)
        counters.update(env_steps=clock.steps, updates=counters["updates"] + 1)
        hooks.log(clock.steps, {
            "losses/policy": loss.item(), "charts/grad_norm": grad_norm.item(),
            "charts/episode_return": returns.mean().item(),
            "charts/episode_length": float(horizon), "charts/SPS": clock.sps(),
            "charts/seconds": clock.seconds,
        })
        if clock.periodic(evaluate, state):
            break
    return clock.output(state())


def _numpy_policy(policy: DeterministicPolicy) -> Callable[[Any, int], np.ndarray]:
    @torch.no_grad()
    def act(obs: Any, t: int) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, -1)
        return policy(x.to(policy.center.device))[0].cpu().numpy()

    return act


def load_policy(state: dict[str, Any], cfg: Config, env: gym.Env) -> Callable[[Any, int], Any]:
    """Deterministic ``policy(obs, t) -> action`` (float32 array) from a trained state."""
    policy = DeterministicPolicy(env.observation_space, env.action_space, cfg)
    policy.load_state_dict(state["policy"])
    return _numpy_policy(policy)
