"""On-policy rollout collection in vector envs (PPO): preallocated ``(T, N)`` buffers filled by
a NumPy copy of the actor-critic, with time-limit truncations bootstrapped from V(final_obs).

RolloutBuffer inference runs in NumPy (:class:`~pavlov.agents.distributions.NumpyActorCritic`): on
CartPole-sized nets a torch forward per vector step costs more than the env step itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pavlov.agents.common import EpisodeStats, encode_obs, final_observations
from pavlov.agents.distributions import NumpyActorCritic
from pavlov.agents.normalize import RewardScaler, RunningMeanStd


class RolloutBuffer:
    """Preallocated ``(T, N, ...)`` NumPy buffers of one rollout, with torch views of them."""

    def __init__(self, n_steps: int, n_envs: int, in_dim: int, head: Any) -> None:
        shape = (n_steps, n_envs)
        self.obs = np.zeros((*shape, in_dim), np.float32)  # normalized, as the net saw them
        self.actions = np.zeros((*shape, *head.action_shape), head.action_dtype)
        self.outputs = np.zeros((*shape, head.n_outputs), np.float32)  # logits or means
        self.logp = np.zeros(shape, np.float32)
        self.values = np.zeros(shape, np.float32)
        self.rewards = np.zeros(shape, np.float32)  # scaled if normalize_reward
        self.terminated = np.zeros(shape, bool)
        self.truncated = np.zeros(shape, bool)
        self.final_values = np.zeros(shape, np.float32)  # V(final_obs), read where truncated
        self.last_values = np.zeros(n_envs, np.float32)
        self.t = {k: torch.from_numpy(v) for k, v in vars(self).items()}  # shared memory


@dataclass
class Collector:
    """What persists between rollouts: the envs, their current (prepared) observations,
    episode bookkeeping, the normalizers and the action-sampling RNG."""

    envs: gym.vector.VectorEnv
    head: Any
    buffer: RolloutBuffer
    rng: np.random.Generator
    obs_rms: RunningMeanStd | None
    reward_scaler: RewardScaler | None
    obs_clip: float
    stats: EpisodeStats
    obs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    steps: int = 0
    """Rows of ``buffer`` the last rollout filled (``n_steps`` unless it was preempted)."""

    def prepare(self, raw: np.ndarray, update: bool) -> np.ndarray:
        """Raw (N, ...) observations -> (N, in_dim) float32 the network reads."""
        space = self.envs.single_observation_space
        if isinstance(space, gym.spaces.Box):  # encode_obs's Box case, minus a torch round trip
            x = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
        else:
            x = encode_obs(space, raw).numpy()
        if self.obs_rms is None:
            return x
        if update:
            self.obs_rms.update(x)
        return self.obs_rms.normalize(x, self.obs_clip)

    def reset(self, seed: int) -> None:
        raw, _ = self.envs.reset(seed=seed)
        self.obs = self.prepare(raw, update=True)


def collect_rollout(c: Collector, net: NumpyActorCritic,
                    stop: Callable[[int], bool] | None = None) -> list[tuple[float, int]]:
    """Fill ``c.buffer`` with ``n_steps`` vector steps of the policy ``net``; return the
    ``(return, length)`` of the episodes that finished (raw, unscaled rewards).

    ``stop(t)``, asked after each step ``t`` (1-based), ends the rollout early (DD-PPO's
    preemption of stragglers); ``c.steps`` holds the rows filled.
    """
    buf, head, k = c.buffer, c.head, c.head.n_outputs
    finished: list[tuple[float, int]] = []
    obs = c.obs
    noise = head.noise_np(c.rng, buf.logp.shape)  # (T, N, k): one RNG call per rollout
    c.steps = buf.obs.shape[0]
    for t in range(buf.obs.shape[0]):
        out = net(obs)  # (N, k + 1)
        actions = head.act_np(out[:, :k], net.log_std, noise[t])
        buf.obs[t], buf.outputs[t], buf.values[t] = obs, out[:, :k], out[:, k]
        buf.actions[t] = actions
        raw, rewards, term, trunc, info = c.envs.step(head.to_env(actions))
        done = term | trunc
        finished += c.stats.step(rewards, done)
        obs = c.prepare(raw, update=True)
        buf.rewards[t] = rewards if c.reward_scaler is None else c.reward_scaler(rewards, done)
        buf.terminated[t], buf.truncated[t] = term, trunc
        # Bootstrap time-limit cuts from V(final_obs), Pardo et al. 2018. ("_final_obs" is in
        # info only on steps where some episode ended: a cheap test before trunc.any().)
        if "_final_obs" in info and trunc.any():
            idx = np.flatnonzero(trunc & ~term)  # cut by the time limit, not ended by the env
            if idx.size:  # (an episode can end and hit the limit on the same step)
                final = c.prepare(final_observations(raw, info)[idx], update=False)
                buf.final_values[t, idx] = net(final)[:, k]
        if stop is not None and stop(t + 1):
            c.steps = t + 1
            break
    n = c.steps
    buf.last_values[:] = net(obs)[:, k]
    buf.logp[:n] = head.log_prob_np(buf.outputs[:n], net.log_std, buf.actions[:n])  # one pass
    c.obs = obs
    return finished
