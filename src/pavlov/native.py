"""Build and load pavlov's small C kernels: a C source shipped as package data, compiled on first
use with the system C compiler and cached, then loaded with :mod:`ctypes`.

Used by the LLM decode kernels (:mod:`pavlov.llm.cpu.native`) and PPO's minibatch kernel
(:mod:`pavlov.agents.ppo_native`). Each library lands in ``$PAVLOV_CACHE/native/`` (default
``~/.cache/pavlov``) under a name that hashes its source and flags, so an edited source is rebuilt
and concurrent processes never see a half-written file. :func:`load` returns None (callers take
their PyTorch path) off x86-64 Linux, without AVX2/FMA, without a C compiler, when the build
fails, or when ``PAVLOV_NATIVE=0``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from pavlov.cache import cache_root

__all__ = ["FLAGS", "cache_dir", "cpu_supported", "enabled", "load"]

FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
"""Compiler flags: AVX2 + FMA code (AVX-512 loops opt in per function), OpenMP linked against the
runtime torch already loaded (same soname)."""


HEADER = (resources.files("pavlov") / "simd.h").read_text()
"""``simd.h``: the SIMD helpers (``hsum``, ``dot``, ``exp8``) every kernel includes, written next
to its source at build time (package data)."""


def cache_dir() -> Path:
    """Where built libraries go: ``$PAVLOV_CACHE/native`` or ``~/.cache/pavlov/native``."""
    return cache_root() / "native"


def enabled() -> bool:
    """False when ``PAVLOV_NATIVE=0`` turns every C kernel off."""
    return os.environ.get("PAVLOV_NATIVE", "1") != "0"


def cpu_supported() -> bool:
    """x86-64 Linux with AVX2 and FMA (what :data:`FLAGS` compile for)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((ln for ln in flags.splitlines() if ln.startswith("flags")), "")
    return {"avx2", "fma"} <= set(line.split())


def build(source: str, name: str, cache: Path | None = None) -> Path | None:
    """Compile ``source`` (with :data:`HEADER` as ``simd.h`` beside it) into
    ``cache/<name>-<hash>.so``, once per version of both and the flags; None without a compiler
    or when the build fails."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    cache = cache or cache_dir()
    tag = hashlib.sha1((HEADER + source + " ".join(FLAGS)).encode()).hexdigest()[:12]
    lib = cache / f"{name}-{tag}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src, out = Path(tmp) / f"{name}.c", Path(tmp) / f"{name}.so"
        src.write_text(source)
        (Path(tmp) / "simd.h").write_text(HEADER)
        done = subprocess.run([compiler, *FLAGS, str(src), "-o", str(out), "-lm"],
                              capture_output=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            return None
        os.replace(out, lib)  # atomic: a concurrent process sees all of it or none
    return lib


def load(source: str, name: str) -> ctypes.CDLL | None:
    """The compiled and loaded library of ``source``, or None where C kernels are off or
    unavailable (see the module docstring). Callers cache the result."""
    if not enabled() or not cpu_supported():
        return None
    try:
        path = build(source, name)
        return None if path is None else ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
