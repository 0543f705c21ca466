"""The text games' parser: a typed command -> an :class:`~pavlov.envs.text.world.Action`, or the
one sentence the game answers when it cannot make sense of it. It never raises on any string
(fuzzed in the tests): unknown verbs, unknown or ambiguous objects, missing parts and overlong
input each get a clear answer.

Grammar (case, punctuation and the articles a/an/the ignored): a direction or ``go|walk|move|
head <direction>`` (``n/s/e/w`` too); ``look|l``; ``inventory|inv|i``; ``take|get|grab|pick up
<thing>``; ``drop|put down <thing>``; ``open <thing>``; ``unlock <thing> with <key>``;
``examine|x|inspect|look at <thing>``. A partial name works when it is unambiguous here
("key" when one key is in reach).
"""

from __future__ import annotations

import re

from pavlov.envs.text.world import (
    DIRECTIONS,
    Action,
    State,
    World,
    reachable_objects,
    visible_lockables,
)

MAX_CHARS = 200
ABBREVIATIONS = {"n": "north", "s": "south", "e": "east", "w": "west"}
VERBS = {
    "go": "go", "walk": "go", "move": "go", "head": "go",
    "take": "take", "get": "take", "grab": "take", "pick": "take",
    "drop": "drop", "put": "drop",
    "open": "open", "unlock": "unlock",
    "examine": "examine", "x": "examine", "inspect": "examine",
    "look": "look", "l": "look", "inventory": "inventory", "inv": "inventory", "i": "inventory",
}  # fmt: skip
HELP = "Try: look, go north, take key, open chest, unlock door with key, inventory."
ARTICLES = {"a", "an", "the"}


def parse(text: object, world: World, state: State) -> Action | str:
    """``text`` as an action in this state, or the game's answer when it is not one."""
    if not isinstance(text, str):
        return f"Commands are text. {HELP}"
    if len(text) > MAX_CHARS:
        return f"That command is too long (over {MAX_CHARS} characters)."
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in ARTICLES]
    if not words:
        return f"Say something: type a command. {HELP}"
    first, rest = words[0], words[1:]
    if first in ABBREVIATIONS and not rest:
        return Action("go", ABBREVIATIONS[first])
    if first in DIRECTIONS and not rest:
        return Action("go", first)
    verb = VERBS.get(first)
    if verb is None:
        return f"I don't know the verb '{first}'. {HELP}"
    if first == "pick" and rest[:1] == ["up"] or first == "put" and rest[:1] == ["down"]:
        rest = rest[1:]
    if first == "look" and rest[:1] == ["at"]:
        verb, rest = "examine", rest[1:]
    if verb in ("look", "inventory"):
        return Action(verb) if not rest else f"'{first}' takes no object. {HELP}"
    if verb == "go":
        direction = ABBREVIATIONS.get(rest[0], rest[0]) if len(rest) == 1 else ""
        if direction not in DIRECTIONS:
            return "Go where? north, south, east or west."
        return Action("go", direction)
    if not rest:
        return f"{verb.capitalize()} what?"
    if verb == "unlock":
        if "with" not in rest:
            return f"Unlock the {' '.join(rest)} with what?"
        cut = rest.index("with")
        target, tool = _resolve(rest[:cut], world, state), _resolve(rest[cut + 1 :], world, state)
        for part in (target, tool):
            if isinstance(part, str) and not part.startswith("="):
                return part
        return Action("unlock", target[1:], tool[1:])  # type: ignore[index]
    target = _resolve(rest, world, state)
    if not target.startswith("="):
        return target
    return Action(verb, target[1:])


def _names(world: World) -> list[str]:
    return sorted({*world.start_objects, *world.containers, *world.doors.values()})


def _resolve(words: list[str], world: World, state: State) -> str:
    """``"=<name>"`` for the thing ``words`` name, else the game's answer."""
    if not words:
        return "Which one? Name it."
    phrase = " ".join(words)
    names = _names(world)
    if phrase in names:
        return "=" + phrase
    matches = [n for n in names if set(words) <= set(n.split())]
    here = {*reachable_objects(world, state), *state.inventory, *visible_lockables(world, state)}
    matches = [n for n in matches if n in here]  # a partial name means what is in reach or view
    if len(matches) == 1:
        return "=" + matches[0]
    if not matches:
        return f"You see no {phrase} here."
    return "Which do you mean: " + " or ".join(f"the {m}" for m in matches) + "?"
