"""A finite MDP as dense NumPy tables, and a builder from Gymnasium's toy-text ``P`` tables.

Conventions (Sutton & Barto 2018, ch. 3-4), with S states and A actions:

- ``P[s, a, s']`` is the probability of moving to ``s'`` after action ``a`` in state ``s``.
- ``R[s, a]`` is the *expected* immediate reward, ``sum_s' P[s, a, s'] * r(s, a, s')``.
- ``terminal[s]`` marks absorbing states worth 0: a backup never looks past them,
  ``Q = R + gamma * P @ (V * ~terminal)``. Their own rows of ``P`` and ``R`` carry no
  information, so the constructor stores them as self-loops with reward 0.

Gymnasium marks termination on the *transition* ``(prob, next_state, reward, terminated)``;
pavlov moves that flag onto the state entered, which is exact as long as no reachable transition
enters the same state with ``terminated=False`` (checked by :meth:`MDP.from_env`).

Dense ``(S, A, S)`` float64 tables cost ``8 * S^2 * A`` bytes: 12 MB for Taxi (500 states,
6 actions), fine for every toy-text env; a sparse layout would pay off only for S in the tens of
thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from pavlov.errors import PavlovError, check_positive

_PROB_ATOL = 1e-8  # rows of P and the start distribution must sum to 1 within this


@dataclass(frozen=True)
class MDP:
    """A finite Markov decision process with absorbing terminal states.

    Build one directly from arrays (only ``P`` and ``R`` are required) or from a Gymnasium env
    with :meth:`from_env`. The arrays are copied to float64 / bool and made read-only.
    """

    P: np.ndarray
    """(S, A, S) transition probabilities; rows of non-terminal states sum to 1. Rows of
    terminal states are ignored (they may be all zero) and stored as self-loops."""
    R: np.ndarray
    """(S, A) expected immediate reward; rows of terminal states are stored as 0."""
    terminal: np.ndarray | None = None
    """(S,) bool, absorbing states of value 0. Default: no terminal states."""
    initial: np.ndarray | None = None
    """(S,) start-state distribution summing to 1. Default: uniform over non-terminal states."""
    horizon: int | None = None
    """The env's step limit (TimeLimit truncation), if any; used by finite-horizon planning."""
    name: str = "mdp"
    """Human-readable name, e.g. the Gymnasium id, used in messages."""

    def __post_init__(self) -> None:
        P = np.array(self.P, dtype=np.float64)
        R = np.array(self.R, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise PavlovError(f"{self.name}: P must have shape (S, A, S), got {P.shape}")
        S, A, _ = P.shape
        if R.shape != (S, A):
            raise PavlovError(f"{self.name}: R must have shape {(S, A)} to match P, got {R.shape}")
        terminal = (
            np.zeros(S, dtype=bool)
            if self.terminal is None
            else np.array(self.terminal, dtype=bool)
        )
        if terminal.shape != (S,):
            raise PavlovError(f"{self.name}: terminal must have shape {(S,)}, got {terminal.shape}")
        _check_transitions(self.name, P, R, terminal)
        initial = _initial_distribution(self.name, self.initial, terminal)
        if self.horizon is not None:
            check_positive("horizon", self.horizon)

        # Terminal states absorb with reward 0 so that any backup leaves their value at 0.
        P[terminal] = 0.0
        P[terminal, :, terminal.nonzero()[0]] = 1.0
        R[terminal] = 0.0
        for field_name, array in (("P", P), ("R", R), ("terminal", terminal), ("initial", initial)):
            array.flags.writeable = False
            object.__setattr__(self, field_name, array)

    @property
    def n_states(self) -> int:
        """Number of states S."""
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        """Number of actions A."""
        return self.P.shape[1]

    @classmethod
    def from_env(cls, env: gym.Env) -> MDP:
        """Read the exact MDP of a toy-text-style Gymnasium env (wrapped or not).

        The env must have Discrete observation and action spaces, a table
        ``env.unwrapped.P[s][a] = [(prob, next_state, reward, terminated), ...]`` and
        ``env.unwrapped.initial_state_distrib`` (FrozenLake, Taxi, CliffWalking and pavlov's
        own envs do). ``R[s, a] = sum p * r``; a state entered by a ``terminated=True``
        transition is terminal. ``horizon`` is the step limit of a ``TimeLimit`` wrapper, else
        ``env.spec.max_episode_steps``.

        Raises :class:`PavlovError` when the env has no table, its spaces are not Discrete, or a
        state reachable from the start is entered both with ``terminated`` True and False.
        Conflicts among unreachable states are allowed: Taxi has them (a passenger already at
        the destination, which no episode visits) and they cannot affect any episode's return.
        """
        name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        _check_discrete(name, env)
        table = getattr(env.unwrapped, "P", None)
        if not hasattr(table, "__getitem__"):
            raise PavlovError(
                f"{name} has no transition table env.unwrapped.P[s][a]; an exact MDP needs one "
                "(FrozenLake, Taxi and CliffWalking have it)"
            )
        initial = getattr(env.unwrapped, "initial_state_distrib", None)
        if initial is None:
            raise PavlovError(f"{name} has no env.unwrapped.initial_state_distrib")
        S, A = int(env.observation_space.n), int(env.action_space.n)
        P, R, entered_terminal, entered_live = _read_table(name, table, S, A)
        _check_terminal_flags(name, P, entered_terminal, entered_live, np.asarray(initial))
        return cls(
            P=P,
            R=R,
            terminal=entered_terminal,
            initial=initial,
            horizon=_step_limit(env),
            name=name,
        )


def mdp_from_env(env: gym.Env) -> MDP:
    """Functional alias of :meth:`MDP.from_env`."""
    return MDP.from_env(env)


def _check_transitions(name: str, P: np.ndarray, R: np.ndarray, terminal: np.ndarray) -> None:
    """Raise unless P is a probability table on non-terminal rows and P, R are finite."""
    if not (np.isfinite(P).all() and np.isfinite(R).all()):
        raise PavlovError(f"{name}: P and R must be finite")
    if (P < 0).any():
        s, a, s2 = np.argwhere(P < 0)[0]
        raise PavlovError(f"{name}: P[{s}, {a}, {s2}] = {P[s, a, s2]} is negative")
    sums = P.sum(axis=2)  # (S, A)
    bad = (np.abs(sums - 1.0) > _PROB_ATOL) & ~terminal[:, None]
    if bad.any():
        s, a = np.argwhere(bad)[0]
        raise PavlovError(
            f"{name}: P[{s}, {a}, :] sums to {sums[s, a]:.12g}, not 1 "
            f"({int(bad.sum())} (state, action) rows are off)"
        )


def _initial_distribution(name: str, initial, terminal: np.ndarray) -> np.ndarray:
    """(S,) start distribution: validated copy of ``initial``, or uniform over live states."""
    S = terminal.shape[0]
    if initial is None:
        live = ~terminal
        if not live.any():
            raise PavlovError(f"{name}: every state is terminal")
        return live / live.sum()
    initial = np.array(initial, dtype=np.float64)
    if initial.shape != (S,):
        raise PavlovError(f"{name}: initial must have shape {(S,)}, got {initial.shape}")
    if (initial < 0).any() or abs(initial.sum() - 1.0) > _PROB_ATOL:
        raise PavlovError(
            f"{name}: initial must be a probability distribution, sums to {initial.sum():.12g}"
        )
    return initial


def _check_discrete(name: str, env: gym.Env) -> None:
    for kind, space in (("observation", env.observation_space), ("action", env.action_space)):
        if not isinstance(space, gym.spaces.Discrete):
            raise PavlovError(f"an exact MDP needs a Discrete {kind} space; {name} has {space}")
        if space.start != 0:
            raise PavlovError(f"{name}: Discrete {kind} space must start at 0, got {space}")


def _read_table(name: str, table, S: int, A: int):
    """Dense P (S, A, S), R (S, A) and per-state entered-terminated / entered-live flags.

    Flags are per (source, next) pair so that reachability can filter sources later:
    ``entered_terminal[s']`` and ``entered_live`` (S, S) for ``entered_live[s, s']``.
    """
    rows: list[int] = []
    actions: list[int] = []
    nexts: list[int] = []
    probs: list[float] = []
    rewards: list[float] = []
    dones: list[bool] = []
    try:
        for s in range(S):
            for a in range(A):
                for prob, s2, reward, terminated in table[s][a]:
                    rows.append(s)
                    actions.append(a)
                    nexts.append(int(s2))
                    probs.append(float(prob))
                    rewards.append(float(reward))
                    dones.append(bool(terminated))
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise PavlovError(
            f"{name}: env.unwrapped.P must map every state and action to "
            f"[(prob, next_state, reward, terminated), ...]; reading it failed: {err!r}"
        ) from err
    s_idx, a_idx, n_idx = np.array(rows), np.array(actions), np.array(nexts, dtype=np.int64)
    if n_idx.size and (n_idx.min() < 0 or n_idx.max() >= S):
        raise PavlovError(f"{name}: P names a next state outside [0, {S})")
    p, r, done = np.array(probs), np.array(rewards), np.array(dones, dtype=bool)
    P = np.zeros((S, A, S))
    R = np.zeros((S, A))
    np.add.at(P, (s_idx, a_idx, n_idx), p)  # FrozenLake lists the same next state twice
    np.add.at(R, (s_idx, a_idx), p * r)
    happens = p > 0
    entered_terminal = np.zeros(S, dtype=bool)
    entered_terminal[n_idx[happens & done]] = True
    entered_live = np.zeros((S, S), dtype=bool)
    entered_live[s_idx[happens & ~done], n_idx[happens & ~done]] = True
    return P, R, entered_terminal, entered_live


def _check_terminal_flags(
    name: str,
    P: np.ndarray,
    entered_terminal: np.ndarray,
    entered_live: np.ndarray,
    initial: np.ndarray,
) -> None:
    """Raise if a reachable state is both a terminal and a live successor (or a start state)."""
    # Terminal states are reached but never left, so only live reachable states are sources.
    sources = _reachable(P, initial > 0, entered_terminal) & ~entered_terminal
    live_targets = entered_live[sources].any(axis=0) | (initial > 0)
    clash = np.flatnonzero(entered_terminal & live_targets)
    if clash.size:
        raise PavlovError(
            f"{name}: state {clash[0]} is entered both with terminated=True and "
            "terminated=False (or is a start state); a per-state terminal mask cannot "
            "represent it"
        )


def _reachable(P: np.ndarray, start: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """(S,) bool: states reachable from ``start`` without passing through a terminal state."""
    edges = P.sum(axis=1) > 0  # (S, S): some action moves s -> s'
    reached = start.copy()
    frontier = start & ~terminal
    while frontier.any():
        new = edges[frontier].any(axis=0) & ~reached
        reached |= new
        frontier = new & ~terminal
    return reached


def _step_limit(env: gym.Env) -> int | None:
    """The ``TimeLimit`` wrapper's limit if one is present, else ``env.spec.max_episode_steps``."""
    wrapper = env
    while isinstance(wrapper, gym.Wrapper):
        if isinstance(wrapper, gym.wrappers.TimeLimit):
            return int(wrapper._max_episode_steps)
        wrapper = wrapper.env
    if env.spec is not None and env.spec.max_episode_steps is not None:
        return int(env.spec.max_episode_steps)
    return None
