"""What the language-model trainers share: the common config fields, AdamW with a linear
warmup/decay schedule, the deterministic batch plan, LoRA, precision and the NaN guard.

The training loop itself (gradient accumulation, clipping, logging, evaluation, checkpoints,
resume) is :func:`pavlov.llm.trainers.loop.fit`; SFT, the reward model and DPO each build a
:class:`~pavlov.llm.trainers.loop.Task` of plain functions and hand it to that loop.

Precision: ``fp32`` is the default and the reference for every test. ``bf16`` runs the forward
pass under ``torch.autocast("cpu", dtype=torch.bfloat16)``: weights, gradients and AdamW state
stay float32 (the master copy), matmuls run in bfloat16 (~3.4x fp32 matmul throughput on
AVX-512-BF16 CPUs) and log-probs / losses are computed in float32. Expect losses to differ from
fp32 in the third significant digit.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from pavlov.devices import check_device, resolve_device
from pavlov.errors import (
    ConfigError,
    PavlovError,
    check_choice,
    check_count,
    check_positive,
    check_range,
)
from pavlov.llm.cpu import CpuConfig
from pavlov.llm.cpu.kernels import onednn_bf16
from pavlov.llm.cpu.native import l2_norm
from pavlov.llm.trainers.sharding import SHARDINGS, ZERO_STAGES
from pavlov.run.seeding import rng_state, seed_all, set_rng_state  # noqa: F401  re-exported

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "auto": None}
"""Accepted ``precision`` values; ``"auto"`` is bf16 where :func:`fast_bf16`, else fp32."""
LR_SCHEDULES = ("linear", "constant")


@dataclass
class TrainConfig:
    """Fields every language-model trainer has (SFT, reward model, DPO add their own)."""

    seed: int = 0
    """Seed of every random choice: shuffling, dropout, head and LoRA initialisation."""
    epochs: int = 1
    """Passes over the training data; ignored when ``max_steps`` > 0."""
    max_steps: int = 0
    """Optimizer steps to run; 0 runs ``epochs`` passes. When > 0 it wins over ``epochs`` (the
    data is cycled, reshuffled each pass) and sets the length of the learning-rate schedule."""
    batch_size: int = 8
    """Examples per forward pass (a micro-batch): sequences for SFT (packed blocks with
    ``packing``), pairs for the pairwise reward model and DPO (2x sequences)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; the effective batch is ``batch_size * grad_accum_steps``.
    The loss is weighted so that ``2 x B/2`` equals ``1 x B`` (per token for SFT, per example
    otherwise)."""
    learning_rate: float = 2e-5
    """Peak AdamW learning rate, > 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay in [0, 1], applied to matrices only (not biases, norms)."""
    warmup_steps: int = 0
    """Steps of linear warmup: the lr at step ``s < warmup_steps`` is ``lr * (s+1)/warmup``."""
    lr_schedule: str = "linear"
    """``"linear"``: decay from the peak after warmup to ``lr / (remaining steps)`` at the last
    step (Hugging Face's linear schedule without its zero-lr step); ``"constant"`` after warmup."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    device: str = "auto"
    """Where the model trains: ``"auto"`` (a CUDA GPU where torch sees one, else MPS, else the
    CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. The CPU speed-ups (``cpu``) apply on
    the CPU only."""
    precision: str = "fp32"
    """``"fp32"`` (default, exact), ``"bf16"`` (autocast forward, fp32 master weights) or
    ``"auto"`` (bf16 where the device multiplies bf16 fast: a CPU with AVX-512, see
    :func:`fast_bf16`, or a CUDA GPU with bf16 (Ampere and later); else fp32)."""
    cpu: CpuConfig = field(default_factory=CpuConfig)
    """The CPU speed-ups (:class:`pavlov.llm.cpu.CpuConfig`): ``cpu.enabled`` is their one
    switch; ``-o cpu.<field>=...`` sets one. Off on other devices."""
    sharding: str = "auto"
    """With several processes: ``"none"`` (every rank holds all weights, gradients and AdamW
    moments; gradients summed), ``"fsdp"`` (PyTorch FSDP2: each rank holds 1/N of them, ZeRO-3;
    :mod:`pavlov.llm.trainers.sharding`), ``"deepspeed"`` (DeepSpeed's engine at ZeRO stage
    ``zero_stage``; DeepSpeed installed separately) or ``"auto"`` (what an ``accelerate launch``
    FSDP or DeepSpeed config asks for, else none). SFT, the reward model and DPO; one process
    ignores it."""
    zero_stage: int = 3
    """ZeRO stage of ``sharding: deepspeed``: 1 partitions the AdamW moments over the ranks, 2
    also the gradients, 3 also the weights (an accelerate DeepSpeed config's stage wins)."""
    group_by_length: bool = False
    """Batch examples of similar length together (sorted within runs of 32 micro-batches):
    much less padding, ~1.5x faster on short, variable-length data; batches are less random."""
    max_length: int = 256
    """Tokens per sequence (prompt + completion); longer completions are cut, a prompt that
    fills it is an error. Also the packed block size for SFT."""
    lora: bool = False
    """Train low-rank adapters (Hu et al. 2021) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scale numerator: the update is ``(alpha / r) * B @ A``."""
    lora_dropout: float = 0.05
    """Dropout on the adapter input, in [0, 1)."""
    disable_dropout: bool = True
    """Set every dropout probability of the model to 0 (LoRA dropout included) before training:
    TRL's default for reward models and DPO, and what lets a policy gradient's sampler, scorer
    and update see one policy. SFT keeps the model's dropout unless set (as TRL's SFT does).
    Dropout's random masks cost ~8-10% of a CPU step."""
    lora_target_modules: tuple[str, ...] = ()
    """Module names to adapt; empty picks by architecture (Llama q/k/v/o_proj, GPT-2 c_attn)."""
    merge_lora: bool = False
    """Save the final model with the adapters merged into the base (a plain transformers model)
    instead of peft adapters."""
    eval_every: int = 0
    """Optimizer steps between held-out evaluations; 0 evaluates only at the end."""
    max_eval_examples: int = 256
    """Held-out examples used for evaluation (an evenly spaced subset when there are more)."""
    eval_batch_size: int = 16
    """Examples per forward pass during evaluation and reference precomputation."""
    log_every: int = 1
    """Optimizer steps between metric records (averaged over the steps in between)."""
    checkpoint_every: int = 100
    """Optimizer steps between resumable checkpoints; 0 checkpoints only at the end."""
    keep_checkpoints: int = 1
    """Most recent step checkpoints kept on disk, >= 1; older ones are deleted once a newer one
    is complete (a full SmolLM2 checkpoint with AdamW state is ~1.6 GB)."""

    def __post_init__(self) -> None:
        self.lora_target_modules = tuple(self.lora_target_modules)
        for name in ("epochs", "batch_size", "grad_accum_steps", "max_length", "lora_r"):
            check_count(name, getattr(self, name))
        for name in ("eval_batch_size", "log_every", "keep_checkpoints"):
            check_count(name, getattr(self, name))
        for name in ("max_steps", "warmup_steps", "eval_every", "checkpoint_every"):
            check_count(name, getattr(self, name), minimum=0)
        check_count("max_eval_examples", self.max_eval_examples, minimum=0)
        check_positive("learning_rate", self.learning_rate)
        check_positive("lora_alpha", self.lora_alpha)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("lora_dropout", self.lora_dropout, 0.0, 0.999)
        check_range("max_grad_norm", self.max_grad_norm, 0.0, math.inf)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_device("device", self.device)
        check_choice("precision", self.precision, tuple(PRECISIONS))
        check_choice("sharding", self.sharding, SHARDINGS)
        check_choice("zero_stage", self.zero_stage, ZERO_STAGES)


# ---------------------------------------------------------------------------------------------
# Seeding, precision, the NaN guard


def fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices fast (:func:`pavlov.llm.cpu.kernels.onednn_bf16`:
    AVX-512, natively with AVX-512 BF16 / AMX; AVX2-only CPUs fall back to a scalar bf16 GEMM,
    1.2 GFLOP/s against 47 in fp32, measured)."""
    return onednn_bf16()


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"auto"`` -> ``"bf16"`` where the device multiplies bf16 fast (a CPU with
    :func:`fast_bf16`, a CUDA GPU that supports bf16), else ``"fp32"``; others unchanged."""
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if kind == "cpu" and fast_bf16() else "fp32"


@functools.cache
def _warn_slow_bf16() -> None:
    warnings.warn(
        "precision bf16 on a CPU without AVX-512: PyTorch's bf16 matmul is ~30x slower than "
        "fp32 here; use precision auto or fp32", RuntimeWarning, stacklevel=3,
    )  # fmt: skip


def autocast(
    precision: str, device: torch.device | str = "cpu"
) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``'s kind (cpu, cuda, mps) for ``"bf16"`` (and ``"auto"`` where
    bf16 is fast there); a no-op for ``"fp32"``."""
    kind = torch.device(device).type
    if resolve_precision(precision, kind) == "bf16":
        if kind == "cpu" and not fast_bf16():
            _warn_slow_bf16()
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place(model: nn.Module, cfg: TrainConfig) -> torch.device:
    """Move ``model`` to ``cfg.device`` (resolved) and return that device."""
    device = resolve_device(cfg.device)
    model.to(device)
    return device


def disable_dropout(model: nn.Module) -> None:
    """Set every ``nn.Dropout``'s probability to 0 (LoRA dropout included), as TRL does for DPO:
    the policy then equals the reference exactly at the first step."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Fused AdamW over the trainable parameters; weight decay on matrices only (ndim >= 2)."""
    named = trainable_parameters(model)
    if not named:
        raise PavlovError(f"{type(model).__name__} has no trainable parameters")
    groups = [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # fused: one pass over param/grad/moments instead of ~7 foreach passes; on 2 CPU cores the
    # update of SmolLM2-135M's 134.5M parameters drops from ~1 s to ~0.12 s (same math).
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=True
    )


