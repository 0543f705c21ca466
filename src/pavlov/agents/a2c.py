"""A2C: synchronous advantage actor-critic.

Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning", ICML,
arXiv:1602.01783 (A3C, Algorithm S3), run synchronously over ``n_envs`` vectorized envs as in
OpenAI Baselines / Stable-Baselines3. Each update:

1. **Rollout** of ``n_steps`` steps in each of ``n_envs`` envs (SAME_STEP autoreset, so the
   batch never mixes transitions across an episode boundary).
2. **Advantages** by GAE(lambda) (:func:`pavlov.math.gae`; ``gae_lambda = 1`` is the n-step
   return bootstrapped at the rollout end, the A3C estimator) or by n-step targets
   (:func:`pavlov.math.nstep_targets`). Terminated steps do not bootstrap; truncated steps (time
   limits) bootstrap from ``V(final_obs)`` (Pardo et al. 2018, arXiv:1712.00378).
3. **One gradient step** on ``policy + vf_coef * MSE(V, target) - ent_coef * entropy``
   (RMSprop or Adam), gradients clipped to ``max_grad_norm``.

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

from pavlov.agents.actor import PG_ACTION_SPACES, Actor, greedy_policy
from pavlov.agents.common import (
    ACTIVATIONS,
    EVAL_SEED_OFFSET,
    EpisodeStats,
    Hooks,
    TrainClock,
    TrainOutput,
    batch_seed,
    check_choice,
    check_count,
    check_finite,
    check_hidden,
    encode_obs,
    evaluate_in_env,
    final_observations,
    make_vec_env,
    mlp,
    obs_dim,
    require_action_space,
    rng_state,
    seed_all,
    set_rng_state,
)
from pavlov.errors import ConfigError, PavlovError, check_positive, check_range
from pavlov.math import gae, masked_whiten, nstep_targets, reinforce_loss

ACTION_SPACES = PG_ACTION_SPACES
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
    normalize_advantages: bool = False
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
    seed: int = 0
    """Seeds torch/numpy/python and the env resets."""

    def __post_init__(self) -> None:
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


class ActorCritic(nn.Module):
    """``body`` (identity, or a shared MLP trunk) feeding an :class:`Actor` and a value head."""

    def __init__(self, obs_space: gym.Space, act_space: gym.Space, cfg: Config) -> None:
        super().__init__()
        d, hidden = obs_dim(obs_space), cfg.hidden_sizes
        if cfg.shared_network:
            self.body: nn.Module = nn.Sequential(
                mlp([d, *hidden], cfg.activation, out_gain=math.sqrt(2)),
                ACTIVATIONS[cfg.activation](),
            )
            d, hidden = hidden[-1], []
        else:
            self.body = nn.Identity()
        self.actor = Actor(d, act_space, hidden, cfg.activation, cfg.log_std_init)
        self.critic = mlp([d, *hidden, 1], cfg.activation, out_gain=1.0)

    def forward(self, x: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, obs_dim), (B,) | (B, A) -> (B,) log pi(a|s), (B,) entropies, (B,) values."""
        h = self.body(x)
        return *self.actor.log_prob_entropy(h, actions), self.critic(h).squeeze(-1)

    def value(self, x: Tensor) -> Tensor:
        return self.critic(self.body(x)).squeeze(-1)


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


# -------------------------------------------------------------------------- rollout and update


class Rollout:
    """Steps the vector env with the current policy, ``n_steps`` at a time."""

    def __init__(self, envs: gym.vector.VectorEnv, model: ActorCritic, seed: int,
                 rng: np.random.Generator) -> None:
        self.envs, self.model, self.rng = envs, model, rng
        self.obs_space = envs.single_observation_space
        self.obs, _ = envs.reset(seed=seed)
        self.stats = EpisodeStats(envs.num_envs)

    @torch.no_grad()
    def collect(self, n_steps: int) -> tuple[dict[str, Tensor], list[tuple[float, int]]]:
        """-> ``(T, N)`` time-major tensors (``obs``: ``(T, N, obs_dim)``), finished episodes."""
        cols: dict[str, list[Tensor]] = {k: [] for k in (
            "obs", "actions", "rewards", "terminated", "truncated", "values", "final_values")}
        episodes: list[tuple[float, int]] = []
        for _ in range(n_steps):
            x = encode_obs(self.obs_space, self.obs)  # (N, obs_dim)
            h = self.model.body(x)
            v = self.model.critic(h).squeeze(-1)  # (N,)
            a = self.model.actor.sample(h, self.rng)  # (N,) | (N, A)
            self.obs, r, term, trunc, info = self.envs.step(self.model.actor.head.to_env(a))
            v_final = torch.zeros_like(v)
            if trunc.any():  # bootstrap time-limit cuts from the real last observation
                final = encode_obs(self.obs_space, final_observations(self.obs, info))
                v_final = self.model.value(final)
            for k, val in zip(cols, (x, torch.as_tensor(a), torch.as_tensor(r, dtype=torch.float32),
                                     torch.as_tensor(term), torch.as_tensor(trunc), v,
                                     v_final), strict=True):
                cols[k].append(val)
            episodes += self.stats.step(r, term | trunc)
        roll = {k: torch.stack(v) for k, v in cols.items()}
        roll["last_values"] = self.model.value(encode_obs(self.obs_space, self.obs))  # (N,)
        return roll, episodes


