"""`make tour` (pavlov tour): every learner gets close to the planned optimum, quickly."""

import json

import pytest

from pavlov.cli import main


def test_tour_learns_close_to_the_optimum(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tour", "--out", str(tmp_path), "--json"])
    assert exc.value.code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    learned = [r for r in res["results"] if "run" in r]
    assert {(r["env"], r["algo"]) for r in learned} >= {
        ("pavlov/Grid2x3-v0", "q-learning"),
        ("pavlov/Battle-v0", "model-based"),
        ("FrozenLake-v1", "q-learning"),
    }
    for r in learned:
        # greedy return within the 95% interval (plus a small slack) of the exact optimum
        assert r["mean_return"] >= r["optimum"] - r["return_ci95"] - 0.03, r
    grid = next(r for r in learned if r["env"] == "pavlov/Grid2x3-v0")
    assert grid["mean_return"] == 10.0  # +10 and never the -10 red square
    assert (tmp_path / "plots" / "FrozenLake-v1.png").is_file()
    assert res["seconds"] < 120
