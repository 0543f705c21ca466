"""A2C: synchronous advantage actor-critic.

Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning", ICML,
arXiv:1602.01783 (A3C, Algorithm S3), run synchronously over ``n_envs`` vectorized envs as in
OpenAI Baselines / Stable-Baselines3. Each update:

1. **RolloutBuffer** of ``n_steps`` steps in each of ``n_envs`` envs (SAME_STEP autoreset, so the
   batch never mixes transitions across an episode boundary).
2. **Advantages** by GAE(lambda) (:func:`pavlov.math.gae`; ``gae_lambda = 1`` is the n-step
   return bootstrapped at the rollout end, the A3C estimator) or by n-step targets
   (:func:`pavlov.math.nstep_targets`). Terminated steps do not bootstrap; truncated steps (time
   limits) bootstrap from ``V(final_obs)`` (Pardo et al. 2018, arXiv:1712.00378).
3. **One gradient step** on ``policy + vf_coef * MSE(V, target) - ent_coef * entropy``
   (RMSprop or Adam), gradients clipped to ``max_grad_norm``.

The rollout buffer and collector, the actor-critic and the loop are the on-policy core shared
with PPO (:mod:`pavlov.agents.onpolicy`), so A2C also runs data-parallel (``--nproc``, torchrun).

Resume restores networks, optimizer, counters and RNG; the envs restart from a reset seeded by
the update count, so a resumed run is equivalent but not bitwise identical to an uninterrupted
one (an episode in progress at the checkpoint is dropped).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pavlov.agents import onpolicy
from pavlov.agents.common import (
    EVAL_SEED_OFFSET,
    EpisodeStats,
    Hooks,
    TrainOutput,
    batch_seed,
    check_device,
    check_hidden,
    evaluate_in_env,
    make_vec_env,
    obs_dim,
    require_action_space,
    resolve_device,
    rng_state,
    seed_all,
    set_rng_state,
)
from pavlov.agents.distributions import HEADS, ActorCritic
from pavlov.agents.fastmlp import flatten_parameters
from pavlov.agents.rollout import Collector, RolloutBuffer
from pavlov.devices import flush_denormals
from pavlov.errors import (
    ConfigError,
    PavlovError,
    check_choice,
    check_count,
    check_finite,
    check_positive,
    check_range,
)
from pavlov.math import gae, masked_whiten, nstep_targets, reinforce_loss
from pavlov.run import distributed
from pavlov.run.distributed import DataParallel

ACTION_SPACES = tuple(HEADS)  # Discrete and Box: the action spaces the heads cover
"""Action spaces this agent supports (checked before a run directory is made)."""

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # torch RMSprop: eps added outside the square root (TF adds it inside; SB3's default is torch).
    "rmsprop": lambda params, cfg: torch.optim.RMSprop(
        params, lr=cfg.learning_rate, alpha=cfg.rms_alpha, eps=cfg.optimizer_eps
    ),
    "adam": lambda params, cfg: torch.optim.Adam(
        params, lr=cfg.learning_rate, eps=cfg.optimizer_eps
    ),
}


@dataclass
class Config:
    """Hyperparameters of A2C. Defaults: rl-zoo's CartPole-v1 A2C (SB3 defaults, 8 envs,
    ent_coef 0)."""

    total_steps: int = 500_000
    """Env steps to train for (> 0)."""
    n_envs: int = 8
    """Parallel envs (> 0)."""
    n_steps: int = 5
    """Steps per env per update (> 0); a batch holds ``n_envs * n_steps`` transitions."""
    gamma: float = 0.99
    """Discount in [0, 1]."""
    advantage: str = "gae"
    """Advantage estimator: ``"gae"`` (uses ``gae_lambda``) or ``"nstep"`` (uses ``nstep``)."""
    gae_lambda: float = 1.0
    """GAE lambda in [0, 1]; 1 is the bootstrapped n-step return of A3C."""
    nstep: int = 5
    """Reward steps of the n-step targets (> 0; capped by the rollout end)."""
    normalize_advantage: bool = False
    """Whiten the advantages of each batch."""
    vf_coef: float = 0.5
    """Weight (>= 0) of the value loss."""
    ent_coef: float = 0.0
    """Weight (>= 0) of the entropy bonus."""
    learning_rate: float = 7e-4
    """Optimizer step size (> 0)."""
    optimizer: str = "rmsprop"
    """``"rmsprop"`` or ``"adam"``."""
    rms_alpha: float = 0.99
    """RMSprop smoothing constant in (0, 1)."""
    optimizer_eps: float = 1e-5
    """Optimizer epsilon (> 0)."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this (> 0; ``inf`` disables)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the actor and of the critic (or of their shared trunk)."""
    activation: str = "tanh"
    """Hidden activation: ``"tanh"`` or ``"relu"``."""
    shared_network: bool = False
    """One trunk with a policy head and a value head, instead of two separate MLPs."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions only)."""
    log_every: int = 1_000
    """Env steps between logs of losses and SPS (> 0); episode returns are always logged."""
    vectorization: str = "sync"
    """``"sync"`` or ``"async"`` (subprocess) vector env."""
    device: str = "cpu"
    """Where networks and updates run: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"``
    (cuda when torch sees a GPU); envs always step on the CPU."""
    seed: int = 0
    """Seeds torch/numpy/python and the env resets."""

    def __post_init__(self) -> None:
        check_device("device", self.device)
        for name in ("total_steps", "n_envs", "n_steps", "nstep", "log_every"):
            check_count(name, getattr(self, name))
        for name in ("learning_rate", "optimizer_eps", "max_grad_norm"):
            check_positive(name, getattr(self, name))
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_range("vf_coef", self.vf_coef, 0.0, math.inf)
        check_range("ent_coef", self.ent_coef, 0.0, math.inf)
        check_range("rms_alpha", self.rms_alpha, 1e-12, 1.0 - 1e-12)
        check_choice("advantage", self.advantage, tuple(ADVANTAGES))
        check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        check_choice("activation", self.activation, ("tanh", "relu"))
        check_choice("vectorization", self.vectorization, ("sync", "async"))
        self.hidden_sizes = check_hidden("hidden_sizes", self.hidden_sizes)
        if self.shared_network and not self.hidden_sizes:
            raise ConfigError("hidden_sizes must be non-empty when shared_network is true")


