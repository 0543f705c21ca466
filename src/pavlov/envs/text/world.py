"""Generated text-game worlds: rooms on a grid, doors, keys, containers and a treasure, solvable
by construction and deterministic given the seed.

A world is static (:class:`World`); everything that changes is a :class:`State`, a hashable
value, and :func:`apply` is the transition function ``(world, state, action) -> (state, events)``
over parsed actions. The environment (:mod:`pavlov.envs.text.env`), the parser and the planner
(:func:`pavlov.envs.text.baselines.optimal_actions`) are built on these three.

Construction (why it is always solvable): the rooms form a tree grown by a random walk on a grid
(so "north" and "south" are consistent), the treasure sits in a container in the room farthest
from the start, and the ``locks`` locks are placed on the unique path there (doors, or the
treasure's container). The key of the i-th lock on that path lies in a room reachable from the
start once locks 1..i-1 are open, sometimes in a closed (unlocked) container: taking the keys in
path order opens every lock. Tested over 1,000 seeds by the planner.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, replace

from pavlov.errors import ConfigError, check_count

DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
ROOM_NAMES = (
    "kitchen", "cellar", "library", "hallway", "pantry", "study", "attic", "garden", "chapel",
    "armory", "bedroom", "workshop", "gallery", "vault", "stable", "greenhouse",
)  # fmt: skip
METALS = ("brass", "iron", "silver", "copper", "golden", "bronze", "steel", "tin")
CONTAINERS = ("chest", "cabinet", "trunk", "crate", "box", "locker")
TREASURES = ("ruby ring", "jade idol", "silver crown", "emerald amulet", "ancient map",
             "pearl necklace", "crystal orb", "ivory statue")  # fmt: skip
THINGS = ("apple", "candle", "book", "lamp", "rope", "cup", "feather", "spoon", "bottle",
          "hammer", "scarf", "shovel", "bell", "mirror", "pillow", "basket")  # fmt: skip


@dataclass(frozen=True)
class GameConfig:
    """Difficulty settings of a generated game."""

    rooms: int = 4
    """Rooms, 1-16 (a tree on a grid: exits are north/south/east/west)."""
    locks: int = 1
    """Locked doors / containers on the way to the treasure, each with its key elsewhere,
    0..rooms (a lock is a door on the path or the treasure's container)."""
    objects: int = 3
    """Distractor objects scattered in rooms and containers (takeable, useless), 0-16."""
    containers: int = 1
    """Extra (unlocked, closed) containers besides the treasure's, 0-5; keys may hide in them."""

    def __post_init__(self) -> None:
        check_count("rooms", self.rooms)
        check_count("locks", self.locks, minimum=0)
        check_count("objects", self.objects, minimum=0)
        check_count("containers", self.containers, minimum=0)
        if self.rooms > len(ROOM_NAMES):
            raise ConfigError(f"rooms must be <= {len(ROOM_NAMES)}, got {self.rooms}")
        if self.locks > min(self.rooms, len(METALS)):
            raise ConfigError(f"locks must be <= rooms ({self.rooms}) and <= {len(METALS)}, "
                              f"got {self.locks}")  # fmt: skip
        if self.objects > len(THINGS):
            raise ConfigError(f"objects must be <= {len(THINGS)}, got {self.objects}")
        if self.containers > len(CONTAINERS) - 1:
            raise ConfigError(f"containers must be <= {len(CONTAINERS) - 1}, got "
                              f"{self.containers}")  # fmt: skip


@dataclass(frozen=True)
class World:
    """The static part of a game."""

    seed: int
    rooms: tuple[str, ...]
    exits: dict[str, dict[str, str]]
    """``room -> {direction: room}``."""
    doors: dict[frozenset[str], str]
    """The doors: ``{room pair: door name}`` ("iron door"); a door starts closed and locked."""
    locks: dict[str, str]
    """``lockable (door or container) -> the key that opens it``."""
    containers: dict[str, str]
    """``container -> its room``."""
    start: str
    treasure: str
    start_objects: dict[str, str]
    """``object -> where it starts`` (a room or a container)."""
    milestones: tuple[str, ...]
    """What scores a point, in solution order: ``"take:<key>"``, ``"unlock:<lock>"``,
    ``"take:<treasure>"`` (the win)."""

    @property
    def max_score(self) -> int:
        return len(self.milestones)

    @property
    def goal(self) -> str:
        return f"Find the {self.treasure} and take it."


@dataclass(frozen=True)
class State:
    """Everything that changes in a game; hashable (the planner's node)."""

    room: str
    where: tuple[tuple[str, str], ...]
    """Sorted ``(object, location)``: a room, a container, or ``"you"`` (carried)."""
    unlocked: frozenset[str] = frozenset()
    opened: frozenset[str] = frozenset()
    scored: frozenset[str] = frozenset()
    won: bool = False

    @property
    def location(self) -> dict[str, str]:
        return dict(self.where)

    @property
    def inventory(self) -> tuple[str, ...]:
        return tuple(o for o, loc in self.where if loc == "you")

    def moved(self, obj: str, to: str) -> State:
        where = tuple(sorted((o, to if o == obj else loc) for o, loc in self.where))
        return replace(self, where=where)


@dataclass(frozen=True)
class Action:
    """A parsed command: ``verb`` in go/take/drop/open/unlock/look/inventory/examine."""

    verb: str
    target: str = ""
    tool: str = ""

    def text(self) -> str:
        if self.verb == "unlock":
            return f"unlock {self.target} with {self.tool}"
        return f"{self.verb} {self.target}".strip()


# ---------------------------------------------------------------------------------------------
# Generation


def generate(cfg: GameConfig, seed: int) -> World:
    """The game of ``seed`` under ``cfg``: same seed, same game (a private ``random.Random``)."""
    rng = random.Random(seed)
    names = rng.sample(ROOM_NAMES, cfg.rooms)
    cells, exits = {names[0]: (0, 0)}, {names[0]: {}}
    taken = {(0, 0): names[0]}
    for i, name in enumerate(names[1:], 1):  # grow a tree on the grid
        # the first `locks` rooms form a chain, so the path to the treasure has room for them
        chain = [names[i - 1]] if i < cfg.locks else sorted(cells)
        options = _free_neighbours(cells, taken, chain) or _free_neighbours(cells, taken, names[:i])
        base, direction, cell = rng.choice(options)
        cells[name], taken[cell] = cell, name
        exits[name] = {OPPOSITE[direction]: base}
        exits[base][direction] = name
    start = names[0]
    parents = _bfs_parents(exits, start)
    goal_room = max(names, key=lambda r: (_depth(parents, r), names.index(r)))
    path = _path(parents, goal_room)  # start .. goal_room
    kinds = rng.sample(CONTAINERS, cfg.containers + 1)
    treasure_box, extra_boxes = kinds[0], kinds[1:]
    containers = {treasure_box: goal_room}
    for box in extra_boxes:
        containers[box] = rng.choice(names)
    # the lockable things on the way, in path order: doors on the path, then the treasure's box
    on_path = [frozenset(pair) for pair in zip(path, path[1:], strict=False)]
    chosen = sorted(rng.sample(range(len(on_path) + 1), cfg.locks))
    metals = rng.sample(METALS, cfg.locks)
    doors, locks, start_objects, milestones = {}, {}, {}, []
    for metal, index in zip(metals, chosen, strict=True):
        lockable = treasure_box if index == len(on_path) else f"{metal} door"
        if index < len(on_path):
            doors[on_path[index]] = lockable
        key = f"{metal} key"
        locks[lockable] = key
        # the key: in a room reachable with the earlier locks open (not past this one)
        reachable = path[: index + 1] + _off_path_rooms(exits, path, index)
        spot = rng.choice(sorted(set(reachable)))
        boxes = [b for b in extra_boxes if containers[b] == spot]
        start_objects[key] = rng.choice(boxes) if boxes and rng.random() < 0.5 else spot
        milestones += [f"take:{key}", f"unlock:{lockable}"]
    treasure = rng.choice(TREASURES)
    start_objects[treasure] = treasure_box
    milestones.append(f"take:{treasure}")
    for thing in rng.sample(THINGS, cfg.objects):
        start_objects[thing] = rng.choice(sorted(names) + extra_boxes)
    return World(seed, tuple(names), exits, doors, locks, containers, start, treasure,
                 start_objects, tuple(milestones))  # fmt: skip


def _free_neighbours(cells, taken, bases) -> list[tuple[str, str, tuple[int, int]]]:
    out = []
    for base in bases:
        for direction, (dx, dy) in sorted(DIRECTIONS.items()):
            cell = (cells[base][0] + dx, cells[base][1] + dy)
            if cell not in taken:
                out.append((base, direction, cell))
    return out


def _bfs_parents(exits: dict[str, dict[str, str]], start: str) -> dict[str, str | None]:
    parents: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        room = queue.popleft()
        for _, nxt in sorted(exits[room].items()):
            if nxt not in parents:
                parents[nxt] = room
                queue.append(nxt)
    return parents


def _depth(parents: dict[str, str | None], room: str) -> int:
    depth = 0
    while parents[room] is not None:
        room, depth = parents[room], depth + 1  # type: ignore[assignment]
    return depth


def _path(parents: dict[str, str | None], room: str) -> list[str]:
    out = [room]
    while parents[out[-1]] is not None:
        out.append(parents[out[-1]])  # type: ignore[arg-type]
    return out[::-1]


def _off_path_rooms(exits, path: list[str], index: int) -> list[str]:
    """Rooms hanging off ``path[: index + 1]`` without crossing a later path edge."""
    blocked = set(path[index + 1 :])
    seen, queue = set(path[: index + 1]), deque(path[: index + 1])
    while queue:
        room = queue.popleft()
        for nxt in exits[room].values():
            if nxt not in seen and nxt not in blocked:
                seen.add(nxt)
                queue.append(nxt)
    return sorted(seen - set(path))


def initial_state(world: World) -> State:
    return State(world.start, tuple(sorted(world.start_objects.items())))


# ---------------------------------------------------------------------------------------------
# Rules


def door_between(world: World, a: str, b: str) -> str | None:
    return world.doors.get(frozenset((a, b)))


def visible_lockables(world: World, state: State) -> list[str]:
    """Doors of this room and containers in it."""
    here = [world.doors[frozenset((state.room, r))] for r in world.exits[state.room].values()
            if frozenset((state.room, r)) in world.doors]  # fmt: skip
    return here + sorted(c for c, room in world.containers.items() if room == state.room)


def reachable_objects(world: World, state: State) -> list[str]:
    """Objects on this room's floor or in its open containers (not carried)."""
    loc = state.location
    open_here = {c for c, r in world.containers.items() if r == state.room and c in state.opened}
    return sorted(o for o, at in loc.items() if at == state.room or at in open_here)


@dataclass
class Outcome:
    state: State
    text: str
    points: list[str] = field(default_factory=list)
    """Milestones reached by this action."""


def apply(world: World, state: State, action: Action) -> Outcome:
    """The rules: the next state, what the game says, the milestones scored."""
    verb, target, tool = action.verb, action.target, action.tool
    if verb == "look":
        return Outcome(state, describe(world, state))
    if verb == "inventory":
        items = state.inventory
        return Outcome(state, "You are carrying: " + ", ".join(items) + "." if items
                       else "You are carrying nothing.")  # fmt: skip
    if verb == "go":
        nxt = world.exits[state.room].get(target)
        if nxt is None:
            return Outcome(state, f"You can't go {target} from here.")
        door = door_between(world, state.room, nxt)
        if door is not None and door not in state.opened:
            return Outcome(state, f"The {door} is closed.")
        moved = replace(state, room=nxt)
        return Outcome(moved, describe(world, moved))
    if verb == "examine":
        return Outcome(state, _examine(world, state, target))
    if verb == "take":
        if target in state.inventory:
            return Outcome(state, f"You already have the {target}.")
        if target not in reachable_objects(world, state):
            return Outcome(state, f"You see no {target} here.")
        after = state.moved(target, "you")
        return _score(world, after, f"take:{target}", f"You take the {target}.")
    if verb == "drop":
        if target not in state.inventory:
            return Outcome(state, f"You don't have the {target}.")
        return Outcome(state.moved(target, state.room), f"You drop the {target}.")
    if verb in ("open", "unlock"):
        if target not in visible_lockables(world, state):
            return Outcome(state, f"You see no {target} here.")
        if verb == "open":
            if target in state.opened:
                return Outcome(state, f"The {target} is already open.")
            if target in world.locks and target not in state.unlocked:
                return Outcome(state, f"The {target} is locked.")
            opened = replace(state, opened=state.opened | {target})
            inside = sorted(o for o, at in state.location.items() if at == target)
            says = f"You open the {target}." + (
                f" Inside: {', '.join(inside)}." if inside else " It is empty."
            ) if target in world.containers else f"You open the {target}."  # fmt: skip
            return Outcome(opened, says)
        if target not in world.locks or target in state.unlocked:
            return Outcome(state, f"The {target} is not locked.")
        if tool not in state.inventory:
            return Outcome(state, f"You don't have the {tool}.")
        if world.locks[target] != tool:
            return Outcome(state, f"The {tool} doesn't fit the {target}.")
        after = replace(state, unlocked=state.unlocked | {target})
        return _score(world, after, f"unlock:{target}", f"You unlock the {target}.")
    return Outcome(state, "Nothing happens.")


def _score(world: World, state: State, event: str, text: str) -> Outcome:
    if event not in world.milestones or event in state.scored:
        return Outcome(state, text)
    state = replace(state, scored=state.scored | {event})
    if event == f"take:{world.treasure}":
        state = replace(state, won=True)
        text += " You found the treasure: you win!"
    return Outcome(state, text, [event])


def _examine(world: World, state: State, target: str) -> str:
    if target in state.inventory or target in reachable_objects(world, state):
        return f"A {target}." + (" It opens something." if target.endswith(" key") else "")
    if target in visible_lockables(world, state):
        status = ("open" if target in state.opened else
                  "locked" if target in world.locks and target not in state.unlocked
                  else "closed")  # fmt: skip
        return f"The {target} is {status}."
    return f"You see no {target} here."


def describe(world: World, state: State) -> str:
    """What the player sees in the room: name, exits (with doors), containers, objects."""
    room = state.room
    exits = []
    for direction, nxt in sorted(world.exits[room].items()):
        door = door_between(world, room, nxt)
        if door is None:
            exits.append(direction)
        else:
            status = "open" if door in state.opened else "closed"
            exits.append(f"{direction} (a {status} {door})")
    boxes = [f"a {c} ({'open' if c in state.opened else 'closed'})"
             for c, r in sorted(world.containers.items()) if r == room]  # fmt: skip
    things = [o for o, at in state.location.items() if at == room]
    lines = [f"-= {room.title()} =-", f"Exits: {', '.join(exits)}."]
    if boxes:
        lines.append(f"There is {', '.join(boxes)}.")
    if things:
        lines.append(f"On the floor: {', '.join(sorted(things))}.")
    return "\n".join(lines)


def admissible(world: World, state: State) -> list[Action]:
    """The commands that do something here (TextWorld's "admissible commands")."""
    out = [Action("look"), Action("inventory")]
    for direction, nxt in sorted(world.exits[state.room].items()):
        door = door_between(world, state.room, nxt)
        if door is None or door in state.opened:
            out.append(Action("go", direction))
    for thing in visible_lockables(world, state):
        if thing in state.opened:
            continue
        if thing in world.locks and thing not in state.unlocked:
            out += [Action("unlock", thing, k) for k in state.inventory if k.endswith(" key")]
        else:
            out.append(Action("open", thing))
    out += [Action("take", o) for o in reachable_objects(world, state)]
    out += [Action("drop", o) for o in state.inventory]
    return out
