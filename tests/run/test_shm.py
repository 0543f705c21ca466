"""The same-machine all-reduce (:mod:`pavlov.run.shm`): 2 ranks on this machine sum float
tensors through DeepSpeed's shared-memory kernel, with the bytes gloo gives, and a stuck peer
ends the run in one line."""

from __future__ import annotations

import dataclasses
import glob
import os
import time

import numpy as np
import pytest
import torch

from pavlov.errors import PavlovError
from pavlov.run import distributed, shm

pytest.importorskip("deepspeed")
if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("2 ranks need 2 cores (the kernel spins)", allow_module_level=True)

SIZES = (1, 9000, 3_000_000)  # the kernel's small-message path (< 1 MiB) and its chunked one


def _x(rank: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(1000 * rank + n)).to(dtype)


def _sums() -> dict:
    """A worker: each size summed through shared memory and through gloo, and gradients."""
    dp = distributed.current()
    gloo = dataclasses.replace(dp, shm=None)
    out: dict = {"transport": dp.transport, "dtypes": [str(d) for d in dp.shm.dtypes]}
    for dtype in dp.shm.dtypes:
        for n in SIZES:
            a, b = _x(dp.rank, n, dtype), _x(dp.rank, n, dtype)
            dp.sum_(a)
            gloo.sum_(b)
            out[(str(dtype), n)] = (a, torch.equal(a, b))
    # 64-bit values are gathered bit for bit through shared memory and summed in rank order
    special = [0.0, -0.0, 1e-310, -1e300, float("inf"), 0.1, -7.0, 2.0 ** 60 + 1]
    x64 = torch.tensor(special, dtype=torch.float64) * (dp.rank + 1) + _x(dp.rank, 8).double()
    a, b = x64.clone(), x64.clone()
    dp.sum_(a)
    gloo.sum_(b)
    out["float64"] = (a, torch.equal(a, b), x64)
    bits = torch.tensor([0x7FF8_0000_DEAD_BEEF, -1, -(2**63), 12345 + dp.rank,
                         -(2**62)], dtype=torch.int64)  # a NaN's payload, -0.0, ...: any bits
    out["gathered"] = torch.from_numpy(dp.shm.gather(bits.view(torch.float64).numpy(), dp.rank,
                                                     2).view(np.int64))  # fmt: skip
    m = [0.1 * (dp.rank + 1), 1e300, -3.0, 2.0 ** 60]  # metrics: NumPy in and out
    out["sum_array"] = (dp.sum_array(m), gloo.sum_array(m))
    out["bits"] = bits
    n = torch.tensor([2**40 + dp.rank, -3, 7], dtype=torch.int64)
    dp.sum_(n)
    out["int64"] = n
    w = torch.nn.Parameter(torch.zeros(3, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.full((3, 2), float(dp.rank + 1))  # b has no gradient on any rank
    dp.sum_grads_([w, b])
    out["grads"] = (w.grad, b.grad)
    return out


def test_two_ranks_sum_through_shared_memory_with_the_bytes_gloo_gives():
    before = set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"))
    ranks = distributed.launch(2, _sums, all_ranks=True)
    assert set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*")) <= before  # none left
    for out in ranks.values():
        assert out["transport"] == "shm"
        assert "torch.float32" in out["dtypes"]
        for dtype in out["dtypes"]:
            for n in SIZES:
                got, same_as_gloo = out[(dtype, n)]
                assert same_as_gloo, (dtype, n)
                d = getattr(torch, dtype.split(".")[1])
                assert torch.equal(got, _x(0, n, d) + _x(1, n, d)), (dtype, n)
        got, same_as_gloo, _ = out["float64"]
        assert same_as_gloo and torch.equal(got, ranks[0]["float64"][2] + ranks[1]["float64"][2])
        assert out["int64"].tolist() == [2**41 + 1, -6, 14]
        assert torch.equal(out["gathered"], torch.stack([ranks[0]["bits"], ranks[1]["bits"]]))
        mine, theirs = out["sum_array"]  # shared memory and gloo: the same bytes
        assert mine.dtype == np.float64 and mine.tobytes() == theirs.tobytes()
        assert mine.tolist() == [0.1 + 0.2, 2e300, -6.0, 2.0 ** 61]
        w, b = out["grads"]
        assert torch.equal(w, torch.full((3, 2), 3.0)) and torch.equal(b, torch.zeros(2))


def _transport() -> str:
    return distributed.current().transport


def test_the_environment_variable_picks_gloo_or_names_a_bad_value(monkeypatch):
    monkeypatch.setenv(shm.ENV, "gloo")
    assert distributed.launch(2, _transport) == "gloo"
    monkeypatch.setenv(shm.ENV, "fast")
    with pytest.raises(PavlovError, match=r"PAVLOV_CPU_ALLREDUCE='fast': expected auto, shm"):
        distributed.launch(2, _transport)


def _stuck_peer() -> None:
    dp = distributed.current()
    if dp.rank == 1:
        time.sleep(120)  # alive, but never joins the sum
    dp.shm.timeout_s = 2.0
    dp.sum_(torch.ones(4))


def test_a_stuck_peer_ends_the_run_in_one_line_not_a_hang():
    t0 = time.perf_counter()
    with pytest.raises(PavlovError) as info:
        distributed.launch(2, _stuck_peer)
    assert time.perf_counter() - t0 < 60
    assert str(info.value) == ("worker rank 0 of 2 failed: PavlovError: a shared-memory "
                               "all-reduce waited 2 s for the other ranks (one is stuck or gone)")


def test_shm_demanded_where_it_cannot_run_is_one_line(monkeypatch):
    monkeypatch.setenv(shm.ENV, "shm")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # as if the 2 ranks were on two machines
    monkeypatch.setattr(shm, "_tried", False)
    with pytest.raises(PavlovError, match="not all on this machine"):
        shm.load(2, 0, 60.0)


def _one_rank_cannot() -> tuple:
    """Load again as if rank 1 were on another machine: rank 0 could, but must not."""
    dp = distributed.current()
    if dp.rank == 1:
        os.environ["LOCAL_WORLD_SIZE"] = "1"
    shm._tried = False  # noqa: SLF001
    return shm.load(2, dp.rank, 60.0), dp.transport


def test_when_one_rank_cannot_use_shared_memory_none_does():
    ranks = distributed.launch(2, _one_rank_cannot, all_ranks=True)
    assert ranks == {0: (None, "shm"), 1: (None, "shm")}  # the first group's sum stays


def test_a_dev_shm_too_small_for_the_segments_is_named(monkeypatch):
    """A container's default /dev/shm (64 MB) cannot hold a rank's 69 MB segment."""
    monkeypatch.setenv(shm.ENV, "shm")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(shm, "_tried", False)
    monkeypatch.setattr(shm, "_free_shm_bytes", lambda: 64 * 2**20)
    with pytest.raises(PavlovError, match="/dev/shm has 67 MB free, 2 ranks need 138 MB"):
        shm.load(2, 0, 60.0)