def a2c_update(model: ActorCritic, opt: torch.optim.Optimizer, roll: dict[str, Tensor],
               cfg: Config, step: int) -> dict[str, float]:
    """One gradient step on a rollout -> metrics."""
    adv, targets = ADVANTAGES[cfg.advantage](roll, cfg)  # (T, N) each
    adv, targets = adv.flatten(), targets.flatten()
    if cfg.normalize_advantages:
        adv = masked_whiten(adv, None)
    x, actions = roll["obs"].flatten(0, 1), roll["actions"].flatten(0, 1)
    logp, ent, values = model(x, actions)  # (B,) each
    pg_loss, _ = reinforce_loss(logp, adv)
    v_loss = nn.functional.mse_loss(values, targets)
    ent = ent.mean()
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
    check_finite("A2C loss", loss, step)
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    return {"losses/policy": pg_loss.item(), "losses/value": v_loss.item(),
            "losses/entropy": ent.item()}


# ------------------------------------------------------------------------------------- train


def train(
    env_id: str,
    cfg: Config,
    *,
    env_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainOutput:
    """Train A2C on ``env_id`` until ``cfg.total_steps`` env steps (or ``hooks.stop``)."""
    hooks = hooks or Hooks()
    envs = make_vec_env(env_id, cfg.n_envs, env_kwargs, cfg.vectorization)
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        require_action_space(act_space, "A2C", PG_ACTION_SPACES)
        seed_all(cfg.seed)
        model = ActorCritic(obs_space, act_space, cfg)
        agent = _Agent(cfg, model, OPTIMIZERS[cfg.optimizer](model.parameters(), cfg),
                       np.random.default_rng(cfg.seed))
        if resume is not None:
            agent.load_state_dict(resume)
        clock = TrainClock(hooks, agent.env_steps)
        rollout = Rollout(envs, model, batch_seed(cfg.seed, agent.updates), agent.rng)
        next_log = clock.steps + cfg.log_every

        def evaluate() -> float:
            policy = greedy_policy(model.actor, obs_space, model.body)
            return evaluate_in_env(env_id, policy, hooks.eval_episodes,
                                   cfg.seed + EVAL_SEED_OFFSET, env_kwargs).mean_return

        while agent.env_steps < cfg.total_steps:
            roll, episodes = rollout.collect(cfg.n_steps)
            clock.advance(cfg.n_steps * cfg.n_envs)
            metrics = a2c_update(model, agent.opt, roll, cfg, clock.steps)
            agent.env_steps, agent.updates = clock.steps, agent.updates + 1
            for ret, length in episodes:
                hooks.log(clock.steps, {"charts/episode_return": ret,
                                        "charts/episode_length": float(length)})
            if clock.steps >= next_log:
                hooks.log(clock.steps, {**metrics, "charts/SPS": clock.sps()})
                next_log = clock.steps + cfg.log_every
            if clock.periodic(evaluate, agent.state_dict):
                break
        return clock.output(agent.state_dict())
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
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
        set_rng_state(state["rng"])
        self.rng.bit_generator.state = state["np_rng"]


def load_policy(state: dict[str, Any], cfg: Config, env: gym.Env) -> Callable[[Any, int], Any]:
    """Deterministic ``policy(obs, t)`` (argmax / Gaussian mean) from a trained state."""
    model = ActorCritic(env.observation_space, env.action_space, cfg)
    model.load_state_dict(state["model"])
    return greedy_policy(model.actor, env.observation_space, model.body)
