"""REINFORCE: Monte-Carlo policy gradient on batches of whole episodes (Williams 1992).

Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning", Machine Learning 8. Each update:

1. **Collect** exactly ``episodes_per_update`` whole episodes with the current (stochastic)
   policy from ``n_envs`` vectorized envs (reset with a per-update seed). Envs start new
   episodes only while fewer than ``episodes_per_update`` have been started; an env whose last
   allowed episode ended idles until the others finish, and its idle steps are discarded (they
   still count as env steps: they were taken). Stopping at the first ``E`` *finished* episodes
   instead would favour short episodes and bias the gradient.
2. **Reward-to-go** ``G_t`` (:func:`pavlov.math.reward_to_go`). Truncated episodes (time
   limits): with a baseline the last reward of a truncated episode gets ``gamma * V(s_final)``
   added, so the return continues past the cut (Pardo et al. 2018, arXiv:1712.00378); without
   a baseline there is nothing to bootstrap from and a truncation is treated as the episode end.
3. **Policy step** on ``-mean(log pi(a_t|s_t) * A_t)`` (:func:`pavlov.math.reinforce_loss`) with
   ``A_t = G_t - V(s_t)`` if ``baseline`` (else ``G_t``), optionally whitened, minus
   ``ent_coef`` times the mean entropy.
4. **Baseline step(s)**: ``value_epochs`` full-batch Adam steps on ``MSE(V(s_t), G_t)``.

Discrete actions use a Categorical policy, Box actions a diagonal Gaussian with a learned
state-independent log std (samples are clipped to the bounds only when sent to the env).

The policy and the baseline are the actor and critic of the shared
:class:`~pavlov.agents.distributions.ActorCritic` (separate MLPs, two Adam optimizers).
"""

from __future__ import annotations

import copy
import dataclasses
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
    TrainClock,
    TrainOutput,
    batch_seed,
    check_device,
    check_hidden,
    encode_obs,
    evaluate_in_env,
    final_observations,
    make_vec_env,
    obs_dim,
    require_action_space,
    resolve_device,
    rng_state,
    seed_all,
    set_rng_state,
)
from pavlov.agents.distributions import HEADS, ActorCritic, NumpyActorCritic
from pavlov.devices import flush_denormals
from pavlov.errors import (
    PavlovError,
    check_choice,
    check_count,
    check_finite,
    check_positive,
    check_range,
)
from pavlov.math import masked_whiten, reinforce_loss, reward_to_go

ACTION_SPACES = tuple(HEADS)  # Discrete and Box: the action spaces the heads cover
"""Action spaces this agent supports (checked before a run directory is made)."""

# ------------------------------------------------------------------------------------ config


@dataclass
class Config:
    """Hyperparameters of REINFORCE (defaults: the CartPole-v1 setting of the slow tests)."""

    total_steps: int = 300_000
    """Env steps to train for (> 0); the last batch may overshoot by less than one batch."""
    n_envs: int = 8
    """Parallel envs collecting episodes (> 0)."""
    episodes_per_update: int = 16
    """Whole episodes per policy update (> 0)."""
    gamma: float = 0.99
    """Discount in [0, 1] of the reward-to-go."""
    learning_rate: float = 3e-3
    """Adam step size of the policy (> 0)."""
    baseline: bool = True
    """Learn a state-value baseline V(s) and use ``G - V`` as the advantage."""
    value_learning_rate: float = 1e-2
    """Adam step size of the baseline (> 0)."""
    value_epochs: int = 5
    """Full-batch gradient steps of the baseline per update (> 0)."""
    normalize_advantage: bool = True
    """Whiten the advantages of each batch (zero mean, unit variance)."""
    ent_coef: float = 0.0
    """Weight (>= 0) of the entropy bonus in the policy loss."""
    max_grad_norm: float = 1.0
    """Clip each network's gradient to this global norm (> 0; ``inf`` disables)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the policy and of the baseline."""
    activation: str = "tanh"
    """Hidden activation: ``"tanh"`` or ``"relu"``."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions only)."""
    vectorization: str = "sync"
    """``"sync"`` or ``"async"`` (subprocess) vector env."""
    device: str = "cpu"
    """Where networks and updates run: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"``
    (cuda when torch sees a GPU); envs always step on the CPU."""
    seed: int = 0
    """Seeds torch/numpy/python and the per-batch env resets."""

    def __post_init__(self) -> None:
        check_device("device", self.device)
        for name in ("total_steps", "n_envs", "episodes_per_update", "value_epochs"):
            check_count(name, getattr(self, name))
        for name in ("learning_rate", "value_learning_rate", "max_grad_norm"):
            check_positive(name, getattr(self, name))
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("ent_coef", self.ent_coef, 0.0, math.inf)
        self.hidden_sizes = check_hidden("hidden_sizes", self.hidden_sizes)
        check_choice("activation", self.activation, ("tanh", "relu"))
        check_choice("vectorization", self.vectorization, ("sync", "async"))


