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


def test_play_the_battle_in_words_to_the_end(capsys, monkeypatch):
    script = "dance\nattack the monster\n" + "move forward\n" * 20  # ends when it ends
    code, out, err = run_cli(["play", "pavlov/BattleText-v0", "--seed", "0", "--json"], capsys,
                             script, monkeypatch)  # fmt: skip
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["done"] and "A monster guards a treasure." in out
    assert "Try: use sword, move forward, move back, heal." in out
    assert summary["return"] in (10.0, -10.0)


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


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from pavlov.llm.models.loading import save_model
    from pavlov.llm.models.tiny import tiny_causal_lm

    model, tok = tiny_causal_lm()
    model.config.max_position_embeddings = 4096  # rotary: episodes outgrow its nominal 256
    path = tmp_path_factory.mktemp("agent") / "tiny"
    save_model(model, tok, path)
    return path


SMALL = ["-o", "rooms=2", "-o", "locks=0", "-o", "objects=1", "-o", "train_games=4",
         "-o", "max_turns=2", "-o", "warm_start_steps=2", "-o", "max_steps=2",
         "-o", "eval_games=2", "-o", "checkpoint_every=1", "-o", "precision=fp32"]


def test_train_agent_warm_start_rl_and_three_evaluations(tiny_dir, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(["train", "agent", "-o", f"model={tiny_dir}", *SMALL, "--runs-dir",
                              str(tmp_path), "--name", "a", "-q", "--json"], capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert list(s["results"]) == ["untrained", "warm_start", "rl"] and s["steps"] == 2
    for r in s["results"].values():
        assert r["games"] == 2 and 0 <= r["success_low"] <= r["success"] <= r["success_high"] <= 1
    run = tmp_path / "a"
    assert (run / "model").is_dir() and (run / "summary.json").is_file()
    text = (run / "transcripts.md").read_text()
    assert text.count("## untrained") == 2 and text.count("## rl") == 2 and "Game 1000000" in text
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert "held-out games" in out
    code, out, err = run_cli(["eval", str(run), "--episodes", "3", "--agents", "random,optimal",
                              "--json"], capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert list(s["agents"]) == ["llm (a)", "random", "optimal"]
    assert s["agents"]["optimal"]["success"] == 1.0 and s["agents"]["llm (a)"]["games"] == 3


@pytest.mark.parametrize(("extra", "message"), [
    (["-o", "nonsense=1"], "unknown agent field 'nonsense'"),
    (["-o", "algo=a2c"], "algo must be one of"),
    (["-o", "eval_games=0"], "eval_games must be a positive integer"),
    (["--env", "CartPole-v1"], "plays pavlov/TextGame-v0 games"),
])
def test_train_agent_bad_input_is_one_line_and_no_run(extra, message, tiny_dir, tmp_path,
                                                      capsys):
    code, _, err = run_cli(["train", "agent", "-o", f"model={tiny_dir}", *SMALL, *extra,
                            "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists()
