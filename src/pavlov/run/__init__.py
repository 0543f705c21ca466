"""Run infrastructure shared by every trainer: run dirs, metrics, checkpoints, seeding, plots."""

from pavlov.run.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from pavlov.run.rundir import Run, default_run_name, open_run_dir, read_metrics
from pavlov.run.seeding import seed_env, seed_everything

__all__ = [
    "Run",
    "atomic_write",
    "default_run_name",
    "load_checkpoint",
    "open_run_dir",
    "read_metrics",
    "save_checkpoint",
    "seed_env",
    "seed_everything",
]
