"""Every shipped YAML config builds a valid config (a broken config is a bug)."""

from pathlib import Path

import pytest

from pavlov.algos import get_algo
from pavlov.config import build_config, load_yaml

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
RUN_KEYS = {
    "algo",
    "env",
    "seed",
    "env_kwargs",
    "agent",
    "eval_episodes",
    "evaluate_every",
    "checkpoint_every",
}


def _llm_config_cls(prefix: str):
    from pavlov.llm.trainers import DPOConfig, RewardConfig, SFTConfig

    return {"sft": SFTConfig, "rm": RewardConfig, "dpo": DPOConfig}[prefix]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds(path):
    data = load_yaml(path)
    prefix = path.stem.split("-")[0]
    if "case_study" in data:  # pavlov rlhf
        from pavlov.llm.case_study.pipeline import CaseStudyConfig, stage_configs

        assert set(data) <= {"name", "runs_dir", "case_study"}
        assert stage_configs(build_config(CaseStudyConfig, data["case_study"])) is not None
        return
    if "trainer" in data:  # pavlov sft / reward-model / dpo
        assert build_config(_llm_config_cls(prefix), data["trainer"]) is not None
        return
    spec = get_algo(data.get("algo") or prefix)
    cfg = build_config(spec.config_cls, {**getattr(spec, "defaults", {}), **data["agent"]})
    assert cfg is not None
    assert set(data) <= RUN_KEYS


@pytest.mark.slow
def test_dqn_mountaincar_config_reaches_rl_zoo_level():
    """~2-4 min on 2 cores: the shipped config reaches the zoo's level (-103 +- 7 for SB3; >= -120
    here, every episode at the flag) at one of its last five evaluations (80k-120k steps), as
    the zoo's best-model evaluation would keep it, and its final policy still reaches the flag.
    DQN's greedy policy swings between evaluations on this task: seed 0 ended at -107 on an AMD
    CPU and at -148 on an Intel one (-125, -134, -142, -106, -148 at 80k..120k), each CPU's
    float rounding giving its own trajectory; pavlov's defaults stay at -200."""
    import copy

    import gymnasium as gym
    import torch

    from pavlov.agents import dqn
    from pavlov.agents.common import Hooks
    from pavlov.evaluation import evaluate_policy

    data = load_yaml(Path(__file__).parent.parent / "configs" / "dqn-mountaincar.yaml")
    cfg = build_config(dqn.Config, data["agent"])
    states: dict[int, dict] = {}

    def keep(step, state):
        if step >= 80_000:
            states[step] = copy.deepcopy(state)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `pavlov train` runs it
    try:
        hooks = Hooks(checkpoint=keep, checkpoint_every=10_000)
        out = dqn.train("MountainCar-v0", cfg, hooks=hooks)
    finally:
        torch.set_num_threads(threads)
    env = gym.make("MountainCar-v0")
    states[out.env_steps] = out.state
    results = {step: evaluate_policy(env, dqn.load_policy(state, cfg, env), 20, seed=10_000)
               for step, state in sorted(states.items())}  # fmt: skip
    assert sorted(results) == [80_000, 90_000, 100_000, 110_000, 120_000]
    best = max(results.values(), key=lambda r: r.mean_return)
    assert best.mean_return >= -120 and best.success_rate == 1.0, results
    assert results[120_000].success_rate > 0, results  # learned, not back at -200


@pytest.mark.slow
def test_ppo_lunarlander_config_lands():
    """~1.5 min on 2 cores (Box2D from the `box2d` extra, which `make` installs): 1M steps,
    then 20 deterministic landings at >= 200, "solved" (seed 0 measured 241; rl-zoo ~240)."""
    import gymnasium as gym

    from pavlov.agents import ppo
    from pavlov.evaluation import evaluate_policy

    data = load_yaml(Path(__file__).parent.parent / "configs" / "ppo-lunarlander.yaml")
    cfg = build_config(ppo.Config, data["agent"])
    out = ppo.train("LunarLander-v3", cfg)
    env = gym.make("LunarLander-v3")
    result = evaluate_policy(env, ppo.load_policy(out.state, cfg, env), 20, seed=10_000)
    assert result.mean_return >= 200, result
