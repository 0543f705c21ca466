"""``pavlov tour`` (``make demo``): the tabular half of the course in under a minute.

For each environment: plan the optimum with dynamic programming on the known MDP, then learn
from interaction only (Q-learning, SARSA-family, model-based RL) and compare the learned greedy
policy with the optimum. Runs land in ``runs/tour/`` with their metrics and learning curves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pavlov.run.console import stdout, table

# (env id, env kwargs, [(algo, agent config)]): small budgets that still reach the optimum.
# The FrozenLake and Battle settings are the ones the acceptance tests pin (tests/tabular).
PLAN: list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]] = [
    ("pavlov/Grid2x3-v0", {}, [
        ("q-learning", {"episodes": 300, "gamma": 0.9, "alpha": 0.5}),
        ("sarsa", {"episodes": 300, "gamma": 0.9, "alpha": 0.5}),
    ]),
    ("pavlov/Battle-v0", {}, [
        ("q-learning", {"episodes": 5000, "gamma": 0.99, "alpha": 0.05}),
        ("model-based", {"episodes": 1000, "gamma": 0.99, "rmax": 10.0}),
    ]),
    ("FrozenLake-v1", {}, [
        ("q-learning", {"episodes": 15000, "gamma": 0.99, "alpha": 0.02, "epsilon_end": 0.01,
                        "decay_fraction": 0.5}),
        ("model-based", {"episodes": 1500, "gamma": 0.99, "known_threshold": 60,
                         "replan_every": 20}),
    ]),
]  # fmt: skip


def _plan_row(env_id: str, env_kwargs: dict[str, Any]) -> tuple[list[Any], float]:
    from pavlov.commands.solve import plan
    from pavlov.envs.factory import make_env
    from pavlov.evaluation import evaluate_policy
    from pavlov.tabular.mdp import MDP

    env = make_env(env_id, env_kwargs)
    t0 = time.perf_counter()
    res, policy, method = plan(MDP.from_env(env), "auto", 1.0, None)
    ev = evaluate_policy(env, policy, 2000, seed=1)
    env.close()
    opt = float(res.start_value)
    return [env_id, f"{method} (planned)", _fmt(ev), opt, "-", time.perf_counter() - t0], opt


def _fmt(ev) -> str:
    return f"{ev.mean_return:.3f} ± {ev.return_ci95:.3f} / {100 * ev.success_rate:.1f}%"


def run_tour(out: Path, json_out: bool) -> None:
    from pavlov.commands.train import train_run
    from pavlov.run.console import emit_json
    from pavlov.run.plots import plot_runs

    t_start = time.perf_counter()
    rows, results = [], []
    for env_id, env_kwargs, learners in PLAN:
        row, opt = _plan_row(env_id, env_kwargs)
        rows.append(row)
        results.append({"env": env_id, "method": row[1], "optimum": opt})
        runs = []
        for algo, agent in learners:
            t0 = time.perf_counter()
            s = train_run(
                algo,
                env_id,
                agent,
                seed=0,
                env_kwargs=env_kwargs,
                name=f"{algo}-{env_id.replace('/', '_')}",
                runs_dir=out,
                eval_episodes=2000,
                quiet=json_out,
                overwrite=True,
            )
            runs.append(s["run"])
            rows.append(
                [
                    env_id,
                    algo,
                    f"{s['mean_return']:.3f} ± {s['return_ci95']:.3f} / "
                    f"{100 * s['success_rate']:.1f}%",
                    opt,
                    s["train_episodes"],
                    time.perf_counter() - t0,
                ]
            )
            results.append(s)
        plot_runs(
            runs,
            "charts/episode_return",
            out / "plots" / f"{env_id.replace('/', '_')}.png",
            window=100,
            title=f"{env_id}: episode return while learning",
            hline=opt,
            xlabel="episode",
        )
    stdout.print(
        table(
            "pavlov tour: plan with the model, then learn from experience "
            "(greedy evaluation over 2000 episodes)",
            ["env", "method", "return ± 95% CI / success", "optimum", "episodes", "seconds"],
            rows,
        )
    )
    total = time.perf_counter() - t_start
    stdout.print(
        f"learning curves: {out}/*/plots/*.png and {out}/plots/*.png  (total {total:.1f} s)"
    )
    if json_out:
        emit_json({"results": results, "seconds": round(total, 2)})