# ------------------------------------------------------------------------ advantage estimators


def _gae(roll: dict[str, Tensor], cfg: Config) -> tuple[Tensor, Tensor]:
    return gae(roll["rewards"], roll["values"], roll["terminated"], roll["truncated"],
               roll["last_values"], cfg.gamma, cfg.gae_lambda, roll["final_values"])


def _nstep(roll: dict[str, Tensor], cfg: Config) -> tuple[Tensor, Tensor]:
    targets = nstep_targets(roll["rewards"], roll["values"], roll["terminated"],
                            roll["truncated"], roll["last_values"], cfg.gamma, cfg.nstep,
                            roll["final_values"])
    return targets - roll["values"], targets


ADVANTAGES: dict[str, Callable[[dict[str, Tensor], Config], tuple[Tensor, Tensor]]] = {
    "gae": _gae,
    "nstep": _nstep,
}
"""``name -> fn(rollout, cfg) -> (advantages, value targets)``, both ``(T, N)``."""


# ------------------------------------------------------------------------------------ update


def a2c_update(model: ActorCritic, head: Any, opt: torch.optim.Optimizer, flat_grad: Tensor,
               roll: dict[str, Tensor], cfg: Config, step: int,
               dp: DataParallel | None = None) -> dict[str, float]:
    """One gradient step on a ``(T, N)`` rollout -> metrics. ``flat_grad``: the flat vector
    the parameters' ``.grad`` are views of (averaged over the ranks with ``dp``)."""
    adv, targets = ADVANTAGES[cfg.advantage](roll, cfg)  # (T, N) each
    adv, targets = adv.flatten(), targets.flatten()
    if cfg.normalize_advantage:
        adv = masked_whiten(adv, None)
    x, actions = roll["obs"].flatten(0, 1), roll["actions"].flatten(0, 1)
    out, values = model(x)  # (B, k), (B,)
    logp = head.log_prob(out, model.log_std, actions)
    pg_loss, _ = reinforce_loss(logp, adv)
    v_loss = nn.functional.mse_loss(values, targets)
    ent = head.entropy(out, model.log_std).mean()
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
    check_finite("A2C loss", loss, step, unit="env step")
    flat_grad.zero_()  # not zero_grad(): each .grad is a view of flat_grad
    loss.backward()
    if dp is not None:
        dp.average_(flat_grad)
    nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    return {"losses/policy": pg_loss.item(), "losses/value": v_loss.item(),
            "losses/entropy": ent.item()}


