"""DD-PPO scaling on one machine: 2 data-parallel processes (torch.distributed, gloo) vs 1.

Both sides run the shipped CartPole config (configs/ppo-cartpole.yaml: 8 envs x 32 steps per
rank and update, 20 epochs) through :func:`pavlov.agents.ppo.train`; the 2-process side is
started by :func:`pavlov.run.distributed.launch` (what ``pavlov train ppo --nproc 2`` uses),
so each rank collects its own 8 envs and the ranks average gradients.

* throughput: env steps per second of training (collection + update, all ranks' steps) over a
  fixed budget, no evaluation. Goal: 2 processes >= 1.7x one.
* time to 475: train seconds (evaluation excluded) until the deterministic evaluation every
  ``--eval-every`` env steps (10 episodes) reaches 475, at the same total-step budget; median
  over ``--seeds``. Goal: 2 processes <= 0.65x one. Process start-up (spawn, imports,
  rendezvous: a few seconds) is reported apart as ``launch_seconds``.

Run it on an idle machine (``uptime`` load < 0.3): each rank wants a core. Prints one line per
run and a JSON report as the last line.

    python benchmarks/ddppo.py                # the recorded run
    python benchmarks/ddppo.py --smoke        # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pavlov.agents import ppo
from pavlov.agents.common import Hooks
from pavlov.config import build_config, load_yaml
from pavlov.run import distributed

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-cartpole.yaml"
TARGET = 475.0


def config(seed: int, total_steps: int) -> ppo.Config:
    agent = load_yaml(CONFIG)["agent"]
    return build_config(ppo.Config, {**agent, "seed": seed, "total_steps": total_steps})


def train(cfg: ppo.Config, eval_every: int) -> dict:
    """One run (a rank of one) -> env steps, train seconds, steps when 475 was reached."""
    torch.set_num_threads(1)
    reached: list[int] = []

    def stop(step: int, metrics: dict) -> bool:
        if metrics["eval/mean_return"] >= TARGET:
            reached.append(step)
            return True
        return False

    hooks = Hooks(evaluate_every=eval_every, eval_episodes=10, stop=stop)
    out = ppo.train("CartPole-v1", cfg, hooks=hooks)
    return {"env_steps": out.env_steps, "seconds": out.seconds,
            "reached": reached[0] if reached else None}


def run(nproc: int, cfg: ppo.Config, eval_every: int) -> dict:
    t0 = time.perf_counter()
    out = train(cfg, eval_every) if nproc == 1 else distributed.launch(
        nproc, train, cfg, eval_every)
    out["launch_seconds"] = round(time.perf_counter() - t0 - out["seconds"], 2)
    out["seconds"] = round(out["seconds"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--throughput-steps", type=int, default=200_000)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=2048)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, one seed")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.throughput_steps, args.budget, args.eval_every = "0", 4096, 4096, 2048
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict = {"machine": platform.processor() or platform.machine(), "nproc": args.nproc,
                    "throughput": {}, "time_to_475": {"per_seed": []}}
    for n in (1, args.nproc):  # throughput: no evaluation
        out = run(n, config(0, args.throughput_steps), 0)
        sps = out["env_steps"] / out["seconds"]
        report["throughput"][f"{n}proc"] = {**out, "steps_per_second": round(sps)}
        print(f"throughput {n} proc: {sps:,.0f} env steps/s ({out})", flush=True)
    t = report["throughput"]
    t["ratio"] = round(t[f"{args.nproc}proc"]["steps_per_second"]
                       / t["1proc"]["steps_per_second"], 3)
    for seed in seeds:
        row = {"seed": seed}
        for n in (1, args.nproc):
            row[f"{n}proc"] = run(n, config(seed, args.budget), args.eval_every)
            print(f"seed {seed} {n} proc: {row[f'{n}proc']}", flush=True)
        report["time_to_475"]["per_seed"].append(row)
    medians = {}
    for n in (1, args.nproc):
        done = [r[f"{n}proc"] for r in report["time_to_475"]["per_seed"]
                if r[f"{n}proc"]["reached"] is not None]
        medians[f"{n}proc"] = {
            "solved": len(done),
            "seconds": statistics.median(d["seconds"] for d in done) if done else None,
            "steps": statistics.median(d["reached"] for d in done) if done else None}
    report["time_to_475"]["median"] = medians
    one, many = medians["1proc"]["seconds"], medians[f"{args.nproc}proc"]["seconds"]
    report["time_to_475"]["ratio"] = round(many / one, 3) if one and many else None
    print(f"throughput ratio {t['ratio']}; time-to-475 ratio {report['time_to_475']['ratio']} "
          f"(medians {medians})", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
