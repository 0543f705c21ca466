"""DD-PPO scaling on one machine: 2 data-parallel processes (torch.distributed, gloo) vs 1.

Both sides run the shipped CartPole config (configs/ppo-cartpole.yaml: 8 envs x 32 steps per
rank and update, 20 epochs) through :func:`pavlov.agents.ppo.train`; the 2-process side is
started by :func:`pavlov.run.distributed.launch` (what ``pavlov train ppo --nproc 2`` uses),
so each rank collects its own 8 envs and the ranks average gradients.

* throughput: env steps per second of training (collection + update, all ranks' steps) over a
  fixed budget, no evaluation, best of ``--repeats``. Goal: 2 processes >= 1.7x one. Two
  settings: the CartPole config (update-bound: 20 synchronised minibatch steps per 256 env
  steps and rank) and a collection-bound one (configs/ppo-acrobot.yaml with
  ``batch_size: 1024``: 16 synchronised steps per 4,096 env steps and rank).
* time to 475: train seconds (evaluation excluded) until the deterministic evaluation every
  ``--eval-every`` env steps (10 episodes) reaches 475, at the same total-step budget; median
  over ``--seeds``. Goal: 2 processes <= 0.65x one. Two 2-process settings: the config on
  every rank (twice the data per update, so more env steps to 475), and the config split over
  the ranks (``n_envs`` and ``batch_size`` divided by the process count: the same global batch
  per update as one process, each rank half the work; ``ratio_split``), or split by rollout
  length (``n_steps`` and ``batch_size`` divided instead: each rank keeps the config's 8 envs
  and collects half as many vector steps, so a rank's per-vector-step costs halve too;
  ``ratio_split_steps``). Each ratio also comes
  per env step (``*_per_step``: the runs' seconds over their steps to 475, pooled over the
  seeds), i.e. at the same total steps, apart from how many steps each seed needed. Process start-up
  (spawn, imports, rendezvous: a few seconds) is reported apart as ``launch_seconds``.

Each 2-process result names its ``transport``: ``shm`` where DeepSpeed's shared-memory
all-reduce runs (:mod:`pavlov.run.shm`), ``gloo`` otherwise or under
``PAVLOV_CPU_ALLREDUCE=gloo`` (run both to compare).

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


ACROBOT = CONFIG.with_name("ppo-acrobot.yaml")


def config(seed: int, total_steps: int, path: Path = CONFIG, **over) -> ppo.Config:
    agent = load_yaml(path)["agent"]
    return build_config(ppo.Config, {**agent, "seed": seed, "total_steps": total_steps, **over})


def train(cfg: ppo.Config, eval_every: int, env_id: str = "CartPole-v1") -> dict:
    """One run (a rank of one) -> env steps, train seconds, steps when 475 was reached."""
    torch.set_num_threads(1)
    reached: list[int] = []

    def stop(step: int, metrics: dict) -> bool:
        if metrics["eval/mean_return"] >= TARGET:
            reached.append(step)
            return True
        return False

    hooks = Hooks(evaluate_every=eval_every, eval_episodes=10, stop=stop)
    out = ppo.train(env_id, cfg, hooks=hooks)
    dp = distributed.current()
    return {"env_steps": out.env_steps, "seconds": out.seconds,
            "reached": reached[0] if reached else None,
            "transport": dp.transport if dp else "-"}  # fmt: skip


def run(nproc: int, cfg: ppo.Config, eval_every: int, env_id: str = "CartPole-v1") -> dict:
    t0 = time.perf_counter()
    out = train(cfg, eval_every, env_id) if nproc == 1 else distributed.launch(
        nproc, train, cfg, eval_every, env_id)
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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, one seed")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.throughput_steps, args.budget, args.eval_every = "0", 4096, 4096, 2048
        args.repeats = 1
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict = {"machine": platform.processor() or platform.machine(), "nproc": args.nproc,
                    "throughput": {}, "time_to_475": {"per_seed": []}}
    settings = {"cartpole": ("CartPole-v1", lambda: config(0, args.throughput_steps)),
                "acrobot_b1024": ("Acrobot-v1", lambda: config(
                    0, args.throughput_steps, ACROBOT, batch_size=1024))}
    for name, (env_id, make) in settings.items():  # throughput: no evaluation
        row = report["throughput"][name] = {}
        for n in (1, args.nproc):
            runs = [run(n, make(), 0, env_id) for _ in range(args.repeats)]
            best = max(runs, key=lambda r: r["env_steps"] / r["seconds"])
            row[f"{n}proc"] = {**best, "steps_per_second": round(best["env_steps"]
                                                                 / best["seconds"])}
            print(f"throughput {name} {n} proc: {row[f'{n}proc']}", flush=True)
        row["ratio"] = round(row[f"{args.nproc}proc"]["steps_per_second"]
                             / row["1proc"]["steps_per_second"], 3)
    many, split = f"{args.nproc}proc", f"{args.nproc}proc_split"
    by_steps = f"{args.nproc}proc_split_steps"
    keys = ("1proc", many, split, by_steps)
    for seed in seeds:
        row = {"seed": seed}
        for n in (1, args.nproc):
            row[f"{n}proc"] = run(n, config(seed, args.budget), args.eval_every)
            print(f"seed {seed} {n} proc: {row[f'{n}proc']}", flush=True)
        # the 1-process config's envs and minibatch split over the ranks: the same global
        # batch per update, so the same sample efficiency and each rank half the work
        one = config(seed, args.budget)
        row[split] = run(args.nproc, config(seed, args.budget, n_envs=one.n_envs // args.nproc,
                                            batch_size=one.batch_size // args.nproc),
                         args.eval_every)  # fmt: skip
        print(f"seed {seed} {split}: {row[split]}", flush=True)
        row[by_steps] = run(args.nproc, config(seed, args.budget, n_steps=one.n_steps // args.nproc,
                                               batch_size=one.batch_size // args.nproc),
                            args.eval_every)  # fmt: skip
        print(f"seed {seed} {by_steps}: {row[by_steps]}", flush=True)
        report["time_to_475"]["per_seed"].append(row)
    medians = {}
    for key in keys:
        done = [r[key] for r in report["time_to_475"]["per_seed"] if r[key]["reached"] is not None]
        medians[key] = {
            "solved": len(done),
            "seconds": statistics.median(d["seconds"] for d in done) if done else None,
            "steps": statistics.median(d["reached"] for d in done) if done else None}
    report["time_to_475"]["median"] = medians
    one_s = medians["1proc"]["seconds"]
    # seconds per env step until 475, pooled over the solved seeds: the time at the same total
    # steps, without the luck of how many steps each seed's draw needed
    per_step = {}
    for key in keys:
        done = [r[key] for r in report["time_to_475"]["per_seed"] if r[key]["reached"] is not None]
        per_step[key] = (sum(d["seconds"] for d in done) / sum(d["reached"] for d in done)
                         if done else None)
    for key, name in ((many, "ratio"), (split, "ratio_split"), (by_steps, "ratio_split_steps")):
        s_ = medians[key]["seconds"]
        report["time_to_475"][name] = round(s_ / one_s, 3) if one_s and s_ else None
        one_p, p_ = per_step["1proc"], per_step[key]
        report["time_to_475"][name + "_per_step"] = round(p_ / one_p, 3) if one_p and p_ else None
    ratios = {k: v["ratio"] for k, v in report["throughput"].items()}
    t = report["time_to_475"]
    print(f"throughput ratios {ratios}; time-to-475 ratio {t['ratio']} (per env step "
          f"{t['ratio_per_step']}), with the config split over the ranks {t['ratio_split']} (per "
          f"env step {t['ratio_split_per_step']}), split by rollout length "
          f"{t['ratio_split_steps']} (per env step {t['ratio_split_steps_per_step']}) "
          f"(medians {medians})", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
