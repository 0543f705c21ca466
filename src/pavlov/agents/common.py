"""What every deep agent shares: the training contract, observation encoding, networks,
vectorized envs, the NaN guard, RNG state, and evaluation during training.

The contract (see ``docs/agents.md``-style docstrings in each agent module): an agent module
``pavlov.agents.<name>`` exposes

* ``Config``: a typed dataclass, one documented field each, validated in ``__post_init__``;
* ``train(env_id, cfg, *, env_kwargs=None, hooks=None, resume=None) -> TrainOutput``;
* ``load_policy(state, cfg, env) -> policy(obs, t) -> action`` (deterministic, for eval).

Trainers never print or write files themselves: the caller passes :class:`Hooks` (the CLI wires
them to the run directory, the progress bar and checkpoints; a benchmark wires a stop rule).
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from pavlov.devices import check_device, resolve_device  # noqa: F401  re-exported
from pavlov.errors import (  # noqa: F401  re-exported
    ConfigError,
    NonFiniteError,
    PavlovError,
    check_choice,
    check_count,
)
from pavlov.run import interrupt
from pavlov.run.seeding import rng_state, seed_all, set_rng_state  # noqa: F401  re-exported

# --------------------------------------------------------------------------- training contract


def _noop(*_: Any) -> None:
    return None


@dataclass
class Hooks:
    """Callbacks a trainer calls; all optional and cheap when left at their defaults."""

    log: Callable[[int, dict[str, float]], None] = _noop
    """``log(env_step, metrics)``: scalars named like ``losses/policy``, ``charts/episode_return``,
    ``eval/mean_return``."""
    progress: Callable[[int, float | None], None] = _noop
    """``progress(env_steps_advanced, key_metric_or_None)`` for the progress bar."""
    checkpoint: Callable[[int, dict[str, Any]], None] | None = None
    """``checkpoint(env_step, state)`` with everything needed to resume (see ``resume``)."""
    checkpoint_every: int = 0
    """Env steps between checkpoints (0: only the final state is returned)."""
    evaluate_every: int = 0
    """Env steps between deterministic evaluations (0: none during training)."""
    eval_episodes: int = 10
    """Episodes per evaluation during training."""
    stop: Callable[[int, dict[str, float]], bool] = lambda step, metrics: False
    """``stop(env_step, eval_metrics) -> True`` ends training after an evaluation."""
    save_best: Callable[[int, float, dict[str, Any]], None] | None = None
    """``save_best(env_step, mean_return, state)`` after each evaluation whose mean return beats
    every earlier one (and ``best_return``): the state to keep as the best model (SB3's
    ``EvalCallback(best_model_save_path=...)``). A greedy policy's return swings between
    evaluations (DQN on MountainCar: -106 at 110k env steps, -148 at 120k), so the last state is
    not always the one to deploy."""
    best_return: float = -math.inf
    """The best evaluation before this call (a resumed run's): only a higher one is saved."""
    notice: Callable[[str], None] = _noop
    """``notice(line)``: something the user should know (e.g. a resume that is not exact)."""


@dataclass
class TrainOutput:
    """What ``train`` returns."""

    state: dict[str, Any]
    """Final resumable state (model, optimizer, normalizers, counters, RNG, ...)."""
    env_steps: int
    """Env steps taken in total (including those before a resume)."""
    seconds: float
    """Wall seconds of this call, evaluation time excluded."""
    evals: list[tuple[int, float]] = field(default_factory=list)
    """``(env_step, mean_return)`` of each evaluation during training."""



# ------------------------------------------------------------------------------ spaces and nets


def obs_dim(space: gym.Space) -> int:
    """Size of the flat float vector an observation is encoded to (one-hot for Discrete)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.number):
        return int(np.prod(space.shape))
    raise PavlovError(f"cannot encode observation space {space} (need Box or Discrete)")


def encode_obs(space: gym.Space, obs: np.ndarray | int) -> torch.Tensor:
    """(N, *shape) or (N,) int observations -> (N, obs_dim) float32 tensor."""
    if isinstance(space, gym.spaces.Discrete):
        idx = torch.as_tensor(np.asarray(obs), dtype=torch.long).reshape(-1) - int(space.start)
        return nn.functional.one_hot(idx, int(space.n)).float()
    arr = np.asarray(obs, dtype=np.float32)
    return torch.from_numpy(arr.reshape(arr.shape[0] if arr.ndim > len(space.shape) else 1, -1))


def require_action_space(space: gym.Space, algo: str, allowed: Sequence[type]) -> None:
    """PavlovError unless ``space`` is one of ``allowed`` (e.g. DQN on Box)."""
    if not isinstance(space, tuple(allowed)):
        names = " or ".join(t.__name__ for t in allowed)
        raise PavlovError(f"{algo} supports {names} action spaces, not {space}")


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(sizes: Sequence[int], activation: str = "tanh", out_gain: float = 1.0) -> nn.Sequential:
    """``sizes = [in, h1, ..., out]`` -> Linear/activation stack, orthogonal init (gain √2 on
    hidden layers, ``out_gain`` on the last; Engstrom et al. 2020 "Implementation Matters")."""
    if activation not in ACTIVATIONS:
        raise PavlovError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------ envs


def make_vec_env(
    env_id: str,
    n_envs: int,
    env_kwargs: dict[str, Any] | None = None,
    mode: str = "sync",
) -> gym.vector.VectorEnv:
    """Gymnasium vector env in SAME_STEP autoreset mode.

    SAME_STEP: when a sub-env's episode ends, ``step`` returns the *reset* observation and
    puts the last observation of the episode in ``info["final_obs"]`` (mask
    ``info["_final_obs"]``). Trainers bootstrap truncated steps from ``final_obs`` and never
    mix transitions across an episode boundary (Gymnasium 1.x's default NEXT_STEP mode would
    instead return a dummy transition on the following step that must be masked).
    """
    from pavlov.envs.factory import FlattenDiscreteTuple, make_env, needs_flattening

    probe = make_env(env_id, env_kwargs)  # one-line errors for bad ids/kwargs, before forking
    flatten = needs_flattening(probe.unwrapped.observation_space)
    probe.close()
    if mode not in ("sync", "async"):
        raise PavlovError(f"vectorization must be 'sync' or 'async', got {mode!r}")
    return gym.make_vec(
        env_id,
        num_envs=n_envs,
        vectorization_mode=mode,
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        wrappers=[FlattenDiscreteTuple] if flatten else None,
        **(env_kwargs or {}),
    )


def snapshot_envs(envs: gym.vector.VectorEnv) -> bytes | None:
    """The sub-envs of a sync vector env, pickled whole (simulator state, RNGs, time-limit
    counters), so a resumed run continues their episodes exactly; None where that is not
    possible: an async vector env (the envs live in other processes) or an env that pickles
    only its constructor arguments (``EzPickle``: Box2D, MuJoCo)."""
    from gymnasium.utils import EzPickle

    subs = getattr(envs, "envs", None)
    if not isinstance(envs, gym.vector.SyncVectorEnv) or subs is None:
        return None
    if any(isinstance(e.unwrapped, EzPickle) for e in subs):
        return None
    try:
        return pickle.dumps(subs, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None


def restore_envs(envs: gym.vector.VectorEnv, blob: bytes | None) -> bool:
    """Put :func:`snapshot_envs`' sub-envs back into ``envs`` -> whether it could."""
    if blob is None or not isinstance(envs, gym.vector.SyncVectorEnv):
        return False
    subs = pickle.loads(blob)  # our own checkpoint, written by snapshot_envs
    if len(subs) != envs.num_envs:
        return False
    for e in envs.envs:
        e.close()
    envs.envs = subs
    return True


NOT_EXACT = ("resumed envs start fresh episodes (their state could not be saved: {why}); "
             "the run continues, but not bitwise as an uninterrupted one")


def final_observations(next_obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """(N, ...) observations that *ended* each episode: ``final_obs`` where an episode ended
    this step (SAME_STEP autoreset), else ``next_obs``."""
    if "_final_obs" not in info:
        return next_obs
    out = np.array(next_obs, copy=True)
    for i in np.flatnonzero(info["_final_obs"]):
        out[i] = info["final_obs"][i]
    return out


class EpisodeStats:
    """Tracks per-env running returns/lengths of a vector env; returns finished episodes."""

    def __init__(self, n_envs: int) -> None:
        self.returns = np.zeros(n_envs)
        self.lengths = np.zeros(n_envs, dtype=np.int64)

    def step(self, rewards: np.ndarray, done: np.ndarray) -> list[tuple[float, int]]:
        self.returns += rewards
        self.lengths += 1
        if not done.any():  # the common case: skip the bookkeeping below (~5-10 us a step)
            return []
        finished = [(float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(done)]
        self.returns[done] = 0.0
        self.lengths[done] = 0
        return finished

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.copy(), "lengths": self.lengths.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns[:] = state["returns"]
        self.lengths[:] = state["lengths"]


# ------------------------------------------------------------------- config checks, training clock

EVAL_SEED_OFFSET = 10_000
"""Evaluations during training reset their env with ``cfg.seed + EVAL_SEED_OFFSET``."""


def check_hidden(name: str, value: Sequence[int]) -> list[int]:
    """A list of positive layer widths, else ConfigError naming the field."""
    if not isinstance(value, list | tuple) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in value
    ):
        raise ConfigError(f"{name} must be a list of positive integers, got {value!r}")
    return list(value)


def batch_seed(seed: int, index: int) -> int:
    """Distinct reset seed for the ``index``-th batch of run ``seed`` (resume replays it)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class TrainClock:
    """Env-step counter and wall clock of one ``train`` call; runs the periodic evaluations and
    checkpoints that :class:`Hooks` asks for and excludes their time from ``seconds``."""

    def __init__(self, hooks: Hooks, env_steps: int) -> None:
        self.hooks = hooks
        self.steps = self.start_steps = env_steps
        self.evals: list[tuple[int, float]] = []
        self._t0 = time.perf_counter()
        self._paused = 0.0
        self.best = hooks.best_return
        self.next_eval = self._next(hooks.evaluate_every)
        self.next_ckpt = self._next(hooks.checkpoint_every if hooks.checkpoint else 0)

    def _next(self, every: int) -> int | None:
        return (self.steps // every + 1) * every if every > 0 else None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0 - self._paused

    def sps(self) -> float:
        return (self.steps - self.start_steps) / max(self.seconds, 1e-9)

    def advance(self, n: int, key_metric: float | None = None) -> None:
        self.steps += n
        self.hooks.progress(n, key_metric)

    def tick(self, n: int) -> bool:
        """Count ``n`` env steps without reporting progress -> whether an evaluation or a
        checkpoint is due (then call :meth:`periodic`). Cheap enough for every env step."""
        self.steps += n
        return ((self.next_eval is not None and self.steps >= self.next_eval)
                or (self.next_ckpt is not None and self.steps >= self.next_ckpt)
                or interrupt.requested() is not None)

    def periodic(self, evaluate: Callable[[], float], state: Callable[[], dict],
                 dp: Any = None) -> bool:
        """Evaluate / checkpoint if a boundary was crossed; True if ``hooks.stop`` says stop.

        In a data-parallel run (``dp``, a :class:`~pavlov.run.distributed.DataParallel`) only
        rank 0 evaluates and checkpoints (its clock holds the real hooks; the others' clocks
        keep the same ``evaluate_every``), and its stop decision reaches every rank.
        """
        t = time.perf_counter()
        stop = evaluated = best = False
        if self.next_eval is not None and self.steps >= self.next_eval:
            evaluated = True
            ret = float(evaluate())
            self.evals.append((self.steps, ret))
            self.hooks.log(self.steps, {"eval/mean_return": ret})
            stop = bool(self.hooks.stop(self.steps, {"eval/mean_return": ret}))
            best = ret > self.best
            self.next_eval = self._next(self.hooks.evaluate_every)
        if dp is not None and evaluated:  # every rank keeps the evaluation schedule
            stop, best = dp.broadcast_flags(stop, best)
        if best:
            self.best = ret  # rank 0's; the other ranks only join the state's gather below
            if self.hooks.save_best is not None:
                self.hooks.save_best(self.steps, ret, state())
        saved = False
        if self.next_ckpt is not None and self.steps >= self.next_ckpt:
            self.hooks.checkpoint(self.steps, state())
            self.next_ckpt = self._next(self.hooks.checkpoint_every)
            saved = True
        self._paused += time.perf_counter() - t
        if dp is None and self.hooks.checkpoint is not None and not saved:
            interrupt.check(self.steps, lambda: self.hooks.checkpoint(self.steps, state()))
        elif dp is None:
            interrupt.check(self.steps)
        return stop

    def output(self, state: dict[str, Any]) -> TrainOutput:
        return TrainOutput(state, self.steps, self.seconds, self.evals)


# ------------------------------------------------------------------------------ RNG and eval


def evaluate_in_env(
    env_id: str,
    policy: Callable[[Any, int], Any],
    episodes: int,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
):
    """Deterministic evaluation in a fresh single env -> :class:`pavlov.evaluation.EvalResult`."""
    from pavlov.envs.factory import make_env
    from pavlov.evaluation import evaluate_policy

    env = make_env(env_id, env_kwargs)
    try:
        return evaluate_policy(env, policy, episodes, seed=seed)
    finally:
        env.close()
