"""Model-based RL from counts: certainty equivalence with R-max optimism.

The agent counts what it sees — N(s, a, s'), the summed rewards of (s, a), the states entered
with ``terminated`` and the reset states — and treats the maximum-likelihood model built from the
counts as if it were the truth (certainty equivalence; Sutton & Barto §8.1-8.2), planning on it
with value iteration (:func:`pavlov.tabular.planning.value_iteration`).

Exploration is directed by R-max (Brafman & Tennenholtz 2002, "R-max — A General Polynomial Time
Algorithm for Near-Optimal Reinforcement Learning"): a pair (s, a) tried fewer than
``known_threshold`` (their m) times is *unknown* and the model sends it to a fictitious absorbing
state with reward ``rmax``. Planning then routes the greedy policy to the nearest unknown pair
whenever the optimism beats what the known part of the model offers, so no ε is needed.

Two departures from the paper, both for episodic toy-text envs:

* The paper's fictitious state loops on itself forever, worth R_max / (1 − γ), which is infinite
  at γ = 1. Here it is *terminal* and ``rmax`` is paid once on entry: set ``rmax`` to at least
  the best return an episode can give from any state (the optimism must beat every known path).
* The paper freezes a pair's model once it is known; here known pairs keep being refined by new
  counts (certainty equivalence), and the model is re-planned every ``replan_every`` episodes
  as well as immediately when a pair becomes known (the paper's only re-plan trigger).

The learned :class:`~pavlov.tabular.mdp.MDP` therefore has S + 1 states; index S is the
fictitious R-max state. ``ModelBasedResult.Q`` / ``policy`` / ``V`` cover the S real states.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from pavlov.errors import ConfigError, check_count, check_positive, check_range
from pavlov.tabular.control import EpisodeCallback, discrete_sizes
from pavlov.tabular.exploration import EXPLORATION
from pavlov.tabular.mdp import MDP
from pavlov.tabular.planning import value_iteration


@dataclass
class ModelBasedConfig:
    """Hyperparameters of :func:`train_model_based`."""

    episodes: int = 500
    """Number of episodes of interaction (> 0)."""
    gamma: float = 0.99
    """Discount factor of the planner, in [0, 1]. γ = 1 needs every policy the planner may pick
    to terminate (stochastic shortest path), so < 1 is the safe default."""
    known_threshold: int = 5
    """R-max's m (≥ 1): visits after which a pair's estimated model is trusted."""
    rmax: float = 1.0
    """Optimistic value of an unknown pair, paid once on entering the fictitious terminal
    state; at least the best return the env can give (1 for FrozenLake, 10 for Battle)."""
    replan_every: int = 1
    """Re-plan after every ``replan_every`` episodes (≥ 1), besides when a pair becomes known."""
    epsilon: float = 0.0
    """ε of ε-greedy on the planned Q, in [0, 1]; R-max needs none, ties are random anyway."""
    plan_tol: float = 1e-8
    """Value-iteration stopping tolerance (> 0, sup-norm change of V in one sweep)."""
    plan_max_iter: int = 10_000
    """Value-iteration sweep limit per plan (> 0)."""
    seed: int = 0
    """Seeds the first ``env.reset``, ``env.action_space`` and the agent's own RNG."""

    def __post_init__(self) -> None:
        check_count("episodes", self.episodes)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_count("known_threshold", self.known_threshold)
        if not np.isfinite(self.rmax):
            raise ConfigError(f"rmax must be finite, got {self.rmax!r}")
        check_count("replan_every", self.replan_every)
        check_range("epsilon", self.epsilon, 0.0, 1.0)
        check_positive("plan_tol", self.plan_tol)
        check_count("plan_max_iter", self.plan_max_iter)


@dataclass
class ModelCounts:
    """Sufficient statistics of the observed transitions of an env with S states, A actions."""

    transitions: np.ndarray
    """(S, A, S) int: N(s, a, s'), times action a in s led to s'."""
    reward_sum: np.ndarray
    """(S, A) float: summed rewards of the transitions out of (s, a)."""
    terminal: np.ndarray
    """(S,) bool: states entered with ``terminated=True`` at least once."""
    starts: np.ndarray
    """(S,) int: how often each state was the first of an episode."""

    @classmethod
    def zeros(cls, n_states: int, n_actions: int) -> ModelCounts:
        """Empty counts."""
        return cls(
            transitions=np.zeros((n_states, n_actions, n_states), dtype=np.int64),
            reward_sum=np.zeros((n_states, n_actions)),
            terminal=np.zeros(n_states, dtype=bool),
            starts=np.zeros(n_states, dtype=np.int64),
        )

    def visits(self) -> np.ndarray:
        """(S, A) int: N(s, a)."""
        return self.transitions.sum(axis=2)

    def record(
        self, state: int, action: int, reward: float, next_state: int, terminated: bool
    ) -> int:
        """Count one transition; return N(s, a) after it."""
        self.transitions[state, action, next_state] += 1
        self.reward_sum[state, action] += reward
        if terminated:
            self.terminal[next_state] = True
        return int(self.transitions[state, action].sum())


