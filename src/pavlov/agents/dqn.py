"""Deep Q-network (Mnih et al. 2015, "Human-level control through deep reinforcement learning",
Nature 518) with the double-DQN option (van Hasselt et al. 2016).

Loop (the cadence of Stable-Baselines3's DQN, so rl-zoo hyperparameters carry over):

* every vector step: ε-greedy actions in ``n_envs`` SAME_STEP-autoreset envs, transitions into
  the replay buffer with the true next observation (``final_obs`` at episode ends), and every
  ``max(target_update_interval // n_envs, 1)`` vector steps the target net moves towards the
  online net by ``tau`` (``tau = 1``: hard copy);
* every ``train_freq`` vector steps, once more than ``learning_starts`` env steps are done:
  ``gradient_steps`` minibatch updates on the TD error, Huber or squared, gradient norm clipped.

Before ``learning_starts`` actions are uniformly random. ε decays linearly from
``exploration_initial_eps`` to ``exploration_final_eps`` over the first
``exploration_fraction * total_steps`` env steps. The TD target bootstraps through a time-limit
truncation from the final observation; only ``terminated`` stops it (Pardo et al. 2018).

Resume is exact: a state holds networks, optimizer, replay contents, counters, RNG states and
the envs (pickled mid-episode, with their current observations and episode statistics), so a
resumed run continues bit for bit. Envs that cannot be pickled (async, Box2D) start fresh
episodes instead, with a notice.

Speed (CPU, one thread): the nets are small and updates many (~17k for CartPole), so per-op
overhead rivals the matmuls. The update is written out by hand (:class:`MLPGrad`, checked
against autograd) on parameters flattened into one vector, so clipping, Adam
(:class:`FlatAdam`) and target updates are one op each; a training phase samples and evaluates
the (fixed) target net for up to 16 minibatches at once, and computes their 16 loss values at
once after the steps (a step needs only the gradient); actions come from a NumPy forward
(:class:`NumpyQ`) and ε-random draws from Python's ``random``.
"""

from __future__ import annotations

import copy
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pavlov.agents.common import (
    ACTIVATIONS,
    EVAL_SEED_OFFSET,
    NOT_EXACT,
    EpisodeStats,
    Hooks,
    TrainClock,
    TrainOutput,
    check_device,
    encode_obs,
    evaluate_in_env,
    final_observations,
    make_vec_env,
    mlp,
    obs_dim,
    require_action_space,
    resolve_device,
    restore_envs,
    rng_state,
    seed_all,
    set_rng_state,
    snapshot_envs,
)
from pavlov.agents.fastmlp import FlatAdam, MLPGrad, NumpyQ, flatten_parameters
from pavlov.agents.replay import ReplayBuffer
from pavlov.devices import flush_denormals
from pavlov.errors import (
    ConfigError,
    NonFiniteError,
    PavlovError,
    check_finite,
    check_positive,
    check_range,
)
from pavlov.math.value import double_q_target, huber, polyak_update, td_target

ACTION_SPACES = (gym.spaces.Discrete,)
"""Action spaces this agent supports (checked before a run directory is made)."""


class TDLoss(NamedTuple):
    """An elementwise loss of the TD error ``d = Q(s, a) - y`` and its derivative in ``d``."""

    value: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor], Tensor]


LOSSES: dict[str, TDLoss] = {
    "huber": TDLoss(huber, lambda d: d.clamp(-1.0, 1.0)),  # delta 1: SB3's smooth L1
    "mse": TDLoss(torch.square, lambda d: 2.0 * d),
}
"""TD-error losses by name; the batch mean is minimized."""


