"""Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347) on Gymnasium envs.

Read top to bottom: :class:`Config`; :func:`advantages_and_returns` (GAE over the rollout);
the two gradient backends (:class:`AutogradGrad` here, the closed-form
:class:`~pavlov.agents.ppo_fast.ClosedFormGrad` for separate actor/critic MLPs on the CPU) and the
one driver over them, :func:`ppo_update` (epochs of shuffled minibatches, clipped surrogate from
:mod:`pavlov.math`, KL early stop, metrics); :func:`train`, which hands PPO's pieces to the
on-policy loop of :mod:`pavlov.agents.onpolicy` (the rollout buffer, collector and actor-critic
are shared with A2C; the loop runs data-parallel as DD-PPO); and :func:`load_policy`.
Choices follow Stable-Baselines3 / CleanRL (Huang et al. 2022, "The 37 Implementation Details
of PPO"): orthogonal init, Adam eps 1e-5, per-minibatch advantage
normalization, joint gradient-norm clipping, KL early stop at ``1.5 * target_kl`` (SB3),
optional running observation / reward normalization (SB3 ``VecNormalize``).

Time limits are not terminations (Pardo et al. 2018): the envs run in SAME_STEP autoreset mode
and a truncated step bootstraps from ``V(final_obs)``; see :func:`pavlov.math.gae`.

Resume is exact: a state holds the model, the optimizer, normalizer statistics, counters, RNG
states, the config and the on-policy loop's state with the pickled envs
(:func:`pavlov.agents.onpolicy.start`), so a resumed run continues bit for bit. Where envs
cannot be pickled (async vector envs, Box2D) it resets them with a seed derived from
``(cfg.seed, env_steps)`` and says so: same schedule and weights, other trajectories.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from pavlov.agents import onpolicy
from pavlov.agents.common import (
    EVAL_SEED_OFFSET,
    EpisodeStats,
    Hooks,
    TrainOutput,
    check_device,
    evaluate_in_env,
    make_vec_env,
    obs_dim,
    require_action_space,
    resolve_device,
    rng_state,
    seed_all,
    set_rng_state,
)
from pavlov.agents.distributions import HEADS, NP_ACTIVATIONS, ActorCritic
from pavlov.agents.fastmlp import flatten_parameters
from pavlov.agents.normalize import RewardScaler, RunningMeanStd
from pavlov.agents.ppo_fast import ClosedFormGrad, _whiten_minibatches, supported
from pavlov.agents.rollout import Collector, RolloutBuffer, collect_rollout
from pavlov.devices import flush_denormals
from pavlov.errors import (
    ConfigError,
    PavlovError,
    check_count,
    check_finite,
    check_positive,
    check_range,
)
from pavlov.math import clipped_value_loss, explained_variance, gae, ppo_clip_loss
from pavlov.run import distributed
from pavlov.run.distributed import DataParallel

ACTION_SPACES = tuple(HEADS)  # Discrete and Box: the action spaces the heads cover
"""Action spaces this agent supports (checked before a run directory is made)."""

__all__ = ["AutogradGrad", "Config", "advantages_and_returns", "collect_rollout", "load_policy",
           "make_backend", "ppo_update", "train"]


@dataclass
class Config:
    """PPO hyperparameters. Defaults are SB3's where they apply, with 8 envs."""

    total_steps: int = 100_000
    """Env steps to train for, counted over all envs (whole rollouts: may overshoot by less
    than ``n_steps * n_envs``); also the horizon of the lr / clip-range annealing."""
    n_envs: int = 8
    """Parallel environments."""
    vectorization: str = "sync"
    """``"sync"`` (one process; best for cheap envs) or ``"async"`` (a process per env)."""
    n_steps: int = 256
    """Steps per env per rollout; a rollout holds ``n_steps * n_envs`` transitions."""
    batch_size: int = 64
    """Minibatch size, at most ``n_steps * n_envs``."""
    n_epochs: int = 10
    """Passes over each rollout."""
    learning_rate: float = 3e-4
    """Adam step size (initial value when annealed)."""
    anneal_lr: bool = False
    """Anneal the learning rate linearly to 0 over ``total_steps`` (rl-zoo ``lin_<lr>``)."""
    gamma: float = 0.99
    """Discount factor in [0, 1]."""
    gae_lambda: float = 0.95
    """GAE trace decay lambda in [0, 1]."""
    clip_range: float = 0.2
    """Clip range eps of the surrogate objective (initial value when annealed)."""
    anneal_clip_range: bool = False
    """Anneal the clip range linearly to 0 over ``total_steps`` (rl-zoo ``lin_<eps>``)."""
    clip_range_vf: float | None = None
    """Value clip range in return units (PPO2-style value clipping); None: no value clip."""
    normalize_advantage: bool = True
    """Whiten advantages per minibatch (SB3, CleanRL)."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Weight of the value loss ``0.5 * E[(V - R)^2]`` (CleanRL's convention; SB3's loss has no
    1/2, so SB3's ``vf_coef=0.5`` is ``vf_coef=1.0`` here)."""
    max_grad_norm: float | None = 0.5
    """Clip the global gradient norm of all parameters to this; None: no clipping."""
    target_kl: float | None = None
    """Stop an update's epochs once the approximate KL exceeds ``1.5 * target_kl``; None: off."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the actor and of the critic (or of the shared trunk)."""
    activation: str = "tanh"
    """Hidden activation, ``"tanh"`` or ``"relu"``."""
    shared_network: bool = False
    """One trunk with policy and value heads instead of separate actor and critic MLPs."""
    log_std_init: float = 0.0
    """Initial log-std of the Gaussian policy (Box action spaces)."""
    normalize_obs: bool = False
    """Normalize observations with running mean/std (saved with the model, used by eval)."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    obs_clip: float = 10.0
    """Normalized observations are clipped to [-obs_clip, obs_clip]."""
    reward_clip: float = 10.0
    """Scaled rewards are clipped to [-reward_clip, reward_clip]."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    device: str = "cpu"
    """Where networks and updates run: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"``
    (cuda when torch sees a GPU); envs always step on the CPU."""
    seed: int = 0
    """Seed for torch, NumPy, Python and the envs."""
    fast_update: bool = True
    """Run the update through :mod:`pavlov.agents.ppo_fast` (closed-form loss gradients and a
    hand-written backward on flat parameters: the same numbers as autograd to float rounding,
    ~3x faster per minibatch on 64x64 nets; for a categorical policy on an AVX2 CPU one C call,
    :mod:`pavlov.agents.ppo_native`, ~1.5-2x faster again) where it applies: separate actor
    and critic MLPs.
    ``False``, or a shared network, uses autograd."""
    preempt_threshold: float | None = None
    """DD-PPO only (``--nproc``, torchrun): once this fraction of the workers finished a
    rollout, the others stop collecting early (Wijmans et al. 2020 use 0.6); None: every
    worker collects ``n_steps``."""
    torch_threads: int | None = 1
    """torch intra-op threads while training (restored after): 1 is fastest for small MLPs,
    and extra threads spin-wait badly on a busy machine; None keeps torch's setting."""

    def __post_init__(self) -> None:
        check_device("device", self.device)
        for name in ("total_steps", "n_envs", "n_steps", "n_epochs", "batch_size"):
            check_count(name, getattr(self, name), 1)
        check_count("seed", self.seed, 0)
        if self.preempt_threshold is not None:
            check_range("preempt_threshold", self.preempt_threshold, 1e-9, 1.0)
        if self.torch_threads is not None:
            check_count("torch_threads", self.torch_threads, 1)
        rollout = self.n_steps * self.n_envs
        if self.batch_size > rollout:
            raise ConfigError(
                f"batch_size must be in [1, n_steps * n_envs = {rollout}], got {self.batch_size}"
            )
        for name in ("learning_rate", "clip_range", "obs_clip", "reward_clip", "adam_eps"):
            check_positive(name, getattr(self, name))
        for name in ("clip_range_vf", "max_grad_norm", "target_kl"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_range("ent_coef", self.ent_coef, 0.0, math.inf)
        check_range("vf_coef", self.vf_coef, 0.0, math.inf)
        check_range("log_std_init", self.log_std_init, -20.0, 20.0)
        if self.vectorization not in ("sync", "async"):
            raise ConfigError(
                f"vectorization must be 'sync' or 'async', got {self.vectorization!r}"
            )
        if self.activation not in NP_ACTIVATIONS:  # those the NumPy rollout net knows
            raise ConfigError(
                f"activation must be one of {sorted(NP_ACTIVATIONS)}, got {self.activation!r}"
            )
        sizes = self.hidden_sizes
        if not isinstance(sizes, list | tuple) or not sizes:
            raise ConfigError(f"hidden_sizes must be a non-empty list of widths, got {sizes!r}")
        for i, width in enumerate(sizes):
            check_count(f"hidden_sizes[{i}]", width, 1)
        self.hidden_sizes = [int(w) for w in sizes]


# ----------------------------------------------------------------------------------- rollout


def advantages_and_returns(buf: RolloutBuffer, cfg: Config, steps: int | None = None
                           ) -> dict[str, torch.Tensor]:
    """GAE over the first ``steps`` rows of the rollout (all if None) -> the flat ``(B,)`` /
    ``(B, ...)`` tensors the update reads."""
    t = buf.t
    if steps is not None and steps < len(t["rewards"]):
        t = {k: v if k == "last_values" else v[:steps] for k, v in t.items()}
    adv, ret = gae(t["rewards"], t["values"], t["terminated"], t["truncated"], t["last_values"],
                   cfg.gamma, cfg.gae_lambda, final_values=t["final_values"])
    n = adv.numel()
    return {
        "obs": t["obs"].reshape(n, -1), "actions": t["actions"].reshape(n, *t["actions"].shape[2:]),
        "logp": t["logp"].reshape(n), "values": t["values"].reshape(n),
        "advantages": adv.reshape(n), "returns": ret.reshape(n),
    }


# ------------------------------------------------------------------------------------ update


def _minibatch_loss(
    model: ActorCritic, head: Any, mb: dict[str, torch.Tensor], cfg: Config, clip_eps: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO loss of a minibatch whose ``advantages`` the driver already whitened."""
    out, values = model(mb["obs"])
    new_logp = head.log_prob(out, model.log_std, mb["actions"])
    # Schulman 2017, eq. 7
    pg_loss, pm = ppo_clip_loss(new_logp, mb["logp"], mb["advantages"], clip_eps)
    v_loss, vm = clipped_value_loss(values, mb["values"], mb["returns"], cfg.clip_range_vf)
    ent = head.entropy(out, model.log_std).mean()
    loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss  # Schulman 2017, eq. 9
    metrics = {"losses/policy": pm["policy_loss"], "losses/value": vm["value_loss"],
               "losses/entropy": ent.detach(), "losses/approx_kl": pm["approx_kl"],
               "losses/clip_fraction": pm["clip_fraction"]}
    return loss, metrics


class AutogradGrad:
    """The autograd gradient backend of :func:`ppo_update` (any model, shared trunks included).

    Parameters and their ``.grad`` are re-pointed into flat vectors (as DDP's gradient bucket
    views), so a data-parallel run all-reduces one buffer.
    """

    def __init__(self, model: ActorCritic, head: Any, opt: torch.optim.Optimizer) -> None:
        self.model, self.head, self.opt = model, head, opt
        self.flat, self.flat_grad = flatten_parameters(model)

    def after_load(self) -> None:
        return None

    def pack(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def minibatch(self, packed: dict[str, torch.Tensor], idx: torch.Tensor | None,
                  adv: torch.Tensor) -> dict[str, torch.Tensor]:
        mb = packed if idx is None else {k: v[idx] for k, v in packed.items()}
        return {**mb, "advantages": adv}

    def loss(self, mb: dict[str, torch.Tensor], cfg: Config, clip_eps: float
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = _minibatch_loss(self.model, self.head, mb, cfg, clip_eps)
        return loss, metrics["losses/approx_kl"], metrics

    def step(self, loss: torch.Tensor, max_grad_norm: float | None,
             dp: DataParallel | None = None) -> None:
        self.flat_grad.zero_()  # not zero_grad(set_to_none=True): .grad must stay a view
        loss.backward()
        if dp is not None:
            dp.average_(self.flat_grad)
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.opt.step()

    def metrics(self, records: list[dict[str, torch.Tensor]], clip_eps: float
                ) -> dict[str, torch.Tensor]:
        return {k: torch.stack([m[k] for m in records]).mean() for k in (records or [{}])[0]}


GradientBackend = AutogradGrad | ClosedFormGrad
"""What :func:`ppo_update` drives: ``pack``/``minibatch`` the data, ``loss`` -> ``(loss,
approx_kl, record)`` with the gradient ready to take, ``step`` (average over the ranks, clip,
Adam) and ``metrics`` over the records of the steps taken."""


def make_backend(model: ActorCritic, head: Any, opt: torch.optim.Optimizer, closed_form: bool
                 ) -> GradientBackend:
    """The closed-form backend where it applies and is wanted, else autograd."""
    if closed_form and supported(model, head):
        return ClosedFormGrad(model, head, opt)
    return AutogradGrad(model, head, opt)


def ppo_update(
    backend: GradientBackend,
    batch: dict[str, torch.Tensor],
    cfg: Config,
    clip_eps: float,
    step: int,
    dp: DataParallel | None = None,
    minibatches: int | None = None,
) -> dict[str, float]:
    """``n_epochs`` passes of shuffled minibatches over ``batch``; mean metrics of the steps
    taken. Raises :class:`~pavlov.agents.common.NonFiniteError` before stepping on a NaN loss.

    Advantages are whitened per minibatch (SB3, CleanRL). With ``target_kl`` the epochs stop at
    the first minibatch whose approximate KL exceeds ``1.5 * target_kl``, which is not applied
    (SB3). With ``dp`` (DD-PPO, Wijmans et al. 2020) the gradients are averaged over the ranks
    before each step and the KL test reads the ranks' mean, so every rank takes the same steps;
    ``minibatches`` splits a preempted (shorter) rollout into that many near-equal minibatches
    instead of ``batch_size`` rows each.
    """
    packed = backend.pack(batch)
    n, size = len(batch["advantages"]), cfg.batch_size
    if minibatches is not None:  # a preempted rollout: every rank's number of steps
        cuts = torch.linspace(0, n, minibatches + 1).round().long().tolist()
    else:
        cuts = [*range(0, n, size), n]
    bounds = list(itertools.pairwise(cuts))
    kl_limit = math.inf if cfg.target_kl is None else 1.5 * cfg.target_kl
    whole = None
    if len(bounds) == 1:  # one minibatch (rl-zoo CartPole): its order is irrelevant, no gathers
        whole = backend.minibatch(packed, None, _whiten_minibatches(
            batch["advantages"], n, cfg.normalize_advantage))
    records: list[Any] = []
    stopped = False
    for _ in range(cfg.n_epochs):
        perm = torch.randperm(n) if whole is None else None
        if perm is not None:  # this epoch's advantages, in perm order, whitened per minibatch
            adv = _whiten_slices(batch["advantages"][perm], bounds, size, cfg.normalize_advantage)
        for start, end in bounds:
            mb = whole if perm is None else backend.minibatch(
                packed, perm[start:end], adv[start:end])
            loss, kl, record = backend.loss(mb, cfg, clip_eps)
            if kl_limit < math.inf:
                stopped = (_value(kl) if dp is None else dp.mean(_value(kl))) > kl_limit
                if stopped:
                    break
            if not math.isfinite(_value(loss)):  # one op, where torch.isfinite takes six
                check_finite("ppo loss", torch.as_tensor(loss), step, unit="env step")
            backend.step(loss, cfg.max_grad_norm, dp)
            records.append(record)
        if stopped:
            break
    return _summary(backend.metrics(records, clip_eps), len(records), batch)


def _value(x: torch.Tensor | float) -> float:
    """A backend's loss or KL as a float (the C step gives floats, autograd 0-d tensors)."""
    return x if isinstance(x, float) else x.item()


def _whiten_slices(adv: torch.Tensor, bounds: list[tuple[int, int]], size: int, on: bool
                   ) -> torch.Tensor:
    """Advantages whitened per minibatch: ``size``-long slices (one vmap call), or the given
    ``bounds`` when they are not those."""
    if not on or bounds[0][1] - bounds[0][0] == size:
        return _whiten_minibatches(adv, size, on)
    return torch.cat([_whiten_minibatches(adv[a:b], b - a, on) for a, b in bounds])


def _summary(means: dict[str, torch.Tensor | float], n_steps: int,
             batch: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {k: _value(v) for k, v in means.items()}
    out["losses/explained_variance"] = explained_variance(batch["values"], batch["returns"])
    out["losses/n_minibatches"] = float(n_steps)
    return out


# ------------------------------------------------------------------------------------- train


@dataclass
class _Agent:
    """Everything that learns or counts; :func:`_state` saves it."""

    obs_space: gym.Space
    model: ActorCritic
    opt: torch.optim.Optimizer
    head: Any
    obs_rms: RunningMeanStd | None
    reward_scaler: RewardScaler | None
    grad: GradientBackend | None = None
    env_steps: int = 0
    updates: int = 0


def _make_model(obs_space: gym.Space, act_space: gym.Space, cfg: Config
                ) -> tuple[Any, ActorCritic, RunningMeanStd | None]:
    """(head, freshly initialised model, observation normalizer or None) for these spaces."""
    require_action_space(act_space, "ppo", ACTION_SPACES)
    head = HEADS[type(act_space)](act_space)
    in_dim = obs_dim(obs_space)
    log_std_init = cfg.log_std_init if isinstance(act_space, gym.spaces.Box) else None
    model = ActorCritic(in_dim, head.n_outputs, cfg.hidden_sizes, cfg.activation,
                        cfg.shared_network, log_std_init)
    return head, model, RunningMeanStd((in_dim,)) if cfg.normalize_obs else None


def _build(obs_space: gym.Space, act_space: gym.Space, cfg: Config,
           device: torch.device | None = None) -> _Agent:
    device = device or torch.device("cpu")
    head, model, obs_rms = _make_model(obs_space, act_space, cfg)
    model.to(device)
    # fused: one kernel for all parameters; ~4x faster per step than the default per-tensor
    # loop on CPU for the 64x64 nets (76 vs 310 us)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
    scaler = RewardScaler(cfg.n_envs, cfg.gamma, cfg.reward_clip) if cfg.normalize_reward else None
    grad = make_backend(model, head, opt, cfg.fast_update and device.type == "cpu")
    return _Agent(obs_space, model, opt, head, obs_rms, scaler, grad)


def _state(agent: _Agent, cfg: Config, np_rng: np.random.Generator) -> dict[str, Any]:
    """A deep copy of everything :func:`train` needs to resume (and :func:`load_policy`)."""
    return {
        "algo": "ppo",
        "model": {k: v.detach().clone() for k, v in agent.model.state_dict().items()},
        "optimizer": copy.deepcopy(agent.opt.state_dict()),
        "obs_rms": None if agent.obs_rms is None else agent.obs_rms.state_dict(),
        "reward_scaler": None if agent.reward_scaler is None else agent.reward_scaler.state_dict(),
        "env_steps": agent.env_steps,
        "updates": agent.updates,
        "rng": rng_state(),
        "np_rng": copy.deepcopy(np_rng.bit_generator.state),
        "cfg": dataclasses.asdict(cfg),
    }


def _load(agent: _Agent, state: dict[str, Any], np_rng: np.random.Generator) -> None:
    if state.get("algo") != "ppo":
        raise PavlovError(f"cannot resume PPO from a {state.get('algo')!r} state")
    try:
        agent.model.load_state_dict(state["model"])
        agent.opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as e:
        raise PavlovError(f"resume state does not fit the config/env: {e}") from None
    agent.grad.after_load()  # load_state_dict replaced the optimizer's state tensors
    for name in ("obs_rms", "reward_scaler"):
        if (getattr(agent, name) is None) != (state[name] is None):
            raise PavlovError(f"resume state and config disagree on {name} (normalize_* fields)")
        if state[name] is not None:
            getattr(agent, name).load_state_dict(state[name])
    agent.env_steps, agent.updates = int(state["env_steps"]), int(state["updates"])
    set_rng_state(state["rng"])
    np_rng.bit_generator.state = state["np_rng"]


@flush_denormals()
def train(
    env_id: str,
    cfg: Config,
    *,
    env_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainOutput:
    """Train PPO on ``env_id`` until ``cfg.total_steps`` env steps (counting those before a
    resume) or until ``hooks.stop`` says so after an evaluation. Evaluation and checkpoint time
    are excluded from ``TrainOutput.seconds``.

    ``hooks.log`` gets, after every update: ``losses/{policy,value,entropy,approx_kl,
    clip_fraction}`` (means over the update's minibatches), ``losses/explained_variance``,
    ``losses/n_minibatches``, ``charts/{learning_rate,clip_range,SPS}`` and, if episodes ended
    during the rollout, their mean ``charts/episode_return`` / ``charts/episode_length``; after
    each evaluation (every ``hooks.evaluate_every`` env steps, deterministic, in a separate env
    seeded ``cfg.seed + EVAL_SEED_OFFSET``): ``eval/mean_return``.

    Inside a torch.distributed group (``--nproc``, torchrun) this is DD-PPO (Wijmans et al.
    2020): every rank collects with its own envs and seed stream, gradients and normalizer
    statistics are merged over the ranks, ``total_steps`` counts all ranks' steps, and rank 0
    logs, evaluates and checkpoints (the other ranks' hooks are not called).
    """
    hooks = hooks or Hooks()
    dp = distributed.current()
    envs = make_vec_env(env_id, cfg.n_envs, env_kwargs, cfg.vectorization)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.torch_threads or threads)
        seed_all(cfg.seed)
        np_rng = np.random.default_rng(cfg.seed)
        device = resolve_device(cfg.device)
        agent = _build(envs.single_observation_space, envs.single_action_space, cfg, device)
        if resume is not None:
            _load(agent, resume, np_rng)
        if dp is not None:
            # one stream of action noise per rank (rank 0 keeps the 1-process stream) and one
            # start for all: rank 0's parameters
            np_rng = onpolicy.rank_rng(cfg.seed, dp, agent.updates) or np_rng
            dp.broadcast_(agent.grad.flat)
        buf = RolloutBuffer(cfg.n_steps, cfg.n_envs, obs_dim(envs.single_observation_space),
                            agent.head)
        c = Collector(envs, agent.head, buf, np_rng, agent.obs_rms, agent.reward_scaler,
                      cfg.obs_clip, EpisodeStats(cfg.n_envs))
        run = _run(env_id, env_kwargs, cfg, hooks, agent, c, dp)
        seed = cfg.seed if resume is None else _derived_seed(cfg.seed, agent.env_steps)
        saved = onpolicy.start(run, seed, cfg.n_envs, dp, resume, hooks.notice)
        return onpolicy.loop(run, agent, cfg.total_steps, hooks, dp, saved)
    finally:
        torch.set_num_threads(threads)
        envs.close()


def _derived_seed(seed: int, env_steps: int) -> int:
    return int(np.random.SeedSequence([seed, env_steps]).generate_state(1)[0])


def _run(env_id: str, env_kwargs: dict[str, Any] | None, cfg: Config, hooks: Hooks,
         agent: _Agent, c: Collector, dp: DataParallel | None) -> onpolicy.OnPolicyRun:
    """PPO's pieces of the on-policy loop: annealing, GAE + the clipped-surrogate update."""
    clip = [cfg.clip_range]

    def schedule(done: float) -> dict[str, float]:
        frac = 1.0 - done  # linear annealing to 0 (rl-zoo lin_*)
        lr = cfg.learning_rate * (frac if cfg.anneal_lr else 1.0)
        clip[0] = cfg.clip_range * (frac if cfg.anneal_clip_range else 1.0)
        for group in agent.opt.param_groups:
            group["lr"] = lr
        return {"charts/learning_rate": lr, "charts/clip_range": clip[0]}

    minibatches = -(-cfg.n_steps * cfg.n_envs // cfg.batch_size)

    def update(env_steps: int) -> dict[str, float]:
        batch = advantages_and_returns(c.buffer, cfg, c.steps)
        if agent.grad.flat.device.type != "cpu":  # the rollout lives in CPU memory
            batch = {k: v.to(agent.grad.flat.device) for k, v in batch.items()}
        # a preempted (shorter) rollout still takes every rank's number of minibatch steps
        cut = dp is not None and c.steps < cfg.n_steps
        return ppo_update(agent.grad, batch, cfg, clip[0], env_steps, dp,
                          minibatches if cut else None)

    def evaluate() -> float:
        policy = onpolicy.greedy_policy(agent.head, agent.model, agent.obs_rms, agent.obs_space,
                                        cfg.obs_clip)
        return evaluate_in_env(env_id, policy, hooks.eval_episodes, cfg.seed + EVAL_SEED_OFFSET,
                               env_kwargs).mean_return

    preempt = None
    if dp is not None and cfg.preempt_threshold is not None:
        preempt = onpolicy.preemption(dp, cfg.preempt_threshold, cfg.n_steps,
                                      -(-minibatches // cfg.n_envs))
    normalizers = [] if agent.obs_rms is None else [agent.obs_rms]
    if agent.reward_scaler is not None:
        normalizers.append(agent.reward_scaler.rms)
    return onpolicy.OnPolicyRun(c, agent.model, update, evaluate,
                                lambda: _state(agent, cfg, c.rng), schedule, normalizers,
                                preempt)


# ------------------------------------------------------------------------------------ policy


def load_policy(state: dict[str, Any], cfg: Config, env: gym.Env) -> Callable[[Any, int], Any]:
    """``policy(obs, t) -> action`` from a :func:`train` state: the argmax action (Discrete) or
    the Gaussian mean clipped to the Box, after the saved observation normalization."""
    head, model, obs_rms = _make_model(env.observation_space, env.action_space, cfg)
    model.load_state_dict(state["model"])
    if obs_rms is not None:
        obs_rms.load_state_dict(state["obs_rms"])
    return onpolicy.greedy_policy(head, model, obs_rms, env.observation_space, cfg.obs_clip)
