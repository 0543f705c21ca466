"""Learning curves from metrics.jsonl: raw values faint, a rolling mean on top."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pavlov.errors import PavlovError
from pavlov.run.rundir import read_metrics


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points: ``out[i] = mean(x[max(0, i-w+1) : i+1])``."""
    x = np.asarray(x, dtype=float)
    if window <= 1 or x.size == 0:
        return x.copy()
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def series(run: str | Path, metric: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one metric in a run, skipping records without it (and nulls)."""
    recs = [r for r in read_metrics(run) if r.get(metric) is not None]
    if not recs:
        raise PavlovError(f"metric {metric!r} not found in {run}")
    return np.array([r[x] for r in recs], float), np.array([r[metric] for r in recs], float)


def plot_runs(
    runs: Sequence[str | Path],
    metric: str,
    out: str | Path,
    window: int = 100,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    hline: float | None = None,
    xlabel: str = "step",
) -> Path:
    """Overlay one metric of several runs (rolling mean of ``window`` points) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [Path(r).name for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for run, label in zip(runs, labels, strict=True):
        xs, ys = series(run, metric)
        (line,) = ax.plot(xs, rolling_mean(ys, window), label=label, lw=1.8)
        if window > 1 and len(runs) == 1 and len(xs) <= 5000:  # raw values, faint
            ax.plot(xs, ys, color=line.get_color(), alpha=0.15, lw=0.6)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1, label=f"optimum {hline:.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (rolling mean {window})" if window > 1 else metric)
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
