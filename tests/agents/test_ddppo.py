"""DD-PPO on torch.distributed: 2 processes, gloo on CPU, torch's elastic launcher (each
collective times out after 60 s, so a hang fails)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pavlov.agents import a2c, ppo
from pavlov.agents.common import seed_all
from pavlov.agents.normalize import RunningMeanStd
from pavlov.errors import PavlovError
from pavlov.run import distributed
from pavlov.run.checkpoint import load_checkpoint

CFG = ppo.Config(total_steps=4096, n_envs=4, n_steps=64, batch_size=64, n_epochs=2,
                 hidden_sizes=[16, 16], seed=0)
SPACES = (gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2))


def _batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {"obs": torch.randn(n, 4, generator=g),
            "actions": torch.randint(0, 2, (n,), generator=g),
            "logp": -0.69 + 0.1 * torch.randn(n, generator=g),
            "values": torch.randn(n, generator=g), "advantages": torch.randn(n, generator=g),
            "returns": torch.randn(n, generator=g)}


def _one_update(cfg: ppo.Config, n: int) -> torch.Tensor:
    """A worker (or the 1-process reference): one PPO update on this rank's share of a fixed
    batch of ``n`` rows -> the flat parameters after it."""
    dp = distributed.current()
    seed_all(cfg.seed)
    agent = ppo._build(*SPACES, cfg)
    batch = _batch(n)
    if dp is not None:
        share = n // dp.world_size
        batch = {k: v[dp.rank * share : (dp.rank + 1) * share] for k, v in batch.items()}
    ppo.ppo_update(agent.grad, batch, cfg, 0.2, 0, dp)
    return agent.grad.flat.clone()


@pytest.mark.parametrize("fast_update", [True, False])
def test_one_update_on_two_ranks_equals_one_process_on_the_concatenated_batch(fast_update):
    """Each rank's minibatch is half the 1-process minibatch: averaging their gradients gives
    the gradient of the whole (advantage whitening off: it is per rank's minibatch)."""
    cfg = dataclasses.replace(CFG, batch_size=32, normalize_advantage=False, max_grad_norm=0.05,
                              ent_coef=0.01, fast_update=fast_update)
    ranks = distributed.launch(2, _one_update, cfg, 64, all_ranks=True)
    alone = _one_update(dataclasses.replace(cfg, batch_size=64), 64)
    seed_all(cfg.seed)
    start = ppo._build(*SPACES, cfg).grad.flat
    assert not torch.allclose(alone, start)  # the update moved the parameters
    assert torch.equal(ranks[0], ranks[1])
    torch.testing.assert_close(ranks[0], alone, rtol=0, atol=1e-6)


def _train(cfg: ppo.Config, straggle: bool = False) -> dict:
    if straggle and os.environ.get("RANK") == "1":  # a slow env on rank 1: a real straggler
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        real = CartPoleEnv.step

        def slow(self, action):
            time.sleep(0.002)
            return real(self, action)

        CartPoleEnv.step = slow
    out = ppo.train("CartPole-v1", cfg)
    return {"state": out.state, "env_steps": out.env_steps}


@pytest.mark.parametrize("options", [dict(), dict(normalize_obs=True, normalize_reward=True,
                                                  preempt_threshold=0.5, target_kl=0.02)])
def test_ranks_hold_bitwise_equal_parameters_after_ten_updates(options):
    cfg = dataclasses.replace(CFG, total_steps=10 * 2 * 64 * 4, **options)
    # with preemption, rank 1 straggles (without it, whether a rank is ever cut is a race)
    ranks = distributed.launch(2, _train, cfg, "preempt_threshold" in options, all_ranks=True)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a["updates"] == b["updates"]
    assert ranks[0]["env_steps"] == ranks[1]["env_steps"] == a["env_steps"] >= cfg.total_steps
    if "preempt_threshold" not in options:
        assert a["updates"] == 10 and a["env_steps"] == cfg.total_steps
    else:  # the straggler was cut short: more, shorter rollouts
        assert a["updates"] > 10
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    if options:
        for key in ("mean", "var", "count"):
            assert np.array_equal(a["obs_rms"][key], b["obs_rms"][key])
    alone = ppo.train("CartPole-v1", dataclasses.replace(cfg, total_steps=10 * 64 * 4)).state
    assert not torch.equal(alone["model"]["pi.0.weight"], a["model"]["pi.0.weight"])


def _train_a2c(cfg: a2c.Config) -> dict:
    return a2c.train("CartPole-v1", cfg).state


def test_a2c_runs_data_parallel_on_the_same_core():
    cfg = a2c.Config(total_steps=2 * 2 * 5 * 40, n_envs=2, n_steps=5, hidden_sizes=[16],
                     log_every=100)
    ranks = distributed.launch(2, _train_a2c, cfg, all_ranks=True)
    assert ranks[0]["updates"] == ranks[1]["updates"] == 40
    assert ranks[0]["env_steps"] == cfg.total_steps
    for name, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][name]), name


def test_merged_normalizer_equals_one_normalizer_over_all_samples():
    rng = np.random.default_rng(0)
    start = RunningMeanStd((3,))
    start.update(rng.normal(size=(50, 3)))
    parts = [rng.normal(2.0, 3.0, size=(40, 3)), rng.normal(-1.0, 0.5, size=(70, 3))]
    ranks = []
    for part in parts:
        r = RunningMeanStd((3,))
        r.load_state_dict(start.state_dict())
        r.update(part[:25])
        r.update(part[25:])
        ranks.append(r)
    ranks_before = [r.state_dict() for r in ranks]
    vecs: list[np.ndarray] = []  # what each rank contributes to the all-reduce
    for r in ranks:
        r.merge_ranks(start.state_dict(), lambda v: vecs.append(v) or v)
    merged = RunningMeanStd((3,))
    merged.load_state_dict(ranks_before[0])
    merged.merge_ranks(start.state_dict(), lambda v: vecs[0] + vecs[1])
    reference = RunningMeanStd((3,))
    reference.load_state_dict(start.state_dict())
    reference.update(np.concatenate(parts))
    np.testing.assert_allclose(merged.mean, reference.mean, rtol=1e-10)
    np.testing.assert_allclose(merged.var, reference.var, rtol=1e-9)
    assert merged.count == pytest.approx(reference.count)


