"""Every benchmark's smoke mode runs here, on tiny budgets, so none can rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, timeout: int = 300) -> dict:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_ddppo_benchmark_smoke():
    report = _run("ddppo.py", "--smoke")
    for t in report["throughput"].values():
        assert min(t["1proc"]["env_steps"], t["2proc"]["env_steps"]) >= 4096 and t["ratio"] > 0
    assert report["time_to_475"]["per_seed"][0]["2proc"]["env_steps"] > 0


@pytest.mark.timeout(300)
def test_devices_benchmark_smoke_on_cpu():
    """The script benchmarks/gpu_check.sh runs on cuda, here on the CPU with tiny budgets."""
    report = _run("devices.py", "--device", "cpu", "--smoke")
    assert [r["algo"] for r in report["runs"]] == ["ppo", "dqn"]
    assert all(r["device"] == "cpu" and r["env_steps"] >= 2048 for r in report["runs"])
