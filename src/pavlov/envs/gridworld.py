"""GridWorld: a tabular grid MDP read from a text map, with FrozenLake-style tables.

Cells (one character each)::

    S  start (floor; several S cells give a uniform start)   .  floor (reward 0)
    #  wall (never entered)                                   G  goal: terminal, ``goal_reward``
    H  hazard / hole: terminal, ``hazard_reward``             R  red square: NOT terminal,
                                                                 ``red_reward`` on every entry

``cell_rewards`` overrides or adds letters (``{"G": 5.0, "T": 2.0}``) and ``terminal_cells``
replaces the set of terminal letters (default ``"GH"``), so a map may use its own letters.

Dynamics. Actions are ``UP=0, DOWN=1, LEFT=2, RIGHT=3``. A move off the grid or into a wall
leaves the agent where it is. With probability ``slip`` the agent instead moves in one of the
two perpendicular directions (``slip / 2`` each). The reward of a transition is
``cell_reward[next cell] - step_cost``: the reward of the cell the agent ends up in, so bumping
a wall while standing on ``R`` pays ``red_reward`` again, minus a per-step cost (e.g.
``step_cost=0.04``; a negative cost is a per-step bonus). Entering a terminal cell ends the episode
(``terminated=True``); ``info["is_success"]`` is then True iff that cell's reward is positive.

Tables (the same contract as Gymnasium's toy-text FrozenLake, so planners can read them):
state ``s = row * ncol + col`` over all cells; ``P[s][a] = [(prob, next_state, reward,
terminated), ...]`` with outcomes merged per next state and probabilities summing to 1;
terminal and wall cells are absorbing (one ``(1.0, s, 0.0, True)`` entry: walls are never
reached); ``initial_state_distrib`` has shape ``(nS,)``. ``step`` samples from ``P`` itself, so
the tables and the dynamics cannot disagree. ``obs_type`` only changes what ``reset``/``step``
return (``"discrete"``: the int state; ``"onehot"``: a float32 ``(nS,)`` vector); ``P`` always
uses state indices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pavlov.errors import ConfigError, PavlovError, check_positive, check_range

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
ACTION_NAMES = ("up", "down", "left", "right")
# (d_row, d_col) per action; rows grow downwards.
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))
# The two directions an action can slip into.
PERPENDICULAR = ((LEFT, RIGHT), (LEFT, RIGHT), (UP, DOWN), (UP, DOWN))

START, FLOOR, WALL, GOAL, HAZARD, RED = "S", ".", "#", "G", "H", "R"
DEFAULT_TERMINAL_CELLS = GOAL + HAZARD
OBS_TYPES = ("discrete", "onehot")

DEFAULT_MAP = ("S...", ".#.H", "....", "H.#G")
GRID2X3_MAP = (".RG", "S..")
# The course's 2x3 grid: +10 goal top-right, a -10 red square top-middle that does not end the
# episode, start bottom-left, deterministic moves. Optimal: right, right, up (return +10).
GRID2X3_KWARGS: dict[str, Any] = {
    "map": GRID2X3_MAP,
    "goal_reward": 10.0,
    "red_reward": -10.0,
    "step_cost": 0.0,
    "slip": 0.0,
}

Transition = tuple[float, int, float, bool]  # (prob, next_state, reward, terminated)

# RGB colours per cell kind for render_mode="rgb_array".
COLOURS = {
    "floor": (235, 235, 235),
    "start": (180, 210, 255),
    "wall": (70, 70, 70),
    "goal": (60, 180, 75),  # terminal, positive reward
    "hole": (20, 20, 60),  # terminal, reward <= 0
    "bonus": (170, 230, 170),  # non-terminal, positive reward
    "penalty": (220, 50, 50),  # non-terminal, negative reward
    "grid": (150, 150, 150),
    "agent": (250, 180, 0),
}


def parse_map(grid_map: str | Sequence[str], known_cells: str) -> tuple[str, ...]:
    """Validate a text map and return its rows.

    ``grid_map`` is a sequence of equal-length strings or one multi-line string (blank lines and
    surrounding whitespace on each line are dropped). Raises :class:`PavlovError` naming the
    first problem: a ragged row, an unknown cell, no start cell.
    """
    if isinstance(grid_map, str):
        rows = [line.strip() for line in grid_map.splitlines() if line.strip()]
    elif isinstance(grid_map, Sequence):
        rows = list(grid_map)
    else:
        raise PavlovError(f"grid map must be a string or a list of strings, got {grid_map!r}")
    if not rows:
        raise PavlovError("grid map is empty")
    for r, row in enumerate(rows):
        if not isinstance(row, str):
            raise PavlovError(f"grid map row {r} must be a string, got {row!r}")
    ncol = len(rows[0])
    if ncol == 0:
        raise PavlovError("grid map row 0 is empty")
    for r, row in enumerate(rows):
        if len(row) != ncol:
            raise PavlovError(f"grid map row {r} has {len(row)} cells, expected {ncol}")
        for c, cell in enumerate(row):
            if cell not in known_cells:
                raise PavlovError(
                    f"unknown cell {cell!r} at row {r}, col {c} (known cells: {known_cells!r})"
                )
    if not any(START in row for row in rows):
        raise PavlovError(f"grid map has no start cell {START!r}")
    return tuple(rows)


def finite_float(name: str, value: float) -> float:
    """``float(value)``, or :class:`ConfigError` naming ``name`` if it is not a finite number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return value


