"""``pavlov solve ENV``: dynamic programming on the env's own MDP table, then an evaluation."""

from __future__ import annotations

import time
from typing import Any

from pavlov.errors import ConfigError, PavlovError, check_range
from pavlov.run.console import stdout, table

METHODS = ("auto", "value-iteration", "policy-iteration", "finite-horizon")
KEYS = {"env", "method", "gamma", "horizon", "episodes", "seed", "env_kwargs"}


def plan(mdp, method: str, gamma: float, horizon: int | None):
    """(result, policy(obs, t), method used). ``auto``: finite-horizon DP when the env has a
    step limit (the exact optimum within it), else value iteration."""
    from pavlov.tabular import evaluate as ev
    from pavlov.tabular import planning

    horizon = horizon or mdp.horizon
    if method == "auto":
        method = "finite-horizon" if horizon else "value-iteration"
    if method == "finite-horizon":
        if not horizon:
            raise PavlovError(f"finite-horizon DP needs --horizon: {mdp.name} has no step limit")
        res = planning.finite_horizon(mdp, horizon, gamma=gamma)
        return res, ev.finite_horizon_policy(res), method
    solver = {
        "value-iteration": planning.value_iteration,
        "policy-iteration": planning.policy_iteration,
    }[method]
    res = solver(mdp, gamma)
    return res, ev.table_policy(res.policy), method


def run_solve(opts: dict[str, Any], json_out: bool) -> None:
    from pavlov.envs.factory import make_env, parse_env_kwargs
    from pavlov.evaluation import evaluate_policy, format_success
    from pavlov.run.console import emit_json
    from pavlov.tabular.mdp import MDP

    unknown = set(opts) - KEYS
    if unknown:
        raise ConfigError(f"unknown solve option(s) {', '.join(sorted(unknown))}")
    method = str(opts.get("method", "auto"))
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    gamma = float(opts.get("gamma", 1.0))
    check_range("gamma", gamma, 0.0, 1.0)
    episodes = int(opts.get("episodes", 1000))
    if episodes <= 0:
        raise ConfigError(f"episodes must be positive, got {episodes}")
    horizon = opts.get("horizon")
    if horizon is not None and int(horizon) <= 0:
        raise ConfigError(f"horizon must be positive, got {horizon}")
    seed = int(opts.get("seed", 0))

    env = make_env(opts["env"], parse_env_kwargs(opts.get("env_kwargs")))
    mdp = MDP.from_env(env)
    t0 = time.perf_counter()
    res, policy, method = plan(mdp, method, gamma, int(horizon) if horizon else None)
    seconds = time.perf_counter() - t0
    ev = evaluate_policy(env, policy, episodes, seed=seed)
    env.close()

    out = {
        "env": opts["env"],
        "method": method,
        "gamma": gamma,
        "horizon": int(horizon) if horizon else mdp.horizon,
        "optimal_value": float(res.start_value),
        "success_rate": ev.success_rate,
        "success_ci95": None if ev.success_ci95 is None else list(ev.success_ci95),
        "mean_return": ev.mean_return,
        "return_ci95": ev.return_ci95,
        "episodes": episodes,
        "seconds": round(seconds, 4),
    }
    stdout.print(
        table(
            f"{opts['env']}: {method}, gamma={gamma}",
            ["quantity", "value"],
            [
                ["optimal value of the start state", out["optimal_value"]],
                ["step limit (horizon)", out["horizon"] or "none"],
                [
                    f"success rate over {episodes} episodes",
                    format_success(ev.success_rate, ev.success_ci95),
                ],
                ["mean return (95% CI)", f"{ev.mean_return:.4f} ± {ev.return_ci95:.4f}"],
                ["planning seconds", out["seconds"]],
            ],
        )
    )
    if json_out:
        emit_json(out)
