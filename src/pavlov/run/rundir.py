"""The run directory every trainer writes.

::

    runs/<name>/
      config.yaml      full resolved config (written first, atomically)
      metrics.jsonl    one JSON object per logged step: {"step": ..., "time": ..., <metrics>}
      events.out.tfevents.*   the same scalars for TensorBoard
      plots/*.png      learning curves
      checkpoints/     atomic checkpoints + a ``latest`` pointer

A run that fails before writing its first checkpoint leaves nothing behind: its directory is
removed, so ``runs/`` never holds a half-written run. A run that fails later keeps its whole
checkpoints (resumable) and a ``status`` of ``failed`` in ``run.json`` (``interrupted`` after
SIGINT/SIGTERM, which save a checkpoint first). A run killed outright (SIGKILL, power loss) keeps
its last complete checkpoint; ``--resume`` rewinds its logs to that checkpoint
(:meth:`Run.reopen`), or starts it from scratch when it died before its first checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pavlov.errors import PavlovError
from pavlov.run.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    read_latest,
    remove_stray_temps,
    save_checkpoint,
)
from pavlov.run.tensorboard import ScalarWriter

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_run_name(name: str) -> None:
    """PavlovError unless ``name`` is a safe directory name: letters, digits, ``._-``."""
    if not _NAME.match(str(name)):
        raise PavlovError(f"run name {name!r} must be letters, digits, '.', '_' or '-'")


def default_run_name(algo: str, env_id: str) -> str:
    """``<algo>-<env>-<YYYYmmdd-HHMMSS>`` with characters unsafe in paths replaced."""
    env = re.sub(r"[^A-Za-z0-9._-]+", "_", env_id)
    return f"{algo}-{env}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Run:
    """An open run directory. Create with :meth:`Run.create`; use as a context manager."""

    dir: Path
    config: dict[str, Any]
    tensorboard: bool = True
    _metrics: Any = field(default=None, repr=False)
    _tb: ScalarWriter | None = field(default=None, repr=False)
    _checkpointed: bool = False
    _t0: float = field(default_factory=time.time)

    @classmethod
    def create(
        cls,
        root: str | Path,
        name: str,
        config: dict[str, Any],
        overwrite: bool = False,
        tensorboard: bool = True,
    ) -> Run:
        """Make ``root/name`` and write ``config.yaml``. Refuses to clobber an existing run."""
        check_run_name(name)
        path = Path(root) / name
        if path.exists():
            if not overwrite:
                raise PavlovError(f"run directory {path} already exists (pick another --name)")
            shutil.rmtree(path)
        run = cls(dir=path, config=config, tensorboard=tensorboard)
        try:
            path.mkdir(parents=True)
        except OSError as e:  # read-only, permissions, disk full: nothing was made
            raise PavlovError(f"cannot create run directory {path}: {e.strerror or e}") from None
        try:
            atomic_write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
            run._metrics = open(path / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if tensorboard:
                run._tb = ScalarWriter(path)
        except OSError as e:  # never a half-made run directory
            run.close(ok=False)
            raise PavlovError(f"cannot write run directory {path}: {e.strerror or e}") from None
        return run

    @classmethod
    def reopen(cls, path: str | Path, config: dict[str, Any], tensorboard: bool = True) -> Run:
        """Continue an existing run (``--resume``) from its latest checkpoint: rewind its logs
        to that checkpoint's cut (:func:`rewind_logs`), append to its metrics, start a new
        TensorBoard event file, and record the (possibly extended) config."""
        path = Path(path)
        rewind_logs(path)
        (path / "run.json").unlink(missing_ok=True)  # running again: no stale failed status
        run = cls(dir=path, config=config, tensorboard=tensorboard,
                  _checkpointed=read_latest(path / "checkpoints") is not None)
        atomic_write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        run._metrics = open(path / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            run._tb = ScalarWriter(path)
        return run

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def plots(self) -> Path:
        p = self.dir / "plots"
        p.mkdir(exist_ok=True)
        return p

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one record to metrics.jsonl and TensorBoard. Non-finite values are kept in
        JSONL as null so that a NaN never breaks a reader."""
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": int(step), "time": round(time.time() - self._t0, 4)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
        try:
            self._metrics.write(json.dumps(record) + "\n")
        except OSError as e:  # disk full: the checkpoints so far stay whole and resumable
            raise PavlovError(f"cannot write {self.dir / 'metrics.jsonl'}: "
                              f"{e.strerror or e}") from None
        if self._tb is not None:
            self._tb.add_scalars(step, clean)

    def save(self, name: str, state: Any, keep: int = 0) -> Path:
        """Atomic checkpoint under ``checkpoints/`` with the run's cut in its pointer (see
        :mod:`pavlov.run.checkpoint`); ``keep > 0`` keeps only that many ``step_*`` ones."""
        path = save_checkpoint(self.checkpoints, name, state, self.cut(), keep)
        self._checkpointed = True
        return path

    def cut(self) -> dict[str, Any]:
        """Flush the logs and return their lengths: what a checkpoint written now has seen."""
        self._metrics.flush()
        os.fsync(self._metrics.fileno())
        if self._tb is not None:
            self._tb.flush()
        return {"metrics_bytes": self._metrics.tell(),
                "events": {p.name: p.stat().st_size for p in _event_files(self.dir)}}

    def mark_checkpointed(self) -> None:
        """Record that a whole checkpoint exists (written by other means than :meth:`save`, e.g.
        a ``save_pretrained`` directory): a later failure then keeps the run, resumable."""
        self._checkpointed = True

    def write_summary(self, summary: dict[str, Any]) -> None:
        """``summary.json``: the final numbers of the run, for ``pavlov eval`` and scripts."""
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self, ok: bool = True, status: str = "failed") -> None:
        """Flush everything. A failed run without a checkpoint is removed entirely; one with a
        checkpoint gets ``status`` in ``run.json``."""
        if self._metrics is not None and not self._metrics.closed:
            try:
                self._metrics.close()
            except OSError:  # the flush of a failing disk; a failed run reports its own cause
                if ok:
                    raise
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if ok:
            return
        if self._checkpointed:
            atomic_write_text(self.dir / "run.json", json.dumps({"status": status}) + "\n")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from pavlov.run.interrupt import Interrupted

        interrupted = exc_type is not None and issubclass(exc_type, Interrupted)
        self.close(ok=exc_type is None, status="interrupted" if interrupted else "failed")


