"""The on-policy core shared by A2C and PPO: the training loop around one rollout buffer,
one collector and one actor-critic, in one process or data-parallel.

One iteration: ``schedule`` (learning rate, clip range) -> :func:`~pavlov.agents.rollout.
collect_rollout` -> merge normalizers over the ranks -> ``update`` (advantages and gradient
steps: the algorithm) -> log -> :class:`~pavlov.agents.common.TrainClock` (evaluation,
checkpoint, stop). An algorithm supplies its update; everything else is here once.

Data-parallel (inside a torch.distributed group: ``--nproc``, torchrun; Wijmans et al. 2020,
DD-PPO): each rank steps its own envs with its own seeds (sub-env ``i`` of rank ``r`` resets
with ``seed + r * n_envs + i``) and action noise; the update averages gradients over the ranks;
env steps, episode statistics and loss metrics are summed or averaged over the ranks; rank 0
alone calls the hooks (logs, evaluations, checkpoints) and its stop decision reaches all.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pavlov.agents.common import (
    NOT_EXACT,
    Hooks,
    TrainClock,
    TrainOutput,
    encode_obs,
    restore_envs,
    snapshot_envs,
)
from pavlov.agents.distributions import NumpyActorCritic
from pavlov.agents.normalize import RunningMeanStd
from pavlov.agents.rollout import Collector, collect_rollout
from pavlov.errors import PavlovError
from pavlov.run.distributed import DataParallel


class Counters(Protocol):
    """What an on-policy run counts (an agent's fields, saved in its checkpoints)."""

    env_steps: int
    updates: int


@dataclass
class OnPolicyRun:
    """One run's pieces, as the algorithm built them."""

    collector: Collector
    model: Any
    """The :class:`~pavlov.agents.distributions.ActorCritic` (copied to NumPy per rollout)."""
    update: Callable[[int], dict[str, float]]
    """``update(env_steps) -> metrics``: advantages and gradient steps on the collector's
    buffer (its first ``collector.steps`` rows)."""
    evaluate: Callable[[], float]
    """Deterministic evaluation -> mean return (rank 0, on the clock's schedule)."""
    state: Callable[[], dict[str, Any]]
    """A resumable state (checkpoints and the output)."""
    schedule: Callable[[float], dict[str, float]] = lambda progress: {}
    """``schedule(fraction_done) -> charts`` before each rollout (e.g. annealed lr)."""
    normalizers: list[RunningMeanStd] = field(default_factory=list)
    """Running statistics the collector updates (merged over the ranks after each rollout)."""
    preempt: Callable[[int], Callable[[int], bool]] | None = None
    """DD-PPO preemption: ``preempt(update) -> stop(t)`` for :func:`collect_rollout`."""
    log_every: int = 0
    """Env steps between logs (0: after every update); episode statistics are means over the
    episodes since the last log."""


def rank_of(dp: DataParallel | None) -> int:
    return 0 if dp is None else dp.rank


def rank_rng(seed: int, dp: DataParallel | None, updates: int) -> np.random.Generator | None:
    """The action-noise generator of a rank other than 0 (rank 0 keeps the 1-process stream,
    so a 1-process run is unchanged by this module) -> None on rank 0 / alone."""
    return None if rank_of(dp) == 0 else np.random.default_rng([seed, rank_of(dp), updates])


def reset(run: OnPolicyRun, seed: int, n_envs: int, dp: DataParallel | None) -> None:
    """Reset the collector's envs (rank ``r``: seeds from ``seed + r * n_envs``)."""
    starts = [n.state_dict() for n in run.normalizers]
    run.collector.reset(seed + rank_of(dp) * n_envs)
    if dp is not None:  # the reset's observations entered the statistics
        merge_normalizers(run.normalizers, starts, dp)


def start(run: OnPolicyRun, seed: int, n_envs: int, dp: DataParallel | None,
          resume: dict[str, Any] | None, notice: Callable[[str], None]) -> dict | None:
    """Where the first rollout starts: a resumed run's envs exactly where its checkpoint left
    them (each rank's pickled sub-envs, prepared observations, episode statistics, action-noise
    RNG) -> the saved loop state; else envs reset with ``seed`` (:func:`reset`) -> None, with a
    notice for a resume whose envs could not be saved (async or EzPickle envs) or that runs on
    another number of processes. In a data-parallel run every rank restores or every rank
    resets."""
    saved = None if resume is None else resume.get("loop")
    c = run.collector
    ranks = None if saved is None else saved.get("ranks")
    mine = None
    if ranks is not None and len(ranks) == (1 if dp is None else dp.world_size):
        mine = ranks[rank_of(dp)]
    ok = mine is not None and restore_envs(c.envs, mine["envs"])
    if dp is not None:  # every rank restores, or every rank resets: never a mix
        ok = bool(dp.sum_array([float(ok)])[0] == dp.world_size)
    if ok:
        c.obs = np.array(mine["obs"], copy=True)
        c.stats.load_state_dict(mine["stats"])
        c.rng.bit_generator.state = mine["rng"]
        if c.reward_scaler is not None:
            c.reward_scaler.returns[:] = mine["reward_returns"]
        return saved
    if resume is not None:
        why = ("an older checkpoint" if saved is None else "a different number of processes"
               if mine is None else "async vector envs or an env that does not pickle")
        notice(NOT_EXACT.format(why=why))
    if c.reward_scaler is not None:
        c.reward_scaler.restart()
    reset(run, seed, n_envs, dp)
    return None


def merge_normalizers(normalizers: list[RunningMeanStd], starts: list[dict[str, Any]],
                      dp: DataParallel) -> None:
    """Every rank's statistics := those of all ranks' samples (so the ranks normalize alike)."""
    for rms, start in zip(normalizers, starts, strict=True):
        rms.merge_ranks(start, dp.sum_array)


def loop(run: OnPolicyRun, counters: Counters, total_steps: int, hooks: Hooks,
         dp: DataParallel | None, saved: dict[str, Any] | None = None) -> TrainOutput:
    """Collect -> update -> log -> evaluate/checkpoint until ``total_steps`` (all ranks'
    env steps) or until ``hooks.stop`` says so. ``saved``: the loop state of a resumed run
    (:func:`start`).

    Checkpoints hold ``run.state()`` plus ``"loop"``: each rank's envs (pickled), current
    observations, episode statistics, action-noise RNG and running returns (gathered to rank 0
    in a data-parallel run: every rank keeps the checkpoint schedule), and the pending log
    sums, so a resumed run continues the uninterrupted run's trajectories bit for bit
    (checkpoints fall between updates, where the rollout buffer holds nothing that the next
    rollout does not overwrite).

    Data-parallel, each update costs one extra collective besides the gradient averages: the
    ranks' env steps, episode sums and loss metrics travel in one vector (on a 2-core VM a gloo
    collective costs ~0.3-0.5 ms, as much as a minibatch step). Ranks other than 0 keep the
    evaluation schedule (``hooks.evaluate_every``) to receive rank 0's stop decision, and call
    no hook.
    """
    c = run.collector
    n_envs = c.envs.num_envs
    main = dp is None or dp.is_main
    if dp is not None:  # a rank on another schedule would wait for a collective that never comes
        e, k = hooks.evaluate_every, hooks.checkpoint_every
        every = dp.sum_array([e, e ** 2, k, k ** 2])
        if (every[1] * dp.world_size != every[0] ** 2
                or every[3] * dp.world_size != every[2] ** 2):
            raise PavlovError("every rank must get the same hooks.evaluate_every and "
                              "hooks.checkpoint_every")
    clock = TrainClock(hooks if main else Hooks(  # joins rank 0's state gathers, writes nothing
        evaluate_every=hooks.evaluate_every, checkpoint_every=hooks.checkpoint_every,
        checkpoint=lambda step, state: None,
        save_best=None if hooks.save_best is None else lambda step, ret, state: None,
    ), counters.env_steps)
    evaluate = run.evaluate if main else (lambda: float("nan"))
    recent: list[float] = []
    pending = np.zeros(3)  # episodes since the last log (all ranks): count, sum return, length
    next_log = counters.env_steps + run.log_every
    if saved is not None:
        pending[:] = saved["pending"]
        next_log = int(saved["next_log"])

    def state() -> dict[str, Any]:  # called on every rank at once (a gather)
        mine = {"envs": snapshot_envs(c.envs), "obs": c.obs.copy(),
                "stats": c.stats.state_dict(), "rng": c.rng.bit_generator.state,
                "reward_returns": None if c.reward_scaler is None
                else c.reward_scaler.returns.copy()}
        ranks = [mine] if dp is None else dp.gather_objects(mine)
        return {**run.state(), "loop": {"ranks": ranks, "pending": pending.copy(),
                                        "next_log": next_log}}

    while counters.env_steps < total_steps:
        charts = run.schedule(counters.env_steps / total_steps)
        starts = [n.state_dict() for n in run.normalizers] if dp is not None else []
        stop = None if dp is None or run.preempt is None else run.preempt(counters.updates)
        finished = collect_rollout(c, NumpyActorCritic(run.model), stop)
        if dp is not None and run.normalizers:
            merge_normalizers(run.normalizers, starts, dp)
        metrics = run.update(counters.env_steps + c.steps * n_envs)
        names = sorted(metrics)
        sums = np.array([c.steps * n_envs, len(finished), sum(r for r, _ in finished),
                         sum(n for _, n in finished), *(metrics[k] for k in names)], np.float64)
        if dp is not None:  # one collective for all of them
            sums = dp.sum_array(sums)
            metrics = dict(zip(names, (sums[4:] / dp.world_size).tolist(), strict=True))
        steps = int(sums[0])
        counters.env_steps += steps
        counters.updates += 1
        pending += sums[1:4]
        recent = (recent + [r for r, _ in finished])[-100:]
        clock.advance(steps, float(np.mean(recent)) if recent else None)
        if counters.env_steps >= next_log:
            episodes = {} if pending[0] == 0 else {
                "charts/episode_return": float(pending[1] / pending[0]),
                "charts/episode_length": float(pending[2] / pending[0])}
            pending[:] = 0.0
            next_log = counters.env_steps + run.log_every
            clock.hooks.log(counters.env_steps,
                            {**metrics, **episodes, **charts, "charts/SPS": clock.sps()})
        if clock.periodic(evaluate, state, dp):
            break
    return clock.output(state())


def greedy_policy(head: Any, model: Any, obs_rms: RunningMeanStd | None, obs_space: Any,
                  obs_clip: float) -> Callable[[Any, int], Any]:
    """Deterministic ``policy(obs, t)`` (argmax, or the Gaussian mean clipped to the Box) from a
    NumPy snapshot of ``model``'s weights and of the observation statistics."""
    net, k, rms = NumpyActorCritic(model), head.n_outputs, copy.deepcopy(obs_rms)
    discrete = head.action_shape == ()

    def policy(obs: Any, t: int) -> Any:
        x = encode_obs(obs_space, obs).numpy()  # (1, in_dim)
        if rms is not None:
            x = rms.normalize(x, obs_clip)
        action = head.to_env(head.mode_np(net(x)[:, :k], net.log_std))[0]
        return int(action) if discrete else action

    return policy


def preemption(dp: DataParallel, threshold: float, n_steps: int, min_rows: int
               ) -> Callable[[int], Callable[[int], bool]]:
    """DD-PPO's preemption of stragglers (Wijmans et al. 2020, Sec. 4): once ``threshold`` of
    the ranks finished a rollout, the others stop collecting, after at least a quarter of
    ``n_steps`` and ``min_rows`` vector steps. Ranks count themselves done in the group's
    store; stragglers look every 8 steps (a store round trip costs about an env step)."""
    quota = math.ceil(threshold * dp.world_size)
    least = max(math.ceil(n_steps / 4), min_rows)

    def for_update(update: int) -> Callable[[int], bool]:
        add = dp.counter(f"rollout-{update}")

        def stop(t: int) -> bool:
            if t == n_steps:
                add(1)
                return False
            return t >= least and t % 8 == 0 and add(0) >= quota

        return stop

    return for_update
