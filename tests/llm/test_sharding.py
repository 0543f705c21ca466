"""What an ``accelerate launch`` FSDP (or DeepSpeed) config asks of the trainers
(:mod:`pavlov.llm.trainers.sharding`): the env vars accelerate sets, read into one plan."""

from __future__ import annotations

import pytest

from pavlov.errors import ConfigError
from pavlov.llm.trainers.sharding import DeepSpeedPlan, FsdpPlan, plan_from_env, resolve


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


def test_an_accelerate_deepspeed_config_becomes_the_plan(tmp_path):
    ds = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert plan_from_env(ds) == DeepSpeedPlan(2)  # accelerate's default stage
    assert plan_from_env({**ds, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == DeepSpeedPlan(3)
    none = {"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none"}
    assert plan_from_env({**ds, **none, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}).stage == 1
    file = tmp_path / "ds.json"
    file.write_text('{"zero_optimization": {"stage": 3, "offload_param": {"device": "none"}}}')
    assert plan_from_env({**ds, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(file)}).stage == 3
    # under auto the config decides; sharding=deepspeed alone takes zero_stage
    assert resolve("auto", 2, {**ds, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == DeepSpeedPlan(3)
    assert resolve("deepspeed", 2, {}, zero_stage=1) == DeepSpeedPlan(1)
    assert resolve("deepspeed", 1, ds) is None and resolve("none", 2, ds) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"},
         "DeepSpeed offload_optimizer_device: cpu is not supported"),
        ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"}, "zero_stage must be 1, 2 or 3, got 0"),
        ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "x"}, "zero_stage must be 1, 2 or 3, got 'x'"),
        ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "/nonexistent/ds.json"},
         "deepspeed_config_file /nonexistent/ds.json"),
    ],
)
def test_what_pavlov_does_not_run_of_a_deepspeed_config_is_one_line(env, message):
    with pytest.raises(ConfigError, match=message):
        plan_from_env({"ACCELERATE_USE_DEEPSPEED": "true", **env})


def test_an_offloading_deepspeed_config_file_is_refused(tmp_path):
    file = tmp_path / "ds.json"
    file.write_text('{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}')
    with pytest.raises(ConfigError, match="offload_optimizer: cpu is not supported"):
        plan_from_env({"ACCELERATE_USE_DEEPSPEED": "true",
                       "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(file)})
