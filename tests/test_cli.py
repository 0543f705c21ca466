"""The `pavlov` command end to end: JSON contract, run directories, and bad input."""

import json
import subprocess
import sys

import pytest

from pavlov.cli import main


def run_cli(args, capsys):
    """Run `pavlov ARGS` in-process -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (["FrozenLake-v1"], 0.744190),  # finite-horizon DP within the 100-step limit
        (["FrozenLake8x8-v1"], 0.913220),
        (["FrozenLake-v1", "--method", "value-iteration"], 14 / 17),
        (["Taxi-v4", "--method", "value-iteration"], 7.93),
        (["pavlov/Grid2x3-v0"], 10.0),
        (["pavlov/Battle-v0", "--method", "value-iteration"], 5.3),
    ],
)
def test_solve_prints_optimum_and_success_json(args, value, capsys):
    code, out, _ = run_cli(["solve", *args, "--episodes", "200", "--json"], capsys)
    assert code == 0
    res = last_json(out)
    assert res["optimal_value"] == pytest.approx(value, abs=5e-5)
    lo, hi = res["success_ci95"]
    assert 0.0 <= lo <= res["success_rate"] <= hi <= 1.0
    assert res["episodes"] == 200


def test_solve_env_kwargs_and_config_file(tmp_path, capsys):
    cfg = tmp_path / "solve.yaml"
    cfg.write_text('env_kwargs: \'{"map_name": "8x8"}\'\nepisodes: 50\n')
    code, out, _ = run_cli(["solve", "FrozenLake-v1", "--config", str(cfg), "--json"], capsys)
    assert code == 0
    res = last_json(out)
    assert res["episodes"] == 50 and res["horizon"] == 100
    assert 0.5 < res["optimal_value"] < 0.913220  # 8x8 map but only 100 steps


def test_train_writes_a_complete_run_and_eval_reads_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, out, _ = run_cli(
        [
            "train",
            "q-learning",
            "--env",
            "pavlov/Grid2x3-v0",
            "--episodes",
            "300",
            "--gamma",
            "0.9",
            "-o",
            "alpha=0.5",
            "--runs-dir",
            str(runs),
            "--name",
            "grid",
            "--eval-episodes",
            "50",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    s = last_json(out)
    assert s["mean_return"] == 10.0 and s["optimum"] == pytest.approx(10.0)
    d = runs / "grid"
    for rel in [
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/final.npz",
        "checkpoints/latest",
        "plots/episode_return.png",
    ]:
        assert (d / rel).is_file(), rel
    assert list(d.glob("events.out.tfevents.*"))
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 300

    code, out, _ = run_cli(["eval", str(d), "--episodes", "20", "--json"], capsys)
    res = last_json(out)
    assert code == 0 and res["episodes"] == 20 and res["mean_return"] == 10.0
    assert res["regret"] == pytest.approx(0.0)

    code, out, _ = run_cli(["plot", str(d), "--out", str(tmp_path / "c.png"), "--json"], capsys)
    assert code == 0 and (tmp_path / "c.png").is_file()


def test_envs_lists_tabular_envs(capsys):
    code, out, _ = run_cli(["envs", "--json"], capsys)
    envs = {e["id"]: e for e in last_json(out)["envs"]}
    assert code == 0
    assert envs["FrozenLake-v1"]["tabular"] and not envs["CartPole-v1"]["tabular"]
    assert envs["pavlov/Battle-v0"]["max_episode_steps"] == 50


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "NoSuchEnv-v0"], "unknown env 'NoSuchEnv-v0'"),
        (["solve", "Taxi-v3"], "Taxi-v4"),
        (["solve", "CartPole-v1"], "Discrete observation space"),
        (["solve", "FrozenLake-v1", "--gamma", "1.5"], "gamma must be in [0.0, 1.0]"),
        (["solve", "FrozenLake-v1", "--episodes", "0"], "episodes must be positive"),
        (["solve", "FrozenLake-v1", "--env-kwargs", "{bad"], "--env-kwargs is not valid JSON"),
        (["solve", "pavlov/GridWorld-v0", "--env-kwargs", '{"map": ["S.", "G"]}'], "row 1"),
        (["solve", "FrozenLake-v1", "--config", "/nonexistent.yaml"], "cannot read config"),
        (["train", "q-learning", "--env", "CartPole-v1"], "discrete observation space"),
        (["train", "q-learning", "--env", "FrozenLake-v1", "--episodes", "0"], "episodes"),
        (["train", "q-learning", "--env", "FrozenLake-v1", "-o", "epsilon_start=2"], "epsilon"),
        (["train", "q-learning", "--env", "FrozenLake-v1", "-o", "nope=1"], "unknown agent key"),
        (["train", "nosuch", "--env", "FrozenLake-v1"], "unknown algorithm"),
        (["eval", "/nonexistent-run"], "not a pavlov run directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    args, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pavlov: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unreadable_yaml_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    code, _, err = run_cli(["solve", "FrozenLake-v1", "--config", str(bad)], capsys)
    assert code == 2 and "not valid YAML" in err


def test_debug_shows_the_traceback():
    from pavlov.errors import PavlovError

    with pytest.raises(PavlovError):
        main(["solve", "NoSuchEnv-v0", "--debug"])


def test_console_script_exit_code_and_help():
    """The installed entry point, as a user runs it."""
    exe = [sys.executable, "-m", "pavlov.cli"]
    bad = subprocess.run([*exe, "solve", "NoSuchEnv-v0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    ok = subprocess.run([*exe, "train", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--config" in ok.stdout and "--json" in ok.stdout
