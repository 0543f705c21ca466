"""DQN: exact checks of its pieces, fast smoke runs, and a slow learning test with fixed seeds."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pavlov.agents import dqn
from pavlov.agents.common import Hooks, NonFiniteError, mlp, seed_all
from pavlov.config import build_config, load_yaml
from pavlov.errors import ConfigError, PavlovError
from pavlov.math.value import huber
from pavlov.run.checkpoint import load_checkpoint, save_checkpoint

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# ------------------------------------------------------------------------------- test envs


class _Counter(gym.Env):
    """obs = [steps taken], never terminates; a TimeLimit of 5 truncates it. Reward 1."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, False, False, {}


class _NaNReward(_Counter):
    def step(self, action):
        obs, _, term, trunc, info = super().step(action)
        return obs, float("nan"), term, trunc, info


for _id, _cls in [("Counter", _Counter), ("NaNReward", _NaNReward)]:
    if f"PavlovTest/DQN{_id}-v0" not in gym.registry:
        gym.register(f"PavlovTest/DQN{_id}-v0", entry_point=_cls, max_episode_steps=5)

TINY = dqn.Config(total_steps=600, learning_starts=100, batch_size=32, buffer_size=1000,
                  train_freq=50, gradient_steps=5, target_update_interval=20,
                  hidden_sizes=(16, 16), seed=0)


def _spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    env = gym.make(env_id)
    spaces = env.observation_space, env.action_space
    env.close()
    return spaces


def _initial_q(env_id: str, cfg: dqn.Config) -> dict[str, torch.Tensor]:
    """The Q-net parameters ``train`` starts from (same seeding, same build)."""
    seed_all(cfg.seed)
    return dqn.q_network(cfg, *_spaces(env_id)).state_dict()


# --------------------------------------------------------------------------- exact pieces


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", sorted(dqn.LOSSES))
def test_hand_written_gradient_matches_autograd(activation, loss):
    torch.manual_seed(0)
    net = mlp([5, 7, 6, 3], activation).double()
    ref = copy.deepcopy(net)
    flat, flat_grad = dqn.flatten_parameters(net)
    grad = dqn.MLPGrad(net, activation)
    x = torch.randn(8, 5, dtype=torch.float64)
    actions, y = torch.randint(0, 3, (8,)), 3 * torch.randn(8, dtype=torch.float64)
    hs = grad.forward(x)
    torch.testing.assert_close(hs[-1], ref(x))
    td = hs[-1].gather(1, actions[:, None]).squeeze(1) - y
    grad_q = torch.zeros_like(hs[-1]).scatter_(
        1, actions[:, None], (dqn.LOSSES[loss].grad(td) / 8)[:, None])
    grad.backward(hs, grad_q)
    ref_td = ref(x).gather(1, actions[:, None]).squeeze(1) - y
    dqn.LOSSES[loss].value(ref_td).mean().backward()
    torch.testing.assert_close(flat_grad, torch.cat([p.grad.reshape(-1) for p in ref.parameters()]))
    assert flat.shape == flat_grad.shape == (sum(p.numel() for p in ref.parameters()),)


def test_update_equals_autograd_with_clip_grad_norm_and_torch_adam():
    cfg = dataclasses.replace(TINY, max_grad_norm=0.1, learning_rate=1e-2)
    learner = dqn.Learner(cfg, gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(2))
    ref = copy.deepcopy(learner.q)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(32, 3, generator=g), 5 * torch.randn(32, generator=g)
        a = torch.randint(0, 2, (32,), generator=g)
        learner.update(x, a[:, None], y[:, None], step=0)
        opt.zero_grad()
        huber(ref(x).gather(1, a[:, None]).squeeze(1) - y).mean().backward()
        assert torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1) > 0.1  # clipping active
        opt.step()
    for p, r in zip(learner.q.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, r)


