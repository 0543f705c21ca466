"""`pavlov.devices` and the device seam of the LLM trainers: choices checked before a run, `auto`
resolved to what torch sees, precision `auto` per device, the CPU speed-ups off elsewhere. The
GPU paths themselves run only where a GPU is lent (benchmarks/gpu_check_llm.sh)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pavlov.agents.dqn as dqn
from pavlov.agents.common import Hooks
from pavlov.devices import (
    _flushing,
    check_device,
    flush_denormals,
    module_device,
    resolve_device,
    to_device,
)
from pavlov.errors import ConfigError
from pavlov.llm.trainers.common import resolve_precision


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_choices_are_accepted(value):
    check_device("device", value)


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", "", 0, None])
def test_a_bad_device_names_the_field(value):
    with pytest.raises(ConfigError, match="^device must be 'auto', 'cpu', 'cuda', 'cuda:N' or"):
        check_device("device", value)


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("pavlov.devices._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr("pavlov.devices._mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_a_device_torch_cannot_see_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("pavlov.devices._mps_available", lambda: False)
    with pytest.raises(ConfigError, match="^device 'cuda:1': torch sees no CUDA GPU here"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="^device 'mps': torch has no MPS backend here"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^device 'cuda:1': only 1 GPU\(s\)"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_precision_auto_is_bf16_where_the_device_has_fast_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", torch.device("cuda:0")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "fp32"  # e.g. a T4: no bf16
    assert resolve_precision("auto", "mps") == "fp32"
    monkeypatch.setattr("pavlov.llm.trainers.common.fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr("pavlov.llm.trainers.common.fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_to_device_moves_nested_batches_and_module_device_reads_parameters():
    batch = {"ids": torch.ones(2, 3, dtype=torch.long),
             "rows": [torch.zeros(1), (torch.ones(1), 3)], "name": "x"}  # fmt: skip
    moved = to_device(batch, torch.device("meta"))
    assert moved["ids"].device.type == "meta" and moved["rows"][1][0].device.type == "meta"
    assert moved["rows"][1][1] == 3 and moved["name"] == "x" and isinstance(moved["rows"][1], tuple)
    assert to_device(batch, torch.device("cpu"))["ids"] is batch["ids"]  # already there: no copy
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert module_device(nn.ReLU()) == torch.device("cpu")


def test_the_cpu_speedups_stay_off_for_a_model_elsewhere():
    from pavlov.llm import cpu
    from pavlov.llm.models.tiny import tiny_causal_lm

    model, _ = tiny_causal_lm()
    forwards = {name: m.forward for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    with cpu.training(cpu.CpuConfig(), model):  # on the CPU: the oneDNN linears patch forward
        assert any(m.forward != forwards[n] for n, m in model.named_modules() if n in forwards)
    model.to("meta")
    with cpu.training(cpu.CpuConfig(), model):  # elsewhere: plain PyTorch
        assert all(m.forward == forwards[n] for n, m in model.named_modules() if n in forwards)


def test_llm_trainer_configs_check_the_device():
    from pavlov.llm.case_study.pipeline import CaseStudyConfig, stage_configs
    from pavlov.llm.trainers import SFTConfig

    assert SFTConfig().device == "auto"
    with pytest.raises(ConfigError, match="device must be"):
        SFTConfig(device="gpu")
    stages = stage_configs(CaseStudyConfig(device="cpu"))
    assert {s.device for s in stages.values()} == {"cpu"}


def _subnormal_kept() -> bool:
    return float(torch.tensor([1e-39]) * 2.0) != 0.0


@pytest.mark.skipif(not _subnormal_kept() or not torch.set_flush_denormal(False),
                    reason="this CPU has no flush-to-zero mode torch can set")
def test_flush_denormals_zeroes_subnormals_in_its_block_and_restores_the_mode():
    assert _subnormal_kept() and not _flushing()
    with flush_denormals():
        assert not _subnormal_kept() and _flushing()
        with flush_denormals():  # nested: the inner block leaves the outer's mode on
            assert _flushing()
        assert _flushing()
    assert _subnormal_kept()
    torch.set_flush_denormal(True)  # a mode the caller set stays set
    try:
        with flush_denormals():
            assert _flushing()
        assert _flushing()
    finally:
        torch.set_flush_denormal(False)
    with pytest.raises(RuntimeError), flush_denormals():  # restored after an error too
        raise RuntimeError
    assert _subnormal_kept()


@pytest.mark.skipif(not _subnormal_kept(), reason="this CPU has no flush-to-zero mode")
def test_deep_agents_train_with_subnormals_flushed():
    seen = []
    cfg = dqn.Config(total_steps=300, learning_starts=100, train_freq=100, gradient_steps=2,
                     hidden_sizes=(8,), buffer_size=300)
    dqn.train("CartPole-v1", cfg, hooks=Hooks(log=lambda step, metrics: seen.append(_flushing())))
    assert seen and all(seen)
    assert not _flushing()


def test_prime_vector_math_calls_each_function_once_split_over_the_threads(monkeypatch):
    import pavlov.devices as devices

    calls = []
    for name in (*devices.PRIMED_FUNCTIONS, *devices.UNIT_FUNCTIONS):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda x, _f=real, _n=name: calls.append(
            (_n, x.dtype, x.numel())) or _f(x))  # fmt: skip
    monkeypatch.setattr(devices, "_primed", False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    devices.prime_vector_math()
    devices.prime_vector_math()  # once per process
    names = (*devices.PRIMED_FUNCTIONS, *devices.UNIT_FUNCTIONS)
    expected = [(n, d) for d in (torch.float32, torch.float64) for n in names]
    assert [(n, d) for n, d, _ in calls] == expected
    # each call is split over every thread: at least ATen's 32768-element grain per thread
    assert all(size >= 3 * 32768 for _, _, size in calls)


def test_the_llm_half_primes_vector_math_before_it_samples(monkeypatch):
    import pavlov.devices as devices
    from pavlov.llm.generation.rollout import SamplingConfig, generate
    from pavlov.llm.models.tiny import tiny_random_lm

    model = tiny_random_lm("llama")
    monkeypatch.setattr(devices, "_primed", False)
    generate(model, torch.tensor([[1, 2, 3]]), cfg=SamplingConfig(max_new_tokens=2, seed=0))
    assert devices._primed
