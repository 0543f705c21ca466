"""pavlov's cache directory, shared by the embedded models (:mod:`pavlov.llm.models.assets`),
the compiled C kernels (:mod:`pavlov.native`) and offloaded weights."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """pavlov's cache directory: ``$PAVLOV_CACHE`` if set, else ``~/.cache/pavlov``."""
    env = os.environ.get("PAVLOV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pavlov"