def sample_transition(transitions: Sequence[Transition], rng: np.random.Generator) -> Transition:
    """Draw one ``(prob, next_state, reward, terminated)`` outcome from a ``P[s][a]`` list."""
    cdf = np.cumsum([t[0] for t in transitions])
    # First outcome whose cumulative probability exceeds u; clamp guards against round-off.
    i = int(np.searchsorted(cdf, rng.random(), side="right"))
    return transitions[min(i, len(transitions) - 1)]


def build_transitions(
    rows: Sequence[str],
    cell_rewards: Mapping[str, float],
    terminal_cells: str,
    step_cost: float,
    slip: float,
) -> dict[int, dict[int, list[Transition]]]:
    """Toy-text tables ``P[s][a] -> [(prob, next_state, reward, terminated), ...]``."""
    nrow, ncol = len(rows), len(rows[0])

    def move(r: int, c: int, a: int) -> int:
        nr, nc = r + MOVES[a][0], c + MOVES[a][1]
        if not (0 <= nr < nrow and 0 <= nc < ncol) or rows[nr][nc] == WALL:
            nr, nc = r, c  # off the grid or into a wall: stay
        return nr * ncol + nc

    P: dict[int, dict[int, list[Transition]]] = {}
    for r in range(nrow):
        for c in range(ncol):
            s = r * ncol + c
            cell = rows[r][c]
            if cell == WALL or cell in terminal_cells:
                P[s] = {a: [(1.0, s, 0.0, True)] for a in range(len(MOVES))}
                continue
            P[s] = {}
            for a in range(len(MOVES)):
                side1, side2 = PERPENDICULAR[a]
                probs: dict[int, float] = {}  # next_state -> prob, in first-seen order
                for direction, p in ((a, 1.0 - slip), (side1, slip / 2), (side2, slip / 2)):
                    if p > 0:
                        ns = move(r, c, direction)
                        probs[ns] = probs.get(ns, 0.0) + p
                P[s][a] = []
                for ns, p in probs.items():
                    next_cell = rows[ns // ncol][ns % ncol]
                    reward = cell_rewards.get(next_cell, 0.0) - step_cost
                    P[s][a].append((p, ns, reward, next_cell in terminal_cells))
    return P


class GridWorld(gym.Env):
    """A grid MDP from a text map; see the module docstring for cells, dynamics and tables.

    Args:
        map: rows of the grid (list of strings or one multi-line string). Default: a 4x4 map.
        goal_reward: reward for entering ``G`` (terminal).
        hazard_reward: reward for entering ``H`` (terminal).
        red_reward: reward for entering ``R`` (not terminal), paid on every entry.
        step_cost: subtracted from every transition's reward (a per-step penalty when > 0).
        slip: probability in [0, 1] of moving perpendicular to the chosen action.
        cell_rewards: per-letter rewards overriding or extending the defaults above.
        terminal_cells: letters that end the episode (default ``"GH"``); replaces the default.
        obs_type: ``"discrete"`` (int state) or ``"onehot"`` (float32 vector of length nS).
        render_mode: None, ``"ansi"`` (text grid) or ``"rgb_array"`` (uint8 image).
        cell_size: pixels per cell side in ``rgb_array`` renders.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        map: str | Sequence[str] = DEFAULT_MAP,
        goal_reward: float = 1.0,
        hazard_reward: float = -1.0,
        red_reward: float = -1.0,
        step_cost: float = 0.0,
        slip: float = 0.0,
        cell_rewards: Mapping[str, float] | None = None,
        terminal_cells: str | None = None,
        obs_type: str = "discrete",
        render_mode: str | None = None,
        cell_size: int = 32,
    ) -> None:
        rewards = {
            START: 0.0,
            FLOOR: 0.0,
            GOAL: finite_float("goal_reward", goal_reward),
            HAZARD: finite_float("hazard_reward", hazard_reward),
            RED: finite_float("red_reward", red_reward),
        }
        for letter, value in (cell_rewards or {}).items():
            if not isinstance(letter, str) or len(letter) != 1 or letter == WALL:
                raise ConfigError(
                    f"cell_rewards keys must be single non-wall characters, got {letter!r}"
                )
            rewards[letter] = finite_float(f"cell_rewards[{letter!r}]", value)
        terminal = DEFAULT_TERMINAL_CELLS if terminal_cells is None else terminal_cells
        if not isinstance(terminal, str) or WALL in terminal or START in terminal:
            raise ConfigError(
                f"terminal_cells must be a string of letters other than '#' and 'S', "
                f"got {terminal_cells!r}"
            )
        step_cost = finite_float("step_cost", step_cost)
        check_range("slip", finite_float("slip", slip), 0.0, 1.0)
        if obs_type not in OBS_TYPES:
            raise ConfigError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        if not isinstance(cell_size, int):
            raise ConfigError(f"cell_size must be an int, got {cell_size!r}")
        check_positive("cell_size", cell_size)

        known = "".join(dict.fromkeys(START + FLOOR + WALL + "".join(rewards) + terminal))
        self.grid = parse_map(map, known)
        self.nrow, self.ncol = len(self.grid), len(self.grid[0])
        self.cell_rewards = rewards
        self.terminal_cells = terminal
        self.step_cost = step_cost
        self.slip = float(slip)
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.cell_size = cell_size

        n_states = self.nrow * self.ncol
        self.P = build_transitions(self.grid, rewards, terminal, step_cost, self.slip)
        starts = np.array([cell == START for row in self.grid for cell in row], dtype=np.float64)
        self.initial_state_distrib = starts / starts.sum()  # (nS,), uniform over S cells
        self.action_space = spaces.Discrete(len(MOVES))
        if obs_type == "discrete":
            self.observation_space = spaces.Discrete(n_states)
        else:
            self.observation_space = spaces.Box(0.0, 1.0, (n_states,), np.float32)
        self.s = int(np.argmax(self.initial_state_distrib))
        self.lastaction: int | None = None

    @property
    def n_states(self) -> int:
        """Number of states ``nrow * ncol`` (walls included)."""
        return self.nrow * self.ncol

    @property
    def n_actions(self) -> int:
        return len(MOVES)

    def to_state(self, row: int, col: int) -> int:
        """State index of cell ``(row, col)``."""
        return row * self.ncol + col

    def to_cell(self, state: int) -> tuple[int, int]:
        """``(row, col)`` of a state index."""
        return divmod(int(state), self.ncol)

    def _obs(self) -> int | np.ndarray:
        if self.obs_type == "discrete":
            return int(self.s)
        onehot = np.zeros(self.n_states, dtype=np.float32)  # (nS,), a fresh array each call
        onehot[self.s] = 1.0
        return onehot

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[int | np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.s = int(self.np_random.choice(self.n_states, p=self.initial_state_distrib))
        self.lastaction = None
        return self._obs(), {"prob": 1.0}

    def step(self, action: int) -> tuple[int | np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise PavlovError(f"action must be an int in [0, {self.n_actions - 1}], got {action!r}")
        prob, next_state, reward, terminated = sample_transition(
            self.P[self.s][int(action)], self.np_random
        )
        self.s, self.lastaction = next_state, int(action)
        info: dict[str, Any] = {"prob": prob}
        if terminated:
            row, col = self.to_cell(next_state)
            info["is_success"] = self.cell_rewards.get(self.grid[row][col], 0.0) > 0
        return self._obs(), float(reward), bool(terminated), False, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return self._render_text()
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        return None

    def _render_text(self) -> str:
        # Each cell as " x "; the agent's cell as "[x]" so the cell under it stays visible.
        agent_row, agent_col = self.to_cell(self.s)
        lines = []
        if self.lastaction is not None:
            lines.append(f"({ACTION_NAMES[self.lastaction]})")
        for r, row in enumerate(self.grid):
            cells = [
                f"[{cell}]" if (r, c) == (agent_row, agent_col) else f" {cell} "
                for c, cell in enumerate(row)
            ]
            lines.append("".join(cells).rstrip())
        return "\n".join(lines) + "\n"

    def _cell_colour(self, cell: str) -> tuple[int, int, int]:
        reward = self.cell_rewards.get(cell, 0.0)
        if cell == WALL:
            kind = "wall"
        elif cell in self.terminal_cells:
            kind = "goal" if reward > 0 else "hole"
        elif reward > 0:
            kind = "bonus"
        elif reward < 0:
            kind = "penalty"
        else:
            kind = "start" if cell == START else "floor"
        return COLOURS[kind]

    def _render_rgb(self) -> np.ndarray:
        cs = self.cell_size
        img = np.empty((self.nrow * cs, self.ncol * cs, 3), dtype=np.uint8)  # (H, W, 3)
        for r, row in enumerate(self.grid):
            for c, cell in enumerate(row):
                img[r * cs : (r + 1) * cs, c * cs : (c + 1) * cs] = self._cell_colour(cell)
        img[::cs, :] = COLOURS["grid"]  # 1-px grid lines on each cell's top and left edge
        img[:, ::cs] = COLOURS["grid"]
        # The agent: a filled disc, radius ~1/3 of a cell, centred in its cell.
        agent_row, agent_col = self.to_cell(self.s)
        yy, xx = np.mgrid[0:cs, 0:cs]
        centre = (cs - 1) / 2
        disc = (yy - centre) ** 2 + (xx - centre) ** 2 <= (cs / 3) ** 2  # (cs, cs) bool
        patch = img[agent_row * cs : (agent_row + 1) * cs, agent_col * cs : (agent_col + 1) * cs]
        patch[disc] = COLOURS["agent"]
        return img


def grid2x3(**overrides: Any) -> GridWorld:
    """The course's 2x3 grid (rows ``".RG"``, ``"S.."``); keyword overrides win."""
    return GridWorld(**{**GRID2X3_KWARGS, **overrides})
