from dataclasses import dataclass, field

import pytest
import yaml

from pavlov.config import build_config, config_dict, parse_overrides
from pavlov.errors import ConfigError, PavlovError


@dataclass
class Cfg:
    lr: float = 1e-3
    steps: int = 10
    flag: bool = False
    name: str = "x"
    kl: float | None = None
    hidden: tuple[int, ...] = (64, 64)
    layers: list[int] = field(default_factory=lambda: [1])


def test_values_are_coerced_from_yaml_and_cli_strings():
    cfg = build_config(
        Cfg,
        {
            "lr": "3e-4",
            "steps": 5.0,
            "flag": "true",
            "kl": 0.1,
            "hidden": [32, 32],
            "layers": [2, 3],
        },
    )
    assert cfg.lr == 3e-4 and cfg.steps == 5 and cfg.flag is True and cfg.kl == 0.1
    assert cfg.hidden == (32, 32) and cfg.layers == [2, 3]
    assert build_config(Cfg, {"kl": None}).kl is None


def test_config_dict_is_yaml_safe():
    d = config_dict(Cfg())
    assert d["hidden"] == [64, 64]
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="steps must be int"):
        build_config(Cfg, {"steps": 2.5})
    with pytest.raises(ConfigError, match="unknown config key.*valid: lr"):
        build_config(Cfg, {"nope": 1})


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a=1", "b=linear", "c=1e-3", "d=[1, 2]"]) == {
        "a": 1,
        "b": "linear",
        "c": 1e-3,
        "d": [1, 2],
    }
    with pytest.raises(PavlovError, match="key=value"):
        parse_overrides(["novalue"])


def test_an_old_field_name_says_its_new_name():
    from pavlov.agents import a2c
    from pavlov.config import build_config
    from pavlov.errors import ConfigError
    from pavlov.llm.trainers.online import OnlineConfig

    with pytest.raises(ConfigError, match="^agent key normalize_advantages is now called "
                                          "normalize_advantage$"):
        build_config(a2c.Config, {"normalize_advantages": True}, where="agent")
    with pytest.raises(ConfigError, match="ppo_epochs is now called n_epochs"):
        build_config(OnlineConfig, {"ppo_epochs": 2})


def test_a_config_group_takes_a_mapping_or_dotted_keys():
    """The LLM trainers' CPU speed-ups are one group (``cpu``): YAML mappings, ``-o cpu.x=...``
    overrides (which win), the old flat names refused with their new ones, a round trip through
    config_dict (what a checkpoint stores)."""
    from pavlov.config import build_config, config_dict, parse_overrides
    from pavlov.errors import ConfigError
    from pavlov.llm.cpu import CpuConfig
    from pavlov.llm.trainers.online import OnlineConfig
    from pavlov.llm.trainers.sft import SFTConfig

    values = {"cpu": {"reuse_heap": False, "enabled": True},
              **parse_overrides(["cpu.enabled=false", "max_steps=3"])}
    cfg = build_config(OnlineConfig, values, where="trainer")
    assert cfg.cpu == CpuConfig(enabled=False, reuse_heap=False) and cfg.max_steps == 3
    assert not cfg.cpu.on("fast_kernels") and not cfg.cpu.on("replay_rollout")
    assert build_config(OnlineConfig, config_dict(cfg)) == cfg
    assert build_config(SFTConfig, {}).cpu == CpuConfig()
    with pytest.raises(ConfigError, match="key fast_kernels is now called cpu.fast_kernels"):
        build_config(SFTConfig, {"fast_kernels": False}, where="trainer")
    with pytest.raises(ConfigError, match="unknown trainer.cpu key.s. nope"):
        build_config(SFTConfig, {"cpu.nope": 1}, where="trainer")
    with pytest.raises(ConfigError, match="cpu must be a mapping"):
        build_config(SFTConfig, {"cpu": 3}, where="trainer")


def test_the_docs_table_of_config_fields_is_current():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "config_fields.py"
    spec = importlib.util.spec_from_file_location("config_fields", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.PATH.read_text() == mod.render(), "run: python docs/config_fields.py"