def _die_on_rank_1(how: str) -> None:
    if distributed.current().rank == 1:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError("reward function crashed")
    time.sleep(120)  # rank 0 would wait for rank 1 in its next collective


@pytest.mark.parametrize(("how", "cause"), [("kill", "Signal 9 (SIGKILL) received"),
                                            ("raise", "ValueError: reward function crashed")])
def test_a_dead_worker_ends_the_run_with_one_line_naming_rank_and_cause(how, cause):
    t0 = time.perf_counter()
    with pytest.raises(PavlovError) as info:
        distributed.launch(2, _die_on_rank_1, how)
    assert time.perf_counter() - t0 < 60
    assert str(info.value) == f"worker rank 1 of 2 failed: {cause}"


def test_cli_nproc_trains_and_rank_0_writes_the_run(tmp_path):
    cmd = [sys.executable, "-m", "pavlov", "train", "ppo", "--env", "CartPole-v1", "--nproc",
           "2", "--total-steps", "4096", "--eval-episodes", "2", "--runs-dir", str(tmp_path),
           "--evaluate-every", "2048", "--name", "dd", "-q", "--json", "-o", "n_steps=64",
           "-o", "n_envs=4"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('"env_steps": 4096') == 1  # rank 0 alone prints the summary
    run = tmp_path / "dd"
    assert (run / "checkpoints").is_dir() and "nproc: 2" in (run / "config.yaml").read_text()
    # the best model's state holds every rank's envs (gathered at the evaluation)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["env_step"] == summary["best"]["env_step"] in (2048, 4096)
    assert len(best["loop"]["ranks"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd"]
    bad = subprocess.run([*cmd[:-4], "-o", "batch_size=0"], capture_output=True, text=True,
                         timeout=180)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "batch_size" in bad.stderr


@pytest.mark.slow
def test_two_process_ddppo_reaches_475_on_cartpole():
    cfg = dataclasses.replace(ppo.Config(), seed=0, total_steps=100_000)
    out = distributed.launch(2, _train_to_475, cfg)
    assert out >= 475


def _train_to_475(cfg: ppo.Config) -> float:
    from pavlov.agents.common import Hooks

    hooks = Hooks(evaluate_every=8192, eval_episodes=10,
                  stop=lambda s, m: m["eval/mean_return"] >= 475)
    out = ppo.train("CartPole-v1", cfg, hooks=hooks)
    return max((r for _, r in out.evals), default=0.0)


# ------------------------------------------------------------------------------------ devices


def test_device_choices_resolve_here_or_fail_in_one_line():
    from pavlov.agents.common import resolve_device
    from pavlov.errors import ConfigError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device must be"):
        ppo.Config(device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^device 'cuda': torch sees no CUDA GPU here"):
            resolve_device("cuda")


def test_cli_device_without_a_gpu_is_one_line_and_writes_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    done = subprocess.run([sys.executable, "-m", "pavlov", "train", "dqn", "--env", "CartPole-v1",
                           "--device", "cuda", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no CUDA GPU" in done.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("algo", ["ppo", "a2c", "reinforce", "dqn", "apg"])
def test_every_deep_agent_takes_a_device(algo):
    """On this CPU-only machine the explicit device path is 'cpu'; benchmarks/gpu_check.sh runs
    'cuda' where a GPU is lent. The closed-form PPO backend is a CPU path."""
    import importlib

    mod = importlib.import_module(f"pavlov.agents.{algo}")
    env = "pavlov/PointMass-v0" if algo == "apg" else "CartPole-v1"
    cfg = mod.Config(total_steps=256 if algo != "dqn" else 300, device="cpu", seed=0,
                     **({"learning_starts": 100} if algo == "dqn" else {}))
    out = mod.train(env, cfg)
    assert out.env_steps >= 256
    if algo == "ppo":
        seed_all(0)
        model = ppo._make_model(*SPACES, CFG)[1]
        opt = torch.optim.Adam(model.parameters())
        assert isinstance(ppo.make_backend(model, ppo._make_model(*SPACES, CFG)[0], opt, False),
                          ppo.AutogradGrad)


def test_torchrun_starts_the_same_cli_and_resume_continues_distributed(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["-q", "--json", "--runs-dir", str(tmp_path), "--eval-episodes", "2"]
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "pavlov",
                           "train", "ppo", "--env", "CartPole-v1", "--total-steps", "4096",
                           "--checkpoint-every", "2048", "--name", "tr", "-o", "n_steps=64",
                           "-o", "n_envs=4", *common], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["env_steps"] == 4096
    more = subprocess.run([sys.executable, "-m", "pavlov", "train", "--resume",
                           str(tmp_path / "tr"), "--total-steps", "6144", "-q", "--json"],
                          capture_output=True, text=True, timeout=180)
    assert more.returncode == 0, more.stderr[-2000:]
    assert json.loads(more.stdout.strip().splitlines()[-1])["env_steps"] == 6144
    assert (tmp_path / "tr" / "checkpoints" / "step_0000006144.pt").exists()