def _event_files(path: Path) -> list[Path]:
    return sorted(path.glob("events.out.tfevents.*"))


def rewind_logs(path: str | Path) -> bool:
    """Truncate a run's ``metrics.jsonl`` and TensorBoard event files to the cut of its latest
    checkpoint, dropping what a killed process logged after it (and event files it started);
    with no checkpoint yet, empty them (the run starts from scratch). -> whether a checkpoint
    exists. Logs of runs from before cuts were recorded are left as they are."""
    path = Path(path)
    remove_stray_temps(path / "checkpoints")
    latest = read_latest(path / "checkpoints")
    if latest is not None and not latest[1]:
        return True
    cut = latest[1] if latest is not None else {"metrics_bytes": 0, "events": {}}
    metrics = path / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > cut["metrics_bytes"]:
        os.truncate(metrics, cut["metrics_bytes"])
    events = cut.get("events", {})
    for f in _event_files(path):
        if f.name not in events:
            f.unlink()
        elif f.stat().st_size > events[f.name]:
            os.truncate(f, events[f.name])
    return latest is not None


def open_run_dir(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Validate an existing run directory; return it and its config."""
    path = Path(path)
    cfg = path / "config.yaml"
    if not cfg.is_file():
        raise PavlovError(f"{path} is not a pavlov run directory (no config.yaml)")
    try:
        config = yaml.safe_load(cfg.read_text())
    except yaml.YAMLError as e:
        raise PavlovError(f"{cfg} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise PavlovError(f"{cfg} is not a pavlov run config (a mapping of fields)")
    return path, config


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (a run dir or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise PavlovError(f"no metrics file at {path}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_run_checkpoint(path: str | Path) -> Any:
    """The latest checkpoint of a run directory."""
    return load_checkpoint(Path(path) / "checkpoints")


def resume_checkpoint(path: str | Path, notice: Any = None) -> Any:
    """What ``--resume`` continues from: the latest checkpoint's state, or None for a run that
    was killed before its first checkpoint (it starts from scratch; ``notice`` says so)."""
    path = Path(path)
    if read_latest(path / "checkpoints") is None:
        if notice is not None:
            notice(f"{path} has no checkpoint yet (stopped before its first one): "
                   "starting it from scratch")
        return None
    return load_run_checkpoint(path)
