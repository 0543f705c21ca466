"""Tabular Q-learning speed vs the env's own step: how much does learning add per step?

For each env it measures, in the same process and on the same ``gymnasium.make`` env:

* raw: ``env.step`` with pre-generated random actions, resetting at episode end — the floor
  no learner on that env can beat;
* pavlov: :func:`pavlov.tabular.control.train_tabular` with Q-learning (ε-greedy, linear decay),
  steps/s over its whole loop (resets, action selection, updates, bookkeeping);
* pavlov+callback: the same with an ``on_episode`` callback doing trivial work, to show what a
  logging hook costs.

Each measurement is the best of ``--repeats`` interleaved runs (the best run is the one least
disturbed by other processes). The acceptance goal is ratio = pavlov / raw >= 0.5, i.e. the
learning loop at most doubles the cost of a step. Prints a table and one JSON line.

Caveat when reading ratios near 1: both loops pay ``env.reset`` at every episode end, and a
learning agent's episodes are not a random walk's (on FrozenLake they grow longer as it learns
to avoid holes, so it resets less often per step). The ratio is the cost of a *training step*
including its share of resets, which is what a user waits for, not the update alone.

    python benchmarks/tabular.py --steps 200000 --envs FrozenLake-v1,Taxi-v4,CliffWalking-v1
    python benchmarks/tabular.py --smoke   # 2,000 steps, 1 repeat; the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import gymnasium as gym
import numpy as np

from pavlov.tabular.control import TabularConfig, train_tabular

DEFAULT_ENVS = "FrozenLake-v1,Taxi-v4,CliffWalking-v1"
PROBE_EPISODES = 200


def raw_steps_per_second(env_id: str, steps: int, seed: int = 0) -> float:
    """env.step throughput with pre-generated uniform random actions."""
    env = gym.make(env_id)
    actions = np.random.default_rng(seed).integers(env.action_space.n, size=steps).tolist()
    step, reset = env.step, env.reset
    reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = step(action)
        if terminated or truncated:
            reset()
    return steps / (time.perf_counter() - start)


def _config(episodes: int, seed: int) -> TabularConfig:
    return TabularConfig(algo="q-learning", episodes=episodes, alpha=0.1, gamma=0.99, seed=seed)


def episodes_for(env_id: str, steps: int, probe: int = PROBE_EPISODES, seed: int = 0) -> int:
    """Episodes of Q-learning that take about ``steps`` steps (calibrated on ``probe`` episodes)."""
    result = train_tabular(gym.make(env_id), _config(probe, seed))
    return max(1, round(steps / max(result.steps / probe, 1.0)))


def pavlov_steps_per_second(env_id: str, episodes: int, callback: bool, seed: int = 0) -> float:
    """train_tabular throughput, optionally with a trivial ``on_episode`` callback."""
    log: list[float] = []

    def on_episode(index: int, ret: float, length: int, success: bool, epsilon: float) -> None:
        log.append(ret)  # what a logger does at the least: keep the number

    result = train_tabular(
        gym.make(env_id), _config(episodes, seed), on_episode if callback else None
    )
    return result.steps / result.seconds


def bench_env(env_id: str, steps: int, repeats: int, probe: int = PROBE_EPISODES) -> dict:
    """Best-of-``repeats`` steps/s of raw, pavlov and pavlov+callback on ``env_id``."""
    episodes = episodes_for(env_id, steps, probe)
    raw, ours, hooked = [], [], []
    for _ in range(repeats):  # interleaved so a burst of load hits all three alike
        raw.append(raw_steps_per_second(env_id, steps))
        ours.append(pavlov_steps_per_second(env_id, episodes, callback=False))
        hooked.append(pavlov_steps_per_second(env_id, episodes, callback=True))
    return {
        "env": env_id,
        "raw_sps": round(max(raw)),
        "pavlov_sps": round(max(ours)),
        "ratio": round(max(ours) / max(raw), 3),
        "callback_sps": round(max(hooked)),
        "callback_ratio": round(max(hooked) / max(raw), 3),
        "episodes": episodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per measurement")
    parser.add_argument("--envs", default=DEFAULT_ENVS, help="comma-separated Gymnasium ids")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--smoke", action="store_true",
                        help="2,000 steps, 1 repeat, a 20-episode calibration")
    args = parser.parse_args()
    probe = PROBE_EPISODES
    if args.smoke:
        args.steps, args.repeats, probe = 2_000, 1, 20
    rows = [bench_env(env_id, args.steps, args.repeats, probe) for env_id in args.envs.split(",")]
    header = (
        f"{'env':<18}{'raw steps/s':>14}{'pavlov':>12}{'ratio':>8}{'+callback':>12}{'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['env']:<18}{r['raw_sps']:>14,}{r['pavlov_sps']:>12,}{r['ratio']:>8.2f}"
            f"{r['callback_sps']:>12,}{r['callback_ratio']:>8.2f}"
        )
    meta = {"python": platform.python_version(), "gymnasium": gym.__version__}
    print(
        json.dumps(
            {"benchmark": "tabular_q_learning", **meta, "steps": args.steps,
             "repeats": args.repeats, "results": rows}
        )
    )


if __name__ == "__main__":
    main()
