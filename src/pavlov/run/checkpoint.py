"""Atomic checkpoints.

A checkpoint is never half-written: bytes go to a temporary file in the same directory, are
fsynced, then renamed over the final name (``os.replace`` is atomic on POSIX), and the directory
is fsynced. The ``latest`` pointer is written the same way, and last, so it only ever names a
checkpoint that is complete on disk. A kill during a save leaves at most a stray
``.<name>.*.tmp`` file (removed by the next save) and the previous checkpoint loadable.

The pointer also records the *cut* of the run at that checkpoint: the byte length of
``metrics.jsonl`` and of each TensorBoard event file once everything logged up to the checkpoint
was flushed. A resumed run truncates its logs to the cut, so records written after the last
checkpoint by a killed process are not duplicated (see :meth:`pavlov.run.Run.reopen`).

Formats by suffix: ``.npz`` for a dict of NumPy arrays (tabular agents; loaded with
``allow_pickle=False``), ``.pt`` for anything ``torch.save`` accepts (deep agents).
"""

from __future__ import annotations

import io
import json
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


FAULT_ENV = "PAVLOV_KILL_AT_WRITE"
"""Fault injection for the kill tests (``tests/faults``): with ``PAVLOV_KILL_AT_WRITE=n`` the
process SIGKILLs itself during its n-th :func:`atomic_write`, after the temporary file is
written and before the rename: the worst moment for a crash."""
_writes = 0


def _fault_point() -> None:
    global _writes
    target = os.environ.get(FAULT_ENV)
    if target:
        _writes += 1
        if _writes == int(target):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


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
        _fault_point()
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


def save_checkpoint(directory: str | Path, name: str, state: Any,
                    cut: dict[str, Any] | None = None, keep: int = 0) -> Path:
    """Write ``directory/name`` atomically, then point ``directory/latest`` at it.

    ``name`` ends in ``.npz`` (dict of arrays) or ``.pt`` (torch-serializable object). ``cut``
    (the run's log lengths, see the module docstring) is stored in the pointer. ``keep > 0``
    removes all but the ``keep`` newest ``step_*`` checkpoints once the pointer is written.
    """
    directory = Path(directory)
    suffix = Path(name).suffix
    if suffix not in _WRITERS:
        raise ValueError(f"checkpoint name must end in one of {sorted(_WRITERS)}, got {name!r}")
    remove_stray_temps(directory)
    try:
        path = atomic_write(directory / name, _WRITERS[suffix](state))
        write_latest(directory, name, cut)  # last: only ever names a whole file
    except OSError as e:  # disk full, read-only, quota: the previous checkpoint stays whole
        raise PavlovError(f"could not write checkpoint {directory / name}: "
                          f"{e.strerror or e}") from None
    if keep > 0:
        prune_checkpoints(directory, keep, protect=name)
    return path


def write_latest(directory: str | Path, name: str, cut: dict[str, Any] | None = None) -> None:
    """Atomically point ``directory/latest`` at checkpoint ``name`` (with the run's cut)."""
    text = name + "\n" if not cut else json.dumps({"checkpoint": name, **cut}) + "\n"
    atomic_write_text(Path(directory) / LATEST, text)


def read_latest(directory: str | Path) -> tuple[str, dict[str, Any]] | None:
    """``(checkpoint name, cut)`` from ``directory/latest``; None if there is no pointer.
    Reads the plain one-line pointer of older runs too (empty cut)."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    text = pointer.read_text().strip()
    if not text.startswith("{"):
        return text, {}
    try:
        data = json.loads(text)
        return str(data.pop("checkpoint")), data
    except (json.JSONDecodeError, KeyError, AttributeError):
        raise PavlovError(f"checkpoint pointer {pointer} is corrupt") from None


def remove_stray_temps(directory: str | Path) -> None:
    """Delete ``.*.tmp`` files a process killed during :func:`atomic_write` left behind."""
    directory = Path(directory)
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _step_number(path: Path) -> int | None:
    digits = path.name.split(".")[0].removeprefix("step_")
    return int(digits) if path.name.startswith("step_") and digits.isdigit() else None


def prune_checkpoints(directory: str | Path, keep: int, protect: str) -> None:
    """Remove all but the ``keep`` newest ``step_<n>`` checkpoints (files or directories) of
    ``directory``; never ``protect`` (the one ``latest`` names)."""
    import shutil

    steps = sorted((n, p) for p in Path(directory).iterdir()
                   if (n := _step_number(p)) is not None)
    for _, old in steps[:-keep]:
        if old.name == protect:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def latest_checkpoint(directory: str | Path) -> Path:
    """The checkpoint that ``directory/latest`` names; PavlovError if there is none."""
    directory = Path(directory)
    latest = read_latest(directory)
    if latest is None:
        raise PavlovError(f"no checkpoint in {directory} (missing {LATEST!r} pointer)")
    path = directory / latest[0]
    if not path.exists():
        raise PavlovError(f"checkpoint pointer {directory / LATEST} names a missing file "
                          f"{path.name}")
    return path


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`save_checkpoint` (a file or a checkpoints dir)."""
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path)
    elif not path.exists() and path.suffix not in _WRITERS:
        raise PavlovError(f"no checkpoint in {path} (the directory is missing)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if path.suffix == ".pt":
            import torch

            return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise PavlovError(f"no checkpoint file at {path}") from None
    except Exception as e:  # truncated or corrupt: zipfile, pickle and numpy errors differ
        raise PavlovError(f"checkpoint {path} is unreadable (truncated or corrupt): "
                          f"{type(e).__name__}") from None
    raise PavlovError(f"unknown checkpoint format: {path}")