def clip_gradients(
    params: Sequence[Tensor], max_norm: float, optimizer: torch.optim.Optimizer | None = None
) -> Tensor:
    """What ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` does: returns the total L2 norm
    of the gradients and scales them by ``min(1, max_norm / (norm + 1e-6))``; ``max_norm <= 0``
    only measures the norm (no clipping, as ``max_grad_norm = 0`` asks in the configs). For
    float32 CPU gradients the norm comes from :func:`pavlov.llm.cpu.native.l2_norm` (half the time
    of ``get_total_norm``, and closer to the exact value: 4e-8 vs 3e-4 relative error measured
    on SmolLM2-135M-sized gradients, whose per-tensor float32 norms drift).

    With a fused Adam/AdamW that updates exactly ``params``, the scaling is left to its next
    ``step()``: ``optimizer.grad_scale`` (the hook ``torch.amp.GradScaler`` uses) makes the fused
    kernel divide each gradient by ``1 / min(1, ...)`` as it reads it, which saves a read and a
    write of every gradient (~50 ms a step for SmolLM2-135M in float32 on 2 cores). Call it right
    before that ``step()``, once per step (it overwrites the previous scale).
    """
    max_norm = max_norm if max_norm > 0 else float("inf")
    grads = [p.grad for p in params if p.grad is not None]
    if any(isinstance(g, DTensor) for g in grads):  # sharded (FSDP): the norm over all shards
        norm = torch.nn.utils.get_total_norm(grads, 2.0).full_tensor()
        coef = min(1.0, max_norm / (float(norm) + 1e-6))
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
        return norm
    norm = l2_norm(grads)  # one C pass over all gradients, float64 totals
    if norm is None:
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if _fused_over(optimizer, params):
        coef = torch.clamp(max_norm / (norm.float() + 1e-6), max=1.0)
        optimizer.grad_scale = (1.0 / coef).reshape(()).to(torch.float32)  # type: ignore[union-attr]
    else:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def _fused_over(optimizer: torch.optim.Optimizer | None, params: Sequence[Tensor]) -> bool:
    """Whether ``optimizer`` is a fused Adam/AdamW on the CPU over exactly ``params``."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return False
    groups = optimizer.param_groups
    if not all(g.get("fused") for g in groups):
        return False
    owned = [p for g in groups for p in g["params"]]
    return (
        all(p.device.type == "cpu" for p in owned)
        and len(owned) == len(params)
        and {id(p) for p in owned} == {id(p) for p in params}
    )


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at 0-based optimizer step ``step`` of ``total``.

    Warmup: ``(step + 1) / warmup`` for ``step < warmup``; then 1 (``"constant"``) or
    ``(total - step) / (total - warmup)`` (``"linear"``), which is 1 at the end of warmup and
    ``1 / (total - warmup)`` at the last step: no step is taken with a zero learning rate.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    return max(total - step, 1) / (total - warmup)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` as a ``LambdaLR`` (its state, the step count, is checkpointed)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.lr_schedule)
    )


# ---------------------------------------------------------------------------------------------
# The batch plan: which examples each optimizer step uses, a pure function of (seed, step)


GROUP_SPAN = 32
"""Micro-batches per length-sorted group with ``group_by_length``."""


@dataclass(frozen=True)
class BatchPlan:
    """Micro-batches of example indices for every optimizer step, reproducible from the seed.

    Epoch ``e`` visits the examples in ``default_rng([seed, e]).permutation(n)`` order, cut into
    micro-batches of ``batch_size`` (the last may be smaller) grouped ``grad_accum_steps`` to an
    optimizer step. With ``lengths``, each run of :data:`GROUP_SPAN` micro-batches of that order
    is sorted by length and cut into micro-batches, which are then shuffled (Hugging Face's
    ``group_by_length``, without its longest-first order, so that a short run is not a run on
    the longest examples): a micro-batch holds sequences of similar lengths and little padding.
    Nothing depends on earlier steps, so a resumed run sees exactly the batches an uninterrupted
    one would.
    """

    n_examples: int
    batch_size: int
    grad_accum_steps: int
    seed: int
    lengths: tuple[int, ...] | None = None

    @property
    def steps_per_epoch(self) -> int:
        micro = math.ceil(self.n_examples / self.batch_size)
        return math.ceil(micro / self.grad_accum_steps)

    def total_steps(self, epochs: int, max_steps: int) -> int:
        return max_steps if max_steps > 0 else epochs * self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_examples)
        if self.lengths is None:
            return order
        rng = np.random.default_rng([self.seed, epoch, 1])
        span, lengths, out = self.batch_size * GROUP_SPAN, np.asarray(self.lengths), []
        for i in range(0, len(order), span):
            group = order[i : i + span]
            group = group[np.argsort(-lengths[group], kind="stable")]
            micro = [group[j : j + self.batch_size] for j in range(0, len(group), self.batch_size)]
            out += [micro[k] for k in rng.permutation(len(micro))]  # not longest-first
        return np.concatenate(out)

    def step(self, step: int) -> list[list[int]]:
        """Micro-batches (lists of example indices) of 0-based optimizer step ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        per_step = self.batch_size * self.grad_accum_steps
        chunk = self.order(epoch)[k * per_step : (k + 1) * per_step].tolist()
        return [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]

    def indices(self, start: int, stop: int) -> list[int]:
        """Sorted distinct example indices used by steps ``start .. stop - 1``."""
        seen: set[int] = set()
        for s in range(start, stop):
            for micro in self.step(s):
                seen.update(micro)
                if len(seen) == self.n_examples:
                    return sorted(seen)
        return sorted(seen)


