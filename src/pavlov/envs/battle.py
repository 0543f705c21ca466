"""BattleMDP: the course's tabletop-battle MDP (the "D&D Q-table" example).

A hero with a sword faces a monster guarding a treasure. Non-terminal states are
{has sword, no sword} x {monster alive, monster dead}; three terminal outcomes end the episode.

==  ====  =====================  =============================
id  name  state                  kind
==  ====  =====================  =============================
0   S0    sword, monster alive   start
1   S1    no sword, alive
2   S2    sword, monster dead
3   S3    no sword, dead
4   WIN   reached the treasure   terminal, reward +10 on entry
5   FLED  ran away               terminal, reward +1 on entry
6   DEAD  killed                 terminal, reward -10 on entry
==  ====  =====================  =============================

Actions: ``USE_SWORD=0, FORWARD=1, BACK=2, HEAL=3``. Every other transition pays 0.
Default dynamics, ``P(next | state, action)``:

=====  ========================================  ======================  ======  ==============
state  use sword                                 forward                 back    heal
=====  ========================================  ======================  ======  ==============
S0     .5 S2 (kill), .1 S3 (kill, sword breaks)  .3 WIN (sneak past)     1 FLED  .9 S0, .1 DEAD
       .3 S1 (sword knocked away), .1 DEAD       .7 DEAD
S1     .8 S1 (no sword to use), .2 DEAD          .5 S0 (recover sword)   1 FLED  .9 S1, .1 DEAD
                                                 .3 S1, .2 DEAD
S2     1 S2                                      .9 WIN, .1 S2           1 FLED  1 S2
S3     1 S3                                      .8 WIN, .2 S3           1 FLED  1 S3
=====  ========================================  ======================  ======  ==============

Optimal values at gamma = 1 (checked by value iteration in tests/envs/test_battle.py):
V(S2) = V(S3) = 10 (keep walking forward: the treasure is reached with probability 1; at
gamma = 1 waiting ties with it, any discount makes forward strictly best);
V(S1) = 1 (flee; dashing for the sword is worth only 0.5 * V(S0) + 0.3 * V(S1) - 2 = 0.95);
V(S0) = 0.5 * 10 + 0.1 * 10 + 0.3 * V(S1) + 0.1 * (-10) = 5.3, by using the sword
(forward: -4, back: 1, heal: at most 0.9 * 5.3 - 1 = 3.77).

Tables follow Gymnasium's toy-text contract (like FrozenLake): ``P[s][a] = [(prob, next_state,
reward, terminated), ...]``; terminal states are self-loops with reward 0 and ``terminated``
True; ``initial_state_distrib`` puts all mass on S0. ``step`` samples from ``P``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pavlov.envs.gridworld import Transition, finite_float, sample_transition
from pavlov.errors import ConfigError, PavlovError

S0, S1, S2, S3, WIN, FLED, DEAD = range(7)
STATE_NAMES = (
    "S0 (sword, monster alive)",
    "S1 (no sword, monster alive)",
    "S2 (sword, monster dead)",
    "S3 (no sword, monster dead)",
    "WIN (reached the treasure)",
    "FLED (ran away)",
    "DEAD (killed by the monster)",
)
NON_TERMINAL = (S0, S1, S2, S3)
TERMINAL = (WIN, FLED, DEAD)

USE_SWORD, FORWARD, BACK, HEAL = range(4)
ACTION_NAMES = ("use sword", "move forward", "move back", "heal")

Dynamics = Mapping[int, Mapping[int, Sequence[tuple[float, int]]]]
# state -> action -> [(prob, next_state), ...]; the table in the module docstring.
DEFAULT_DYNAMICS: dict[int, dict[int, tuple[tuple[float, int], ...]]] = {
    S0: {
        USE_SWORD: ((0.5, S2), (0.1, S3), (0.3, S1), (0.1, DEAD)),
        FORWARD: ((0.3, WIN), (0.7, DEAD)),
        BACK: ((1.0, FLED),),
        HEAL: ((0.9, S0), (0.1, DEAD)),
    },
    S1: {
        USE_SWORD: ((0.8, S1), (0.2, DEAD)),
        FORWARD: ((0.5, S0), (0.3, S1), (0.2, DEAD)),
        BACK: ((1.0, FLED),),
        HEAL: ((0.9, S1), (0.1, DEAD)),
    },
    S2: {
        USE_SWORD: ((1.0, S2),),
        FORWARD: ((0.9, WIN), (0.1, S2)),
        BACK: ((1.0, FLED),),
        HEAL: ((1.0, S2),),
    },
    S3: {
        USE_SWORD: ((1.0, S3),),
        FORWARD: ((0.8, WIN), (0.2, S3)),
        BACK: ((1.0, FLED),),
        HEAL: ((1.0, S3),),
    },
}


def validate_dynamics(dynamics: Dynamics) -> None:
    """Raise :class:`PavlovError` unless ``dynamics`` covers S0..S3 x 4 actions with
    distributions over known states that sum to 1."""
    for s in NON_TERMINAL:
        if s not in dynamics:
            raise PavlovError(f"battle dynamics has no entry for state {STATE_NAMES[s]}")
        for a, action_name in enumerate(ACTION_NAMES):
            if a not in dynamics[s]:
                raise PavlovError(f"battle dynamics has no action {action_name!r} in state S{s}")
            total = 0.0
            for outcome in dynamics[s][a]:
                if not (isinstance(outcome, Sequence) and len(outcome) == 2):
                    raise PavlovError(
                        f"battle dynamics S{s}/{action_name}: expected (prob, next_state) pairs, "
                        f"got {outcome!r}"
                    )
                prob, nxt = outcome
                if nxt not in range(len(STATE_NAMES)):
                    raise PavlovError(f"battle dynamics S{s}/{action_name}: unknown state {nxt!r}")
                if not (isinstance(prob, numbers.Real) and 0.0 <= prob <= 1.0):
                    raise PavlovError(
                        f"battle dynamics S{s}/{action_name}: probability {prob!r} not in [0, 1]"
                    )
                total += prob
            if not math.isclose(total, 1.0, abs_tol=1e-9):
                raise PavlovError(
                    f"battle dynamics S{s}/{action_name}: probabilities sum to {total}, expected 1"
                )


def build_transitions(
    dynamics: Dynamics, outcome_rewards: Mapping[int, float]
) -> dict[int, dict[int, list[Transition]]]:
    """Toy-text tables ``P[s][a] -> [(prob, next_state, reward, terminated), ...]``."""
    P: dict[int, dict[int, list[Transition]]] = {}
    for s in NON_TERMINAL:
        P[s] = {
            a: [
                (float(p), int(nxt), outcome_rewards.get(nxt, 0.0), nxt in TERMINAL)
                for p, nxt in dynamics[s][a]
                if p > 0
            ]
            for a in range(len(ACTION_NAMES))
        }
    for s in TERMINAL:
        P[s] = {a: [(1.0, s, 0.0, True)] for a in range(len(ACTION_NAMES))}
    return P


class BattleMDP(gym.Env):
    """The tabletop-battle MDP; see the module docstring for states, actions and dynamics.

    Args:
        win_reward: reward on entering WIN.
        flee_reward: reward on entering FLED.
        death_reward: reward on entering DEAD.
        dynamics: ``{state: {action: [(prob, next_state), ...]}}`` for S0..S3, replacing
            :data:`DEFAULT_DYNAMICS` as a whole (validated: each row must sum to 1).
        render_mode: None or ``"ansi"`` (the state's name and the last action).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        win_reward: float = 10.0,
        flee_reward: float = 1.0,
        death_reward: float = -10.0,
        dynamics: Dynamics | None = None,
        render_mode: str | None = None,
    ) -> None:
        rewards = {
            WIN: finite_float("win_reward", win_reward),
            FLED: finite_float("flee_reward", flee_reward),
            DEAD: finite_float("death_reward", death_reward),
        }
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        dynamics = DEFAULT_DYNAMICS if dynamics is None else dynamics
        validate_dynamics(dynamics)

        self.outcome_rewards = rewards
        self.P = build_transitions(dynamics, self.outcome_rewards)
        self.initial_state_distrib = np.zeros(len(STATE_NAMES))  # (nS,)
        self.initial_state_distrib[S0] = 1.0
        self.observation_space = spaces.Discrete(len(STATE_NAMES))
        self.action_space = spaces.Discrete(len(ACTION_NAMES))
        self.render_mode = render_mode
        self.s = S0
        self.lastaction: int | None = None

    @property
    def n_states(self) -> int:
        return len(STATE_NAMES)

    @property
    def n_actions(self) -> int:
        return len(ACTION_NAMES)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        super().reset(seed=seed)
        self.s = int(self.np_random.choice(self.n_states, p=self.initial_state_distrib))
        self.lastaction = None
        return self.s, {"prob": 1.0}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise PavlovError(f"action must be an int in [0, {self.n_actions - 1}], got {action!r}")
        prob, next_state, reward, terminated = sample_transition(
            self.P[self.s][int(action)], self.np_random
        )
        self.s, self.lastaction = next_state, int(action)
        info: dict[str, Any] = {"prob": prob}
        if terminated:
            info["is_success"] = next_state == WIN
        return self.s, float(reward), bool(terminated), False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        last = "" if self.lastaction is None else f" (after {ACTION_NAMES[self.lastaction]})"
        return f"{STATE_NAMES[self.s]}{last}\n"
