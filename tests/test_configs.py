"""Every shipped YAML config builds a valid agent config (a broken config is a bug)."""

from pathlib import Path

import pytest

from pavlov.algos import get_algo
from pavlov.config import build_config, load_yaml

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds(path):
    data = load_yaml(path)
    spec = get_algo(data.get("algo") or path.stem.split("-")[0])
    cfg = build_config(spec.config_cls, {**getattr(spec, "defaults", {}), **data["agent"]})
    assert cfg is not None
    assert set(data) <= {
        "algo",
        "env",
        "seed",
        "env_kwargs",
        "agent",
        "eval_episodes",
        "evaluate_every",
        "checkpoint_every",
    }
