"""`pavlov play` (a person at the terminal, here a scripted stdin) and `pavlov eval` of the
text games' baselines."""

from __future__ import annotations

import io
import json

import pytest

from pavlov.cli import main
from pavlov.envs.text import GameConfig, generate
from pavlov.envs.text.baselines import optimal_actions


def run_cli(args, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_play_a_text_game_to_the_win(capsys, monkeypatch):
    plan = [a.text() for a in optimal_actions(generate(GameConfig(), 1))]
    script = "\n".join(["look", "dance", *plan, "look"]) + "\n"
    code, out, err = run_cli(["play", "pavlov/TextGame-v0", "--seed", "1", "--json"], capsys,
                             script, monkeypatch)  # fmt: skip
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["won"] and summary["done"] and summary["steps"] == len(plan) + 2
    assert summary["return"] == 3.0 and "I don't know the verb 'dance'" in out and "You won." in out


def test_play_a_discrete_env_with_action_numbers_and_quit(capsys, monkeypatch):
    code, out, err = run_cli(["play", "FrozenLake-v1", "--seed", "0", "--json"], capsys,
                             "7\nleft\n1\nquit\n", monkeypatch)  # fmt: skip
    assert code == 0, err
    assert out.count("an action is a number in 0..3") == 2
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 1


def test_play_refuses_continuous_actions_in_one_line(capsys, monkeypatch):
    code, out, err = run_cli(["play", "Pendulum-v1"], capsys, "", monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "text or discrete" in err


def test_eval_text_game_baselines_on_held_out_games(capsys):
    args = ["eval", "pavlov/TextGame-v0", "--episodes", "10", "--agents", "random,optimal",
            "--env-kwargs", '{"rooms": 5, "locks": 2}', "--json"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["games"][0] == 1_000_000 and len(s["games"]) == 10
    assert s["config"]["rooms"] == 5 and s["agents"]["optimal"]["success"] == 1.0
    assert s["agents"]["random"]["success"] < 1.0 and s["agents"]["optimal"]["max_score"] == 5


@pytest.mark.parametrize(("extra", "message"), [
    (["--agents", "smart"], "unknown agent 'smart'"),
    (["--env-kwargs", '{"rooms": 0}'], "rooms must be"),
    (["--env-kwargs", '{"floors": 2}'], "env kwargs"),
])  # fmt: skip
def test_eval_text_game_bad_input_is_one_line(extra, message, capsys):
    code, out, err = run_cli(["eval", "pavlov/TextGame-v0", *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
