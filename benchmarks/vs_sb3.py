"""pavlov vs Stable-Baselines3 on CartPole-v1: env steps and wall seconds to a mean return of 475.

Both libraries run the rl-zoo CartPole-v1 hyperparameters in the same process, one after the
other per seed, with ``torch.set_num_threads(1)``:

* PPO: 8 envs, n_steps 32, batch 256, gae_lambda 0.8, gamma 0.98, 20 epochs, ent_coef 0,
  learning rate and clip range linearly annealed from 1e-3 and 0.2, 64x64 tanh actor and critic.
* DQN: lr 2.3e-3, batch 64, buffer 1e5, learning_starts 1000, gamma 0.99, target update every
  10 steps, train_freq 256, 128 gradient steps, exploration 1.0 -> 0.04 over 16% of the budget,
  256x256 ReLU net, Huber loss, max_grad_norm 10.

Every 5k env steps each library's policy is evaluated deterministically for 10 episodes in a
separate env (evaluation time is not counted); a run stops when the mean first reaches 475.
Reported per seed: env steps and training seconds until then; then medians and the
pavlov/SB3 ratio of the medians. Run on an idle machine (``uptime`` load < 0.3).

    python benchmarks/vs_sb3.py --algos ppo,dqn --seeds 0,1,2,3,4
    python benchmarks/vs_sb3.py --smoke   # seconds: ~2k steps, seed 0; the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

TARGET = 475.0
EVAL_EVERY = 5_000
EVAL_EPISODES = 10
BUDGET = {"ppo": 100_000, "dqn": 50_000}  # rl-zoo n_timesteps: schedules scale with it
# DQN trains every 256 steps after learning_starts=1000: at 1024 and 1280 in the smoke run
SMOKE_BUDGET, SMOKE_EVAL_EVERY = {"ppo": 2048, "dqn": 1280}, 1024
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sb3_eval(model, seed: int) -> float:
    env = gym.make("CartPole-v1")
    returns = []
    obs, _ = env.reset(seed=seed)
    for _ in range(EVAL_EPISODES):
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(int(action))
            total += r
            done = term or trunc
        returns.append(total)
        obs, _ = env.reset()
    env.close()
    return float(np.mean(returns))


def run_sb3(algo: str, seed: int, budget: int, eval_every: int) -> dict:
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    def lin(v):
        return lambda progress: progress * v

    class StopAt(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval, self.eval_seconds, self.reached = eval_every, 0.0, None
            self.evals = 0

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += eval_every
            t0 = time.perf_counter()
            mean = sb3_eval(self.model, seed + 1000)
            self.evals += 1
            self.eval_seconds += time.perf_counter() - t0
            if mean >= TARGET:
                self.reached = self.num_timesteps
                return False
            return True

    if algo == "ppo":
        env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate=lin(1e-3),
            clip_range=lin(0.2),
            seed=seed,
            device="cpu",
            verbose=0,
        )
    else:
        env = make_vec_env("CartPole-v1", n_envs=1, seed=seed)
        model = DQN(
            "MlpPolicy",
            env,
            learning_rate=2.3e-3,
            batch_size=64,
            buffer_size=100_000,
            learning_starts=1000,
            gamma=0.99,
            target_update_interval=10,
            train_freq=256,
            gradient_steps=128,
            exploration_fraction=0.16,
            exploration_final_eps=0.04,
            policy_kwargs={"net_arch": [256, 256]},
            seed=seed,
            device="cpu",
            verbose=0,
        )
    cb = StopAt()
    t0 = time.perf_counter()
    model.learn(total_timesteps=budget, callback=cb)
    seconds = time.perf_counter() - t0 - cb.eval_seconds
    return {"steps": cb.reached, "seconds": seconds if cb.reached else None,
            "steps_run": model.num_timesteps, "seconds_run": round(seconds, 3), "evals": cb.evals}


def run_pavlov(algo: str, seed: int, budget: int, eval_every: int) -> dict:
    from pavlov.agents.common import Hooks
    from pavlov.config import build_config, load_yaml

    mod = __import__(f"pavlov.agents.{algo}", fromlist=["train"])
    agent = load_yaml(CONFIGS / f"{algo}-cartpole.yaml")["agent"]
    cfg = build_config(mod.Config, {**agent, "seed": seed, "total_steps": budget})
    reached: list[int] = []

    def stop(step: int, metrics: dict) -> bool:
        if metrics["eval/mean_return"] >= TARGET:
            reached.append(step)
            return True
        return False

    hooks = Hooks(evaluate_every=eval_every, eval_episodes=EVAL_EPISODES, stop=stop)
    out = mod.train("CartPole-v1", cfg, hooks=hooks)
    return {"steps": reached[0] if reached else None, "seconds": out.seconds if reached else None,
            "steps_run": out.env_steps, "seconds_run": round(out.seconds, 3),
            "evals": len(out.evals)}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="ppo,dqn")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--smoke", action="store_true",
                        help="2,048 (PPO) / 1,280 (DQN) env steps per library, seed 0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    eval_every = SMOKE_EVAL_EVERY if args.smoke else EVAL_EVERY
    report = {"machine": platform.processor() or platform.machine(), "target": TARGET,
              "smoke": args.smoke, "algos": {}}
    for algo in args.algos.split(","):
        rows = []
        budget = (SMOKE_BUDGET if args.smoke else BUDGET)[algo]
        for seed in seeds:
            p = run_pavlov(algo, seed, budget, eval_every)
            s = run_sb3(algo, seed, budget, eval_every)
            rows.append({"seed": seed, "pavlov": p, "sb3": s})
            print(
                f"{algo} seed {seed}: pavlov {p['steps']} steps {p['seconds'] or 0:.2f} s | "
                f"sb3 {s['steps']} steps {s['seconds'] or 0:.2f} s",
                flush=True,
            )
        med = {
            lib: {k: median([r[lib][k] for r in rows]) for k in ("steps", "seconds")}
            for lib in ("pavlov", "sb3")
        }
        ratio = (
            med["pavlov"]["seconds"] / med["sb3"]["seconds"]
            if med["pavlov"]["seconds"] and med["sb3"]["seconds"]
            else None
        )
        report["algos"][algo] = {
            "per_seed": rows,
            "median": med,
            "time_ratio": ratio,
            "steps_ratio": (
                med["pavlov"]["steps"] / med["sb3"]["steps"]
                if med["pavlov"]["steps"] and med["sb3"]["steps"]
                else None
            ),
        }
        print(
            f"{algo}: median pavlov {med['pavlov']} | sb3 {med['sb3']} | "
            f"time ratio {ratio if ratio is None else round(ratio, 3)}",
            flush=True,
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
