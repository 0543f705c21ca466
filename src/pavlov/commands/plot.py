"""``pavlov plot RUN...``: overlay learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pavlov.errors import ConfigError, PavlovError
from pavlov.run.plots import plot_runs
from pavlov.run.rundir import open_run_dir


def run_plot(runs: list[Path], opts: dict[str, Any], json_out: bool) -> None:
    from pavlov.run.console import emit_json

    unknown = set(opts) - {"metric", "window", "out"}
    if unknown:
        raise ConfigError(f"unknown plot option(s) {', '.join(sorted(unknown))}")
    for r in runs:
        open_run_dir(r)  # clear error for a path that is not a run
    window = int(opts.get("window", 100))
    if window <= 0:
        raise PavlovError(f"--window must be positive, got {window}")
    metric = opts.get("metric", "charts/episode_return")
    out = Path(opts.get("out", "plot.png"))
    path = plot_runs(runs, metric, out, window=window)
    print(f"wrote {path}")
    if json_out:
        emit_json({"plot": str(path), "runs": [str(r) for r in runs], "metric": metric})
