"""PPO and DQN on CartPole on a chosen device: do they learn there, and how fast?

Runs the shipped configs (configs/ppo-cartpole.yaml, configs/dqn-cartpole.yaml) with
``device=<--device>`` (networks and updates on the device, envs on the CPU), evaluating every
``--eval-every`` env steps (10 deterministic episodes) until 475 or the budget. Reports per
algorithm and seed: env steps to 475, train seconds (evaluation excluded) and env steps per
second. ``benchmarks/gpu_check.sh`` runs it on ``cuda`` where a GPU is lent.

    python benchmarks/devices.py --device cuda --seeds 0,1,2
    python benchmarks/devices.py --device cpu --smoke      # the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from pavlov.agents import dqn, ppo
from pavlov.agents.common import Hooks
from pavlov.config import build_config, load_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODULES = {"ppo": ppo, "dqn": dqn}


def run(algo: str, device: str, seed: int, budget: int | None, eval_every: int) -> dict:
    mod = MODULES[algo]
    agent = load_yaml(CONFIGS / f"{algo}-cartpole.yaml")["agent"]
    values = {**agent, "seed": seed, "device": device}
    if budget is not None:
        values["total_steps"] = budget
    cfg = build_config(mod.Config, values)
    reached: list[int] = []

    def stop(step: int, metrics: dict) -> bool:
        if metrics["eval/mean_return"] >= 475:
            reached.append(step)
            return True
        return False

    out = mod.train("CartPole-v1", cfg, hooks=Hooks(evaluate_every=eval_every, eval_episodes=10,
                                                     stop=stop))
    return {"algo": algo, "seed": seed, "device": device, "env_steps": out.env_steps,
            "reached_475_at": reached[0] if reached else None,
            "seconds": round(out.seconds, 2),
            "steps_per_second": round(out.env_steps / out.seconds),
            "best_eval": max((r for _, r in out.evals), default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--algos", default="ppo,dqn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--smoke", action="store_true", help="2048 steps, one seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = 2048 if args.smoke else None
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    rows = []
    for algo in args.algos.split(","):
        for seed in seeds:
            rows.append(run(algo, args.device, seed, budget, 1024 if args.smoke else
                            args.eval_every))
            print(rows[-1], flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(json.dumps({"machine": platform.processor() or platform.machine(), "gpu": gpu,
                      "runs": rows}))


if __name__ == "__main__":
    main()