def certainty_equivalent_mdp(
    counts: ModelCounts,
    known_threshold: int,
    rmax: float,
    horizon: int | None = None,
    name: str = "learned",
) -> MDP:
    """The R-max model of ``counts`` as an MDP with S + 1 states (index S: the R-max state).

    Known pairs (N(s, a) ≥ ``known_threshold``): P̂(s'|s,a) = N(s,a,s') / N(s,a) and
    R̂(s,a) = (summed reward) / N(s,a), the maximum-likelihood estimates. Unknown pairs move to
    the terminal R-max state with reward ``rmax``. Observed terminal states stay terminal.
    """
    n_states, n_actions, _ = counts.transitions.shape
    visits = counts.visits()  # (S, A)
    known = visits >= known_threshold
    safe = np.maximum(visits, 1)[:, :, None]  # unknown rows are overwritten below
    P = np.zeros((n_states + 1, n_actions, n_states + 1))
    P[:n_states, :, :n_states] = counts.transitions / safe
    R = np.zeros((n_states + 1, n_actions))
    R[:n_states] = np.where(known, counts.reward_sum / safe[:, :, 0], rmax)
    P[:n_states][~known] = 0.0
    P[:n_states, :, n_states][~known] = 1.0
    terminal = np.append(counts.terminal, True)
    starts = np.append(counts.starts, 0).astype(np.float64)
    initial = starts / starts.sum() if starts.sum() > 0 else None
    return MDP(P=P, R=R, terminal=terminal, initial=initial, horizon=horizon, name=name)


@dataclass
class ModelBasedResult:
    """What :func:`train_model_based` learned and how its episodes went."""

    mdp: MDP
    """The final learned model: S + 1 states, the last one the fictitious R-max state."""
    Q: np.ndarray
    """(S, A) action values planned on ``mdp`` (unknown pairs are worth ``rmax``)."""
    V: np.ndarray
    """(S,) planned state values, max_a Q."""
    policy: np.ndarray
    """(S,) int greedy action of ``Q`` (lowest index on ties)."""
    visits: np.ndarray
    """(S, A) int: N(s, a) at the end."""
    returns: np.ndarray
    """Undiscounted return of each episode (E,)."""
    lengths: np.ndarray
    """Steps in each episode (E,)."""
    successes: np.ndarray
    """(E,) bool: ``info["is_success"]``, else terminated with a positive last reward."""
    steps: int
    """Total env steps."""
    plans: int
    """How many times value iteration was run."""
    seconds: float
    """Wall time of the interaction-and-planning loop."""
    config: ModelBasedConfig = field(repr=False)
    """The config that produced this result."""

    @property
    def start_value(self) -> float:
        """Planned value of the start distribution, sum_s initial(s) V(s)."""
        return float(self.mdp.initial[:-1] @ self.V)


class _Planner:
    """Re-plans the R-max model and keeps the planned Q as Python lists for fast acting."""

    def __init__(self, counts: ModelCounts, cfg: ModelBasedConfig, horizon: int | None, name: str):
        self.counts, self.cfg, self.horizon, self.name = counts, cfg, horizon, name
        n_states, n_actions, _ = counts.transitions.shape
        self.q_rows = [[cfg.rmax] * n_actions for _ in range(n_states)]  # all pairs unknown
        self.plans = 0
        self.mdp: MDP | None = None
        self.Q = np.array(self.q_rows, dtype=np.float64)

    def plan(self) -> None:
        cfg = self.cfg
        self.mdp = certainty_equivalent_mdp(
            self.counts, cfg.known_threshold, cfg.rmax, self.horizon, self.name
        )
        plan = value_iteration(self.mdp, cfg.gamma, tol=cfg.plan_tol, max_iter=cfg.plan_max_iter)
        self.Q = plan.Q[:-1]  # (S, A): drop the fictitious state
        self.q_rows = self.Q.tolist()
        self.plans += 1


def train_model_based(
    env: gym.Env, cfg: ModelBasedConfig, on_episode: EpisodeCallback | None = None
) -> ModelBasedResult:
    """Learn a model of ``env`` (Discrete spaces) from counts and act greedily on its plan.

    ``on_episode(episode_index, episode_return, length, success, epsilon)`` is called after each
    episode if given.
    """
    n_states, n_actions = discrete_sizes(env, "train_model_based")
    name = f"learned {env.spec.id}" if env.spec is not None else "learned"
    horizon = env.spec.max_episode_steps if env.spec is not None else None
    counts = ModelCounts.zeros(n_states, n_actions)
    planner = _Planner(counts, cfg, horizon, name)
    select = EXPLORATION["epsilon-greedy"].select
    uniform = random.Random(cfg.seed).random
    env.action_space.seed(cfg.seed)
    returns, lengths, successes = [], [], []
    start = time.perf_counter()
    for episode in range(cfg.episodes):
        state, _ = env.reset(seed=cfg.seed if episode == 0 else None)
        counts.starts[state] += 1
        episode_return, length = 0.0, 0
        while True:
            action = select(planner.q_rows[state], cfg.epsilon, uniform)
            next_state, reward, terminated, truncated, info = env.step(action)
            episode_return += reward
            length += 1
            if counts.record(state, action, reward, next_state, terminated) == cfg.known_threshold:
                planner.plan()  # R-max: the set of known pairs changed
            if terminated or truncated:
                break
            state = next_state
        success = bool(info.get("is_success", terminated and reward > 0))
        returns.append(episode_return)
        lengths.append(length)
        successes.append(success)
        if (episode + 1) % cfg.replan_every == 0:
            planner.plan()
        if on_episode is not None:
            on_episode(episode, episode_return, length, success, cfg.epsilon)
    if planner.mdp is None or cfg.episodes % cfg.replan_every != 0:
        planner.plan()  # the result reflects every count
    seconds = time.perf_counter() - start
    return ModelBasedResult(
        mdp=planner.mdp,
        Q=planner.Q,
        V=planner.Q.max(axis=1),
        policy=planner.Q.argmax(axis=1),
        visits=counts.visits(),
        returns=np.array(returns, dtype=np.float64),
        lengths=np.array(lengths, dtype=np.int64),
        successes=np.array(successes, dtype=bool),
        steps=int(sum(lengths)),
        plans=planner.plans,
        seconds=seconds,
        config=cfg,
    )
