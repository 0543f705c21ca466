"""``pavlov train`` and ``pavlov eval``: one run directory per training run."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from pavlov.algos import get_algo
from pavlov.commands.deep import BEST, DATA_PARALLEL, deep_config, train_deep_run
from pavlov.config import build_config, config_dict
from pavlov.errors import ConfigError, PavlovError, check_choice
from pavlov.evaluation import evaluate_summary, format_success
from pavlov.run import Run, default_run_name, distributed, interrupt, open_run_dir
from pavlov.run.console import ProgressBar, notice, stdout, table
from pavlov.run.plots import plot_runs
from pavlov.run.rundir import load_run_checkpoint, resume_checkpoint

TRAIN_KEYS = {
    "algo",
    "env",
    "seed",
    "name",
    "runs_dir",
    "eval_episodes",
    "env_kwargs",
    "agent",
    "evaluate_every",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "nproc",
}


def _nonneg(name: str, opts: dict[str, Any]) -> int:
    value = int(opts.get(name) or 0)
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


def _positive(name: str, value: Any) -> int:
    if int(value) <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return int(value)


def train_run(
    algo: str,
    env_id: str,
    agent: dict[str, Any],
    *,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    runs_dir: str | Path = "runs",
    eval_episodes: int = 1000,
    quiet: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Validate, train, checkpoint, evaluate and plot one run; return its summary dict.

    Everything that can be checked is checked before the run directory exists. The TD control
    methods checkpoint every ``checkpoint_every`` episodes (and on SIGINT/SIGTERM) and resume
    from ``resume_from`` (a run directory) bit for bit.
    """
    from pavlov.envs.factory import make_env

    spec = get_algo(algo)
    cfg = build_config(spec.config_cls, {**spec.defaults, **agent, "seed": seed}, where="agent")
    eval_episodes = _positive("eval_episodes", eval_episodes)
    if (checkpoint_every or resume_from is not None) and not spec.resumable:
        raise PavlovError(f"{algo} runs do not checkpoint between episodes (no "
                          "--checkpoint-every/--resume); they are short: rerun them")
    env = make_env(env_id, env_kwargs)
    spec.check(env)
    config = {
        "algo": algo,
        "env": env_id,
        "env_kwargs": env_kwargs or {},
        "seed": seed,
        "eval_episodes": eval_episodes,
        "checkpoint_every": checkpoint_every,
        "agent": config_dict(cfg),
    }
    recent: deque[float] = deque(maxlen=100)
    steps, done, resume = 0, 0, None
    if resume_from is not None:
        resume = resume_checkpoint(resume_from, notice)
        if resume is not None and "rng_words" not in resume:
            raise PavlovError(f"{resume_from} has no resumable checkpoint (written by an older "
                              "pavlov): rerun it")
        run = Run.reopen(resume_from, config)
        if resume is not None:
            steps, done = int(resume["lengths"].sum()), len(resume["lengths"])
    else:
        run = Run.create(runs_dir, name or default_run_name(algo, env_id), config,
                         overwrite=overwrite)
    t0 = time.perf_counter()
    resume_kw = {} if not spec.resumable else {
        "checkpoint": lambda n, state: run.save(f"step_{n:010d}.npz", state, keep_checkpoints),
        "checkpoint_every": checkpoint_every, "resume": resume}
    with (
        run,
        ProgressBar(cfg.episodes, f"{algo} {env_id}", "return(100)", enabled=not quiet) as bar,
    ):
        bar.update(done)

        def on_episode(i: int, ret: float, length: int, success: bool, epsilon: float) -> None:
            nonlocal steps
            steps += length
            recent.append(ret)
            run.log(
                i,
                {
                    "charts/episode_return": ret,
                    "charts/episode_length": length,
                    "charts/success": float(success),
                    "charts/epsilon": epsilon,
                    "charts/env_steps": steps,
                },
            )
            bar.update(1, sum(recent) / len(recent))

        with interrupt.resumable(run.dir, "train"):
            result = spec.train(env, cfg, on_episode, **resume_kw)
        train_seconds = time.perf_counter() - t0
        state = spec.state(result)
        run.save("final.npz", {**getattr(result, "resume", {}), **state})
        summary = evaluate_summary(env, spec.policy(state, cfg, env), eval_episodes, seed + 10_000)
        summary.update(
            run=str(run.dir),
            algo=algo,
            env=env_id,
            train_episodes=cfg.episodes,
            env_steps=steps,
            train_seconds=round(train_seconds, 3),
        )
        run.write_summary(summary)
        for metric in ("charts/episode_return", "charts/success"):
            plot_runs(
                [run.dir],
                metric,
                run.plots / f"{metric.split('/')[1]}.png",
                window=max(1, min(100, cfg.episodes // 20)),
                title=f"{algo} on {env_id}",
                hline=summary["optimum"] if metric.endswith("return") else None,
                xlabel="episode",
            )
    env.close()
    return summary


def print_eval(title: str, s: dict[str, Any]) -> None:
    rows = [
        ["mean return (95% CI)", f"{s['mean_return']:.4f} ± {s['return_ci95']:.4f}"],
        ["success rate (95% CI)", format_success(s["success_rate"], s["success_ci95"])],
        ["optimum", "-" if s["optimum"] is None else f"{s['optimum']:.4f}"],
        ["regret", "-" if s["regret"] is None else f"{s['regret']:.4f}"],
        ["evaluation episodes", s["episodes"]],
    ]
    stdout.print(table(title, ["quantity", "value"], rows))


def _resume_opts(opts: dict[str, Any], agent: dict[str, Any]) -> tuple[dict, dict]:
    """Options of a resumed run: its saved config, updated by what the user gave now."""
    path, saved = open_run_dir(opts["resume"])
    merged = {k: v for k, v in saved.items() if k in TRAIN_KEYS and k != "agent"}
    for k in ("algo", "env"):
        if opts.get(k) not in (None, saved[k]):
            raise ConfigError(
                f"--resume {path} is a {saved['algo']} run on {saved['env']}; got {k}={opts[k]!r}"
            )
    merged.update({k: v for k, v in opts.items() if k not in ("algo", "env")})
    return merged, {**saved["agent"], **agent}


def run_train(opts: dict[str, Any], agent: dict[str, Any], *, quiet: bool, json_out: bool) -> None:
    from pavlov.envs.factory import parse_env_kwargs
    from pavlov.run.console import emit_json

    unknown = set(opts) - TRAIN_KEYS
    if unknown:
        raise ConfigError(f"unknown train option(s) {', '.join(sorted(unknown))}")
    if opts.get("resume"):
        opts, agent = _resume_opts(opts, agent)
    if not opts.get("algo"):
        raise PavlovError("train needs an algorithm, e.g. `pavlov train q-learning --env ...`")
    if opts["algo"] == "agent":  # a language model playing text games
        from pavlov.commands.agent import run_train_agent

        run_train_agent(opts, agent, quiet=quiet, json_out=json_out)
        return
    if not opts.get("env"):
        raise PavlovError("train needs an environment: --env ENV_ID (see `pavlov envs`)")
    algo, spec = opts["algo"], get_algo(opts["algo"])
    nproc = _positive("nproc", opts.pop("nproc", 1))
    if nproc > 1 and not distributed.launched():
        _launch(nproc, spec, opts, agent, quiet=quiet, json_out=json_out)
        return
    common = dict(
        seed=int(opts.get("seed", 0)),
        env_kwargs=parse_env_kwargs(opts.get("env_kwargs")),
        name=opts.get("name"),
        runs_dir=opts.get("runs_dir", "runs"),
        eval_episodes=_positive("eval_episodes", opts.get("eval_episodes", 1000)),
        quiet=quiet or json_out,
    )
    common.update(
        checkpoint_every=_nonneg("checkpoint_every", opts),
        keep_checkpoints=_positive("keep_checkpoints", opts.get("keep_checkpoints", 2)),
        resume_from=Path(opts["resume"]) if opts.get("resume") else None,
    )
    if spec.kind == "deep":
        s = train_deep_run(
            spec, opts["env"], agent, **common, evaluate_every=_nonneg("evaluate_every", opts)
        )
        if s is None:  # a data-parallel worker other than rank 0
            return
        done = f"{s['env_steps']} env steps"
    else:
        s = train_run(algo, opts["env"], agent, **common)
        done = f"{s['train_episodes']} episodes"
    print_eval(
        f"{algo} on {opts['env']}: greedy policy after {done} "
        f"({s['train_seconds']:.1f} s) -> {s['run']}",
        s,
    )
    if "best" in s and not json_out:
        b = s["best"]
        stdout.print(f"best evaluation during training: {b['eval_return']:.4f} at "
                     f"{b['env_step']} env steps -> `pavlov eval {s['run']} --checkpoint best`")
    if json_out:
        emit_json(s)


def _launch(nproc: int, spec: Any, opts: dict[str, Any], agent: dict[str, Any], *,
            quiet: bool, json_out: bool) -> None:
    """``--nproc N``: check the run here, then train in N workers (rank 0 prints)."""
    from pavlov.envs.factory import parse_env_kwargs

    if spec.kind != "deep" or spec.name not in DATA_PARALLEL:
        raise PavlovError(f"--nproc is for {', '.join(DATA_PARALLEL)}; {spec.name} runs in one "
                          "process")
    deep_config(spec, opts["env"], agent, int(opts.get("seed", 0)),
                parse_env_kwargs(opts.get("env_kwargs")))[1].close()
    distributed.launch(nproc, _worker, {**opts, "nproc": nproc}, agent, quiet, json_out)


def _worker(opts: dict[str, Any], agent: dict[str, Any], quiet: bool, json_out: bool) -> None:
    """One ``--nproc`` worker process: the same ``run_train``, inside the process group."""
    run_train(opts, agent, quiet=quiet, json_out=json_out)


def check_state_algo(state: Any, algo: str, where: Path) -> None:
    """PavlovError unless a deep agent's checkpoint ``state`` was written by ``algo`` (tabular
    checkpoints are arrays, checked when their policy is rebuilt)."""
    saved = state.get("algo") if isinstance(state, dict) else None
    if isinstance(saved, str) and saved != algo:
        raise PavlovError(f"{where} is a {algo} run but its checkpoint holds a {saved!r} state")


def _eval_checkpoint(path: Path, spec: Any, which: str) -> Any:
    """The state ``pavlov eval --checkpoint`` asks for: ``latest`` or a deep run's ``best``."""
    check_choice("checkpoint", which, ("latest", "best"))
    if which == "latest":
        return load_run_checkpoint(path)
    from pavlov.run.checkpoint import load_checkpoint

    best = path / "checkpoints" / BEST
    if spec.kind != "deep" or not best.is_file():
        raise PavlovError(f"{path} has no best checkpoint (deep agents trained with "
                          "--evaluate-every keep one)")
    return load_checkpoint(best)


def run_eval(run_path: Path, opts: dict[str, Any], json_out: bool) -> None:
    from pavlov.envs.factory import make_env
    from pavlov.run.console import emit_json

    path, config = open_run_dir(run_path)
    if config.get("command") == "train agent":  # a language model that plays text games
        from pavlov.commands.agent import run_agent_eval

        run_agent_eval(path, config, opts, json_out)
        return
    unknown = set(opts) - {"episodes", "seed", "gif", "checkpoint"}
    if unknown:
        raise ConfigError(f"unknown eval option(s) {', '.join(sorted(unknown))}")
    if "algo" not in config or "env" not in config:
        what = f"a `pavlov {config['command']}` run" if "command" in config else "not a train run"
        raise PavlovError(f"{path} is {what}: `pavlov eval` reads runs of `pavlov train` "
                          "(for language models: `pavlov generate --model RUN`)")
    episodes = _positive("episodes", opts.get("episodes", 1000))
    spec = get_algo(config["algo"])
    cfg = build_config(spec.config_cls, config["agent"], where="agent")
    state = _eval_checkpoint(path, spec, str(opts.get("checkpoint") or "latest"))
    check_state_algo(state, spec.name, path)
    env = make_env(config["env"], config.get("env_kwargs") or {})
    policy = (spec.mod.load_policy if spec.kind == "deep" else spec.policy)(state, cfg, env)
    s = evaluate_summary(env, policy, episodes, int(opts.get("seed", 0)))
    env.close()
    if opts.get("gif"):
        from pavlov.run.record import record_gif

        s["gif"] = str(
            record_gif(
                config["env"],
                config.get("env_kwargs") or {},
                policy,
                Path(opts["gif"]),
                seed=int(opts.get("seed", 0)),
            )
        )
    s.update(run=str(path), algo=config["algo"], env=config["env"])
    print_eval(f"{config['algo']} on {config['env']} ({path})", s)
    if json_out:
        emit_json(s)
