"""pavlov/BattleText-v0: the battle MDP in words keeps its dynamics and optimum, parses any
string, and is deterministic per seed."""

from __future__ import annotations

import random
import string

import gymnasium as gym
import numpy as np
import pytest

import pavlov.envs  # noqa: F401  registers the ids
from pavlov.envs.battle import BACK, FORWARD, HEAL, S0, S1, USE_SWORD, BattleMDP
from pavlov.envs.text.battle import COMMANDS, BattleTextEnv, parse_command
from pavlov.llm.generation.episodes import first_command, with_commands
from pavlov.tabular.mdp import mdp_from_env
from pavlov.tabular.planning import value_iteration


def play(env: gym.Env, choose, episodes: int, seed: int = 0) -> np.ndarray:
    returns = []
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, r, terminated, truncated, info = env.step(choose(obs, info))
            total, done = total + r, terminated or truncated
        returns.append(total)
    return np.array(returns)


def optimal_commands() -> dict[int, str]:
    """The planner's policy on the MDP, as commands: state -> command. At gamma = 1 waiting
    beside a dead monster ties with walking on (both worth 10), so the greedy policy is read at
    gamma = 0.99, where walking on is strictly best; its undiscounted value is V*(S0) = 5.3."""
    mdp = mdp_from_env(BattleMDP())
    assert value_iteration(mdp, gamma=1.0).V[S0] == pytest.approx(5.3, abs=1e-6)
    plan = value_iteration(mdp, gamma=0.99)
    return {s: COMMANDS[int(plan.policy[s])] for s in range(4)}


def test_the_planners_commands_earn_the_mdps_optimum_and_beat_random():
    env = gym.make("pavlov/BattleText-v0")
    best = optimal_commands()
    assert best == {S0: "use sword", S1: "move back", 2: "move forward", 3: "move forward"}
    opt = play(env, lambda obs, info: best[info["state"]], 4000)
    assert opt.mean() == pytest.approx(5.3, abs=0.35)  # V*(S0) = 5.3; 4000 episodes: se ~0.1
    rng = random.Random(0)
    rand = play(env, lambda obs, info: rng.choice(info["admissible_commands"]), 2000)
    assert rand.mean() < opt.mean() - 3


def test_same_seed_same_text_and_dynamics_of_the_mdp():
    a, b, mdp = BattleTextEnv(), BattleTextEnv(), BattleMDP()
    for seed in range(20):
        oa, _ = a.reset(seed=seed)
        ob, _ = b.reset(seed=seed)
        mdp.reset(seed=seed)
        assert oa == ob and oa.startswith("A monster guards a treasure.")
        for action in (USE_SWORD, FORWARD, FORWARD, HEAL, BACK):
            if a.state >= 4:
                break
            ra, rb = a.step(COMMANDS[action]), b.step(COMMANDS[action])
            rm = mdp.step(action)
            assert ra == rb and ra[4]["state"] == rm[0] and ra[1] == rm[1] and ra[2] == rm[2]


@pytest.mark.parametrize(("text", "action"), [
    ("use sword", USE_SWORD), ("Attack the monster!", USE_SWORD), ("I strike", USE_SWORD),
    ("MOVE FORWARD", FORWARD), ("advance.", FORWARD), ("let's sneak past", FORWARD),
    ("flee", BACK), ("Run away!", BACK), ("retreat now", BACK),
    ("heal", HEAL), ("I will rest", HEAL),
    ("dance", None), ("", None), ("sword", None),
])
def test_commands_and_synonyms(text, action):
    assert parse_command(text) == action


def test_any_string_is_answered_and_costs_a_move_without_changing_the_state():
    env = BattleTextEnv()
    rng = random.Random(1)
    env.reset(seed=0)
    for _ in range(300):
        junk = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 30)))
        if parse_command(junk) is not None:
            continue
        obs, reward, terminated, truncated, info = env.step(junk)
        assert "Try: use sword, move forward, move back, heal." in obs
        assert reward == 0.0 and not terminated and info["state"] == S0
    assert info["moves"] > 200


def test_episode_end_and_textworld_info_for_language_agents():
    env = BattleTextEnv()
    obs, info = env.reset(seed=3)
    assert info["admissible_commands"] == list(COMMANDS) and info["max_score"] == 1
    assert "move back" in with_commands(obs, info)
    assert first_command("I think I should move back now.", info) == "move back"
    obs, reward, terminated, _, info = env.step("move back")
    assert terminated and reward == 1.0 and info["admissible_commands"] == []
    assert "You live" in obs and not info["won"] and info["score"] == 0
    with pytest.raises(RuntimeError):
        env.step("heal")
