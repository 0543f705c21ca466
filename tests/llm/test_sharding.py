"""What an ``accelerate launch`` FSDP (or DeepSpeed) config asks of the trainers
(:mod:`pavlov.llm.trainers.sharding`): the env vars accelerate sets, read into one plan."""

from __future__ import annotations

import pytest

from pavlov.errors import ConfigError
from pavlov.llm.trainers.sharding import FsdpPlan, plan_from_env, resolve


def test_an_accelerate_fsdp_config_becomes_the_plan():
    assert plan_from_env({}) is None
    v2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
          "FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_OFFLOAD_PARAMS": "true",
          "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, BertLayer"}  # fmt: skip
    assert plan_from_env(v2) == FsdpPlan(False, True, ("LlamaDecoderLayer", "BertLayer"))
    v1 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}
    assert plan_from_env({**v1, "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}) == FsdpPlan()
    assert not plan_from_env({**v1, "FSDP_SHARDING_STRATEGY": "2"}).reshard_after_forward
    assert plan_from_env({**v1, "FSDP_SHARDING_STRATEGY": "NO_SHARD"}) is None  # plain DDP


def test_sharding_applies_only_with_several_processes_and_as_asked():
    fsdp = {"ACCELERATE_USE_FSDP": "true"}
    assert resolve("auto", 2, fsdp) == FsdpPlan() and resolve("auto", 2, {}) is None
    assert resolve("fsdp", 2, {}) == FsdpPlan() and resolve("fsdp", 1, fsdp) is None
    assert resolve("none", 2, fsdp) is None


def test_a_deepspeed_config_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="DeepSpeed, which pavlov does not run; use an FSDP"):
        plan_from_env({"ACCELERATE_USE_DEEPSPEED": "true"})
