"""Monte-Carlo evaluation of a policy in a real Gymnasium env, with confidence intervals.

Policy convention across pavlov: a callable ``policy(obs, t) -> int`` where ``t`` is
the number of steps already taken in the current episode, so non-stationary finite-horizon
policies (:func:`pavlov.tabular.evaluate.finite_horizon_policy`) fit the same loop as
stationary ones. Deep agents' policies return whatever ``env.step`` takes (an int or an array).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from pavlov.errors import PavlovError, check_count, check_positive

Policy = Callable[[int, int], int]
"""``policy(obs, t) -> action`` with ``t`` = steps already taken in this episode."""

Z95 = 1.959963984540054  # standard normal 97.5% quantile: two-sided 95% intervals


@dataclass(frozen=True)
class EvalResult:
    """Monte-Carlo estimate of a policy's performance over ``episodes`` episodes."""

    mean_return: float
    """Mean undiscounted episode return."""
    return_ci95: float
    """Half-width of the normal-approximation 95% interval of the mean return,
    ``1.96 * std(ddof=1) / sqrt(n)``; 0 when n = 1."""
    success_rate: float | None
    """Fraction of successful episodes (:func:`success_rule` says what success is per env);
    None where the env defines no success (Pendulum: a cost to minimise, no goal)."""
    success_ci95: tuple[float, float] | None
    """Wilson score 95% interval ``(lo, hi)`` for the success rate (None with it)."""
    mean_length: float
    """Mean episode length in steps."""
    episodes: int
    """Number of episodes n."""
    seed: int
    """Seed passed to the first ``env.reset``."""
    capped: int = 0
    """Episodes cut by ``max_steps`` rather than by the env (their return is partial)."""

    def to_dict(self) -> dict:
        """Plain JSON-serializable dict of the fields (the interval as a 2-element list)."""
        out = asdict(self)
        if self.success_ci95 is not None:
            out["success_ci95"] = [float(x) for x in self.success_ci95]
        return out


SuccessRule = Callable[[bool, bool, float, dict], bool]
"""``rule(terminated, truncated, last_reward, final_info) -> success`` of an episode."""


def _goal(terminated: bool, truncated: bool, reward: float, info: dict) -> bool:
    return terminated


def _positive_end(terminated: bool, truncated: bool, reward: float, info: dict) -> bool:
    return terminated and reward > 0


def _balanced(terminated: bool, truncated: bool, reward: float, info: dict) -> bool:
    return truncated and not terminated


SUCCESS_RULES: dict[str, SuccessRule | None] = {
    "CartPole": _balanced,  # kept the pole up until the time limit
    "Acrobot": _goal,  # swung the tip above the line (the only termination)
    "MountainCar": _goal,  # reached the flag
    "MountainCarContinuous": _goal,
    "CliffWalking": _goal,  # reached the goal (falling off only sends you back)
    "FrozenLake": _positive_end,  # the goal pays 1, a hole 0
    "Taxi": _positive_end,  # the drop-off pays 20
    "Blackjack": _positive_end,  # won the hand
    "LunarLander": _positive_end,  # came to rest (+100; a crash is -100)
    "pavlov/GridWorld": _positive_end,  # the +goal square, not the -red one
    "pavlov/Grid2x3": _positive_end,
    "pavlov/Battle": _positive_end,  # won the battle
    "Pendulum": None,  # a cost to minimise: no goal
    "pavlov/PointMass": None,
}
"""Success per env family (``namespace/name`` of the Gymnasium id, version dropped); None: the
env has no notion of success and none is reported. An env whose final ``info`` has
``"is_success"`` decides itself; any other env: terminated with a positive last reward."""


def success_rule(env: gym.Env) -> SuccessRule | None:
    """The :data:`SUCCESS_RULES` entry of ``env``'s id, else the positive-terminal-reward rule."""
    spec = env.spec
    if spec is None:
        return _positive_end
    key = f"{spec.namespace}/{spec.name}" if spec.namespace else spec.name
    return SUCCESS_RULES.get(key, _positive_end)


