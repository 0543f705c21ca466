"""Data parallelism on ``torch.distributed``: the process group, the few collectives the
trainers use, and ``--nproc N`` through torch's own launcher.

Processes come from torchrun (``torchrun --nproc-per-node N -m pavlov train ppo ...``, one or
several nodes, its rendezvous and env vars ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``) or from
``pavlov train ppo --nproc N``, which starts them on this machine through
``torch.distributed.launcher.elastic_launch`` -- the engine torchrun runs, with its failure
handling: a worker that dies or raises ends the group, and :func:`launch` turns that into one
line naming the rank and the cause. Collectives time out after :data:`TIMEOUT_S`, so a lost peer
is an error, never a hang. Backend gloo on CPU, nccl for CUDA tensors. CPU ranks that share a
machine sum float tensors through shared memory where DeepSpeed's kernel for it is installed
(:mod:`pavlov.run.shm`; ``PAVLOV_CPU_ALLREDUCE=gloo`` turns it off).

Rank 0 writes (run directory, logs, checkpoints, evaluations); every rank computes the same
parameters (gradients are averaged before each optimizer step).
"""

from __future__ import annotations

import atexit
import collections
import datetime
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pavlov.errors import PavlovError, check_count
from pavlov.run.shm import SharedMemorySum
from pavlov.run.shm import active as active_shm
from pavlov.run.shm import forget as forget_shm
from pavlov.run.shm import load as load_shm

TIMEOUT_S = 60
"""Seconds a collective waits for the other ranks before the run fails."""


