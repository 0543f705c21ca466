"""A process that joined the group through :func:`pavlov.run.distributed.init` (torchrun,
``accelerate launch``) leaves it before the interpreter shuts down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Rank script: join, one collective, then return without leaving. The atexit hook registered
# first runs last (atexit is LIFO), after pavlov's, and reports whether the group is gone.
# Each rank writes its own file: two ranks printing to one pipe interleave (seen in CI).
SCRIPT = """\
import atexit, os, sys
import torch
import torch.distributed as dist
from pavlov.run import distributed

out = open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".txt"), "w")
atexit.register(lambda: out.write(f"left: {not dist.is_initialized()}\\n") and out.close())
dp = distributed.init()
x = torch.ones(1)
dist.all_reduce(x)
out.write(f"sum: {int(x.item())} rank: {dp.rank}\\n")
"""


@pytest.mark.timeout(120)
def test_a_torchrun_rank_leaves_the_group_at_exit(tmp_path):
    # Without it a gloo rank can abort at exit ("terminate called without an active
    # exception", SIGABRT) and torchrun reports a finished run as failed (seen in CI).
    (tmp_path / "rank.py").write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "rank.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=100)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert lines == [f"sum: 2 rank: {rank}", "left: True"]
