"""REINFORCE: episode collection, bootstrapped reward-to-go, smoke runs, resume, learning."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import pavlov.envs  # noqa: F401  registers pavlov/* ids first
from pavlov.agents import reinforce
from pavlov.agents.common import Hooks, NonFiniteError, seed_all
from pavlov.envs.pointmass import HORIZON
from pavlov.errors import ConfigError, PavlovError

if "pavlov/PointMass-v0" not in gym.registry:  # until pavlov.envs registers it
    gym.register("pavlov/PointMass-v0", "pavlov.envs.pointmass:PointMassEnv",
                 max_episode_steps=HORIZON)

TINY = dict(total_steps=1_500, n_envs=2, episodes_per_update=4, hidden_sizes=[16])


class _MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([2, 2])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


class _NaNRewardEnv(_MultiDiscreteEnv):
    action_space = gym.spaces.Discrete(2)

    def step(self, action):
        return np.zeros(2, np.float32), float("nan"), True, False, {}


class _EndlessEnv(_NaNRewardEnv):
    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


for _id, _cls, _limit in (("pavlov-test/MultiDiscrete-v0", _MultiDiscreteEnv, 10),
                          ("pavlov-test/NaNReward-v0", _NaNRewardEnv, 10),
                          ("pavlov-test/Endless-v0", _EndlessEnv, None)):
    if _id not in gym.registry:
        gym.register(_id, _cls, max_episode_steps=_limit)


def _initial_params(cfg: reinforce.Config, env_id: str) -> dict[str, torch.Tensor]:
    env = gym.make(env_id)
    seed_all(cfg.seed)  # exactly what train() does before building the networks
    agent = reinforce.build_agent(cfg, env.observation_space, env.action_space)
    return {n: p.detach().clone() for n, p in agent.model.named_parameters()}


def _params(state) -> dict[str, torch.Tensor]:
    return dict(state["model"])


def _train(env_id="CartPole-v1", hooks=None, resume=None, **kw):
    return reinforce.train(env_id, reinforce.Config(**{**TINY, **kw}), hooks=hooks,
                           resume=resume)


# ------------------------------------------------------------------------------- pieces


def test_collect_episodes_returns_exactly_the_quota_of_whole_episodes():
    envs = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    seed_all(0)
    agent = reinforce.build_agent(reinforce.Config(hidden_sizes=[8]),
                                  envs.single_observation_space, envs.single_action_space)
    batch = reinforce.collect_episodes(envs, agent.head, agent.model, 5, seed=0,
                                       rng=np.random.default_rng(0))
    assert len(batch.episodes) == 5
    # every valid step belongs to one of the 5 episodes, and each of them ended inside the batch
    assert int(batch.valid.sum()) == sum(length for _, length in batch.episodes)
    ends = (batch.terminated | batch.truncated) & batch.valid
    assert int(ends.sum()) == 5
    assert float(batch.rewards[batch.valid].sum()) == sum(r for r, _ in batch.episodes)
    for i in range(3):  # valid steps of an env form a prefix ending at an episode end
        v = batch.valid[:, i]
        last = int(v.nonzero().max()) if v.any() else -1
        assert bool(v[: last + 1].all()) and (last < 0 or bool(ends[last, i]))
    envs.close()


def test_reward_to_go_bootstraps_truncation_only_with_a_baseline():
    # one env, episode of 3 steps truncated by a time limit, then a terminated 1-step episode
    t = torch.tensor
    batch = reinforce.EpisodeBatch(
        obs=torch.zeros(4, 1, 2), actions=torch.zeros(4, 1, dtype=torch.long),
        rewards=t([[1.0], [1.0], [1.0], [5.0]]),
        terminated=t([[False], [False], [False], [True]]),
        truncated=t([[False], [False], [True], [False]]),
        final_obs=torch.zeros(4, 1, 2), valid=torch.ones(4, 1, dtype=torch.bool), episodes=[],
    )

    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.full((*x.shape[:-1], 1), 10.0)

    gamma = 0.5
    plain = reinforce.returns_to_go(batch, None, gamma)
    torch.testing.assert_close(plain[:, 0], t([1.75, 1.5, 1.0, 5.0]))
    boot = reinforce.returns_to_go(batch, Const(), gamma)  # + gamma * V(s_final) = 5 at the cut
    torch.testing.assert_close(boot[:, 0], t([1.75 + 1.25, 1.5 + 2.5, 1.0 + 5.0, 5.0]))


# --------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [("total_steps", 0), ("n_envs", 2.5), ("episodes_per_update", -1), ("gamma", 1.5),
     ("learning_rate", 0.0), ("value_epochs", 0), ("ent_coef", -0.1), ("max_grad_norm", 0.0),
     ("hidden_sizes", [0]), ("hidden_sizes", "64"), ("activation", "sigmoid"),
     ("vectorization", "threads")],
)
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ConfigError, match=field):
        reinforce.Config(**{field: value})


def test_unsupported_spaces_and_envs_are_pavlov_errors():
    with pytest.raises(PavlovError, match="REINFORCE supports"):
        _train("pavlov-test/MultiDiscrete-v0")
    with pytest.raises(PavlovError, match="no time limit"):
        _train("pavlov-test/Endless-v0")


@pytest.mark.filterwarnings("ignore:.*reward is a NaN")
def test_nan_reward_stops_before_the_weights_change():
    with pytest.raises(NonFiniteError, match="not finite"):
        _train("pavlov-test/NaNReward-v0")


# ------------------------------------------------------------------------------ smoke runs


@pytest.mark.parametrize("env_id", ["CartPole-v1", "pavlov/PointMass-v0"])
def test_smoke_every_parameter_changes_and_metrics_are_finite(env_id):
    logs: list[tuple[int, dict[str, float]]] = []
    hooks = Hooks(log=lambda s, m: logs.append((s, m)), evaluate_every=500, eval_episodes=2)
    out = _train(env_id, hooks=hooks)
    before, after = _initial_params(reinforce.Config(**TINY), env_id), _params(out.state)
    assert before.keys() == after.keys() and any("log_std" in k for k in after) == (
        env_id != "CartPole-v1")
    for name in before:
        assert not torch.equal(before[name], after[name]), f"{name} did not change"
    names = {k for _, m in logs for k in m}
    assert {"losses/policy", "losses/value", "losses/entropy", "charts/episode_return",
            "charts/episode_length", "charts/SPS", "eval/mean_return"} <= names
    assert all(math.isfinite(v) for _, m in logs for v in m.values())
    assert out.env_steps >= 1_500 and out.seconds > 0 and len(out.evals) >= 2
    env = gym.make(env_id)
    policy = reinforce.load_policy(out.state, reinforce.Config(**TINY), env)
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(policy(obs, 0))
    assert np.array_equal(policy(obs, 0), policy(obs, 0))


def test_without_baseline_there_is_no_critic():
    logs = []
    out = _train(baseline=False, hooks=Hooks(log=lambda s, m: logs.append(m)))
    assert set(out.state["optimizers"]) == {"actor"}
    before = _initial_params(reinforce.Config(**{**TINY, "baseline": False}), "CartPole-v1")
    for name, value in out.state["model"].items():  # the baseline is neither used nor trained
        assert torch.equal(value, before[name]) == name.startswith("v."), name
    assert not any("losses/value" in m for m in logs)


def test_same_seed_same_parameters_and_different_seed_differs():
    a, b, c = _train(seed=3), _train(seed=3), _train(seed=4)
    pa, pb, pc = _params(a.state), _params(b.state), _params(c.state)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_resume_continues_exactly():
    states: list[tuple[int, dict]] = []
    hooks = Hooks(checkpoint=lambda s, st: states.append((s, st)), checkpoint_every=1)
    full = _train(hooks=hooks)
    step, mid = states[0]
    assert 0 < step < full.env_steps and mid["env_steps"] == step
    resumed = _train(resume=mid)
    assert resumed.env_steps == full.env_steps
    pf, pr = _params(full.state), _params(resumed.state)
    assert all(torch.equal(pf[k], pr[k]) for k in pf)
    with pytest.raises(PavlovError, match="baseline"):
        _train(resume=mid, baseline=False)


# ------------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_with_baseline_solves_cartpole(seed):
    """~5-10 s each: >= 475 at ~40k-65k env steps on this machine class."""
    cfg = reinforce.Config(seed=seed)  # = configs/reinforce-cartpole.yaml
    hooks = Hooks(evaluate_every=10_000, eval_episodes=10,
                  stop=lambda step, m: m["eval/mean_return"] >= 475)
    out = reinforce.train("CartPole-v1", cfg, hooks=hooks)
    assert out.evals and out.evals[-1][1] >= 475, out.evals
    assert out.env_steps <= 300_000