@dataclass
class DataParallel:
    """This process's place in the group and the collectives a data-parallel trainer uses."""

    rank: int
    world_size: int
    device: torch.device = torch.device("cpu")
    """Where this rank's collectives run: the CPU (gloo), or its GPU (nccl)."""
    shm: SharedMemorySum | None = None
    """On CPU with every rank on this machine: the shared-memory sum used for float32 (and
    bfloat16) tensors in :meth:`sum_` and :meth:`sum_grads_` (:mod:`pavlov.run.shm`); None:
    gloo."""
    _gathers: dict = field(default_factory=dict, repr=False)

    @property
    def transport(self) -> str:
        """What sums the tensors: ``"shm"``, ``"gloo"`` or ``"nccl"`` (benchmarks report it)."""
        return "nccl" if self.device.type != "cpu" else "shm" if self.shm else "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, t: torch.Tensor) -> None:
        """In place: the sum of contiguous ``t`` over the ranks, identical bytes on every rank.

        On CPU through shared memory where :attr:`shm` takes ``t`` (15 us for 9,000 floats on a
        2-core VM); otherwise on gloo as an all-gather summed locally in rank order: for the
        small buffers of classic RL gloo's ring all-reduce is latency-bound, and on a 2-core VM
        it took 1.27 ms for 9,000 floats where the all-gather takes 0.50 ms (docs/scaling.md).
        nccl keeps its all-reduce."""
        if self.device.type != "cpu":
            dist.all_reduce(t)
            return
        if self.shm is not None and self.shm.takes(t):
            self.shm(t)
            return
        n = t.numel()
        if self._small_64(t.element_size(), n):
            t.view(-1).copy_(torch.from_numpy(self._sum_64(t.view(-1).numpy())))
            return
        buf = self._gathers.get((n, t.dtype))
        if buf is None:
            buf = self._gathers[(n, t.dtype)] = torch.empty(self.world_size * n, dtype=t.dtype)
        _wait(dist.all_gather_single(buf, t.reshape(-1), async_op=True))
        torch.sum(buf.view(self.world_size, n), 0, out=t.view(-1))

    def share(self, indices: list[int], lengths: list[int]) -> list[int]:
        """This rank's part of a batch of examples (``indices``, with token counts
        ``lengths[i]``), balanced in padded tokens: the examples sorted longest first and cut
        into one consecutive run per rank so that the largest ``len(run) x its longest`` (the
        tokens a rank computes once its rows are padded) is as small as it can be. The rank with
        the longest examples takes fewer of them.

        The ranks then finish their backward passes together and meet at the gradient exchange
        without waiting on the slowest: with every other example instead, a 2-rank SFT step of
        8 padded sequences waited 0.03-0.7 s (median ~0.3 s) on the other rank (2-core VM,
        docs/benchmarks.md). Which rank takes which example does not change the step's
        gradient, a sum over all of them. Returned in the batch's own order."""
        order = sorted(range(len(indices)), key=lambda k: (-lengths[indices[k]], k))
        longest = [lengths[indices[k]] for k in order]
        cuts = _balanced_cuts(longest, self.world_size)
        mine = set(order[cuts[self.rank] : cuts[self.rank + 1]])
        return [i for k, i in enumerate(indices) if k in mine]

    def sum_grads_(self, params: list[torch.Tensor], bucket: int = 1 << 22) -> None:
        """Every parameter's gradient summed over the ranks, through flat buckets of up to
        ``bucket`` elements (one all-reduce each, as DDP's buckets; a parameter without a
        gradient gets zeros first, so every rank sends the same buckets).

        Large buffers are bandwidth-bound, where gloo's ring all-reduce is the fast collective:
        SmolLM2-135M's gradients on 2 ranks in ~0.4 s, against 2.4 s through :meth:`sum_`'s
        all-gather (measured on a 2-core VM). The ring reduces each element once and passes the
        result on, so every rank gets the same bytes (tested). The summed buckets become the
        gradients (each ``.grad`` a view of its bucket) rather than being copied back: one pass
        over the model's gradients less (~0.05 s a step for SmolLM2-135M on one core).

        Through :attr:`shm` (all ranks on this machine) each gradient is summed in place
        instead, with no buckets: 0.23 s for SmolLM2-135M's gradients against gloo's 0.41 s."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.shm is not None and all(self.shm.takes(p.grad) for p in params):
            for p in params:  # in place, no buckets: shared memory has no per-message cost
                self.shm(p.grad)
            return
        owners = iter(params)  # the buckets hold the gradients in the parameters' order
        for group, flat in self._summed_buckets([p.grad for p in params], bucket):
            for p, part in zip(itertools.islice(owners, len(group)), _views(flat, group),
                               strict=True):  # fmt: skip
                p.grad = part

    def _summed_buckets(self, tensors: list[torch.Tensor], bucket: int, window: int = 4
                        ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:  # fmt: skip
        """``(tensors of a bucket, their flat sum over the ranks)``, bucket by bucket, in order.
        Up to ``window`` all-reduces run (in gloo's threads) while the next buckets are packed:
        SmolLM2-135M's gradients on 2 ranks of a 2-core VM 0.61 -> 0.39-0.47 s against one
        bucket at a time (the ad hoc timing in docs/benchmarks.md)."""
        pending: collections.deque = collections.deque()
        group: list[torch.Tensor] = []
        size = 0
        for t in [*tensors, None]:
            if t is not None and (not group or size + t.numel() <= bucket):
                group.append(t)
                size += t.numel()
                continue
            if group:
                flat = torch.cat([g.reshape(-1) for g in group])
                pending.append((group, flat, dist.all_reduce(flat, async_op=True)))
                if len(pending) > window:
                    done, summed, work = pending.popleft()
                    work.wait()
                    yield done, summed
            group, size = ([t], t.numel()) if t is not None else ([], 0)
        while pending:
            done, summed, work = pending.popleft()
            work.wait()
            yield done, summed

    def sum_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (one collective; the keys must agree)."""
        names = sorted(values)
        return dict(zip(names, self.sum_array([values[k] for k in names]).tolist(), strict=True))

    def average_(self, t: torch.Tensor) -> None:
        """In place: the mean of ``t`` over the ranks (identical bytes on every rank)."""
        self.sum_(t)
        t.div_(self.world_size)

    def sum_array(self, x: np.ndarray | list[float]) -> np.ndarray:
        """Elementwise float64 sum over the ranks of a small vector."""
        x = np.asarray(x, dtype=np.float64)
        if self.device.type == "cpu" and self._small_64(x.itemsize, x.size):  # NumPy only
            return self._sum_64(x.reshape(-1)).reshape(x.shape)
        t = torch.tensor(x).to(self.device)
        self.sum_(t)
        return t.cpu().numpy()

    def _small_64(self, itemsize: int, n: int) -> bool:
        """Whether :meth:`_sum_64` takes ``n`` values of ``itemsize`` bytes: 64-bit values,
        few enough, shared memory on."""
        return self.shm is not None and itemsize == 8 and n * self.world_size <= 1 << 16

    def _sum_64(self, x: np.ndarray) -> np.ndarray:
        """Float64 step counts and metrics (or int64): gathered bit for bit through shared
        memory, then summed in rank order, as :meth:`sum_`'s gloo path does (the same bytes),
        in microseconds instead of ~1.5 ms."""
        return self.shm.gather(x, self.rank, self.world_size).sum(0)

    def mean(self, x: float) -> float:
        return float(self.sum_array([x])[0]) / self.world_size

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> None:
        dist.broadcast(t, src)

    def broadcast_flags(self, *flags: bool) -> tuple[bool, ...]:
        """Rank 0's ``flags`` on every rank, in one collective (e.g. an evaluation's stop and
        best-model decisions)."""
        t = torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float64,
                         device=self.device)  # fmt: skip
        dist.broadcast(t, 0)
        return tuple(bool(x) for x in t.tolist())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order, on every rank (checkpoints of
        per-rank state: envs, action-noise RNGs)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def counter(self, key: str) -> Callable[[int], int]:
        """``add(n) -> total``: a counter shared by the ranks in the group's key-value store
        (DD-PPO's count of workers done collecting). The store is torch's own (the one
        ``init_process_group`` rendezvoused on)."""
        store = dist.distributed_c10d._get_default_store()  # noqa: SLF001  no public getter
        return lambda n: int(store.add(f"pavlov/{key}", n))


