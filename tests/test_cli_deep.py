"""`pavlov train` with deep agents: run dirs, checkpoints, --resume, eval and --gif."""

import json

import pytest

from pavlov.cli import main
from pavlov.run.checkpoint import load_checkpoint, read_latest


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_ppo_run_checkpoints_resume_eval_gif(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = [
        "train",
        "ppo",
        "--env",
        "CartPole-v1",
        "--total-steps",
        "1024",
        "-o",
        "n_envs=4",
        "-o",
        "n_steps=64",
        "--checkpoint-every",
        "512",
        "--evaluate-every",
        "512",
        "--eval-episodes",
        "3",
        "--runs-dir",
        str(runs),
        "--name",
        "p",
        "--json",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    s = last_json(out)
    assert s["env_steps"] == 1024 and s["episodes"] == 3
    d = runs / "p"
    ckpts = sorted(p.name for p in (d / "checkpoints").glob("*.pt"))
    assert ckpts == ["best.pt", "final.pt", "step_0000000512.pt", "step_0000001024.pt"]
    assert read_latest(d / "checkpoints")[0] == "final.pt"
    assert [e[0] for e in s["evals"]] == [512, 1024]
    # the best model: the state of the first evaluation with the highest return
    first_best = max(s["evals"], key=lambda e: e[1])
    assert [s["best"]["env_step"], s["best"]["eval_return"]] == first_best
    best = load_checkpoint(d / "checkpoints" / "best.pt")
    assert best["best"] == {"env_step": first_best[0], "eval_return": first_best[1]}

    code, out, err = run_cli(
        ["train", "--resume", str(d), "--total-steps", "2048", "--eval-episodes", "2", "--json"],
        capsys,
    )
    assert code == 0, err
    resumed = last_json(out)
    assert resumed["env_steps"] == 2048
    # the resumed run keeps the earlier best unless one of its own evaluations beats it
    everything = s["evals"] + [e for e in resumed["evals"] if e[0] > 1024]
    top = max(e[1] for e in everything)
    assert resumed["best"]["eval_return"] == top
    assert resumed["best"]["env_step"] == next(st for st, r in everything if r == top)

    code, out, _ = run_cli(["eval", str(d), "--checkpoint", "best", "--episodes", "2", "--json"],
                           capsys)
    assert code == 0 and last_json(out)["episodes"] == 2
    code, _, err = run_cli(["eval", str(d), "--checkpoint", "worst"], capsys)
    assert code == 2 and "checkpoint" in err and err.count("\n") == 1

    gif = tmp_path / "ep.gif"
    code, out, _ = run_cli(["eval", str(d), "--episodes", "2", "--gif", str(gif), "--json"], capsys)
    assert code == 0 and last_json(out)["episodes"] == 2
    assert gif.read_bytes()[:6] == b"GIF89a"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "dqn", "--env", "Pendulum-v1"], "dqn supports Discrete action spaces"),
        (["train", "ppo", "--env", "CartPole-v1", "-o", "gamma=2"], "gamma"),
        (["train", "ppo", "--env", "CartPole-v1", "--episodes", "5"], "unknown agent key"),
        (["train", "--resume", "/nonexistent"], "not a pavlov run directory"),
    ],
)
def test_deep_bad_input(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