# ------------------------------------------------------------------------- rollout and update


@dataclass
class EpisodeBatch:
    """Time-major steps of one batch; ``valid`` marks the steps of its whole episodes."""

    obs: Tensor  # (T, N, obs_dim)
    actions: Tensor  # (T, N) long or (T, N, A) float
    rewards: Tensor  # (T, N)
    terminated: Tensor  # (T, N) bool
    truncated: Tensor  # (T, N) bool
    final_obs: Tensor  # (T, N, obs_dim): the real last observation where an episode ended
    valid: Tensor  # (T, N) bool
    episodes: list[tuple[float, int]]  # (return, length) of each episode of the batch


def collect_episodes(
    envs: gym.vector.VectorEnv, head: Any, model: ActorCritic, quota: int, seed: int,
    rng: np.random.Generator,
) -> EpisodeBatch:
    """Run the policy of ``model`` until ``quota`` episodes started at the reset have all ended.

    Monte Carlo returns need whole episodes, so this collector runs a variable number of steps
    (the fixed ``(T, N)`` buffer of :mod:`pavlov.agents.rollout` would cut them); it acts with
    the same NumPy copy of the actor-critic and the same heads.
    """
    obs_space, n = envs.single_observation_space, envs.num_envs
    net, k = NumpyActorCritic(model), head.n_outputs
    obs, _ = envs.reset(seed=seed)
    active = np.arange(n) < quota
    started = int(active.sum())
    stats, episodes, rows = EpisodeStats(n), [], []
    while active.any():
        x = encode_obs(obs_space, obs)  # (N, obs_dim)
        a = head.sample_np(net(x.numpy())[:, :k], net.log_std, rng)[0]  # (N,) | (N, A)
        obs, r, term, trunc, info = envs.step(head.to_env(a))
        done = term | trunc
        final = encode_obs(obs_space, final_observations(obs, info))
        rows.append((x, torch.as_tensor(a), torch.as_tensor(r, dtype=torch.float32),
                     torch.as_tensor(term), torch.as_tensor(trunc), final,
                     torch.as_tensor(active.copy())))
        finished = stats.step(r, done)
        for i, ep in zip(np.flatnonzero(done), finished, strict=True):
            if active[i]:
                episodes.append(ep)
                active[i] = started < quota
                started += int(active[i])
    cols = [torch.stack(c) for c in zip(*rows, strict=True)]
    return EpisodeBatch(*cols, episodes=episodes)


def _to(batch: EpisodeBatch, device: torch.device) -> EpisodeBatch:
    """The batch's tensors on ``device`` (collection happens on the CPU)."""
    if device.type == "cpu":
        return batch
    return dataclasses.replace(batch, **{
        f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), Tensor)})


