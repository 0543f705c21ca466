"""Training runs of deep agents (``pavlov train dqn|ppo|a2c|reinforce|apg``), with resume."""

from __future__ import annotations

import contextlib
import math
from collections import deque
from pathlib import Path
from typing import Any

from pavlov.agents.common import resolve_device
from pavlov.algos import DeepAlgo
from pavlov.config import build_config, config_dict
from pavlov.errors import PavlovError
from pavlov.evaluation import evaluate_summary
from pavlov.run import Run, default_run_name, distributed, interrupt
from pavlov.run.console import ProgressBar, notice
from pavlov.run.plots import plot_runs
from pavlov.run.rundir import resume_checkpoint

DATA_PARALLEL = ("ppo", "a2c")
"""Deep agents that run data-parallel (``--nproc N`` or torchrun)."""
BEST = "best.pt"
"""The checkpoint of a run's best evaluation so far (with ``--evaluate-every``): the whole
resumable state plus ``best = {env_step, eval_return}``."""


def _best_record(run: Run) -> dict[str, Any] | None:
    """``{env_step, eval_return}`` of a resumed run's best checkpoint, if it has one."""
    from pavlov.run.checkpoint import load_checkpoint

    path = run.checkpoints / BEST
    if not path.is_file():
        return None
    best = load_checkpoint(path).get("best")
    return dict(best) if isinstance(best, dict) else None


def deep_config(spec: DeepAlgo, env_id: str, agent: dict[str, Any], seed: int,
                env_kwargs: dict[str, Any] | None) -> tuple[Any, Any]:
    """The agent's config and its env, checked: one-line errors before any file or process."""
    from pavlov.envs.factory import make_env

    cfg = build_config(spec.mod.Config, {**agent, "seed": seed}, where="agent")
    resolve_device(cfg.device)  # a GPU that is not there: one line, before any file exists
    env = make_env(env_id, env_kwargs)  # one-line error for a bad id before any file exists
    spec.check(env)
    return cfg, env


