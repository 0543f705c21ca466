"""Analytic policy gradient vs PPO on the differentiable point mass (``pavlov/PointMass-v0``).

Both agents train on the same task (:mod:`pavlov.envs.pointmass`, H = 50 steps, random start
and target): APG backpropagates the return of 32 rollouts through the torch dynamics per Adam
step (:mod:`pavlov.agents.apg`), PPO (:mod:`pavlov.agents.ppo`, its SB3-like defaults: 8 envs x
256 steps, 10 epochs of minibatch 64, GAE 0.95) learns from sampled transitions of the
Gymnasium env, which steps the *same* dynamics function. We measure, per seed, the env steps and
the training wall seconds (evaluation excluded) until the deterministic evaluation return
(``--eval-episodes`` episodes every ``--eval-every`` env steps, the same start states for both
agents) reaches the threshold

    threshold = random + fraction * (apg_final - random)

where ``random`` is the return of uniformly random actions and ``apg_final`` the return of a
reference APG run trained for ``--apg-steps`` (seed 1000), both over 500 episodes. Default
fraction 0.9: PPO reaches it too (the optimum is within ~1 of ``apg_final``).

A step is one transition of one episode for both: APG's ``B x H`` per update are simulated as
batched tensor ops, PPO's one env at a time in Python. Prints a table and one JSON line.

    python benchmarks/apg_vs_ppo.py --seeds 0 1 2
    python benchmarks/apg_vs_ppo.py --smoke   # seconds: tiny budgets; the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import pavlov.envs  # noqa: F401  registers pavlov/* ids
from pavlov.agents import apg
from pavlov.agents.common import Hooks, TrainOutput, evaluate_in_env

ENV_ID = "pavlov/PointMass-v0"
REFERENCE_SEED = 1000
CALIBRATION_EPISODES = 500
CALIBRATION_EVAL_SEED = 99


def random_return(episodes: int, seed: int) -> float:
    """Mean return of uniformly random forces."""
    rng = np.random.default_rng(seed)
    policy = lambda obs, t: rng.uniform(-1.0, 1.0, 2).astype(np.float32)
    return evaluate_in_env(ENV_ID, policy, episodes, seed).mean_return


def apg_reference_return(steps: int, episodes: int) -> float:
    """Final deterministic return of a full APG run (the top of the threshold scale)."""
    cfg = apg.Config(total_steps=steps, seed=REFERENCE_SEED)
    out = apg.train(ENV_ID, cfg)
    policy = apg.load_policy(out.state, cfg, gym.make(ENV_ID))
    return evaluate_in_env(ENV_ID, policy, episodes, CALIBRATION_EVAL_SEED).mean_return


def run_to_threshold(
    train: Callable[[Hooks], TrainOutput], threshold: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Train until the eval return reaches ``threshold`` -> steps, seconds, reached, evals."""
    hooks = Hooks(evaluate_every=args.eval_every, eval_episodes=args.eval_episodes,
                  stop=lambda step, m: m["eval/mean_return"] >= threshold)
    out = train(hooks)
    reached = bool(out.evals) and out.evals[-1][1] >= threshold
    return {
        "reached": reached,
        "env_steps": out.evals[-1][0] if reached else None,
        "seconds": round(out.seconds, 3) if reached else None,
        "steps_run": out.env_steps,
        "final_eval": round(out.evals[-1][1], 3) if out.evals else None,
    }


def agents(args: argparse.Namespace) -> dict[str, Callable[[int, Hooks], TrainOutput]]:
    from pavlov.agents import ppo

    return {
        "apg": lambda seed, hooks: apg.train(
            ENV_ID, apg.Config(total_steps=args.apg_steps, seed=seed), hooks=hooks),
        "ppo": lambda seed, hooks: ppo.train(
            ENV_ID, ppo.Config(total_steps=args.ppo_steps, seed=seed), hooks=hooks),
    }


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if len(vals) == len(values) and vals else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.9)
    parser.add_argument("--threshold", type=float, default=None, help="skip the calibration")
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--apg-steps", type=int, default=100_000)
    parser.add_argument("--ppo-steps", type=int, default=300_000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--smoke", action="store_true",
                        help="seed 0, 3,200 APG / 4,096 PPO steps, 50 calibration episodes")
    args = parser.parse_args()
    calibration_episodes = CALIBRATION_EPISODES
    if args.smoke:  # one APG update is 32 x 50 steps, one PPO rollout 8 x 256
        args.seeds, args.apg_steps, args.ppo_steps = [0], 3_200, 4_096
        args.eval_every, args.eval_episodes, calibration_episodes = 2_048, 5, 50
    torch.set_num_threads(args.threads)

    rand = random_return(calibration_episodes, CALIBRATION_EVAL_SEED)
    ref = (apg_reference_return(args.apg_steps, calibration_episodes)
           if args.threshold is None else None)
    threshold = args.threshold if ref is None else rand + args.fraction * (ref - rand)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, train in agents(args).items():
        results[name] = []
        for seed in args.seeds:
            row = run_to_threshold(lambda hooks, s=seed, t=train: t(s, hooks), threshold, args)
            results[name].append({"seed": seed, **row})
    summary = {name: {"median_env_steps": _median([r["env_steps"] for r in rows]),
                      "median_seconds": _median([r["seconds"] for r in rows]),
                      "reached": sum(r["reached"] for r in rows)}
               for name, rows in results.items()}

    ref_text = "-" if ref is None else f"{ref:.2f}"
    print(f"{ENV_ID}: random return {rand:.2f}, APG reference {ref_text}, "
          f"threshold {threshold:.2f} (eval: {args.eval_episodes} episodes every "
          f"{args.eval_every} steps; seconds exclude evaluation; {args.threads} thread(s))")
    print(f"{'agent':<6}{'seed':>6}{'env steps':>12}{'seconds':>10}{'final eval':>12}")
    for name, rows in results.items():
        for r in rows:
            steps = "-" if r["env_steps"] is None else f"{r['env_steps']:,}"
            secs = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
            print(f"{name:<6}{r['seed']:>6}{steps:>12}{secs:>10}{r['final_eval']:>12}")
    for name, s in summary.items():
        steps, secs = s["median_env_steps"], s["median_seconds"]
        steps = "-" if steps is None else f"{steps:,.0f}"
        secs = "-" if secs is None else f"{secs:.2f}"
        n = len(args.seeds)
        print(f"{name:<6}{'median':>6}{steps:>12}{secs:>10}   reached {s['reached']}/{n}")
    print(json.dumps({
        "benchmark": "apg_vs_ppo", "env": ENV_ID, "random_return": round(rand, 3),
        "apg_reference_return": None if ref is None else round(ref, 3),
        "fraction": args.fraction, "threshold": round(threshold, 3),
        "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
        "threads": args.threads, "calibration_episodes": calibration_episodes,
        "results": results, "summary": summary,
        "torch": torch.__version__, "machine": platform.machine(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
