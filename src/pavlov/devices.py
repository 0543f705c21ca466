"""Devices: the ``device`` field every trainer has (deep agents and LLM trainers alike), checked
before a run starts and resolved to a :class:`torch.device` once.

``auto`` picks CUDA where torch sees a GPU, else Apple's MPS where torch has it, else the CPU.
A device torch cannot see is a one-line :class:`~pavlov.errors.ConfigError`, not a crash deep
inside the first forward pass. :func:`flush_denormals` is the CPU's floating-point mode that the
deep agents' training loops run in; :func:`prime_vector_math` takes a bad first call of torch's
vectorised math functions out of the way before the LLM half computes anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from pavlov.errors import ConfigError

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""Accepted ``device`` values."""


def check_device(name: str, value: str) -> None:
    """ConfigError unless ``value`` is auto, cpu, cuda, cuda:N or mps (checked before any run)."""
    if not isinstance(value, str) or not DEVICE.fullmatch(value):
        raise ConfigError(f"{name} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(value: str) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu (what torch sees); a named device torch cannot see
    is a one-line error."""
    check_device("device", value)
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {value!r}: torch sees no CUDA GPU here "
                              f"(torch {torch.__version__}); use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {value!r}: only {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device {value!r}: torch has no MPS backend here; use 'cpu' or 'auto'")
    return device


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives; the CPU for an empty module."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (mappings, lists, tuples) moved to ``device``; a batch
    already there is returned as is (no copy)."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _flushing() -> bool:
    """Whether this thread flushes subnormal floats to zero now (a subnormal product reads 0)."""
    return float(torch.tensor([1e-39]) * 2.0) == 0.0


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Run the block with subnormal floats (|x| < 1.2e-38 in fp32) read and written as zero on
    this thread (x86's DAZ and FTZ bits, ``torch.set_flush_denormal``); the previous mode is
    restored after. Where the CPU has no such mode, the block runs as it is.

    Why: a ReLU unit that stops firing gets exactly zero gradients, and Adam's first moment of
    its weights then decays through the subnormal range (``0.9**t``: ~800 steps from 1e-3 to
    1e-38, ~150 more to 0), where an x86 core takes ~100x longer per operation. DQN on
    CartPole with the rl-zoo config (256x256 ReLU net): 11.2 -> 6.1 s for 20k env steps on an
    Intel Xeon, with bitwise the same weights (a subnormal moment moves no weight: its update
    is ``lr * m / (sqrt(v) + eps)`` < 1e-31). It covers this thread only: the deep agents' nets
    are too small for torch to spread an op over threads.
    """
    before = _flushing()
    switched = not before and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if switched:
            torch.set_flush_denormal(False)


PRIMED_FUNCTIONS = ("cos", "sin", "tan", "exp", "log", "log2", "log10", "tanh", "erf", "erfc",
                    "sqrt", "trunc", "sigmoid", "rsqrt", "log1p", "expm1")
"""The elementwise functions :func:`prime_vector_math` calls once (float32 and float64): those
torch 2.13's CPU build hands to MKL's vector math (VML) and the usual activations."""
UNIT_FUNCTIONS = ("acos", "asin", "atan", "erfinv")
"""The same, called on values in (0, 1) (their domain)."""

_primed = False


def prime_vector_math() -> None:
    """Call each of :data:`PRIMED_FUNCTIONS` and :data:`UNIT_FUNCTIONS` once on this process's
    CPU threads and throw the results away (first call per process; later calls return at once).

    Why: on an Intel Xeon VM (AVX-512 with AMX, 2 cores, the MKL inside torch 2.13's CPU wheel)
    the first call of ``torch.cos`` big enough to be split over the threads returned, in about
    one process in five, values off by up to 1.5e-4 on the main thread's half
    (``cos(19.0)``: 0.988554 for 0.988705), and right ones from the second call on. The rotary
    tables of a 32-row prefill are such a call: the case study's held-out evaluation, run first
    in a resumed run, then sampled other reviews for 16 prompts (55.6% positive instead of
    56.1%; docs/benchmarks-history.md, session 18). The cause inside the math library is not
    known; a first call made here, on inputs split over the threads as the model's are, takes
    its place. About 7 ms, once.
    """
    global _primed
    if _primed:
        return
    _primed = True
    # 32768 elements is ATen's grain for splitting an elementwise op over the threads: one
    # chunk per thread, as a prefill's rotary tables get, values in the range of its angles.
    n = 32768 * max(2, torch.get_num_threads())
    for dtype in (torch.float32, torch.float64):
        x = torch.arange(n, dtype=dtype) % 64 + 0.5
        for name in PRIMED_FUNCTIONS:
            getattr(torch, name)(x)
        unit = x / 65
        for name in UNIT_FUNCTIONS:
            getattr(torch, name)(unit)
