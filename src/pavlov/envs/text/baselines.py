"""Baselines for the text games, with known levels: the planner's optimum (exact: the game's
state graph is known), random play over the admissible commands, and tabular Q-learning over
an abstraction of the state (room, inventory, locks, points scored), learnt on each game.

Each is a *policy factory*: ``make(world) -> act(observation, info) -> command``; an episode
runner and :func:`evaluate` (success rate, moves and return with 95% intervals on held-out game
seeds) work with any of them, the LLM agent included.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pavlov.envs.text.env import TextGameEnv
from pavlov.envs.text.world import (
    Action,
    GameConfig,
    State,
    World,
    admissible,
    apply,
    generate,
    initial_state,
)

Policy = Callable[[str, dict], str]
"""``act(observation, info) -> command``."""
PolicyFactory = Callable[[World, int], Policy]
"""``make(world, seed) -> act``: a fresh policy for one game (``seed``: its own randomness)."""
HELD_OUT = 1_000_000
"""Game seeds from here on are held out: training (the tabular agent's own games excepted, the
LLM agent's) draws below it."""
PROGRESS = ("go", "take", "open", "unlock")
"""Verbs that can change the state (look, inventory, examine and drop never help the planner)."""


def optimal_actions(world: World, start: State | None = None) -> list[Action]:
    """A shortest winning command sequence (breadth-first search over states); the game is
    solvable by construction, so one always exists (tested over 1,000 seeds)."""
    start = start or initial_state(world)
    useful = {*world.locks.values(), world.treasure}  # taking anything else never helps
    parents: dict[State, tuple[State, Action] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if state.won:
            path = []
            while parents[state] is not None:
                state, action = parents[state]  # type: ignore[misc]
                path.append(action)
            return path[::-1]
        for action in admissible(world, state):
            if action.verb not in PROGRESS or action.verb == "take" and action.target not in useful:
                continue
            nxt = apply(world, state, action).state
            if nxt not in parents:
                parents[nxt] = (state, action)
                queue.append(nxt)
    raise RuntimeError(f"game {world.seed} has no solution")  # a generator bug


def optimal_policy(world: World, seed: int = 0) -> Policy:
    plan = iter(optimal_actions(world))
    return lambda obs, info: next(plan).text()


def random_policy(world: World, seed: int = 0) -> Policy:
    rng = random.Random(seed)
    return lambda obs, info: rng.choice(info["admissible_commands"])


def tabular_policy(episodes: int = 200, alpha: float = 0.5, gamma: float = 0.95,
                   epsilon: float = 0.1, optimism: float = 0.3,
                   max_steps: int = 50) -> PolicyFactory:  # fmt: skip
    """Q-learning on each game for ``episodes`` episodes (epsilon-greedy over the admissible
    commands, ties broken at random, unseen values ``optimism``: untried commands are tried
    until a path to a point is known (0.3 < gamma^k of a short path; at 1.0 the unexplored
    kept winning and the greedy policy wandered: 41% wins against 100% on the default games); key
    ``(room, inventory, locks, points)``), then its greedy policy."""

    def make(world: World, seed: int = 0) -> Policy:
        rng = random.Random(seed)
        q: dict[tuple, dict[str, float]] = {}
        for _ in range(episodes):
            state = initial_state(world)
            for _ in range(max_steps):
                key, options = _key(state), [a.text() for a in admissible(world, state)]
                values = q.setdefault(key, {})
                if rng.random() < epsilon:
                    command = rng.choice(options)
                else:
                    best = max(values.get(c, optimism) for c in options)
                    command = rng.choice([c for c in options if values.get(c, optimism) == best])
                action = next(a for a in admissible(world, state) if a.text() == command)
                out = apply(world, state, action)
                reward = float(len(out.points))
                nxt = q.get(_key(out.state), {})  # terminated (won): no bootstrap
                future = max(nxt.values(), default=optimism)
                target = reward + (0.0 if out.state.won else gamma * future)
                old = values.get(command, optimism)
                values[command] = old + alpha * (target - old)
                state = out.state
                if state.won:
                    break

        def act(obs: str, info: dict) -> str:
            options = info["admissible_commands"]
            values = q.get(info["abstract_state"], {})
            return max(options, key=lambda c: (values.get(c, optimism), -options.index(c)))

        return act

    return make


def _key(state: State) -> tuple:
    """The tabular abstraction: where you are, what you carry, the locks, the points scored.
    Each part is needed for a Markov reward: without the locks an unlock would not change the
    key ("inventory" would inherit its value), without the points a dropped key taken again
    would look worth its first point."""
    return (state.room, state.inventory, state.unlocked, state.opened, state.scored)


BASELINES: dict[str, PolicyFactory] = {
    "random": random_policy,
    "tabular": tabular_policy(),
    "optimal": optimal_policy,
}


@dataclass
class Playthrough:
    """A text game played once by a baseline policy (the LLM agent's, with its tokens, is
    :class:`pavlov.llm.generation.episodes.Episode`)."""

    won: bool
    moves: int
    score: int
    max_score: int
    transcript: list[tuple[str, str]]
    """``(command, answer)`` per move; the first entry is ``("", intro)``."""


def play(env: TextGameEnv, policy: Policy, game: int, max_steps: int = 50) -> Playthrough:
    """One episode of ``game`` with ``policy``; ``info["abstract_state"]`` is added for tabular
    policies."""
    obs, info = env.reset(options={"game": game})
    transcript, ret = [("", obs)], 0.0
    for _ in range(max_steps):
        info["abstract_state"] = _key(env.state)  # type: ignore[arg-type]
        command = policy(obs, info)
        obs, reward, terminated, truncated, info = env.step(command)
        ret += reward
        transcript.append((command, obs))
        if terminated or truncated:
            break
    return Playthrough(bool(info["won"]), int(info["moves"]), int(info["score"]),
                   int(info["max_score"]), transcript)  # fmt: skip


def interval95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval (1.96 standard errors)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def wilson95(successes: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a success rate (right at 0% and 100% too)."""
    if n == 0:
        return 0.0, 0.0
    z, p = 1.96, successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(make: PolicyFactory, games: list[int], cfg: GameConfig | None = None,
             max_steps: int = 50, seed: int = 0) -> dict[str, float]:
    """Success rate (Wilson 95%), mean moves and score (normal 95%) over ``games``."""
    cfg = cfg or GameConfig()
    env = TextGameEnv(cfg.rooms, cfg.locks, cfg.objects, cfg.containers)
    played = [play(env, make(generate(cfg, g), seed + i), g, max_steps)
              for i, g in enumerate(games)]  # fmt: skip
    out = summarize([p.won for p in played], [p.moves for p in played],
                    [p.score for p in played])  # fmt: skip
    out["max_score"] = statistics.fmean(p.max_score for p in played)
    return out


def summarize(won: list[bool], moves: list[int], scores: list[int]) -> dict[str, float]:
    """Games played, success rate with its Wilson 95% interval, mean moves and score with
    normal 95% intervals: the report of every text-game agent (baselines and LLM agents)."""
    wins = sum(won)
    low, high = wilson95(wins, len(won))
    mean_moves, moves_ci = interval95([float(m) for m in moves])
    score, score_ci = interval95([float(x) for x in scores])
    return {
        "games": float(len(won)), "success": wins / len(won), "success_low": low,
        "success_high": high, "moves": mean_moves, "moves_ci": moves_ci, "score": score,
        "score_ci": score_ci,
    }  # fmt: skip
