"""A process that joined the group through :func:`pavlov.run.distributed.init` (torchrun,
``accelerate launch``) leaves it before the interpreter shuts down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Rank script: join, one collective, then return without leaving. The atexit hook registered
# first runs last (atexit is LIFO), after pavlov's, and reports whether the group is gone.
SCRIPT = """\
import atexit
import torch
import torch.distributed as dist
from pavlov.run import distributed

atexit.register(lambda: print("left:", not dist.is_initialized(), flush=True))
dp = distributed.init()
x = torch.ones(1)
dist.all_reduce(x)
print("sum:", int(x.item()), "rank:", dp.rank, flush=True)
"""


@pytest.mark.timeout(120)
def test_a_torchrun_rank_leaves_the_group_at_exit(tmp_path):
    # Without it a gloo rank can abort at exit ("terminate called without an active
    # exception", SIGABRT) and torchrun reports a finished run as failed (seen in CI).
    (tmp_path / "rank.py").write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "rank.py")], capture_output=True, text=True,
                          timeout=100)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("sum:")) == [
        "sum: 2 rank: 0", "sum: 2 rank: 1"]
    assert [line for line in lines if line.startswith("left:")] == ["left: True"] * 2
