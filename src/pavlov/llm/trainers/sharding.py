"""Sharded data parallelism for the offline LLM trainers: PyTorch's FSDP2 (``fully_shard``) or
DeepSpeed's ZeRO engine.

Plain data parallelism (``sharding: none``) keeps a whole copy of the weights, gradients and
AdamW moments on every rank and sums the gradients (:mod:`pavlov.run.distributed`). With
``sharding: fsdp`` every rank holds ``1/N`` of each: the layers' weights are all-gathered just
before their forward (and backward) and freed after, gradients are reduce-scattered, and AdamW
updates only the rank's shard -- ZeRO stage 3 (Rajbhandari et al. 2020), or stage 2 when the
weights stay gathered between forward and backward (``reshard_after_forward: false``). This is
PyTorch's own engine (``torch.distributed.fsdp.fully_shard``), on gloo (CPU) or nccl (GPU).

``accelerate launch`` with an FSDP accelerate config (``distributed_type: FSDP``) sets
``ACCELERATE_USE_FSDP`` and ``FSDP_*`` env vars; ``sharding: auto`` (the default) reads them, so
the user's accelerate config file decides, as with TRL.

``sharding: deepspeed`` runs the same steps through DeepSpeed's engine (``deepspeed.initialize``
with ZeRO stage ``zero_stage``: 1 partitions the AdamW moments, 2 also the gradients, 3 also the
weights; Rajbhandari et al. 2020), over the same process group (gloo on CPU, nccl on GPU). An
accelerate DeepSpeed config (``distributed_type: DEEPSPEED``: ``ACCELERATE_USE_DEEPSPEED``,
``ACCELERATE_DEEPSPEED_ZERO_STAGE`` or the stage of its ``deepspeed_config_file``) selects it
under ``auto``. DeepSpeed is optional (``pip install --no-build-isolation deepspeed``); offloading
to CPU or NVMe is refused in one line.

What stays exact: the loss is normalised by the global count of its units and the gradients
are *summed* over the ranks (FSDP: the divide factor is 1; DeepSpeed, which averages: the loss is
multiplied by the world size), so a step equals one process's step on the whole batch, as
without sharding (tested). Checkpoints and the final ``model/`` are whole
(gathered to rank 0: loadable by transformers / peft without pavlov); a sharded run resumes
sharded, from rank 0's copy of the optimizer state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pavlov.errors import ConfigError

SHARDINGS = ("auto", "none", "fsdp", "deepspeed")
"""Accepted ``TrainConfig.sharding`` values."""
ZERO_STAGES = (1, 2, 3)


@dataclass(frozen=True)
class FsdpPlan:
    """How the model is sharded (from ``TrainConfig`` or an accelerate config's FSDP section)."""

    reshard_after_forward: bool = True
    """Free the gathered weights after each layer's forward (ZeRO-3, accelerate's
    ``FULL_SHARD``); False keeps them until the backward (ZeRO-2-like ``SHARD_GRAD_OP``): more
    memory, one all-gather less per layer and step."""
    offload_params: bool = False
    """Keep the shards (weights, gradients, AdamW moments) in CPU memory between uses
    (``fsdp_offload_params``; a GPU option)."""
    layer_classes: tuple[str, ...] = ()
    """Module class names sharded as units (``fsdp_transformer_layer_cls_to_wrap``); empty:
    the model's ``_no_split_modules`` (its decoder or encoder layers)."""


@dataclass(frozen=True)
class DeepSpeedPlan:
    """ZeRO through DeepSpeed's engine (``sharding: deepspeed`` or an accelerate DeepSpeed
    config)."""

    stage: int = 3
    """ZeRO stage: 1 (AdamW moments partitioned), 2 (and gradients), 3 (and weights)."""


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    value = env.get(key)
    return default if value is None else value.strip().lower() in ("1", "true", "yes")


def _deepspeed_from_env(env: Mapping[str, str]) -> DeepSpeedPlan:
    """The stage of an accelerate DeepSpeed config: ``zero_stage``, or the
    ``zero_optimization`` section of its ``deepspeed_config_file``; offloading is refused."""
    import json

    stage, offload = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"), []
    for key in ("OPTIMIZER", "PARAM"):
        device = env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{key}_DEVICE", "none").strip().lower()
        if device not in ("", "none"):
            offload.append(f"offload_{key.lower()}_device: {device}")
    path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    if path:
        try:
            zero = json.loads(open(path).read()).get("zero_optimization", {})  # noqa: SIM115
        except (OSError, ValueError) as e:
            raise ConfigError(f"deepspeed_config_file {path}: {e}") from None
        stage = zero.get("stage", stage)
        for key in ("offload_optimizer", "offload_param"):
            device = str((zero.get(key) or {}).get("device", "none")).lower()
            if device != "none":
                offload.append(f"{key}: {device}")
    if offload:
        raise ConfigError(f"DeepSpeed {', '.join(offload)} is not supported (pavlov runs ZeRO "
                          "without offloading); set it to none")
    try:
        stage = int(stage if stage is not None else 2)  # accelerate's default stage
    except ValueError:
        raise ConfigError(f"DeepSpeed zero_stage must be 1, 2 or 3, got {stage!r}") from None
    if stage not in ZERO_STAGES:
        raise ConfigError(f"DeepSpeed zero_stage must be 1, 2 or 3, got {stage!r}")
    return DeepSpeedPlan(stage)


def plan_from_env(env: Mapping[str, str] = os.environ) -> FsdpPlan | DeepSpeedPlan | None:
    """The plan an ``accelerate launch`` with an FSDP or DeepSpeed config describes (None:
    neither).

    FSDP version 1 configs name a ``fsdp_sharding_strategy`` (``FULL_SHARD`` / ``1``,
    ``SHARD_GRAD_OP`` / ``2``, ...); version 2 configs ``fsdp_reshard_after_forward``.
    """
    if _flag(env, "ACCELERATE_USE_DEEPSPEED", False):
        return _deepspeed_from_env(env)
    if not _flag(env, "ACCELERATE_USE_FSDP", False):
        return None
    reshard = _flag(env, "FSDP_RESHARD_AFTER_FORWARD", True)
    strategy = env.get("FSDP_SHARDING_STRATEGY", "").strip().upper()
    if env.get("FSDP_VERSION", "1").strip() == "1" and strategy:
        if strategy in ("NO_SHARD", "3"):
            return None  # plain data parallelism
        reshard = strategy not in ("SHARD_GRAD_OP", "2", "_HYBRID_SHARD_ZERO2", "5")
    layers = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    return FsdpPlan(
        reshard_after_forward=reshard,
        offload_params=_flag(env, "FSDP_OFFLOAD_PARAMS", False),
        layer_classes=tuple(x.strip() for x in layers.split(",") if x.strip()),
    )


def resolve(sharding: str, world_size: int, env: Mapping[str, str] = os.environ,
            zero_stage: int = 3) -> FsdpPlan | DeepSpeedPlan | None:
    """The plan for a run (None: no sharding). ``auto`` follows an accelerate FSDP or DeepSpeed
    config; ``fsdp`` shards with the defaults (or that config's settings); ``deepspeed`` runs
    ZeRO stage ``zero_stage`` (or the DeepSpeed config's); one process never shards."""
    from_env = plan_from_env(env) if sharding != "none" else None
    if world_size < 2 or sharding == "none":
        return None
    if sharding == "fsdp":
        return from_env if isinstance(from_env, FsdpPlan) else FsdpPlan()
    if sharding == "deepspeed":
        return from_env if isinstance(from_env, DeepSpeedPlan) else DeepSpeedPlan(zero_stage)
    return from_env


def _layer_names(model: nn.Module, plan: FsdpPlan) -> set[str]:
    if plan.layer_classes:
        return set(plan.layer_classes)
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def shard(model: nn.Module, plan: FsdpPlan) -> nn.Module:
    """Shard ``model`` in place over the default process group: each layer (see
    :attr:`FsdpPlan.layer_classes`) is one unit, the rest (embeddings, norms, heads) the root
    unit. Gradients are summed over the ranks, not averaged (the trainers normalise the loss by
    the global count). Returns ``model`` (now an FSDP module)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

    kwargs: dict[str, Any] = {"reshard_after_forward": plan.reshard_after_forward}
    if plan.offload_params:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    names = _layer_names(model, plan)
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if plan.layer_classes and not layers:
        raise ConfigError(f"no module of class {', '.join(sorted(names))} to shard in "
                          f"{type(model).__name__} (fsdp_transformer_layer_cls_to_wrap)")
    for layer in layers:
        fully_shard(layer, **kwargs)
    # The root unit (embeddings, final norm, heads) stays gathered from its forward to its
    # backward (FSDP2's default for the root): the trainers apply the LM head to the hidden
    # states they keep, after the forward (sft_loss, score_tokens).
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Every rank calls it (collectives): the whole model's and optimizer's state dicts, on
    rank 0 in CPU memory (empty dicts elsewhere). The optimizer's is keyed by parameter name
    (:func:`load_optimizer` reads it back)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = None
    if optimizer is not None:
        optim = get_optimizer_state_dict(model, optimizer, options=options)
    return weights, optim


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Every rank calls it: rank 0's whole optimizer state (from :func:`full_state`) is
    scattered to the ranks' shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)


# ---------------------------------------------------------------------------------------------
# DeepSpeed


ZERO3_PERSISTENCE_THRESHOLD = 100_000
"""ZeRO-3 keeps parameters of fewer elements than this whole on every rank (DeepSpeed's
default: norms and biases cost more to gather than to keep); the tests set 0 to shard all."""


def deepspeed_engine(model: nn.Module, optimizer: torch.optim.Optimizer, plan: DeepSpeedPlan,
                     max_grad_norm: float):
    """``deepspeed.initialize`` on ``model`` with pavlov's own optimizer (AdamW, its schedule
    stepped by the trainer) and ZeRO stage ``plan.stage``, over the existing process group.

    The trainer batches and accumulates itself: the engine sees micro-batches of 1 and one
    accumulation step, and the trainer marks the step's last backward as the boundary
    (:func:`deepspeed_backward`). Clipping is the engine's (``gradient_clipping``, the norm
    over all partitions). Returns the engine; ``model`` is its module (ZeRO-3 partitions its
    weights in place, gathered by hooks around each submodule's forward).
    """
    try:
        import deepspeed
    except ImportError:
        raise ConfigError("sharding deepspeed needs DeepSpeed: pip install --no-build-isolation "
                          "deepspeed (DS_BUILD_OPS=0: no compiled ops are needed)") from None
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(max_grad_norm) if max_grad_norm else 0.0,
        "zero_optimization": {
            "stage": plan.stage,
            "stage3_param_persistence_threshold": ZERO3_PERSISTENCE_THRESHOLD,
        },
        "zero_allow_untested_optimizer": True,  # torch's AdamW: ZeRO partitions its state
        "steps_per_print": 2**31 - 1,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                      dist_init_required=False)  # fmt: skip
    return engine


def deepspeed_backward(engine, loss: torch.Tensor, last: bool) -> None:
    """One micro-batch's backward; ``last``: the step's final one, where ZeRO-1 reduces. The
    engine averages gradients over the ranks; the loss is scaled by the world size so that they
    are summed, as the trainers' global normalisation needs (exact for 2, 4, ... ranks)."""
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss * engine.dp_world_size)
    # What engine.forward does before the next micro-batch (the trainers call the module
    # itself): ZeRO-3 then accumulates into its gradient partitions instead of overwriting them.
    clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
    if clear is not None:
        clear()


