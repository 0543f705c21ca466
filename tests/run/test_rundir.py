import json

import numpy as np
import pytest
import yaml

from pavlov.errors import PavlovError
from pavlov.run import Run, read_metrics
from pavlov.run.plots import plot_runs, rolling_mean
from pavlov.run.seeding import seed_everything
from pavlov.run.tensorboard import read_scalars


def test_run_writes_config_metrics_tensorboard(tmp_path):
    cfg = {"algo": "q-learning", "gamma": 0.99, "episodes": 3}
    with Run.create(tmp_path, "r1", cfg) as run:
        for i in range(3):
            run.log(i, {"charts/episode_return": float(i), "charts/epsilon": 0.5})
        run.log(3, {"losses/nan": float("nan")})
        run.save("final.npz", {"Q": np.zeros((2, 2))})
    d = tmp_path / "r1"
    assert yaml.safe_load((d / "config.yaml").read_text()) == cfg
    recs = read_metrics(d)
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert recs[2]["charts/episode_return"] == 2.0
    assert recs[3]["losses/nan"] is None  # NaN kept as null: JSON stays valid
    json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])
    scalars = read_scalars(d)  # TensorBoard's own reader
    assert [v for _, v in scalars["charts/episode_return"]] == [0.0, 1.0, 2.0]


def test_failed_run_without_checkpoint_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), Run.create(tmp_path, "bad", {"a": 1}) as run:
        run.log(0, {"x": 1.0})
        raise RuntimeError("diverged")
    assert not (tmp_path / "bad").exists()


def test_failed_run_with_checkpoint_is_kept_and_marked(tmp_path):
    with pytest.raises(KeyboardInterrupt), Run.create(tmp_path, "int", {"a": 1}) as run:
        run.save("c.npz", {"x": np.ones(1)})
        raise KeyboardInterrupt
    assert json.loads((tmp_path / "int" / "run.json").read_text())["status"] == "failed"


def test_existing_run_and_bad_names_refused(tmp_path):
    Run.create(tmp_path, "same", {}).close()
    with pytest.raises(PavlovError, match="already exists"):
        Run.create(tmp_path, "same", {})
    with pytest.raises(PavlovError, match="run name"):
        Run.create(tmp_path, "../escape", {})


def test_rolling_mean_matches_naive():
    x = np.random.default_rng(0).normal(size=50)
    got = rolling_mean(x, 7)
    want = [x[max(0, i - 6) : i + 1].mean() for i in range(50)]
    np.testing.assert_allclose(got, want)


def test_plot_overlays_runs(tmp_path):
    for name, scale in [("a", 1.0), ("b", 2.0)]:
        with Run.create(tmp_path, name, {}, tensorboard=False) as run:
            for i in range(20):
                run.log(i, {"charts/episode_return": scale * i})
    out = plot_runs([tmp_path / "a", tmp_path / "b"], "charts/episode_return", tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PavlovError, match="not found"):
        plot_runs([tmp_path / "a"], "nope", tmp_path / "q.png")


def test_seed_everything_repeats():
    import random

    seed_everything(3)
    a = (random.random(), np.random.rand(), seed_everything(3).random())  # noqa: NPY002
    seed_everything(3)
    b = (random.random(), np.random.rand(), seed_everything(3).random())  # noqa: NPY002
    assert a == b
