"""Atomic checkpoints.

A checkpoint is never half-written: bytes go to a temporary file in the same directory, are
fsynced, then renamed over the final name (``os.replace`` is atomic on POSIX), and the directory
is fsynced. The ``latest`` pointer is written the same way, and last, so it only ever names a
checkpoint that is complete on disk.

Formats by suffix: ``.npz`` for a dict of NumPy arrays (tabular agents; loaded with
``allow_pickle=False``), ``.pt`` for anything ``torch.save`` accepts (deep agents).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pavlov.errors import PavlovError

LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either the old content or the whole new content.

    ``write`` receives an open binary file. On any error the temporary file is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` for UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_npz(state: dict[str, Any]) -> Callable[[BinaryIO], None]:
    arrays = {k: np.asarray(v) for k, v in state.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"checkpoint field {k!r} is not a plain array")

    def write(f: BinaryIO) -> None:
        buf = io.BytesIO()  # np.savez wants a seekable file; keep the fsync path simple
        np.savez(buf, **arrays)
        f.write(buf.getvalue())

    return write


def _write_torch(state: Any) -> Callable[[BinaryIO], None]:
    import torch  # deferred: tabular runs never pay torch's import time

    return lambda f: torch.save(state, f)


_WRITERS = {".npz": _write_npz, ".pt": _write_torch}


def save_checkpoint(directory: str | Path, name: str, state: Any) -> Path:
    """Write ``directory/name`` atomically, then point ``directory/latest`` at it.

    ``name`` ends in ``.npz`` (dict of arrays) or ``.pt`` (torch-serializable object).
    """
    directory = Path(directory)
    suffix = Path(name).suffix
    if suffix not in _WRITERS:
        raise ValueError(f"checkpoint name must end in one of {sorted(_WRITERS)}, got {name!r}")
    path = atomic_write(directory / name, _WRITERS[suffix](state))
    atomic_write_text(directory / LATEST, name + "\n")  # last: only ever names a whole file
    return path


def latest_checkpoint(directory: str | Path) -> Path:
    """The checkpoint that ``directory/latest`` names; PavlovError if there is none."""
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        raise PavlovError(f"no checkpoint in {directory} (missing {LATEST!r} pointer)")
    path = directory / pointer.read_text().strip()
    if not path.is_file():
        raise PavlovError(f"checkpoint pointer {pointer} names a missing file {path.name}")
    return path


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`save_checkpoint` (a file or a checkpoints dir)."""
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    raise PavlovError(f"unknown checkpoint format: {path}")