@dataclass
class Config:
    """DQN hyperparameters. Defaults are rl-zoo's tuned CartPole-v1 values."""

    total_steps: int = 50_000
    """Env steps to train for (summed over the ``n_envs`` sub-envs)."""
    learning_rate: float = 2.3e-3
    """Adam step size (Adam's other settings are torch's defaults, as in SB3)."""
    buffer_size: int = 100_000
    """Replay capacity in transitions; the oldest are overwritten first."""
    learning_starts: int = 1_000
    """Env steps of uniformly random actions before the first update."""
    batch_size: int = 64
    """Transitions per minibatch, sampled uniformly with replacement."""
    gamma: float = 0.99
    """Discount factor in [0, 1]."""
    tau: float = 1.0
    """Target update weight in (0, 1]: ``target <- (1 - tau) target + tau online``; 1 is the
    hard copy of Mnih et al., below 1 a Polyak / EMA ("mean teacher") target."""
    target_update_interval: int = 10
    """Env steps between target updates (every ``max(interval // n_envs, 1)`` vector steps)."""
    train_freq: int = 256
    """Vector steps between training phases (each is ``n_envs`` env steps), as SB3 counts."""
    gradient_steps: int = 128
    """Minibatch updates per training phase."""
    exploration_fraction: float = 0.16
    """Fraction of ``total_steps`` over which ε decays linearly, in [0, 1]."""
    exploration_initial_eps: float = 1.0
    """ε at step 0, in [0, 1]."""
    exploration_final_eps: float = 0.04
    """ε after the decay, in [0, 1]."""
    double_q: bool = False
    """Double DQN target: the online net picks the next action, the target net values it."""
    loss: str = "huber"
    """TD-error loss: ``huber`` (delta 1, SB3's smooth L1) or ``mse``."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm to this (> 0; ``.inf`` disables)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the Q-network MLP."""
    activation: str = "relu"
    """Hidden activation: ``relu`` or ``tanh``."""
    n_envs: int = 1
    """Parallel sub-envs in the SAME_STEP-autoreset vector env."""
    device: str = "cpu"
    """Where networks and updates run: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"``
    (cuda when torch sees a GPU); envs always step on the CPU."""
    seed: int = 0
    """Seeds python, NumPy, torch and the envs (evaluation uses ``seed + 10_000``)."""

    def __post_init__(self) -> None:
        check_device("device", self.device)
        self.hidden_sizes = tuple(self.hidden_sizes)
        for name in ("total_steps", "buffer_size", "batch_size", "target_update_interval",
                     "train_freq", "gradient_steps", "n_envs", "learning_starts"):
            value, lo = getattr(self, name), 0 if name == "learning_starts" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        check_positive("learning_rate", self.learning_rate)
        check_positive("max_grad_norm", self.max_grad_norm)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("tau", self.tau, 1e-12, 1.0)
        for name in ("exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        if self.batch_size > self.buffer_size:
            raise ConfigError(f"batch_size must be <= buffer_size ({self.buffer_size}), "
                              f"got {self.batch_size}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.hidden_sizes or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden_sizes
        ):
            raise ConfigError(f"hidden_sizes must be integers >= 1, got {self.hidden_sizes!r}")


def epsilon(step: int, cfg: Config) -> float:
    """ε after ``step`` env steps: linear from initial to final over the first
    ``exploration_fraction * total_steps`` steps, then constant."""
    horizon = cfg.exploration_fraction * cfg.total_steps
    if step >= horizon:
        return cfg.exploration_final_eps
    start, end = cfg.exploration_initial_eps, cfg.exploration_final_eps
    return start + step / horizon * (end - start)


def q_network(cfg: Config, obs_space: gym.Space, action_space: gym.Space) -> nn.Sequential:
    """MLP ``(B, obs_dim) -> (B, n_actions)`` Q-values, with torch's default Linear init (as
    SB3 and CleanRL, whose tuned DQN hyperparameters we reuse) rather than orthogonal."""
    net = mlp([obs_dim(obs_space), *cfg.hidden_sizes, int(action_space.n)], cfg.activation)
    for layer in net:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return net


class TorchQ:
    """Greedy actions of a Q-network by a torch forward on its device (:class:`NumpyQ`'s role
    when the network is not in CPU memory)."""

    def __init__(self, net: nn.Sequential, obs_space: gym.Space) -> None:
        self.net, self.obs_space = net, obs_space
        self.device = next(net.parameters()).device

    @torch.no_grad()
    def __call__(self, obs: Any) -> np.ndarray:
        x = encode_obs(self.obs_space, obs).to(self.device)  # (N, obs_dim)
        return self.net(x).argmax(-1).cpu().numpy()


class Learner:
    """The online and target Q-networks, their optimizer and replay buffer, and the updates."""

    max_rows = 1024
    """Transitions sampled and target-evaluated at once (more is slower: out of L2 cache)."""

    def __init__(self, cfg: Config, obs_space: gym.Space, action_space: gym.Space,
                 device: torch.device | None = None) -> None:
        self.cfg, self.obs_space = cfg, obs_space
        self.device = device or torch.device("cpu")
        self.q = q_network(cfg, obs_space, action_space).to(self.device)
        self.flat, self.flat_grad = flatten_parameters(self.q)
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        self.target_flat, _ = flatten_parameters(self.target, with_grad=False)
        self.grad = MLPGrad(self.q, cfg.activation)
        self.target_grad = MLPGrad(self.target, cfg.activation)  # its forward: in-place activations
        self.opt = FlatAdam(self.flat, cfg.learning_rate)
        # greedy actions: NumPy on views of the live weights (CPU), else a torch forward
        self.act = (NumpyQ(self.q, cfg.activation, obs_space) if self.device.type == "cpu"
                    else TorchQ(self.q, obs_space))
        discrete = isinstance(obs_space, gym.spaces.Discrete)
        self.buffer = ReplayBuffer(
            cfg.buffer_size,
            () if discrete else obs_space.shape,
            torch.int64 if discrete else torch.float32,
        )
        self.loss = LOSSES[cfg.loss]

    def update_target(self) -> None:
        polyak_update([self.target_flat], [self.flat], self.cfg.tau)

    def train_phase(self, n_updates: int, step: int) -> tuple[float, float]:
        """``n_updates`` gradient steps -> (mean loss, mean Q(s, a)).

        The target net does not change during a phase (it is updated between env steps), so
        the minibatches of several steps are sampled and target-evaluated together, and the
        per-step loss values are computed once per chunk from the kept TD errors (only the
        gradient is needed step by step).
        """
        cfg, size = self.cfg, self.cfg.batch_size
        total_loss = total_q = 0.0
        chunk = max(1, self.max_rows // size)
        for first in range(0, n_updates, chunk):
            k = min(chunk, n_updates - first)
            b = self.buffer.sample(k * size)  # k minibatches, (k * B, ...)
            x, next_x = encode_obs(self.obs_space, b.obs), encode_obs(self.obs_space, b.next_obs)
            if self.device.type != "cpu":  # the replay buffer lives in CPU memory
                b = type(b)(*(t.to(self.device) for t in b))
                x, next_x = x.to(self.device), next_x.to(self.device)
            with torch.no_grad():
                next_q_target = self.target_grad.forward(next_x)[-1]  # (k * B, A)
                ys = None if cfg.double_q else td_target(
                    b.rewards, next_q_target.max(-1).values, b.terminated, cfg.gamma
                ).unsqueeze(1)  # (k * B, 1)
            index = b.actions.unsqueeze(1)  # (k * B, 1)
            scaled_onehot = torch.zeros_like(next_q_target).scatter_(1, index, 1.0 / size)
            tds, qs = [], []
            for r in (slice(i * size, (i + 1) * size) for i in range(k)):
                if ys is None:  # double DQN: the online net, which moves every step, picks a'
                    y = double_q_target(b.rewards[r], self.grad.forward(next_x[r])[-1],
                                        next_q_target[r], b.terminated[r], cfg.gamma)
                td, q_sa = self.update(x[r], index[r], y.unsqueeze(1) if ys is None else ys[r],
                                       step, scaled_onehot[r])
                tds.append(td)
                qs.append(q_sa)
            loss = self.loss.value(torch.stack(tds)).mean((1, 2))  # (k,) each step's loss
            check_finite("losses/td_loss", loss, step, unit="env step")
            total_loss += float(loss.sum())
            total_q += float(torch.stack(qs).mean((1, 2)).sum())
        return total_loss / n_updates, total_q / n_updates

    def update(self, x: Tensor, actions: Tensor, y: Tensor, step: int,
               scaled_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step on ``mean(loss(Q(s, a) - y))``: x (B, obs_dim), actions (B, 1) int64, y
        (B, 1); ``scaled_onehot`` (B, A) is ``one_hot(actions) / B`` where the caller made it
        for several steps at once -> ``(td, Q(s, a))``, both (B, 1), for the loss value.

        Raises :class:`NonFiniteError` before the optimizer step if the gradient is not finite
        (the loss values are checked per training phase, from the returned TD errors).
        """
        if scaled_onehot is None:
            scaled_onehot = torch.zeros(len(x), self.grad.weights[-1].shape[0],
                                        device=x.device).scatter_(1, actions, 1.0 / len(x))
        hs = self.grad.forward(x)
        q_sa = hs[-1].gather(1, actions)
        td = q_sa - y
        self.grad.backward(hs, scaled_onehot * self.loss.grad(td))  # d loss / d Q, (B, A)
        # torch.nn.utils.clip_grad_norm_'s rule, on the one flat gradient
        norm = float(self.flat_grad.norm())
        if not math.isfinite(norm):
            check_finite("losses/td_loss", self.loss.value(td), step, unit="env step")
            raise NonFiniteError(f"the TD-loss gradient is not finite at env step {step}; "
                                 "stopped before the optimizer step (no NaN weights written)")
        scale = self.cfg.max_grad_norm / (norm + 1e-6)
        if scale < 1.0:
            self.flat_grad.mul_(scale)
        self.opt.step(self.flat_grad)
        return td, q_sa

    def state_dict(self) -> dict[str, Any]:
        return {  # copies: a checkpoint must not change as training goes on
            "q": {k: v.clone() for k, v in self.q.state_dict().items()},
            "target": {k: v.clone() for k, v in self.target.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "replay": self.buffer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.q.load_state_dict(state["q"])
            self.target.load_state_dict(state["target"])
        except RuntimeError as e:
            raise PavlovError(f"checkpoint does not fit this config's network: {e}") from None
        self.opt.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["replay"])


class _Loop:
    """One training run: env interaction, training phases, evaluation and checkpoints."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, cfg: Config,
                 hooks: Hooks, envs: gym.vector.VectorEnv) -> None:
        self.env_id, self.env_kwargs, self.cfg, self.hooks, self.envs = (
            env_id, env_kwargs, cfg, hooks, envs)
        seed_all(cfg.seed)
        self.obs_space, action_space = envs.single_observation_space, envs.single_action_space
        self.learner = Learner(cfg, self.obs_space, action_space, resolve_device(cfg.device))
        self.n_actions, self.action_start = int(action_space.n), int(action_space.start)
        self.target_every = max(cfg.target_update_interval // cfg.n_envs, 1)  # in vector steps
        self.steps = self.vec_steps = self.updates = self.episodes = 0
        self.stats = EpisodeStats(cfg.n_envs)
        self.recent: deque[float] = deque(maxlen=100)
        self.evals: list[tuple[int, float]] = []
        self.obs: np.ndarray | None = None  # the envs' current observations

    def restore(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)
        c = state["counters"]
        self.steps, self.vec_steps = int(c["env_steps"]), int(c["vec_steps"])
        self.updates, self.episodes = int(c["gradient_steps"]), int(c["episodes"])
        self.evals = [tuple(e) for e in state.get("evals", [])]
        set_rng_state(state["rng"])
        saved = state.get("loop")
        if saved is not None and restore_envs(self.envs, saved["envs"]):
            self.obs = np.array(saved["obs"], copy=True)
            self.stats.load_state_dict(saved["stats"])
            self.recent.extend(saved["recent"])
        else:
            why = "an older checkpoint" if saved is None else "an env that does not pickle"
            self.hooks.notice(NOT_EXACT.format(why=why))

    def state(self) -> dict[str, Any]:
        """Everything :func:`train` needs to resume (``resume=state``)."""
        return {
            "algo": "dqn",
            "cfg": asdict(self.cfg),
            **self.learner.state_dict(),
            "counters": {"env_steps": self.steps, "vec_steps": self.vec_steps,
                         "gradient_steps": self.updates, "episodes": self.episodes},
            "evals": list(self.clock.evals),
            "rng": rng_state(),
            "loop": {"envs": snapshot_envs(self.envs), "obs": self.obs.copy(),
                     "stats": self.stats.state_dict(), "recent": list(self.recent)},
        }

    def run(self) -> TrainOutput:
        cfg, hooks = self.cfg, self.hooks
        if self.obs is None:  # a fresh run, or a resume whose envs could not be restored
            self.obs, _ = self.envs.reset(seed=cfg.seed + self.steps)
        self.reported = self.steps
        # the scheduler every deep agent uses: evaluations, checkpoints, stop, train seconds
        self.clock = TrainClock(hooks, self.steps)
        self.clock.evals = list(self.evals)
        while self.steps < cfg.total_steps:
            self.obs = self.env_step(self.obs)
            if self.vec_steps % cfg.train_freq == 0:
                self.train_phase()
            if self.clock.tick(cfg.n_envs) and self.clock.periodic(self.evaluate, self.state):
                break
        hooks.progress(self.steps - self.reported, self._recent_mean())
        return self.clock.output(self.state())

    def env_step(self, obs: np.ndarray) -> np.ndarray:
        """One ε-greedy vector step; stores the transitions; updates the target on schedule."""
        cfg, n, learner = self.cfg, self.cfg.n_envs, self.learner
        eps = 1.0 if self.steps < cfg.learning_starts else epsilon(self.steps, cfg)
        explore = [random.random() < eps for _ in range(n)]  # python RNG: ~50x cheaper here
        if all(explore):
            actions = np.array([random.randrange(self.n_actions) for _ in range(n)])
        else:  # one forward pass for all sub-envs, only when some act greedily
            actions = learner.act(obs)
            for i in np.flatnonzero(explore):
                actions[i] = random.randrange(self.n_actions)
        next_obs, rewards, terminated, truncated, info = self.envs.step(actions + self.action_start)
        real_next = final_observations(next_obs, info)  # s' of the transition, not the reset obs
        learner.buffer.add(obs, actions, rewards, real_next, terminated, truncated)
        self.steps += n
        self.vec_steps += 1
        for ret, length in self.stats.step(rewards, terminated | truncated):
            self.episodes += 1
            self.recent.append(ret)
            self.hooks.log(self.steps, {"charts/episode_return": ret,
                                        "charts/episode_length": float(length)})
        if self.vec_steps % self.target_every == 0:
            learner.update_target()
        return next_obs

    def train_phase(self) -> None:
        """``gradient_steps`` updates once past ``learning_starts``; logs and reports progress."""
        cfg = self.cfg
        metrics = {"charts/epsilon": epsilon(self.steps, cfg)}
        if self.steps > cfg.learning_starts:
            loss, mean_q = self.learner.train_phase(cfg.gradient_steps, self.steps)
            self.updates += cfg.gradient_steps
            metrics["losses/td_loss"], metrics["losses/q_values"] = loss, mean_q
        metrics["charts/SPS"] = self.clock.sps()
        self.hooks.log(self.steps, metrics)
        self.hooks.progress(self.steps - self.reported, self._recent_mean())
        self.reported = self.steps

    def evaluate(self) -> float:
        """Deterministic evaluation in a fresh single env -> mean return."""
        policy = _policy(self.learner.act, self.action_start)
        return evaluate_in_env(self.env_id, policy, self.hooks.eval_episodes,
                               self.cfg.seed + EVAL_SEED_OFFSET, self.env_kwargs).mean_return

    def _recent_mean(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


def _policy(act: NumpyQ, start: int) -> Callable[[Any, int], int]:
    return lambda obs, t: int(act(obs)[0]) + start


@flush_denormals()  # subnormal Adam moments of dead ReLU units: ~2x DQN's time
def train(
    env_id: str,
    cfg: Config,
    *,
    env_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainOutput:
    """Train DQN on ``env_id`` (Discrete actions; Box or Discrete observations).

    ``resume`` is a state from a checkpoint or a previous :class:`TrainOutput`: training
    continues from its step count up to ``cfg.total_steps`` with its networks, optimizer,
    replay buffer and RNG states. Raises :class:`PavlovError` for other action spaces and
    :class:`~pavlov.agents.common.NonFiniteError` if the loss stops being finite.
    """
    envs = make_vec_env(env_id, cfg.n_envs, env_kwargs)
    try:
        require_action_space(envs.single_action_space, "dqn", [gym.spaces.Discrete])
        obs_dim(envs.single_observation_space)  # PavlovError unless Box or Discrete
        loop = _Loop(env_id, env_kwargs, cfg, hooks or Hooks(), envs)
        if resume is not None:
            loop.restore(resume)
        return loop.run()
    finally:
        envs.close()


def load_policy(state: dict[str, Any], cfg: Config, env: gym.Env) -> Callable[[Any, int], int]:
    """Greedy ``policy(obs, t) -> action`` from a DQN state (``t`` is ignored)."""
    require_action_space(env.action_space, "dqn", [gym.spaces.Discrete])
    q = q_network(cfg, env.observation_space, env.action_space)
    q.load_state_dict(state["q"])
    return _policy(NumpyQ(q, cfg.activation, env.observation_space), int(env.action_space.start))