def returns_to_go(batch: EpisodeBatch, critic: Callable[[Tensor], Tensor] | None,
                  gamma: float) -> Tensor:
    """(T, N) reward-to-go; truncated episodes bootstrap ``gamma * V(s_final)`` if a critic
    is given (Pardo et al. 2018), else end there."""
    rewards = batch.rewards
    if critic is not None:
        with torch.no_grad():
            v_final = critic(batch.final_obs).squeeze(-1)  # (T, N)
        boot = batch.truncated & ~batch.terminated
        rewards = rewards + gamma * torch.where(boot, v_final, torch.zeros_like(v_final))
    return reward_to_go(rewards, batch.terminated | batch.truncated, gamma)


def reinforce_update(
    model: ActorCritic, head: Any, opts: dict[str, torch.optim.Optimizer], batch: EpisodeBatch,
    cfg: Config, step: int,
) -> dict[str, float]:
    """One policy step (and ``value_epochs`` baseline steps) on a batch -> metrics."""
    critic = model.v if cfg.baseline else None
    valid = batch.valid
    g = returns_to_go(batch, critic, cfg.gamma)[valid]  # (B,)
    x, actions = batch.obs[valid], batch.actions[valid]  # (B, obs_dim), (B,) | (B, A)
    adv = g
    if critic is not None:
        with torch.no_grad():
            adv = g - critic(x).squeeze(-1)
    if cfg.normalize_advantage:
        adv = masked_whiten(adv, None)
    out = model.pi(x)  # (B, k)
    logp, ent = head.log_prob(out, model.log_std, actions), head.entropy(out, model.log_std)
    pg_loss, _ = reinforce_loss(logp, adv)
    ent = ent.mean()
    loss = pg_loss - cfg.ent_coef * ent
    _step(opts["actor"], loss, cfg.max_grad_norm, "policy loss", step)
    metrics = {"losses/policy": pg_loss.item(), "losses/entropy": ent.item()}
    for _ in range(cfg.value_epochs if critic is not None else 0):
        v_loss = nn.functional.mse_loss(critic(x).squeeze(-1), g)
        _step(opts["critic"], v_loss, cfg.max_grad_norm, "value loss", step)
        metrics["losses/value"] = v_loss.item()
    return metrics


def _step(opt: torch.optim.Optimizer, loss: Tensor, max_norm: float, name: str, step: int
          ) -> None:
    check_finite(name, loss, step, unit="env step")
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], max_norm)
    opt.step()


# ------------------------------------------------------------------------------------- train


def _require_time_limit(env_id: str, env_kwargs: dict[str, Any] | None) -> None:
    from pavlov.envs.factory import make_env

    env = make_env(env_id, env_kwargs)
    limit = env.spec.max_episode_steps if env.spec is not None else None
    env.close()
    if limit is None:
        raise PavlovError(f"REINFORCE needs episodes that end; {env_id} has no time limit "
                          "(register it with max_episode_steps)")


