"""SIGINT / SIGTERM end a run cleanly: save a checkpoint, then stop with the resume command.

The CLI calls :func:`install` around a training run. The first signal only sets a flag; the
trainer looks at it where a checkpoint is consistent (after an update, an episode, an optimizer
step: :func:`requested`), saves one and raises :class:`Interrupted`, which the CLI turns into a
line with the ``--resume`` command and exit code 130 (SIGINT) or 143 (SIGTERM). A second SIGINT
stops at once (``KeyboardInterrupt``), for a trainer stuck where it cannot look at the flag.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

_received: int | None = None


class Interrupted(Exception):  # noqa: N818 - not an error: the user asked the run to stop
    """A run stopped after SIGINT/SIGTERM, with its state saved at ``step``."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step
        self.resume = ""
        """The command that continues the run (set by :func:`resumable`)."""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def requested() -> int | None:
    """The signal number received since :func:`install`, or None (cheap: one global read)."""
    return _received


def check(step: int, save: object = None) -> None:
    """If a signal came: call ``save()`` (if given), then raise :class:`Interrupted`."""
    if _received is not None:
        if callable(save):
            save()
        raise Interrupted(_received, step)


def _handler(signum: int, frame: object) -> None:
    global _received
    if _received is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    _received = signum


@contextlib.contextmanager
def resumable(run_dir: str | Path | None, command: str, enabled: bool = True
              ) -> Iterator[None]:
    """:func:`install` around a run of ``pavlov COMMAND`` in ``run_dir``; an
    :class:`Interrupted` leaving it carries the ``--resume`` command. ``enabled=False`` (a
    data-parallel run: every rank would have to stop at the same step) or no ``run_dir`` (a
    rank that writes nothing) keeps the default handlers."""
    if not enabled or run_dir is None:
        yield
        return
    with install():
        try:
            yield
        except Interrupted as e:
            e.resume = f"pavlov {command} --resume {run_dir}"
            raise


@contextlib.contextmanager
def install() -> Iterator[None]:
    """Route SIGINT/SIGTERM to the flag while the block runs (main thread only; elsewhere, e.g.
    inside a test runner's worker thread, the default handlers stay)."""
    global _received
    _received = None
    try:
        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received = None
