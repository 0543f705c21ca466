"""CPU speed-ups for the LLM half, behind one seam: plain PyTorch is the reference path, these
plug in where a trainer or the rollout engine asks for them.

* :mod:`.native`: small C kernels (decode-step matmuls, a whole one-token Llama step), compiled
  with ``cc`` on first use and cached;
* :mod:`.decoder`: the lean incremental Llama forward the rollout engine uses on CPU;
* :mod:`.kernels`, :mod:`.lean`: faster float32 linears, a memory-lean MLP/RMSNorm backward,
  eager attention under bf16;
* :mod:`.tape`: replaying the rollout's recorded forward in the update;
* :mod:`.offload`: a frozen reference whose weights live in a file;
* :mod:`.heap`: glibc heap policies while training.

The whole set is entered through one switch and one config group, :class:`CpuConfig` (the
``cpu`` field of every LLM trainer config: ``-o cpu.enabled=false`` runs plain PyTorch
everywhere, ``-o cpu.fast_kernels=false`` turns one speed-up off), and :func:`training`, the
context a trainer's steps run in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn


@dataclass
class CpuConfig:
    """The CPU speed-ups of the LLM trainers. Each gives the same results to float32 round-off
    (tested); on other devices they stay off."""

    enabled: bool = True
    """The one switch: ``False`` runs plain PyTorch everywhere (the reference path): no fast
    decoder or C kernels in sampling, no training kernels, no heap policy, no replay, no
    offloaded reference."""
    fast_kernels: bool = True
    """float32 CPU linears through oneDNN, a sparse gradient for a tied input embedding and a
    leaner MLP / RMSNorm backward (:mod:`pavlov.llm.cpu.kernels`, :mod:`pavlov.llm.cpu.lean`):
    less time and memory traffic per step."""
    compact_heap: bool = False
    """On glibc (Linux), while training, serve allocations of 64 KiB and more with ``mmap`` so
    that freed activations and gradients go back to the OS instead of staying in a fragmented
    heap: least memory, slower steps. Measured on SmolLM2-135M, fp32, 2 cores: reward-model
    peak RSS 3.3 -> 2.8 GB but its step 4.4-5.3 -> 5.9-6.1 s (every freed page is faulted in
    again next step); GRPO peak RSS 3.55 -> 3.18 GB, step 8.9 -> 10.7 s; under bf16 or LoRA
    1.6x slower steps. Off by default (speed first). See
    :func:`pavlov.llm.cpu.heap.compact_heap`."""
    reuse_heap: bool = True
    """On glibc (Linux), while training: keep freed memory in the heap from one step to the next
    instead of returning it to the OS and faulting it in again
    (:func:`pavlov.llm.cpu.heap.reuse_heap`). fp32 GRPO benchmark 7.3 -> 6.6 s a step (peak RSS
    +50 MB); SFT 1.96 -> 1.74 s and DPO 3.82 -> 3.62 s a step, the reward model unchanged, peak
    RSS within 20 MB (benchmarks/vs_trl.py, SmolLM2-135M fp32, 2 AVX-512 cores). Not applied
    when ``compact_heap`` is on (the opposite trade)."""
    offload_reference: bool = True
    """Online trainers, full fine-tuning: keep the frozen reference copy in a file and read it
    back for its one forward per step (:mod:`pavlov.llm.cpu.offload`, same outputs): its memory
    (538 MB for a 135M float32 model) no longer adds to the update's peak, for ~0.05 s a step
    (2 cores: the blocks are mapped from the page cache, the embeddings read). (With LoRA
    there is no copy: the reference is the policy with adapters off.)"""
    replay_rollout: bool = True
    """Online trainers, one update per batch: record the decode's linear outputs and logits
    while sampling and replay them in the update's forward instead of recomputing them
    (:mod:`pavlov.llm.cpu.tape`: same log-probs and gradients to float32 round-off, ~2 N T of ~6
    N T FLOPs saved). Applies where the fast decoder's C step samples (float32 Llama-family
    models without LoRA on an AVX2 CPU)."""

    bf16_sampling: bool = True
    """Online trainers under bf16 autocast on a CPU with fast bf16 (AVX-512 BF16): the rollout's
    decode multiplies by bfloat16 copies of the weights (made once, kept while a weight is
    unchanged; LoRA-adapted projections stay float32, whose update bf16 would round away): half
    the bytes streamed per token (:class:`pavlov.llm.generation.rollout.SamplingConfig`'s
    ``bf16_weights``; SmolLM2 with LoRA, 8 rows x 24 tokens: 0.82 -> 0.60 s). The samples come
    from the policy as the bf16 update rounds it; every log-prob the update uses is its own
    forward's. float32 precision is unaffected."""
    eager_attention: bool = True
    """Offline trainers (SFT, reward model, DPO) under bf16 autocast: attention through
    Transformers' eager path (batched matmuls, a float32 softmax) instead of PyTorch's SDPA
    kernel, whose bf16 backward on the CPU is ~9x slower than its float32 one at these sequence
    lengths: reward-model step 0.68 -> 0.42 s on 2 AVX-512-BF16 cores
    (:func:`pavlov.llm.cpu.kernels.eager_attention`). float32 keeps SDPA (as fast or faster
    there), and so do the online trainers: their step was no faster with it, and the demo's
    step 3 ended ~1.2 nats further from its reference at three seeds (eager rounds the
    attention scores to bf16 before the softmax; SDPA accumulates them in float32)."""

    def on(self, name: str) -> bool:
        """Whether speed-up ``name`` (a field) applies: the switch and its own field."""
        return self.enabled and bool(getattr(self, name))


@contextlib.contextmanager
def training(cfg: CpuConfig, policy: nn.Module, *others: nn.Module | None,
             bf16: bool = False) -> Iterator[None]:
    """The context a trainer's steps run in: the heap policy (compact, or reuse), the training
    kernels on ``policy`` (and oneDNN linears on ``others``) and,
    when the steps run under ``bf16`` autocast, eager attention in all of them. Nothing for a
    policy on another device."""
    from pavlov.devices import module_device, prime_vector_math
    from pavlov.llm.cpu.heap import compact_heap, reuse_heap
    from pavlov.llm.cpu.kernels import eager_attention
    from pavlov.llm.cpu.lean import fast_kernels

    if module_device(policy).type != "cpu":
        yield
        return

    prime_vector_math()  # plain PyTorch's math too: not a speed-up, outside the switch
    heap = compact_heap(True) if cfg.on("compact_heap") else reuse_heap(cfg.on("reuse_heap"))
    with (heap, fast_kernels(policy, *others, enabled=cfg.on("fast_kernels")),
          eager_attention(policy, *others, enabled=bf16 and cfg.on("eager_attention"))):
        yield
