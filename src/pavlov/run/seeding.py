"""One seed for every source of randomness, so the same seed gives the same run."""

from __future__ import annotations

import random
import sys

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
