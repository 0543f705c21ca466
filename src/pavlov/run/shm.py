"""The same-machine all-reduce: DeepSpeed's shared-memory kernel for CPU ranks on one machine.

gloo moves every byte through TCP loopback and wakes a blocked thread for every message. On a
2-core VM that costs ~0.5-1 ms per small collective (DD-PPO's 9,000-float gradient: 20 of them
per CartPole update) and ~0.4 s for SmolLM2-135M's 135M gradient floats. DeepSpeed ships an
all-reduce for ranks that share a machine (``csrc/cpu/comm/shm.cpp``, the op
``torch.ops.deepspeed.inference_all_reduce_``): each rank copies its tensor into a shared-memory
segment, the ranks reduce a slice each and copy the sums back, synchronised by spinning on flags
in the segment. Measured on 2 cores (docs/benchmarks.md): 9,000 floats back to back 15 us
against gloo's 350-470 us; 135M floats 0.23 s against 0.41 s.

:mod:`pavlov.run.distributed` uses it for float32 (and, on AVX-512 CPUs, bfloat16) sums when
every rank runs on this machine, DeepSpeed is installed and its op builds, and the ranks do not
outnumber the cores (a spinning rank must not take the core of the rank it waits for).
``PAVLOV_CPU_ALLREDUCE=gloo`` turns it off, ``=shm`` makes its absence an error. Small 64-bit
vectors (float64 counts and metrics) are gathered through it bit for bit
(:meth:`SharedMemorySum.gather`) and summed by the caller; larger ones, other dtypes and every
other collective stay on gloo.

The kernel spins without a timeout, so a watchdog thread (the op releases the GIL) ends this
process with one line when a sum has waited :data:`~pavlov.run.distributed.TIMEOUT_S` for the
others: a stuck peer is an error, as with gloo's timeout, never a hang. A peer that dies is
seen sooner by the launcher, which stops the others.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time

import numpy as np
import torch

from pavlov.errors import PavlovError

ENV = "PAVLOV_CPU_ALLREDUCE"
"""Environment variable: ``auto`` (default: shared memory where it can run, else gloo),
``shm`` (shared memory or an error) or ``gloo``."""

_CHUNK_BYTES = 1 << 30
"""Largest piece given to the kernel at once: it counts the bytes of a call in an ``int``."""

_SEGMENT_BYTES = 69_206_024
"""Each rank's segment in /dev/shm (DeepSpeed 0.19's ``struct allreduce_workspace``: 2 x 1 MiB
and 2 x 32 MiB buffers and two flags). A container's default /dev/shm (64 MB in Docker) cannot
hold one, and the kernel would then fault on it, so that is checked first."""

_SHIFTS = np.array([[0], [22], [43]], np.uint64)
_MASKS = np.array([[(1 << 22) - 1], [(1 << 21) - 1], [(1 << 21) - 1]], np.uint64)
"""A 64-bit word as three pieces ``(word >> shift) & mask`` of 22, 21 and 21 bits, each an
integer that float32 holds exactly."""

_loaded: SharedMemorySum | None = None
_tried = False


class SharedMemorySum:
    """In-place sum of a CPU tensor over the ranks of this machine (every rank the same bytes:
    each element is summed in rank order by one rank and copied to the others)."""

    def __init__(self, op, dtypes: tuple[torch.dtype, ...], timeout_s: float) -> None:
        self._op = op
        self.dtypes = dtypes
        """What the kernel sums on this CPU: float32 (AVX2), and bfloat16 with AVX-512."""
        self.timeout_s = timeout_s
        self._since = 0.0  # perf_counter() when the current sum started, 0 when none runs
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="pavlov-shm-watchdog",
                                          daemon=True)  # fmt: skip
        self._watchdog.start()

    def takes(self, t: torch.Tensor) -> bool:
        return t.device.type == "cpu" and t.dtype in self.dtypes and t.is_contiguous()

    def __call__(self, t: torch.Tensor) -> None:
        """Sum contiguous ``t`` in place (pieces of at most :data:`_CHUNK_BYTES`)."""
        self._since = time.perf_counter()
        try:
            if t.numel() * t.element_size() <= _CHUNK_BYTES:  # ~4 us less than slicing a view
                self._op(t)
            else:
                flat, step = t.view(-1), _CHUNK_BYTES // t.element_size()
                for i in range(0, flat.numel(), step):
                    self._op(flat[i : i + step])
        finally:
            self._since = 0.0

    def gather(self, x: np.ndarray, rank: int, world_size: int) -> np.ndarray:
        """Every rank's ``x`` (a 64-bit array, e.g. float64; the same shape on every rank) ->
        ``[world_size, *x.shape]``, bit for bit: an all-gather made of one sum. Each 64-bit word
        travels as three float32 integers of at most 22 bits (exact in float32) in this rank's
        slot of a zero buffer, so the sum over the ranks is their concatenation (x + 0 is
        exact). Small float64 vectors (DD-PPO's step counts and metrics, once per update) then
        cost the kernel's microseconds instead of a gloo collective's ~1.5 ms. NumPy only, a
        few whole-array operations: in DD-PPO's loop, where each small call pays for cold
        caches, the earlier per-piece version with torch around it took ~120 us a call."""
        words = np.ascontiguousarray(x).reshape(-1).view(np.uint64)
        buf = np.zeros((world_size, len(_SHIFTS), words.size), np.float32)
        buf[rank] = (words >> _SHIFTS) & _MASKS  # (3, n) integers < 2**22: exact in float32
        self(torch.from_numpy(buf))  # in place: buf holds every rank's pieces
        words = np.bitwise_or.reduce(buf.astype(np.uint64) << _SHIFTS, axis=1)  # (world, n)
        return words.view(x.dtype).reshape(world_size, *x.shape)

    def close(self) -> None:
        """Stop the watchdog. Before the interpreter shuts down: a daemon thread that wakes
        during finalization is torn down under C++ frames, and the process aborts ("terminate
        called without an active exception", 1 exit in ~20 without this)."""
        self._closed.set()
        self._watchdog.join(timeout=5.0)

    def _watch(self) -> None:
        while not self._closed.wait(1.0):
            since = self._since
            if since and time.perf_counter() - since > self.timeout_s:
                _exit(f"a shared-memory all-reduce waited {self.timeout_s:.0f} s for the other "
                      "ranks (one is stuck or gone)")  # fmt: skip


def _exit(message: str) -> None:
    """End this worker with ``message`` as its cause (the error file torch's elastic launcher
    reads, and stderr); the launcher then stops the other ranks."""
    with contextlib.suppress(Exception):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(PavlovError(message))
    print(f"pavlov: error: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def load(world_size: int, rank: int, timeout_s: float) -> SharedMemorySum | None:
    """The shared-memory sum for this process's group, or None (gloo then) -- or a
    :class:`PavlovError` naming why not, under ``PAVLOV_CPU_ALLREDUCE=shm``. Every rank of the
    group calls it (one gloo collective: the ranks agree, so all use shared memory or none).
    Once per process: the kernel keeps the first group's segments, so a later group in the same
    process uses gloo."""
    import torch.distributed as dist

    global _loaded, _tried
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "shm", "gloo"):
        raise PavlovError(f"{ENV}={mode!r}: expected auto, shm or gloo")
    if mode == "gloo":
        return None
    op, level, reason = None, 0, None
    if _tried:
        reason = "the shared-memory kernel serves the first process group only"
    elif int(os.environ.get("LOCAL_WORLD_SIZE", "0")) != world_size:
        reason = "the ranks are not all on this machine"
    elif len(os.sched_getaffinity(0)) < world_size:
        reason = f"{world_size} ranks on {len(os.sched_getaffinity(0))} cores (the kernel spins)"
    elif _free_shm_bytes() < world_size * _SEGMENT_BYTES:
        reason = (f"/dev/shm has {_free_shm_bytes() / 1e6:.0f} MB free, {world_size} ranks need "
                  f"{world_size * _SEGMENT_BYTES / 1e6:.0f} MB")  # fmt: skip
    else:
        try:
            op = _compile()
            level = op.vector_kernel_level()  # its fp32 kernel needs AVX2, bf16 AVX-512 (BW)
            reason = None if level >= 1 else "its kernels need AVX2"
        except Exception as e:  # noqa: BLE001  DeepSpeed absent, no compiler, ...
            reason = f"DeepSpeed's shared-memory op is not available ({type(e).__name__}: {e})"
    if reason is not None and mode == "shm":
        raise PavlovError(f"{ENV}=shm: {reason}")
    agreed = torch.tensor([level if reason is None else 0])
    dist.all_reduce(agreed, dist.ReduceOp.MIN)  # a rank that cannot would leave others spinning
    if reason is None and int(agreed) < 1:
        reason = "another rank cannot use it"
        if mode == "shm":
            raise PavlovError(f"{ENV}=shm: {reason}")
    if reason is not None:
        return None
    _tried = True
    _loaded = _start(op, int(agreed), world_size, rank, timeout_s)
    return _loaded


def _free_shm_bytes() -> int:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _compile():
    """DeepSpeed's op, compiled on first use by torch's extension builder (~30 s on 2 cores)
    and loaded from its cache after."""
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # its builder prints a line on stdout
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        return ShareMemCommBuilder().load(verbose=False)


def _start(op, level: int, world_size: int, rank: int, timeout_s: float) -> SharedMemorySum:
    """Initialise the op (this rank's segment created, the others' mapped), then unlink this
    rank's segment once every rank has mapped the others': the memory lives while the
    processes do and nothing is left in /dev/shm."""
    import torch.distributed as dist

    os.environ["LOCAL_SIZE"] = str(world_size)  # what the kernel reads to allow shared memory
    op.initialize(world_size, rank)
    dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")  # fmt: skip
    with contextlib.suppress(OSError):
        os.unlink(f"/dev/shm/{name}")
    dtypes = (torch.float32, torch.bfloat16) if level >= 2 else (torch.float32,)
    return SharedMemorySum(torch.ops.deepspeed.inference_all_reduce_, dtypes, timeout_s)


def active() -> SharedMemorySum | None:
    """The sum :func:`load` set up for this process's group, if any."""
    return _loaded


def forget() -> None:
    """After the group is left: no more shared-memory sums in this process."""
    global _loaded
    if _loaded is not None:
        _loaded.close()
    _loaded = None
