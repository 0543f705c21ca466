"""The algorithms ``pavlov train`` knows, resolved lazily so that tabular runs never import torch.

Two kinds share one registry:

* ``tabular``: episode-based learners on Discrete envs (``train(env, cfg, on_episode)``); their
  checkpoint is a dict of arrays (``.npz``) from which a greedy ``policy(obs, t)`` is rebuilt.
* ``deep``: modules under :mod:`pavlov.agents` following the contract of
  :mod:`pavlov.agents.common` (``Config``, ``train(env_id, cfg, hooks=..., resume=...)``,
  ``load_policy(state, cfg, env)``); checkpoints are ``.pt``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pavlov.errors import PavlovError


@dataclass(frozen=True)
class TabularAlgo:
    """A tabular learner: how to configure, train, checkpoint and act with it."""

    name: str
    help: str
    module: str
    config: str
    train_fn: str
    defaults: dict[str, Any] = field(default_factory=dict)
    kind: str = "tabular"

    @property
    def config_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def check(self, env) -> None:
        from pavlov.envs.factory import require_discrete

        if self.name != "linear-q":  # linear FA also takes Box observations (tile coding)
            require_discrete(env, self.name)

    @property
    def resumable(self) -> bool:
        """Whether its runs checkpoint between episodes and resume (the TD control methods)."""
        return self.train_fn == "train_tabular"

    def train(self, env, cfg, on_episode: Callable[..., Any], **resume_kw: Any):
        """``resume_kw``: ``checkpoint``, ``checkpoint_every``, ``resume`` where resumable."""
        train = getattr(importlib.import_module(self.module), self.train_fn)
        return train(env, cfg, on_episode=on_episode, **resume_kw)

    def state(self, result) -> dict[str, np.ndarray]:
        """Arrays that fully determine the greedy policy."""
        if hasattr(result, "theta"):
            return {"theta": result.theta}
        return {"Q": result.Q}

    def policy(self, state: dict[str, np.ndarray], cfg, env) -> Callable[[Any, int], Any]:
        """The greedy policy of a checkpoint's arrays; PavlovError if they are not this agent's
        (another algorithm's checkpoint, or a table of another env's size)."""
        if not isinstance(state, dict) or not ({"theta", "Q"} & set(state)):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise PavlovError(f"checkpoint is not a {self.name} checkpoint (no Q table or "
                              f"theta; found {keys})")
        if "Q" in state:
            want = tuple(int(s.n) for s in (env.observation_space, env.action_space)
                         if hasattr(s, "n"))
            if np.ndim(state["Q"]) != 2 or tuple(np.shape(state["Q"])) != want:
                raise PavlovError(f"checkpoint Q table has shape {tuple(np.shape(state['Q']))}, "
                                  f"but the env has (states, actions) = {want}")
        if "theta" in state:
            from pavlov.tabular.linear import default_features

            theta = state["theta"]
            feats = default_features(env, cfg.n_tilings, cfg.tiles_per_dim)
            return lambda obs, t: int(np.argmax(theta @ feats(obs)))
        from pavlov.tabular.evaluate import greedy_q_policy

        return greedy_q_policy(state["Q"])


@dataclass(frozen=True)
class DeepAlgo:
    """A deep agent module under :mod:`pavlov.agents`."""

    name: str
    help: str
    module: str
    kind: str = "deep"

    @property
    def mod(self):
        return importlib.import_module(self.module)

    @property
    def config_cls(self) -> type:
        return self.mod.Config

    def check(self, env) -> None:
        """Spaces the agent cannot handle fail here, before any file is written."""
        from pavlov.agents.common import obs_dim, require_action_space

        require_action_space(env.action_space, self.name, self.mod.ACTION_SPACES)
        obs_dim(env.observation_space)


_TAB = "pavlov.tabular"
ALGOS: dict[str, TabularAlgo | DeepAlgo] = {
    a.name: a
    for a in [
        TabularAlgo(
            "q-learning",
            "off-policy TD control (Watkins 1989)",
            f"{_TAB}.control",
            "TabularConfig",
            "train_tabular",
            {"algo": "q-learning"},
        ),
        TabularAlgo(
            "sarsa",
            "on-policy TD control",
            f"{_TAB}.control",
            "TabularConfig",
            "train_tabular",
            {"algo": "sarsa"},
        ),
        TabularAlgo(
            "expected-sarsa",
            "on-policy TD control, expectation over the next action",
            f"{_TAB}.control",
            "TabularConfig",
            "train_tabular",
            {"algo": "expected-sarsa"},
        ),
        TabularAlgo(
            "model-based",
            "learn P and R from counts, plan with value iteration (R-max)",
            f"{_TAB}.model_based",
            "ModelBasedConfig",
            "train_model_based",
        ),
        TabularAlgo(
            "linear-q",
            "semi-gradient Q-learning on one-hot or tile-coded features",
            f"{_TAB}.linear",
            "LinearQConfig",
            "train_linear_q",
        ),
        DeepAlgo(
            "dqn", "deep Q-network: replay, target network, double-DQN option", "pavlov.agents.dqn"
        ),
        DeepAlgo(
            "reinforce",
            "Monte-Carlo policy gradient with an optional learned baseline",
            "pavlov.agents.reinforce",
        ),
        DeepAlgo(
            "a2c",
            "synchronous advantage actor-critic with n-step returns or GAE",
            "pavlov.agents.a2c",
        ),
        DeepAlgo(
            "ppo", "proximal policy optimization, discrete or Gaussian actions", "pavlov.agents.ppo"
        ),
        DeepAlgo(
            "apg", "analytic policy gradient through differentiable dynamics", "pavlov.agents.apg"
        ),
    ]
}


def get_algo(name: str) -> TabularAlgo | DeepAlgo:
    """The registry entry for ``name``, or a PavlovError listing the known names."""
    if name not in ALGOS:
        raise PavlovError(f"unknown algorithm {name!r}; known: {', '.join(ALGOS)}")
    algo = ALGOS[name]
    if isinstance(algo, DeepAlgo):
        try:
            importlib.import_module(algo.module)
        except ModuleNotFoundError as e:
            if e.name != algo.module:
                raise
            raise PavlovError(f"algorithm {name!r} is not available in this build") from None
    return algo