def train_deep_run(
    spec: DeepAlgo,
    env_id: str,
    agent: dict[str, Any],
    *,
    seed: int,
    env_kwargs: dict[str, Any] | None,
    name: str | None,
    runs_dir: str | Path,
    eval_episodes: int,
    quiet: bool,
    overwrite: bool = False,
    checkpoint_every: int = 0,
    evaluate_every: int = 0,
    resume_from: Path | None = None,
    keep_checkpoints: int = 2,
) -> dict[str, Any] | None:
    """One deep run: config -> run dir -> train with hooks -> final checkpoint -> evaluation.

    In a data-parallel worker (torchrun, ``--nproc``) rank 0 does all that; the other ranks
    train alongside it and return None.

    ``resume_from``: an existing run directory; training continues from its latest checkpoint
    bit for bit (its logs rewound to that checkpoint) and appends to its metrics (config may
    raise ``total_steps``); a run killed before its first checkpoint starts from scratch.
    ``keep_checkpoints``: the newest ``step_*`` checkpoints kept (``final.pt`` always is).
    SIGINT/SIGTERM save a checkpoint and stop with the resume command
    (:mod:`pavlov.run.interrupt`).
    """
    import torch

    from pavlov.agents.common import Hooks

    # Classic-control nets are tiny: a second intra-op thread only spin-waits (measured 30x
    # slower PPO on a busy 2-core machine). PPO sets this itself through cfg.torch_threads.
    torch.set_num_threads(1)
    mod = spec.mod
    cfg, env = deep_config(spec, env_id, agent, seed, env_kwargs)
    dp = distributed.init(str(resolve_device(cfg.device)) if distributed.launched() else "cpu")
    if dp is not None and spec.name not in DATA_PARALLEL:
        raise PavlovError(f"{spec.name} does not run data-parallel (--nproc, torchrun): only "
                          f"{', '.join(DATA_PARALLEL)}")
    if dp is not None and not dp.is_main:  # a worker: trains, rank 0 writes everything
        resume_state = resume_checkpoint(resume_from) if resume_from is not None else None
        mod.train(env_id, cfg, env_kwargs=env_kwargs, resume=resume_state,
                  hooks=Hooks(evaluate_every=evaluate_every, checkpoint_every=checkpoint_every,
                              checkpoint=lambda step, state: None,  # joins rank 0's gather
                              save_best=(lambda step, ret, state: None) if evaluate_every
                              else None))  # fmt: skip
        env.close()
        return None
    config = {
        "algo": spec.name,
        "env": env_id,
        "env_kwargs": env_kwargs or {},
        "seed": seed,
        "eval_episodes": eval_episodes,
        "checkpoint_every": checkpoint_every,
        "evaluate_every": evaluate_every,
        "agent": config_dict(cfg),
        "nproc": 1 if dp is None else dp.world_size,
    }
    if resume_from is not None:
        resume_state = resume_checkpoint(resume_from, notice)
        if resume_state is not None and resume_state.get("algo") != spec.name:
            raise PavlovError(f"cannot resume {spec.name.upper()} from a "
                              f"{resume_state.get('algo')!r} state ({resume_from})")
        run = Run.reopen(resume_from, config)
    else:
        resume_state = None
        run = Run.create(
            runs_dir, name or default_run_name(spec.name, env_id), config, overwrite=overwrite
        )
    best = _best_record(run) if resume_state is not None else None
    recent: deque[float] = deque(maxlen=20)

    def save_best(step: int, ret: float, state: dict[str, Any]) -> None:
        nonlocal best
        best = {"env_step": int(step), "eval_return": float(ret)}
        run.save(BEST, {**state, "best": best}, keep_checkpoints)

    def log(step: int, metrics: dict[str, float]) -> None:
        run.log(step, metrics)
        if "charts/episode_return" in metrics:
            recent.append(metrics["charts/episode_return"])

    with (
        run,
        ProgressBar(
            cfg.total_steps, f"{spec.name} {env_id}", "return(20)", enabled=not quiet
        ) as bar,
    ):
        hooks = Hooks(
            log=log,
            progress=lambda n, v=None: bar.update(
                n, v if v is not None else (sum(recent) / len(recent) if recent else None)
            ),
            checkpoint=lambda step, state: run.save(f"step_{step:010d}.pt", state,
                                                    keep_checkpoints),
            checkpoint_every=checkpoint_every,
            evaluate_every=evaluate_every,
            save_best=save_best if evaluate_every else None,
            best_return=-math.inf if best is None else best["eval_return"],
            notice=notice,
        )
        with interrupt.resumable(run.dir, "train", enabled=dp is None):
            out = mod.train(env_id, cfg, env_kwargs=env_kwargs, hooks=hooks,
                            resume=resume_state)
        run.save("final.pt", out.state)
        policy = mod.load_policy(out.state, cfg, env)
        summary = evaluate_summary(env, policy, eval_episodes, seed + 10_000)
        summary.update(
            run=str(run.dir),
            algo=spec.name,
            env=env_id,
            env_steps=out.env_steps,
            train_seconds=round(out.seconds, 3),
            evals=[[int(s), float(r)] for s, r in out.evals],
        )
        if best is not None:  # `pavlov eval RUN --checkpoint best` evaluates it
            summary["best"] = {**best, "checkpoint": str(run.checkpoints / BEST)}
        run.write_summary(summary)
    for metric in ("charts/episode_return", "eval/mean_return"):
        with contextlib.suppress(PavlovError):  # a run without evaluations has no eval curve
            plot_runs(
                [run.dir],
                metric,
                run.plots / f"{metric.replace('/', '_')}.png",
                window=20 if metric.startswith("charts") else 1,
                title=f"{spec.name} on {env_id}",
            )
    env.close()
    return summary
