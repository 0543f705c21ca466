"""Running normalizers for observations and rewards (NumPy, float64 statistics).

* :class:`RunningMeanStd` merges batch statistics with the parallel-variance formula (Chan,
  Golub & LeVeque 1979), as Stable-Baselines3's ``RunningMeanStd`` and OpenAI baselines do.
* :class:`RewardScaler` divides each reward by the running std of the *discounted return*
  (Engstrom et al. 2020, "Implementation Matters", reward scaling; SB3 ``VecNormalize``,
  CleanRL's ``NormalizeReward``). The mean is not subtracted: the sign of a reward matters.

Both are part of a trainer's saved state (``state_dict``/``load_state_dict``) so that a resumed
run and ``load_policy`` see exactly the statistics that training used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["RewardScaler", "RunningMeanStd"]


class RunningMeanStd:
    """Mean and (population) variance of every sample seen so far, per feature.

    ``count`` starts at ``epsilon`` (with mean 0, variance 1) so the first division is safe.
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, batch: np.ndarray) -> None:
        """Merge a ``(B, *shape)`` batch into the statistics."""
        batch = np.asarray(batch, dtype=np.float64)
        n = batch.shape[0]
        if n == 0:
            return
        b_mean, b_var = batch.mean(axis=0), batch.var(axis=0)
        # Chan et al. 1979: M2 = M2_a + M2_b + delta^2 * n_a * n_b / n
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = total

    def merge_ranks(self, start: dict[str, Any],
                    sum_over_ranks: Callable[[np.ndarray], np.ndarray]) -> None:
        """Data-parallel runs: every rank updated these statistics from the same ``start``
        (a :meth:`state_dict`) with its own samples; afterwards every rank holds ``start``
        merged with all ranks' samples. ``sum_over_ranks`` all-reduces a float64 vector.

        Per rank, the new samples' count ``c``, sum ``s`` and sum of squares ``q`` are the
        differences of ``(n, n * mean, n * (var + mean^2))`` to ``start``; their sums over
        the ranks give the merged mean ``S / N`` and variance ``Q / N - mean^2``.
        """
        n0, m0, v0 = start["count"], start["mean"], start["var"]
        n, m, v = self.count, self.mean, self.var
        mine = np.concatenate([[n - n0], (n * m - n0 * m0).ravel(),
                               (n * (v + m**2) - n0 * (v0 + m0**2)).ravel()])
        total = sum_over_ranks(mine)
        d = m0.size
        count = n0 + total[0]
        mean = (n0 * m0 + total[1 : 1 + d].reshape(m0.shape)) / count
        sq = (n0 * (v0 + m0**2) + total[1 + d :].reshape(m0.shape)) / count
        self.mean, self.var, self.count = mean, np.maximum(sq - mean**2, 0.0), float(count)

    def normalize(self, x: np.ndarray, clip: float, eps: float = 1e-8) -> np.ndarray:
        """``clip((x - mean) / sqrt(var + eps), -clip, clip)`` as float32."""
        out = (x - self.mean) / np.sqrt(self.var + eps)
        return np.clip(out, -clip, clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.var = np.array(state["var"], dtype=np.float64)
        self.count = float(state["count"])


class RewardScaler:
    """Scales rewards by the running std of the discounted return, per env of a vector env.

    ``G <- gamma * G + r`` per env (reset to 0 after an episode ends); ``r / sqrt(Var[G] + eps)``
    clipped to ``[-clip, clip]``. Same as SB3 ``VecNormalize(norm_reward=True)``.
    """

    def __init__(self, n_envs: int, gamma: float, clip: float, eps: float = 1e-8) -> None:
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(n_envs, dtype=np.float64)
        self.gamma, self.clip, self.eps = gamma, clip, eps

    def __call__(self, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        """(N,) raw rewards and episode ends of one vector step -> (N,) scaled float32."""
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[done] = 0.0
        return self.scale(rewards)

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        """Scale with the current statistics, without updating them."""
        out = rewards / np.sqrt(self.rms.var + self.eps)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The return statistics and the per-env running returns (a run that resumes its
        envs mid-episode needs them; one that resets its envs zeroes them: :meth:`restart`)."""
        return {"rms": self.rms.state_dict(), "returns": self.returns.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state["rms"])
        self.returns[:] = state.get("returns", 0.0)

    def restart(self) -> None:
        """Fresh episodes in every env: the running returns start at 0."""
        self.returns[:] = 0.0
