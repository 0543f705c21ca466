"""Sharded data parallelism for the offline LLM trainers: PyTorch's FSDP2 (``fully_shard``).

Plain data parallelism (``sharding: none``) keeps a whole copy of the weights, gradients and
AdamW moments on every rank and sums the gradients (:mod:`pavlov.run.distributed`). With
``sharding: fsdp`` every rank holds ``1/N`` of each: the layers' weights are all-gathered just
before their forward (and backward) and freed after, gradients are reduce-scattered, and AdamW
updates only the rank's shard -- ZeRO stage 3 (Rajbhandari et al. 2020), or stage 2 when the
weights stay gathered between forward and backward (``reshard_after_forward: false``). This is
PyTorch's own engine (``torch.distributed.fsdp.fully_shard``), on gloo (CPU) or nccl (GPU).

``accelerate launch`` with an FSDP accelerate config (``distributed_type: FSDP``) sets
``ACCELERATE_USE_FSDP`` and ``FSDP_*`` env vars; ``sharding: auto`` (the default) reads them, so
the user's accelerate config file decides, as with TRL. A DeepSpeed config is refused in one
line (not supported: FSDP covers ZeRO-2 and ZeRO-3).

What stays exact: the loss is normalised by the global count of its units and the gradients
are *summed* over the ranks (the divide factor is 1), so a step equals one process's step on
the whole batch, as without sharding (tested). Checkpoints and the final ``model/`` are whole
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

SHARDINGS = ("auto", "none", "fsdp")
"""Accepted ``TrainConfig.sharding`` values."""


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


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    value = env.get(key)
    return default if value is None else value.strip().lower() in ("1", "true", "yes")


def plan_from_env(env: Mapping[str, str] = os.environ) -> FsdpPlan | None:
    """The FSDP plan an ``accelerate launch`` with an FSDP config describes (None: none).

    FSDP version 1 configs name a ``fsdp_sharding_strategy`` (``FULL_SHARD`` / ``1``,
    ``SHARD_GRAD_OP`` / ``2``, ...); version 2 configs ``fsdp_reshard_after_forward``.
    """
    if _flag(env, "ACCELERATE_USE_DEEPSPEED", False):
        raise ConfigError(
            "the accelerate config asks for DeepSpeed, which pavlov does not run; use an FSDP "
            "config (distributed_type: FSDP; fsdp_reshard_after_forward true ~ ZeRO-3, "
            "false ~ ZeRO-2)"
        )
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


def resolve(sharding: str, world_size: int, env: Mapping[str, str] = os.environ
            ) -> FsdpPlan | None:
    """The plan for a run (None: no sharding). ``auto`` follows an accelerate FSDP config;
    ``fsdp`` shards with the defaults (or that config's settings); one process never shards."""
    from_env = plan_from_env(env) if sharding != "none" else None
    if world_size < 2 or sharding == "none":
        return None
    if sharding == "fsdp":
        return from_env or FsdpPlan()
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


__all__ = [
    "SHARDINGS",
    "FsdpPlan",
    "plan_from_env",
    "resolve",
    "shard",
    "is_sharded",
    "full_state",
    "load_optimizer",
]
