"""``pavlov/BattleText-v0``: the tabletop-battle MDP told in words, a second text-game family.

The dynamics, rewards and optimum are exactly :class:`pavlov.envs.battle.BattleMDP`'s (the same
``P`` table, sampled with the same RNG; ``V*(S0) = 5.3`` by using the sword, from
``pavlov solve pavlov/Battle-v0``). Only the interface changes:

* the observation is a sentence about the hero, the sword and the monster (the goal first);
* an action is a typed command: ``use sword``, ``move forward``, ``move back``, ``heal`` or a
  synonym (``attack``, ``advance``, ``flee``, ``rest``, ...). Anything else is answered with
  the list of commands, costs a move and changes nothing;
* ``info`` has TextWorld's keys, as ``pavlov/TextGame-v0``: ``admissible_commands``, ``score``
  (1 once the treasure is reached), ``max_score`` (1), ``won``, ``moves``, plus the MDP
  ``state``.

A language agent that learns this game faces a risk trade-off instead of a maze. It has to
learn to fight (0.5 + 0.1 chance of a dead monster) rather than dash for the treasure (0.3),
and to flee once the sword is lost.
"""

from __future__ import annotations

import re
import string
from typing import Any

import gymnasium as gym

from pavlov.envs.battle import (
    BACK,
    DEAD,
    FLED,
    FORWARD,
    HEAL,
    S0,
    S1,
    S2,
    S3,
    TERMINAL,
    USE_SWORD,
    WIN,
    BattleMDP,
)
from pavlov.envs.text.env import render_text

GOAL = "A monster guards a treasure. Reach the treasure alive, or run away to live."
COMMANDS = ("use sword", "move forward", "move back", "heal")
"""The admissible commands, in action order (:data:`pavlov.envs.battle.ACTION_NAMES`)."""
SYNONYMS = {
    USE_SWORD: ("use sword", "attack", "fight", "strike", "hit", "swing sword", "kill monster",
                "attack monster", "use the sword", "swing"),
    FORWARD: ("move forward", "forward", "go forward", "advance", "walk forward", "go on",
              "run forward", "charge", "sneak past", "go to treasure", "take treasure"),
    BACK: ("move back", "back", "go back", "flee", "run", "run away", "retreat", "escape",
           "leave"),
    HEAL: ("heal", "rest", "heal yourself", "heal me", "recover", "wait"),
}
_PHRASE = {phrase: action for action, phrases in SYNONYMS.items() for phrase in phrases}
STATE_TEXT = {
    S0: "You grip your sword. The monster stands between you and the treasure.",
    S1: "Your sword lies out of reach. The monster stands between you and the treasure.",
    S2: "The monster lies dead. Your sword is in your hand and the treasure is ahead.",
    S3: "The monster lies dead, but your sword is gone. The treasure is ahead.",
    WIN: "You reach the treasure and lift it. You win!",
    FLED: "You run back the way you came. You live, without the treasure.",
    DEAD: "The monster strikes you down. You are dead.",
}
DID = {USE_SWORD: "You swing your sword.", FORWARD: "You move forward.",
       BACK: "You move back.", HEAL: "You tend your wounds."}
NO_SWORD = "You reach for a sword you no longer hold."
MAX_TEXT = 1024


def parse_command(text: str) -> int | None:
    """A typed command -> its action, or None. Case, punctuation, articles and a leading
    "I"/"let's" are ignored ("Attack the monster!" is ``use sword``)."""
    words = re.sub(r"[^a-z ]+", " ", str(text).lower()).split()
    words = [w for w in words if w not in ("the", "a", "an", "my", "i", "lets", "let", "s")]
    phrase = " ".join(words)
    if phrase in _PHRASE:
        return _PHRASE[phrase]
    for n in (3, 2, 1):  # the first known phrase in the reply ("i will attack now")
        for i in range(len(words) - n + 1):
            if (hit := _PHRASE.get(" ".join(words[i:i + n]))) is not None:
                return hit
    return None


class BattleTextEnv(gym.Env):
    """The battle MDP behind text observations and text commands (see the module doc)."""

    metadata = {"render_modes": ["ansi", "human"]}

    def __init__(self, render_mode: str | None = None, **battle_kwargs: Any) -> None:
        self.mdp = BattleMDP(**battle_kwargs)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Text(MAX_TEXT, charset=string.printable)
        self.action_space = gym.spaces.Text(200, charset=string.printable)
        self.moves, self._last = 0, ""

    @property
    def state(self) -> int:
        return self.mdp.s

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.mdp.reset(seed=seed)
        self.moves = 0
        self._last = f"{GOAL}\n\n{STATE_TEXT[self.mdp.s]}"
        return self._last, self._info()

    def step(self, action: str):
        if self.mdp.s in TERMINAL:
            raise RuntimeError("the episode is over: call reset()")
        self.moves += 1
        chosen = parse_command(action)
        if chosen is None:
            self._last = (f"You cannot do {str(action).strip()[:40]!r} here. "
                          f"Try: {', '.join(COMMANDS)}.")
            return self._last, 0.0, False, False, self._info()
        before = self.mdp.s
        state, reward, terminated, truncated, _ = self.mdp.step(chosen)
        did = DID[chosen] if not (chosen == USE_SWORD and before in (S1, S3)) else NO_SWORD
        self._last = f"{did} {STATE_TEXT[state]}"
        if self.render_mode == "human":
            print(self._last)
        return self._last, reward, terminated, truncated, self._info()

    def _info(self) -> dict[str, Any]:
        over = self.mdp.s in TERMINAL
        return {"admissible_commands": [] if over else list(COMMANDS),
                "score": int(self.mdp.s == WIN), "max_score": 1, "won": self.mdp.s == WIN,
                "moves": self.moves, "state": self.mdp.s}

    def render(self) -> str | None:
        return render_text(self.render_mode, self._last)


__all__ = ["BattleTextEnv", "COMMANDS", "parse_command"]
