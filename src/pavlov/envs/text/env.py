"""``pavlov/TextGame-v0``: a generated text game behind the Gymnasium API.

Observations and actions are text. ``reset(seed=s)`` plays game ``s`` (the seed *is* the game:
the same seed gives the same world and the same episode for the same commands);
``reset(options={"game": g})`` picks game ``g`` while ``seed`` seeds nothing else. ``step``
returns ``(observation, reward, terminated, truncated, info)``: the reward is the number of
milestones scored by the command (a key taken, a lock opened, the treasure taken), ``terminated``
is the win, and the registered ``max_episode_steps`` (50) truncates. ``info`` holds
``admissible_commands`` (what TextWorld calls them: the commands that do something here),
``score``, ``max_score``, ``won``, ``moves``, ``game`` and ``goal``.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym

from pavlov.envs.text.parser import parse
from pavlov.envs.text.world import (
    GameConfig,
    State,
    World,
    admissible,
    apply,
    describe,
    generate,
    initial_state,
)

MAX_TEXT = 4096


class TextGameEnv(gym.Env):
    """A generated text adventure: find the treasure behind locked doors and containers."""

    metadata = {"render_modes": ["ansi", "human"]}

    def __init__(self, rooms: int = 4, locks: int = 1, objects: int = 3, containers: int = 1,
                 render_mode: str | None = None) -> None:  # fmt: skip
        self.cfg = GameConfig(rooms, locks, objects, containers)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        charset = string.printable
        self.observation_space = gym.spaces.Text(MAX_TEXT, charset=charset)
        self.action_space = gym.spaces.Text(200, charset=charset)
        self.world: World | None = None
        self.state: State | None = None
        self.moves = 0
        self._last = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        game = (options or {}).get("game")
        if game is None:
            game = seed if seed is not None else int(self.np_random.integers(2**31))
        self.world = generate(self.cfg, int(game))
        self.state = initial_state(self.world)
        self.moves = 0
        self._last = f"{self.world.goal}\n\n{describe(self.world, self.state)}"
        return self._last, self._info()

    def step(self, action: str):
        if self.world is None or self.state is None:
            raise RuntimeError("call reset() before step()")
        parsed = parse(action, self.world, self.state)
        self.moves += 1
        if isinstance(parsed, str):
            self._last = parsed
            return parsed, 0.0, False, False, self._info()
        outcome = apply(self.world, self.state, parsed)
        self.state = outcome.state
        self._last = outcome.text
        if self.render_mode == "human":
            print(self._last)
        return self._last, float(len(outcome.points)), self.state.won, False, self._info()

    def _info(self) -> dict[str, Any]:
        assert self.world is not None and self.state is not None
        return {
            "admissible_commands": [a.text() for a in admissible(self.world, self.state)],
            "score": len(self.state.scored),
            "max_score": self.world.max_score,
            "won": self.state.won,
            "moves": self.moves,
            "game": self.world.seed,
            "goal": self.world.goal,
        }

    def render(self) -> str | None:
        return render_text(self.render_mode, self._last)


def render_text(mode: str | None, last: str) -> str | None:
    """A text game's ``render``: the last text for ``"ansi"``, printed for ``"human"``."""
    if mode == "ansi":
        return last
    if mode == "human":
        print(last)
    return None