def test_flatten_parameters_keeps_values_and_shares_storage():
    net = mlp([3, 4, 2])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flat, _ = dqn.flatten_parameters(net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    flat.zero_()
    assert all(torch.count_nonzero(p) == 0 for p in net.parameters())
    net.load_state_dict(before)  # loading writes into the flat vector
    assert torch.equal(flat, torch.cat([v.reshape(-1) for v in before.values()]))


def test_flat_adam_matches_torch_adam():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(50, generator=g)
    ref = torch.nn.Parameter(params.clone())
    ref_opt = torch.optim.Adam([ref], lr=1e-2)
    opt = dqn.FlatAdam(params, lr=1e-2)
    for _ in range(5):
        grad = torch.randn(50, generator=g)
        ref.grad = grad.clone()
        ref_opt.step()
        opt.step(grad)
    torch.testing.assert_close(params, ref.detach())
    restored = dqn.FlatAdam(params.clone(), lr=1e-2)
    restored.load_state_dict(opt.state_dict())
    assert float(restored.steps) == 5
    torch.testing.assert_close(restored.exp_avg_sq, opt.exp_avg_sq)


@pytest.mark.parametrize("space", [gym.spaces.Box(-1, 1, (2, 3), np.float32),
                                   gym.spaces.Discrete(5, start=2)])
def test_numpy_greedy_actions_match_torch(space):
    cfg = dqn.Config(hidden_sizes=(8, 8), activation="tanh")
    q = dqn.q_network(cfg, space, gym.spaces.Discrete(4))
    space.seed(0)
    obs = np.stack([space.sample() for _ in range(20)])
    expected = q(dqn.encode_obs(space, obs)).argmax(-1).numpy()
    np.testing.assert_array_equal(dqn.NumpyQ(q, "tanh", space)(obs), expected)


def test_epsilon_decays_linearly_then_stays():
    cfg = dqn.Config(total_steps=1000, exploration_fraction=0.2, exploration_initial_eps=1.0,
                     exploration_final_eps=0.1)
    assert dqn.epsilon(0, cfg) == 1.0
    assert math.isclose(dqn.epsilon(100, cfg), 0.55)
    assert math.isclose(dqn.epsilon(200, cfg), 0.1)
    assert math.isclose(dqn.epsilon(900, cfg), 0.1)
    assert dqn.epsilon(5, dataclasses.replace(cfg, exploration_fraction=0.0)) == 0.1


# --------------------------------------------------------------------------- config, spaces


@pytest.mark.parametrize(("field", "value"), [
    ("gamma", 1.5), ("tau", 0.0), ("batch_size", 0), ("learning_starts", -1),
    ("train_freq", 2.5), ("loss", "l1"), ("activation", "gelu"), ("hidden_sizes", []),
    ("exploration_final_eps", 2.0), ("learning_rate", 0.0), ("max_grad_norm", -1.0),
    ("batch_size", 2000),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(TINY, **{field: value})


def test_yaml_config_builds():
    data = load_yaml(CONFIGS / "dqn-cartpole.yaml")
    cfg = build_config(dqn.Config, {**data["agent"], "seed": data["seed"]}, where="agent")
    assert cfg.hidden_sizes == (256, 256) and cfg.learning_rate == 2.3e-3


def test_box_actions_are_refused():
    with pytest.raises(PavlovError, match=r"dqn supports Discrete action spaces, not Box"):
        dqn.train("Pendulum-v1", TINY)


# ------------------------------------------------------------------------------ smoke runs


def test_short_cartpole_run_changes_every_parameter_and_logs_finite_metrics():
    logs: list[tuple[int, dict]] = []
    hooks = Hooks(log=lambda step, m: logs.append((step, m)), evaluate_every=300,
                  eval_episodes=2)
    out = dqn.train("CartPole-v1", TINY, hooks=hooks)
    assert out.env_steps == 600 and out.seconds > 0
    assert out.state["counters"]["gradient_steps"] == 5 * 10  # phases at 150, 200, ..., 600
    initial = _initial_q("CartPole-v1", TINY)
    for name, value in out.state["q"].items():
        assert not torch.equal(value, initial[name]), f"{name} did not change"
    names = {k for _, m in logs for k in m}
    assert {"losses/td_loss", "losses/q_values", "charts/epsilon", "charts/SPS",
            "charts/episode_return", "charts/episode_length", "eval/mean_return"} <= names
    assert all(math.isfinite(v) for _, m in logs for v in m.values())
    assert [s for s, _ in out.evals] == [300, 600]


def test_double_q_discrete_obs_and_two_envs_run():
    cfg = dataclasses.replace(TINY, double_q=True, n_envs=2, loss="mse", activation="tanh")
    out = dqn.train("FrozenLake-v1", cfg)
    assert out.env_steps == 600 and out.state["counters"]["vec_steps"] == 300
    assert out.state["replay"]["obs"].dtype == np.int64
    env = gym.make("FrozenLake-v1")
    policy = dqn.load_policy(out.state, cfg, env)
    obs, _ = env.reset(seed=0)
    assert policy(obs, 0) in range(4)


def test_buffer_holds_the_true_next_obs_at_a_truncation():
    cfg = dataclasses.replace(TINY, total_steps=12, learning_starts=100)
    replay = dqn.train("PavlovTest/DQNCounter-v0", cfg).state["replay"]
    assert replay["obs"][:7, 0].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert replay["next_obs"][:7, 0].tolist() == [1, 2, 3, 4, 5, 1, 2]  # 5: final_obs
    assert replay["truncated"][:7].tolist() == [False] * 4 + [True, False, False]
    assert not replay["terminated"].any()


@pytest.mark.parametrize(("n_envs", "tau", "every"), [(1, 1.0, 5), (2, 1.0, 4), (1, 0.5, 5)])
def test_target_network_updates_on_schedule(n_envs, tau, every):
    """Target at env step s: moved towards the online net of step s - n_envs (updates happen
    between env steps, before that step's training) iff s is a multiple of ``every``."""
    cfg = dataclasses.replace(TINY, total_steps=40, learning_starts=0, train_freq=1,
                              gradient_steps=1, batch_size=8, target_update_interval=5,
                              n_envs=n_envs, tau=tau)
    states: dict[int, dict] = {}
    hooks = Hooks(checkpoint=lambda step, state: states.__setitem__(step, state),
                  checkpoint_every=1)
    dqn.train("CartPole-v1", cfg, hooks=hooks)
    steps = sorted(states)
    assert steps == list(range(n_envs, 41, n_envs))
    for prev, step in zip(steps, steps[1:], strict=False):
        old, new, q = states[prev]["target"], states[step]["target"], states[prev]["q"]
        assert not torch.equal(states[step]["q"]["0.weight"], q["0.weight"])  # trains each step
        for k in new:
            expected = (1 - tau) * old[k] + tau * q[k] if step % every == 0 else old[k]
            torch.testing.assert_close(new[k], expected, msg=f"step {step} {k}")


@pytest.mark.filterwarnings("ignore:.*reward is a NaN")
def test_nan_reward_raises_before_any_update():
    cfg = dataclasses.replace(TINY, learning_starts=10, train_freq=10)
    with pytest.raises(NonFiniteError, match="at env step 20"):
        dqn.train("PavlovTest/DQNNaNReward-v0", cfg)


def test_same_seed_gives_identical_parameters():
    a = dqn.train("CartPole-v1", TINY).state["q"]
    b = dqn.train("CartPole-v1", TINY).state["q"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_restores_buffer_and_continues_the_step_count(tmp_path):
    first = dqn.train("CartPole-v1", dataclasses.replace(TINY, total_steps=300))
    save_checkpoint(tmp_path, "step_300.pt", first.state)
    seen: list[int] = []
    hooks = Hooks(checkpoint=lambda step, state: seen.append(step), checkpoint_every=100)
    out = dqn.train("CartPole-v1", TINY, hooks=hooks, resume=load_checkpoint(tmp_path))
    assert seen == [400, 500, 600] and out.env_steps == 600
    old, new = first.state["replay"], out.state["replay"]
    for name in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated"):
        np.testing.assert_array_equal(new[name][:300], old[name])
    assert int(new["size"]) == 600
    counters = out.state["counters"]
    assert counters["gradient_steps"] == first.state["counters"]["gradient_steps"] + 5 * 6
    with pytest.raises(PavlovError, match="buffer_size"):
        dqn.train("CartPole-v1", dataclasses.replace(TINY, buffer_size=500), resume=first.state)


def test_stop_hook_ends_training_after_an_evaluation():
    hooks = Hooks(evaluate_every=200, eval_episodes=1, stop=lambda step, m: True)
    out = dqn.train("CartPole-v1", TINY, hooks=hooks)
    assert out.env_steps == 200 and len(out.evals) == 1


# ---------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rl_zoo_config_solves_cartpole(seed):
    data = load_yaml(CONFIGS / "dqn-cartpole.yaml")
    cfg = build_config(dqn.Config, {**data["agent"], "seed": seed}, where="agent")
    hooks = Hooks(evaluate_every=5000, eval_episodes=10,
                  stop=lambda step, m: m["eval/mean_return"] >= 475)
    out = dqn.train("CartPole-v1", cfg, hooks=hooks)
    assert out.evals and out.evals[-1][1] >= 475, out.evals
    assert out.env_steps <= 50_000
