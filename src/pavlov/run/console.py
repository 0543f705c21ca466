"""Console output: a rich progress bar with ETA and the key metric, and summary tables.

Progress goes to stderr so that stdout stays clean for tables and the ``--json`` line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Piped or captured output (CI, `| tee`) gets 120 columns instead of rich's default 80, so that
# summary tables are not wrapped into unreadable cells.
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True)


def notice(line: str) -> None:
    """One line the user should know about, on stderr (``pavlov: note: ...``)."""
    print(f"pavlov: note: {line}", file=sys.stderr, flush=True)


class ProgressBar:
    """A progress bar over ``total`` units that shows one key metric; updates are throttled.

    Use as a context manager; ``update`` is cheap enough to call every episode.
    """

    def __init__(self, total: int, description: str, metric: str = "", enabled: bool = True):
        self.metric = metric
        self.enabled = enabled
        self._done = 0
        self._shown = 0
        self._last = 0.0
        self._value: float | None = None
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metric]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
            disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total, metric="")

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._flush()
        if exc_type is not None:  # a failed run's bar is cleared: its error is the one line left
            self._progress.live.transient = True
        self._progress.stop()

    def update(self, advance: int = 1, value: float | None = None) -> None:
        """Advance by ``advance``; ``value`` is the current key metric (e.g. a rolling return)."""
        self._done += advance
        if value is not None:
            self._value = value
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:  # rich redraws at 10 Hz anyway
            self._last = now
            self._flush()

    def _flush(self) -> None:
        text = "" if self._value is None else f"{self.metric} {self._value:.3f}"
        self._progress.update(self._task, advance=self._done - self._shown, metric=text)
        self._shown = self._done


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A rich table; numbers are formatted compactly."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for row in rows:
        t.add_row(*(_fmt(v) for v in row))
    return t


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def emit_json(obj: dict[str, Any]) -> None:
    """The ``--json`` contract: one JSON object, alone on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(obj, default=float))
