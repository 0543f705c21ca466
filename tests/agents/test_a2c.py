"""A2C: advantage estimators, truncation bootstrap in rollouts, smoke runs, resume, learning."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import pavlov.envs  # noqa: F401  registers pavlov/* ids first
from pavlov.agents import a2c
from pavlov.agents.common import EpisodeStats, Hooks, make_vec_env, seed_all
from pavlov.agents.distributions import NumpyActorCritic
from pavlov.agents.rollout import Collector, RolloutBuffer, collect_rollout
from pavlov.envs.pointmass import HORIZON
from pavlov.errors import ConfigError, PavlovError

if "pavlov/PointMass-v0" not in gym.registry:  # until pavlov.envs registers it
    gym.register("pavlov/PointMass-v0", "pavlov.envs.pointmass:PointMassEnv",
                 max_episode_steps=HORIZON)

TINY = dict(total_steps=1_000, n_envs=2, n_steps=5, hidden_sizes=[16], log_every=100)


class _MultiBinaryEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.MultiBinary(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


if "pavlov-test/MultiBinary-v0" not in gym.registry:
    gym.register("pavlov-test/MultiBinary-v0", _MultiBinaryEnv, max_episode_steps=10)


def _initial_params(cfg: a2c.Config, env_id: str) -> dict[str, torch.Tensor]:
    env = gym.make(env_id)
    seed_all(cfg.seed)  # exactly what train() does before building the network
    model = a2c._make_model(env.observation_space, env.action_space, cfg)[1]
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _train(env_id="CartPole-v1", hooks=None, resume=None, **kw):
    return a2c.train(env_id, a2c.Config(**{**TINY, **kw}), hooks=hooks, resume=resume)


# ------------------------------------------------------------------------------- pieces


def _random_rollout(T=6, N=3, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rewards": torch.randn(T, N, generator=g),
        "values": torch.randn(T, N, generator=g),
        "terminated": torch.rand(T, N, generator=g) < 0.2,
        "truncated": torch.rand(T, N, generator=g) < 0.2,
        "final_values": torch.randn(T, N, generator=g),
        "last_values": torch.randn(N, generator=g),
    }


def test_nstep_with_n_at_least_the_rollout_equals_gae_lambda_one():
    roll = _random_rollout()
    cfg_gae = a2c.Config(advantage="gae", gae_lambda=1.0)
    cfg_n = a2c.Config(advantage="nstep", nstep=6)
    adv_g, ret_g = a2c.ADVANTAGES["gae"](roll, cfg_gae)
    adv_n, ret_n = a2c.ADVANTAGES["nstep"](roll, cfg_n)
    torch.testing.assert_close(adv_g, adv_n)
    torch.testing.assert_close(ret_g, ret_n)
    torch.testing.assert_close(ret_n - adv_n, roll["values"])
    adv_1, _ = a2c.ADVANTAGES["nstep"](roll, a2c.Config(advantage="nstep", nstep=1))
    adv_0, _ = a2c.ADVANTAGES["gae"](roll, a2c.Config(gae_lambda=0.0))  # both one-step TD
    torch.testing.assert_close(adv_1, adv_0)


def test_rollout_bootstraps_time_limit_cuts_from_the_final_observation():
    cfg = a2c.Config(**TINY)
    envs = make_vec_env("CartPole-v1", 2, {"max_episode_steps": 3})
    seed_all(0)
    head, model = a2c._make_model(envs.single_observation_space, envs.single_action_space, cfg)
    with torch.no_grad():  # make V non-trivial so a missing bootstrap would show
        model.v[-1].bias.fill_(7.0)
    buf = RolloutBuffer(7, 2, 4, head)
    c = Collector(envs, head, buf, np.random.default_rng(0), None, None, 0.0, EpisodeStats(2))
    c.reset(0)
    episodes = collect_rollout(c, NumpyActorCritic(model))
    roll = buf.t
    trunc = roll["truncated"] & ~roll["terminated"]
    assert trunc[2].all() and trunc[5].all()  # cut after 3 steps, twice per env
    assert (roll["final_values"][trunc] != 0).all() and (roll["final_values"][~trunc] == 0).all()
    assert [length for _, length in episodes] == [3, 3, 3, 3]
    adv, ret = a2c.ADVANTAGES["gae"](roll, cfg)
    # at a cut the target is r + gamma * V(final obs), not r
    torch.testing.assert_close(ret[2], roll["rewards"][2] + 0.99 * roll["final_values"][2])
    envs.close()


# --------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [("total_steps", 0), ("n_envs", 0), ("n_steps", 0), ("gamma", -0.1), ("gae_lambda", 1.1),
     ("nstep", 0), ("vf_coef", -1.0), ("ent_coef", -0.01), ("learning_rate", 0.0),
     ("rms_alpha", 1.0), ("optimizer_eps", 0.0), ("max_grad_norm", -1.0),
     ("advantage", "td"), ("optimizer", "sgd"), ("activation", "gelu"), ("hidden_sizes", [8, -1]),
     ("log_every", 0)],
)
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ConfigError, match=field):
        a2c.Config(**{field: value})


def test_shared_network_needs_a_hidden_layer():
    with pytest.raises(ConfigError, match="hidden_sizes"):
        a2c.Config(shared_network=True, hidden_sizes=[])


def test_unsupported_action_space_is_a_pavlov_error():
    with pytest.raises(PavlovError, match="A2C supports"):
        _train("pavlov-test/MultiBinary-v0")


# ------------------------------------------------------------------------------ smoke runs


@pytest.mark.parametrize(
    ("env_id", "kw"),
    [("CartPole-v1", {}), ("CartPole-v1", {"shared_network": True, "optimizer": "adam",
                                           "advantage": "nstep", "ent_coef": 0.01}),
     ("pavlov/PointMass-v0", {"normalize_advantage": True})],
)
def test_smoke_every_parameter_changes_and_metrics_are_finite(env_id, kw):
    logs: list[tuple[int, dict[str, float]]] = []
    hooks = Hooks(log=lambda s, m: logs.append((s, m)), evaluate_every=500, eval_episodes=2)
    out = _train(env_id, hooks=hooks, **kw)
    before, after = _initial_params(a2c.Config(**{**TINY, **kw}), env_id), out.state["model"]
    assert before.keys() <= after.keys()
    for name in before:
        assert not torch.equal(before[name], after[name]), f"{name} did not change"
    names = {k for _, m in logs for k in m}
    assert {"losses/policy", "losses/value", "losses/entropy", "charts/episode_return",
            "charts/episode_length", "charts/SPS", "eval/mean_return"} <= names
    assert all(math.isfinite(v) for _, m in logs for v in m.values())
    assert out.env_steps == 1_000 and out.seconds > 0 and len(out.evals) == 2
    env = gym.make(env_id)
    policy = a2c.load_policy(out.state, a2c.Config(**{**TINY, **kw}), env)
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(policy(obs, 0))
    assert np.array_equal(policy(obs, 0), policy(obs, 0))


def test_same_seed_same_parameters_and_different_seed_differs():
    a, b, c = _train(seed=3), _train(seed=3), _train(seed=4)
    pa, pb, pc = a.state["model"], b.state["model"], c.state["model"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_resume_continues_from_the_checkpoint():
    states: list[tuple[int, dict]] = []
    hooks = Hooks(checkpoint=lambda s, st: states.append((s, st)), checkpoint_every=500)
    full = _train(hooks=hooks)
    step, mid = states[0]
    assert step == 500 and mid["env_steps"] == 500 and mid["updates"] == 50
    resumed = _train(resume=mid)
    assert resumed.env_steps == full.env_steps == 1_000
    assert resumed.state["updates"] == 100
    # the optimizer state carried over (RMSprop's square averages are not reset)
    sq = [s["square_avg"] for s in resumed.state["optimizer"]["state"].values()]
    assert all(float(x.abs().sum()) > 0 for x in sq)
    # resuming the same state twice is deterministic
    again = _train(resume=mid)
    assert all(torch.equal(again.state["model"][k], resumed.state["model"][k])
               for k in resumed.state["model"])
    with pytest.raises(PavlovError, match="cannot resume A2C"):
        _train(resume={**mid, "algo": "ppo"})


def test_stop_hook_ends_training_after_an_evaluation():
    out = _train(hooks=Hooks(evaluate_every=200, eval_episodes=1, stop=lambda s, m: True))
    assert out.env_steps == 200 and len(out.evals) == 1


# ------------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a2c_solves_cartpole(seed):
    """~3-10 s each: >= 475 at ~10k-80k env steps on this machine class."""
    cfg = a2c.Config(seed=seed)  # = configs/a2c-cartpole.yaml (rl-zoo)
    hooks = Hooks(evaluate_every=10_000, eval_episodes=10,
                  stop=lambda step, m: m["eval/mean_return"] >= 475)
    out = a2c.train("CartPole-v1", cfg, hooks=hooks)
    assert out.evals and out.evals[-1][1] >= 475, out.evals
    assert out.env_steps <= 500_000
