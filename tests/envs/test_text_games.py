"""Text games (`pavlov/TextGame-v0`): generation solvable by construction and deterministic,
a parser that answers anything without crashing (fuzzed), the Gymnasium API, and baselines at
their known levels."""

from __future__ import annotations

import random
import string

import gymnasium as gym
import pytest

import pavlov.envs  # noqa: F401  registers the envs
from pavlov.envs.text import Action, GameConfig, TextGameEnv, generate, parse
from pavlov.envs.text.baselines import (
    BASELINES,
    evaluate,
    optimal_actions,
    play,
    wilson95,
)
from pavlov.envs.text.world import admissible, apply, initial_state
from pavlov.errors import ConfigError

CONFIGS = [GameConfig(), GameConfig(rooms=8, locks=3, objects=6, containers=2),
           GameConfig(rooms=1, locks=1, objects=0, containers=0)]  # fmt: skip


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "hard", "one-room"])
def test_every_generated_game_is_solvable_and_the_plan_wins_in_the_env(cfg):
    env = TextGameEnv(cfg.rooms, cfg.locks, cfg.objects, cfg.containers)
    for seed in range(1000):
        world = generate(cfg, seed)
        plan = optimal_actions(world)
        assert len(world.milestones) == 2 * cfg.locks + 1
        if seed % 10:  # replaying every tenth plan through the env is enough
            continue
        obs, info = env.reset(seed=seed)
        for i, action in enumerate(plan):
            assert action.text() in info["admissible_commands"]
            obs, reward, terminated, truncated, info = env.step(action.text())
            assert terminated == (i == len(plan) - 1) and not truncated
        assert info["won"] and info["score"] == info["max_score"] == world.max_score


def test_locks_need_their_keys_in_order():
    cfg = GameConfig(rooms=6, locks=3)
    for seed in range(50):
        world = generate(cfg, seed)
        plan = [a.text() for a in optimal_actions(world)]
        for lock, key in world.locks.items():  # each lock is unlocked after its key is taken
            assert plan.index(f"take {key}") < plan.index(f"unlock {lock} with {key}")
        state = initial_state(world)
        lock = next(iter(world.locks))
        assert "locked" in apply(world, state, Action("examine", lock)).text or \
            "no" in apply(world, state, Action("examine", lock)).text


def test_the_seed_is_the_game_and_replays_are_deterministic():
    commands = ["look", "take key", "n", "go south", "open chest", "e", "w", "inventory"] * 3
    def transcript(seed):
        env = gym.make("pavlov/TextGame-v0", rooms=5, locks=2)
        obs, info = env.reset(seed=seed)
        out = [obs, info["admissible_commands"]]
        for c in commands:
            out.append(env.step(c)[:4])
        return out
    assert transcript(7) == transcript(7)
    assert transcript(7) != transcript(8)
    assert generate(GameConfig(), 3) == generate(GameConfig(), 3)
    env = TextGameEnv()
    a, _ = env.reset(seed=1, options={"game": 5})
    b, _ = env.reset(seed=2, options={"game": 5})
    assert a == b


def test_the_parser_answers_anything_without_raising():
    rng = random.Random(0)
    env = TextGameEnv(rooms=5, locks=2, objects=4)
    env.reset(seed=0)
    vocab = ["go", "north", "n", "take", "pick", "up", "the", "key", "brass", "iron", "door",
             "open", "unlock", "with", "chest", "x", "look", "at", "drop", "i", "put", "down",
             "ring", "trunk", "and", "xyzzy", "", "é", "ключ", "🗝", "\n", "\t"]  # fmt: skip
    for i in range(3000):
        if i % 3 == 0:
            chars = string.printable + "éüß中🗝"
            text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 60)))
        else:
            text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 8)))
        obs, reward, terminated, truncated, info = env.step(text)
        assert isinstance(obs, str) and obs and reward >= 0 and not truncated
        if terminated:
            env.reset(seed=i)
    for bad in (None, 3, b"go north", ["n"], "x" * 201):
        assert isinstance(env.step(bad)[0], str)


def test_parser_grammar():
    world = generate(GameConfig(rooms=5, locks=2), 1)
    state = initial_state(world)
    key = next(k for k in world.start_objects if k.endswith(" key")
               and world.start_objects[k] == world.start)  # fmt: skip
    assert parse("N", world, state) == Action("go", "north")
    assert parse("walk west.", world, state) == Action("go", "west")
    assert parse("Pick up the KEY", world, state) == Action("take", key)
    assert parse(f"look at {key}", world, state) == Action("examine", key)
    assert parse("i", world, state) == Action("inventory")
    assert parse("go", world, state) == "Go where? north, south, east or west."
    assert parse("take", world, state) == "Take what?"
    assert parse("unlock door", world, state) == "Unlock the door with what?"
    assert parse("dance", world, state).startswith("I don't know the verb 'dance'.")
    assert parse("take unicorn", world, state) == "You see no unicorn here."
    assert parse("look around", world, state).startswith("'look' takes no object.")
    door = world.doors[next(iter(world.doors))]
    assert parse(f"unlock {door} with {key}", world, state) == Action("unlock", door, key)


def test_admissible_commands_all_parse_back_and_do_something():
    cfg = GameConfig(rooms=5, locks=2, objects=3)
    for seed in range(30):
        world = generate(cfg, seed)
        state = initial_state(world)
        for _ in range(20):
            options = admissible(world, state)
            for action in options:
                assert parse(action.text(), world, state) == action
            state = apply(world, state, random.Random(seed).choice(options)).state


def test_gymnasium_api_truncates_and_passes_the_env_checker():
    from gymnasium.utils.env_checker import check_env

    check_env(TextGameEnv(), skip_render_check=True)
    env = gym.make("pavlov/TextGame-v0")
    env.reset(seed=0)
    for t in range(50):
        _, _, terminated, truncated, _ = env.step("look")
        assert not terminated and truncated == (t == 49)


@pytest.mark.parametrize(("kwargs", "field"), [({"rooms": 0}, "rooms"), ({"rooms": 17}, "rooms"),
                         ({"rooms": 2, "locks": 3}, "locks"), ({"objects": 40}, "objects"),
                         ({"containers": 9}, "containers")])  # fmt: skip
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        GameConfig(**kwargs)


def test_baselines_reach_their_levels_on_held_out_games():
    games = list(range(1_000_000, 1_000_040))
    results = {name: evaluate(make, games) for name, make in BASELINES.items()}
    assert results["optimal"]["success"] == 1.0 and results["optimal"]["moves"] < 10
    assert results["random"]["success"] <= 0.2
    assert results["tabular"]["success"] >= results["random"]["success"] + 0.15
    assert results["tabular"]["success_low"] <= results["tabular"]["success"]


def test_wilson_interval_is_right_at_the_edges():
    low, high = wilson95(0, 40)
    assert low == 0.0 and 0.08 < high < 0.1
    low, high = wilson95(40, 40)
    assert 0.9 < low < 0.92 and high == 1.0


def test_a_transcript_records_commands_and_answers():
    env = TextGameEnv()
    world = generate(GameConfig(), 11)
    episode = play(env, BASELINES["optimal"](world, 0), 11)
    assert episode.won and episode.transcript[0][0] == "" and "Find the" in episode.transcript[0][1]
    assert episode.transcript[-1][1].endswith("you win!")