def batch_plan(cfg: TrainConfig, lengths: Sequence[int]) -> BatchPlan:
    """The :class:`BatchPlan` of a run over examples of these lengths (tokens per example)."""
    if not lengths:
        raise ConfigError("no training examples: the training data is empty")
    grouped = tuple(int(n) for n in lengths) if cfg.group_by_length else None
    return BatchPlan(len(lengths), cfg.batch_size, cfg.grad_accum_steps, cfg.seed, grouped)


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def sorted_chunks(indices: Sequence[int], lengths: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` sorted by ``lengths[i]`` and cut into chunks of ``size``: batches of similar
    lengths pad little (evaluation and reference log-probs, where order does not matter)."""
    ordered = sorted(indices, key=lambda i: lengths[i])
    return [list(c) for c in chunks(ordered, size)]


def evenly_spaced(items: Sequence, limit: int) -> list:
    """At most ``limit`` items spread evenly over ``items`` (all of them when fewer; 0: none)."""
    n = len(items)
    if n <= limit:
        return list(items)
    return [items[i * n // limit] for i in range(limit)]


# ---------------------------------------------------------------------------------------------
# LoRA and model checks


def lora_targets(model: nn.Module, cfg: TrainConfig) -> tuple[str, ...]:
    """``cfg.lora_target_modules`` or, when empty, the attention projections of the model."""
    if cfg.lora_target_modules:
        return cfg.lora_target_modules
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for candidate in (("q_proj", "k_proj", "v_proj", "o_proj"), ("c_attn",), ("query", "value")):
        if set(candidate) <= names:
            return candidate
    raise ConfigError(
        f"lora_target_modules: cannot guess the attention layers of {type(model).__name__}; "
        f"set lora_target_modules"
    )


def maybe_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Wrap ``model`` with LoRA adapters when ``cfg.lora`` (a peft model: adapters trainable,
    base frozen); otherwise make every parameter trainable. Dropout is then switched off when
    ``cfg.disable_dropout``."""
    from pavlov.llm.models.loading import LoraSpec, apply_lora, is_peft_model

    if not cfg.lora:
        model.requires_grad_(True)
    elif not is_peft_model(model):
        spec = LoraSpec(
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=lora_targets(model, cfg),
        )
        model = apply_lora(model, spec)
    if cfg.disable_dropout:
        disable_dropout(model)
    return model


def load_adapters(base: nn.Module, path: str | Path) -> nn.Module:
    """``PeftModel.from_pretrained(base, path)`` (inference mode), without the deprecation
    warning peft 0.21 triggers under transformers 5."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return PeftModel.from_pretrained(base, str(path))


def context_length(model: nn.Module) -> int | None:
    """The model's maximum number of positions, if its config states one."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model: nn.Module, max_length: int, name: str = "max_length") -> None:
    """ConfigError when ``max_length`` exceeds the model's context window."""
    limit = context_length(model)
    if limit is not None and max_length > limit:
        raise ConfigError(f"{name} {max_length} exceeds the model's context of {limit} tokens")