@flush_denormals()
def train(
    env_id: str,
    cfg: Config,
    *,
    env_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainOutput:
    """Train REINFORCE on ``env_id`` until ``cfg.total_steps`` env steps (or ``hooks.stop``).

    ``resume``: a state from a checkpoint or a previous ``TrainOutput``; training continues
    exactly as if uninterrupted (every batch starts from a reset seeded by its index).
    """
    hooks = hooks or Hooks()
    envs = make_vec_env(env_id, cfg.n_envs, env_kwargs, cfg.vectorization)
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        _require_time_limit(env_id, env_kwargs)
        seed_all(cfg.seed)
        agent = build_agent(cfg, obs_space, act_space)
        if resume is not None:
            agent.load_state_dict(resume)
        clock = TrainClock(hooks, agent.env_steps)

        def evaluate() -> float:
            policy = onpolicy.greedy_policy(agent.head, agent.model, None, obs_space, 0.0)
            return evaluate_in_env(env_id, policy, hooks.eval_episodes,
                                   cfg.seed + EVAL_SEED_OFFSET, env_kwargs).mean_return

        while agent.env_steps < cfg.total_steps:
            seed = batch_seed(cfg.seed, agent.updates)
            batch = collect_episodes(envs, agent.head, agent.model, cfg.episodes_per_update,
                                     seed, agent.rng)
            clock.advance(batch.rewards.numel())
            batch = _to(batch, next(agent.model.parameters()).device)
            metrics = reinforce_update(agent.model, agent.head, agent.opts, batch, cfg,
                                       clock.steps)
            agent.env_steps, agent.updates = clock.steps, agent.updates + 1
            for ret, length in batch.episodes:
                hooks.log(clock.steps, {"charts/episode_return": ret,
                                        "charts/episode_length": float(length)})
            hooks.log(clock.steps, {**metrics, "charts/SPS": clock.sps()})
            if clock.periodic(evaluate, agent.state_dict):
                break
        return clock.output(agent.state_dict())
    finally:
        envs.close()


@dataclass
class Agent:
    """Everything a REINFORCE run carries from update to update."""

    cfg: Config
    head: Any
    model: ActorCritic  # the policy ``pi`` (+ ``log_std``) and the baseline ``v``
    opts: dict[str, torch.optim.Optimizer]  # "actor", and "critic" with a baseline
    rng: np.random.Generator  # action sampling
    env_steps: int = 0
    updates: int = 0

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of everything needed to resume (and for :func:`load_policy`)."""
        return copy.deepcopy({
            "algo": "reinforce",
            "model": self.model.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.opts.items()},
            "env_steps": self.env_steps,
            "updates": self.updates,
            "rng": rng_state(),
            "np_rng": self.rng.bit_generator.state,
            "config": asdict(self.cfg),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A copy: torch's Optimizer.load_state_dict keeps the given tensors and updates them.
        state = copy.deepcopy(state)
        if state.get("algo") != "reinforce":
            raise PavlovError(f"cannot resume REINFORCE from a {state.get('algo')!r} state")
        if set(state["optimizers"]) != set(self.opts):
            raise PavlovError("resume state and config disagree on `baseline`")
        try:
            self.model.load_state_dict(state["model"])
            for k, opt in self.opts.items():
                opt.load_state_dict(state["optimizers"][k])
        except (RuntimeError, ValueError, KeyError) as e:
            raise PavlovError(f"resume state does not fit the config/env: {e}") from None
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
        set_rng_state(state["rng"])
        self.rng.bit_generator.state = state["np_rng"]


def _make_model(cfg: Config, obs_space: gym.Space, act_space: gym.Space
                ) -> tuple[Any, ActorCritic]:
    require_action_space(act_space, "REINFORCE", ACTION_SPACES)
    head = HEADS[type(act_space)](act_space)
    log_std_init = cfg.log_std_init if isinstance(act_space, gym.spaces.Box) else None
    return head, ActorCritic(obs_dim(obs_space), head.n_outputs, cfg.hidden_sizes,
                             cfg.activation, False, log_std_init)


def build_agent(cfg: Config, obs_space: gym.Space, act_space: gym.Space) -> Agent:
    """Fresh actor-critic, Adam optimizers and sampling RNG (call after ``seed_all(cfg.seed)``);
    the baseline ``v`` is trained (and used) only with ``baseline``."""
    head, model = _make_model(cfg, obs_space, act_space)
    model.to(resolve_device(cfg.device))
    actor = [*model.pi.parameters(), *([] if model.log_std is None else [model.log_std])]
    opts = {"actor": torch.optim.Adam(actor, lr=cfg.learning_rate)}
    if cfg.baseline:
        opts["critic"] = torch.optim.Adam(model.v.parameters(), lr=cfg.value_learning_rate)
    return Agent(cfg, head, model, opts, np.random.default_rng(cfg.seed))


def load_policy(state: dict[str, Any], cfg: Config, env: gym.Env) -> Callable[[Any, int], Any]:
    """Deterministic ``policy(obs, t)`` (argmax / Gaussian mean) from a trained state."""
    head, model = _make_model(cfg, env.observation_space, env.action_space)
    model.load_state_dict(state["model"])
    return onpolicy.greedy_policy(head, model, None, env.observation_space, 0.0)