def format_success(rate: float | None, ci: tuple[float, float] | list[float] | None) -> str:
    """``0.7440 [0.7166, 0.7697]``, or a dash where the env defines no success."""
    if rate is None or ci is None:
        return "- (no success defined for this env)"
    return f"{rate:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def regret(optimum: float, result: EvalResult) -> float:
    """``optimum - result.mean_return``: how much return the policy leaves on the table."""
    return float(optimum) - result.mean_return


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """(n,) -> (mean, half-width) of the normal-approximation 95% interval; 0 when n = 1.

    A normal rather than Student-t quantile: pavlov evaluates with hundreds of episodes, where
    the two differ by under 1% (t_{0.975, 100} = 1.984 vs 1.960).
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        raise PavlovError("mean_ci95 needs at least one value")
    half = Z95 * values.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    return float(values.mean()), float(half)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001).

    ``center = (p + z^2/2n) / (1 + z^2/n)``,
    ``half = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)`` with ``p = successes / n``.
    Unlike the Wald interval it stays inside [0, 1] and is not degenerate at p = 0 or 1.
    """
    check_positive("n", n)
    if not 0 <= successes <= n:
        raise PavlovError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 (p = 1) the bound is exactly 0 (1); the formula leaves ~1e-17 of rounding there.
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def evaluate_policy(
    env: gym.Env,
    policy: Policy,
    episodes: int,
    seed: int = 0,
    max_steps: int = 100_000,
) -> EvalResult:
    """Run ``episodes`` episodes of ``policy(obs, t)`` in ``env`` and summarize them.

    Seeding follows Gymnasium practice: ``env.reset(seed=seed)`` before the first episode
    seeds the env's RNG once, later episodes call ``env.reset()`` and continue that stream, so
    a run is reproducible while episodes stay independent. An episode ends at ``terminated``
    or ``truncated`` (a TimeLimit wrapper is respected), or after ``max_steps`` steps as a
    guard against envs without a limit (counted in ``capped``). An episode succeeds when the
    final ``info`` has ``"is_success"`` (its truth value is used), otherwise by the env's
    :func:`success_rule` (e.g. CartPole: balanced to the limit; Acrobot, CliffWalking: reached
    the goal; FrozenLake, Taxi: a positive terminal reward); envs without one (Pendulum) get
    ``success_rate = None``.
    """
    rule = success_rule(env)
    check_count("episodes", episodes)
    check_count("max_steps", max_steps)
    returns = np.empty(episodes)
    lengths = np.empty(episodes)
    successes = 0
    capped = 0
    defined = False  # an episode's info spoke for itself
    for i in range(episodes):
        obs, _ = env.reset(seed=seed) if i == 0 else env.reset()
        total, t = 0.0, 0
        terminated = truncated = False
        while not (terminated or truncated) and t < max_steps:
            obs, reward, terminated, truncated, info = env.step(policy(obs, t))
            total += reward
            t += 1
        capped += not (terminated or truncated)
        if "is_success" in info:
            defined = True
            successes += bool(info["is_success"])
        elif rule is not None:
            successes += bool(rule(terminated, truncated, reward, info))
        returns[i] = total
        lengths[i] = t
    mean_return, return_half = mean_ci95(returns)
    return EvalResult(
        mean_return=mean_return,
        return_ci95=return_half,
        success_rate=None if rule is None and not defined else successes / episodes,
        success_ci95=None if rule is None and not defined else wilson_interval(successes,
                                                                               episodes),
        mean_length=float(lengths.mean()),
        episodes=episodes,
        seed=seed,
        capped=int(capped),
    )


def optimum_return(env) -> float | None:
    """The best expected undiscounted return within the env's step limit, when its MDP table
    is known (finite-horizon DP), else None. This is what evaluation returns compare to."""
    from pavlov.tabular import planning
    from pavlov.tabular.mdp import MDP

    if not hasattr(env.unwrapped, "P"):
        return None
    mdp = MDP.from_env(env)
    if mdp.horizon:
        return float(planning.finite_horizon(mdp, mdp.horizon, gamma=1.0).start_value)
    res = planning.value_iteration(mdp, 1.0)
    return float(res.start_value) if res.converged else None


def evaluate_summary(env, policy, episodes: int, seed: int) -> dict[str, Any]:
    """Greedy evaluation numbers plus the optimum and regret where the MDP is known."""
    ev = evaluate_policy(env, policy, episodes, seed=seed)
    out = ev.to_dict()
    opt = optimum_return(env)
    out["optimum"] = opt
    out["regret"] = None if opt is None else opt - ev.mean_return
    return out