SPIN_S = 0.005
"""Seconds a rank polls a gloo collective (yielding its core) before it blocks: on a VM a
blocked thread's wake-up costs ~1 ms, polling halves a small collective's mean time."""


def _views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive pieces of ``flat`` shaped as the tensors of ``like``."""
    sizes = [t.numel() for t in like]
    return [part.view_as(t) for part, t in zip(flat.split(sizes), like, strict=True)]


def _balanced_cuts(longest: list[int], parts: int) -> list[int]:
    """Cut points ``0 = c_0 <= ... <= c_parts = n`` of ``longest`` (non-increasing) into
    ``parts`` consecutive runs minimising the largest ``(c_{r+1} - c_r) * longest[c_r]``.

    A bisection on that largest cost ``C``: for a given ``C`` the greedy cut (each run as long
    as ``C`` allows) needs the fewest runs, since a run starting later starts no longer. At the
    smallest ``C``, runs are then held to an even share of the items left where that still
    covers them all (7 equal examples on 3 ranks: 3, 2, 2 rather than 3, 3, 1)."""
    n = len(longest)

    def greedy(limit: int, even: bool = False) -> list[int]:
        cuts = [0]
        for r in range(parts):
            i = cuts[-1]  # a run of empty examples costs nothing: it takes the rest
            take = limit // longest[i] if i < n and longest[i] > 0 else n - i
            if even:
                take = min(take, -(-(n - i) // (parts - r)))
            cuts.append(min(n, i + take))
        return cuts

    low, high = 0, n * (longest[0] if longest else 0)
    while low < high:  # the smallest limit whose greedy cut covers every item
        mid = (low + high) // 2
        low, high = (low, mid) if greedy(mid)[-1] == n else (mid + 1, high)
    cuts = greedy(low, even=True)
    return cuts if cuts[-1] == n else greedy(low)


def _wait(work: Any) -> None:
    """Wait for an async collective: poll for up to :data:`SPIN_S`, then block (the group's
    timeout applies either way)."""
    deadline = time.perf_counter() + SPIN_S
    while not work.is_completed() and time.perf_counter() < deadline:
        os.sched_yield()
    work.wait()


def launched() -> bool:
    """True inside a worker started by torchrun or :func:`launch`."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> DataParallel | None:
    """The data-parallel group of this process, or None when it runs alone."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return DataParallel(dist.get_rank(), dist.get_world_size(), device,
                        active_shm() if device.type == "cpu" else None)


def init(device: str = "cpu") -> DataParallel | None:
    """Join the process group described by torchrun's env vars (no-op outside a worker or if
    already joined) -> :func:`current`. gloo for CPU, nccl for CUDA."""
    if not launched() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        # The group we joined is left before the interpreter shuts down, however the process
        # ends. A process that exits with a gloo group still alive can abort in gloo's worker
        # threads ("terminate called without an active exception", SIGABRT: pytorch#190489),
        # and torchrun then reports a run that finished as failed.
        atexit.register(shutdown)
        if backend == "gloo":
            load_shm(dist.get_world_size(), dist.get_rank(), TIMEOUT_S)
    return current()


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    forget_shm()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, entrypoint: Callable[..., Any], *args: Any, all_ranks: bool = False
           ) -> Any:
    """Run ``entrypoint(*args)`` in ``nproc`` worker processes on this machine, each joined to
    the process group (torch's elastic launcher, standalone rendezvous, no restarts) -> rank 0's
    return value, or ``{rank: value}`` with ``all_ranks``. ``entrypoint`` must be importable
    by name (a module-level function): workers are spawned.

    A worker that exits, is killed or raises ends the run: the others are stopped and a
    :class:`PavlovError` names the first failed rank and its cause.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_count("nproc", nproc)
    for name in ("torch.distributed.elastic", "torch.distributed.launcher",
                 "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the failure becomes one line below
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
        monitor_interval=0.1, start_method="spawn",
    )
    try:
        results = elastic_launch(config, _in_group)(entrypoint, *args)
    except ChildFailedError as e:
        rank, failure = min(e.failures.items())
        raise PavlovError(f"worker rank {rank} of {nproc} failed: {_cause(failure)}") from None
    return results if all_ranks else results.get(0)


def _in_group(entrypoint: Callable[..., Any], *args: Any) -> Any:
    """A worker: join the group, run, leave."""
    init()
    try:
        return entrypoint(*args)
    finally:
        shutdown()


def _cause(failure: Any) -> str:
    """One line from an elastic ``ProcessFailure``: the exception's message, or the signal or
    exit code."""
    data = failure.error_file_data or {}
    message = data.get("message")
    if isinstance(message, dict):
        message = message.get("message")
    if message and message != "<NONE>":
        return str(message).strip().splitlines()[-1]
    if failure.exitcode is not None and failure.exitcode < 0:
        return str(failure.message).replace(f" by PID {failure.pid}", "")
    return f"exit code {failure.exitcode}"
