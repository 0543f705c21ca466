"""Recording an episode to a GIF from ``rgb_array`` rendering (``pavlov eval RUN --gif``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pavlov.errors import PavlovError
from pavlov.run.checkpoint import atomic_write


def record_gif(
    env_id: str,
    env_kwargs: dict[str, Any],
    policy: Callable[[Any, int], Any],
    out: Path,
    seed: int = 0,
    fps: int = 30,
    max_steps: int = 1000,
) -> Path:
    """Run one episode of ``policy`` with ``render_mode="rgb_array"`` and write an animated GIF."""
    from PIL import Image

    from pavlov.envs.factory import make_env

    try:
        env = make_env(env_id, env_kwargs, render_mode="rgb_array")
    except PavlovError as e:
        raise PavlovError(f"{env_id} cannot render rgb_array frames for a GIF: {e}") from None
    obs, _ = env.reset(seed=seed)
    try:
        frames = [env.render()]
    except gym.error.DependencyNotInstalled as e:
        raise PavlovError(f"{env_id} cannot render: {e}") from None
    if frames[0] is None:
        raise PavlovError(f"{env_id} returned no rgb_array frame; it cannot be recorded")
    done, t = False, 0
    while not done and t < max_steps:
        obs, _, terminated, truncated, _ = env.step(policy(obs, t))
        frames.append(env.render())
        done, t = terminated or truncated, t + 1
    env.close()
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]

    def write(f) -> None:
        images[0].save(
            f,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=max(20, 1000 // fps),
            loop=0,
        )

    return atomic_write(out, write)
