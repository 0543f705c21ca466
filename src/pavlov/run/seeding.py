"""One seed for every source of randomness, so the same seed gives the same run."""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's ``random``, NumPy's global RNG and torch (if imported); return a Generator.

    torch is only seeded when it is already imported, so tabular code never pays its import.
    Environments are seeded separately with :func:`seed_env` (Gymnasium owns its RNGs).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - legacy global RNG used by some libraries
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)
    return np.random.default_rng(seed)


def seed_env(env, seed: int):
    """Reset ``env`` with ``seed`` and seed its action and observation spaces; return reset()."""
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env.reset(seed=seed)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy's global RNG and torch (imports torch: for the deep agents)."""
    import torch

    seed_everything(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy-global and torch RNG states, for exact resume from a checkpoint."""
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