# ------------------------------------------------------------------------------------- train


def _make_model(obs_space: gym.Space, act_space: gym.Space, cfg: Config
                ) -> tuple[Any, ActorCritic]:
    """(head, freshly initialised actor-critic) for these spaces."""
    require_action_space(act_space, "A2C", ACTION_SPACES)
    head = HEADS[type(act_space)](act_space)
    log_std_init = cfg.log_std_init if isinstance(act_space, gym.spaces.Box) else None
    model = ActorCritic(obs_dim(obs_space), head.n_outputs, cfg.hidden_sizes, cfg.activation,
                        cfg.shared_network, log_std_init)
    return head, model


@flush_denormals()
def train(
    env_id: str,
    cfg: Config,
    *,
    env_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainOutput:
    """Train A2C on ``env_id`` until ``cfg.total_steps`` env steps (or ``hooks.stop``);
    data-parallel inside a torch.distributed group, as PPO (:mod:`pavlov.agents.onpolicy`)."""
    hooks = hooks or Hooks()
    dp = distributed.current()
    envs = make_vec_env(env_id, cfg.n_envs, env_kwargs, cfg.vectorization)
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        seed_all(cfg.seed)
        head, model = _make_model(obs_space, act_space, cfg)
        device = resolve_device(cfg.device)
        flat, flat_grad = flatten_parameters(model.to(device))
        agent = _Agent(cfg, model, OPTIMIZERS[cfg.optimizer](model.parameters(), cfg),
                       np.random.default_rng(cfg.seed))
        if resume is not None:
            agent.load_state_dict(resume)
        if dp is not None:
            agent.rng = onpolicy.rank_rng(cfg.seed, dp, agent.updates) or agent.rng
            dp.broadcast_(flat)
        buf = RolloutBuffer(cfg.n_steps, cfg.n_envs, obs_dim(obs_space), head)
        c = Collector(envs, head, buf, agent.rng, None, None, 0.0, EpisodeStats(cfg.n_envs))

        def update(env_steps: int) -> dict[str, float]:
            roll = buf.t if device.type == "cpu" else {k: v.to(device) for k, v in buf.t.items()}
            return a2c_update(model, head, agent.opt, flat_grad, roll, cfg, env_steps, dp)

        def evaluate() -> float:
            policy = onpolicy.greedy_policy(head, model, None, obs_space, 0.0)
            return evaluate_in_env(env_id, policy, hooks.eval_episodes,
                                   cfg.seed + EVAL_SEED_OFFSET, env_kwargs).mean_return

        run = onpolicy.OnPolicyRun(c, model, update, evaluate, agent.state_dict,
                                   log_every=cfg.log_every)
        saved = onpolicy.start(run, batch_seed(cfg.seed, agent.updates), cfg.n_envs, dp,
                               resume, hooks.notice)
        return onpolicy.loop(run, agent, cfg.total_steps, hooks, dp, saved)
    finally:
        envs.close()


@dataclass
class _Agent:
    """Everything an A2C run carries from update to update."""

    cfg: Config
    model: ActorCritic
    opt: torch.optim.Optimizer
    rng: np.random.Generator  # action sampling
    env_steps: int = 0
    updates: int = 0

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of everything needed to resume (and for :func:`load_policy`)."""
        return copy.deepcopy({
            "algo": "a2c", "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "env_steps": self.env_steps, "updates": self.updates, "rng": rng_state(),
            "np_rng": self.rng.bit_generator.state, "config": asdict(self.cfg),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A copy: torch's Optimizer.load_state_dict keeps the given tensors and updates them.
        state = copy.deepcopy(state)
        if state.get("algo") != "a2c":
            raise PavlovError(f"cannot resume A2C from a {state.get('algo')!r} state")
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise PavlovError(f"resume state does not fit the config/env: {e}") from None
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
        set_rng_state(state["rng"])
        self.rng.bit_generator.state = state["np_rng"]


def load_policy(state: dict[str, Any], cfg: Config, env: gym.Env) -> Callable[[Any, int], Any]:
    """Deterministic ``policy(obs, t)`` (argmax / Gaussian mean) from a trained state."""
    head, model = _make_model(env.observation_space, env.action_space, cfg)
    model.load_state_dict(state["model"])
    return onpolicy.greedy_policy(head, model, None, env.observation_space, 0.0)