def deepspeed_step(engine) -> float | None:
    """The optimizer step (after clipping) -> the gradient norm before clipping (None where the
    engine did not compute one)."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def deepspeed_state(engine, with_optimizer: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Every rank calls it: the whole weights and every rank's optimizer partition, on rank 0
    (empty / None elsewhere). The optimizer state is ``{"zero_stage", "ranks": [per-rank
    state]}``; :func:`deepspeed_load_optimizer` gives each rank its own back (same world size)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    if engine.zero_optimization_partition_weights():  # ZeRO-3: gather the partitions
        weights = engine._zero3_consolidated_16bit_state_dict() or {}  # noqa: SLF001
    else:
        weights = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    optim = None
    if with_optimizer:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, engine.optimizer.state_dict())
        optim = {"zero_stage": engine.zero_optimization_stage(), "ranks": parts}
    if rank != 0:
        return {}, None
    return weights, optim


def deepspeed_load_optimizer(engine, state: dict[str, Any]) -> None:
    """Every rank: its own partition of a :func:`deepspeed_state` optimizer state."""
    import torch.distributed as dist

    ranks = state.get("ranks") if isinstance(state, dict) else None
    if ranks is None or len(ranks) != dist.get_world_size():
        raise ConfigError("this checkpoint's optimizer state was not saved by a DeepSpeed run "
                          f"of {dist.get_world_size()} processes; resume it with as many")
    if state.get("zero_stage") != engine.zero_optimization_stage():
        raise ConfigError(f"this checkpoint was saved at ZeRO stage {state.get('zero_stage')}, "
                          f"not {engine.zero_optimization_stage()}")
    engine.optimizer.load_state_dict(ranks, load_optimizer_states=True,
                                     load_from_fp32_weights=False)  # fmt: skip


__all__ = [
    "SHARDINGS",
    "ZERO_STAGES",
    "FsdpPlan",
    "DeepSpeedPlan",
    "plan_from_env",
    "resolve",
    "shard",
    "is_sharded",
    "full_state",
    "load_optimizer",
    "deepspeed_engine",
    "deepspeed_backward",
    "deepspeed_step",
    "deepspeed_state",
    "deepspeed_load_optimizer",
]
