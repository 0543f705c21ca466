"""PPO rollout collection speed vs the raw vector env: how much does acting add per step?

In one process, on the same vector env configuration (``pavlov.agents.common.make_vec_env``:
``SyncVectorEnv`` in SAME_STEP autoreset mode, ``--n-envs`` copies of ``--env``):

* raw: ``envs.step`` with pre-generated uniform random actions (autoreset included) — the
  floor no agent on that vector env can beat;
* pavlov: :func:`pavlov.agents.rollout.collect_rollout` with a freshly initialised 64x64 tanh
  actor-critic: policy forward, action sampling, buffer writes, episode bookkeeping and the
  truncation bootstrap, i.e. everything PPO does per vector step except the update.

Both count env steps (vector steps x n_envs). Each number is the best of ``--repeats``
interleaved runs (the least disturbed by other processes); torch uses one thread. The
acceptance goal is ratio = pavlov / raw >= 0.5. Prints a table and one JSON line.

    python benchmarks/rollout.py --env CartPole-v1 --n-envs 8 --steps 100000
    python benchmarks/rollout.py --smoke   # 4,096 steps, 1 repeat; the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import gymnasium as gym
import numpy as np
import torch

from pavlov.agents import ppo
from pavlov.agents.common import EpisodeStats, make_vec_env, obs_dim, seed_all
from pavlov.agents.distributions import NumpyActorCritic

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def raw_steps_per_second(env_id: str, n_envs: int, steps: int, seed: int = 0) -> float:
    """Vector env throughput with pre-generated random actions."""
    envs = make_vec_env(env_id, n_envs)
    envs.action_space.seed(seed)
    n_vec = steps // n_envs
    actions = [envs.action_space.sample() for _ in range(min(n_vec, 4096))]
    envs.reset(seed=seed)
    start = clock()
    for i in range(n_vec):
        envs.step(actions[i % len(actions)])
    seconds = clock() - start
    envs.close()
    return n_vec * n_envs / seconds


def rollout_steps_per_second(env_id: str, n_envs: int, n_steps: int, steps: int,
                             seed: int = 0) -> float:
    """:func:`pavlov.agents.rollout.collect_rollout` throughput (rollouts of ``n_steps``)."""
    cfg = ppo.Config(n_envs=n_envs, n_steps=n_steps, batch_size=n_steps * n_envs, seed=seed)
    envs = make_vec_env(env_id, n_envs)
    seed_all(seed)
    head, model, _ = ppo._make_model(envs.single_observation_space, envs.single_action_space, cfg)
    buf = ppo.RolloutBuffer(n_steps, n_envs, obs_dim(envs.single_observation_space), head)
    c = ppo.Collector(envs, head, buf, np.random.default_rng(seed), None, None, cfg.obs_clip,
                      EpisodeStats(n_envs))
    c.reset(seed)
    n_rollouts = max(1, steps // (n_steps * n_envs))
    start = clock()
    for _ in range(n_rollouts):
        ppo.collect_rollout(c, NumpyActorCritic(model))  # as train() does per rollout
    seconds = clock() - start
    envs.close()
    return n_rollouts * n_steps * n_envs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=32, help="rollout length per env")
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (best)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall (the record, on an idle machine) or this process's CPU time "
                             "(steadier on a shared machine)")
    parser.add_argument("--smoke", action="store_true", help="4,096 steps, 1 repeat")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats = 4_096, 1
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(1)
    raw, ours = [], []
    for _ in range(args.repeats):  # interleaved so a burst of load hits both alike
        raw.append(raw_steps_per_second(args.env, args.n_envs, args.steps))
        ours.append(rollout_steps_per_second(args.env, args.n_envs, args.n_steps, args.steps))
    row = {"env": args.env, "n_envs": args.n_envs, "n_steps": args.n_steps,
           "raw_sps": round(max(raw)), "pavlov_rollout_sps": round(max(ours)),
           "ratio": round(max(ours) / max(raw), 3)}
    header = f"{'env':<16}{'n_envs':>8}{'raw steps/s':>14}{'ppo rollout':>14}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    print(f"{row['env']:<16}{row['n_envs']:>8}{row['raw_sps']:>14,}"
          f"{row['pavlov_rollout_sps']:>14,}{row['ratio']:>8.2f}")
    meta = {"python": platform.python_version(), "gymnasium": gym.__version__,
            "torch": torch.__version__}
    print(json.dumps({"benchmark": "ppo_rollout", **meta, "steps": args.steps,
                      "repeats": args.repeats, "clock": args.clock, **row}))


if __name__ == "__main__":
    main()
