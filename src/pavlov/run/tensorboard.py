"""A minimal TensorBoard scalar writer on ``tensorboard``'s own event-file writer.

Using the event writer directly (instead of ``torch.utils.tensorboard``) keeps torch out of
tabular runs; the files are ordinary ``events.out.tfevents.*`` that TensorBoard reads.
"""

from __future__ import annotations

import time
from pathlib import Path


class ScalarWriter:
    """Write scalar summaries to ``logdir`` (one event file per writer)."""

    def __init__(self, logdir: str | Path, flush_secs: float = 10.0) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(str(logdir), flush_secs=flush_secs)

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: float | None = None):
        values = [self._summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()]
        event = self._event(
            wall_time=time.time() if wall_time is None else wall_time,
            step=int(step),
            summary=self._summary(value=values),
        )
        self._writer.add_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``logdir``, read by TensorBoard's own loader: tag -> [(step, v)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
