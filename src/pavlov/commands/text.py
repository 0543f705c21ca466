"""``pavlov play ENV`` (a person plays in the terminal) and ``pavlov eval`` of the text games'
baselines on held-out games."""

from __future__ import annotations

import sys
from typing import IO, Any

import gymnasium as gym

from pavlov.errors import ConfigError, PavlovError
from pavlov.run.console import emit_json, stdout, table

QUIT = {"quit", "exit", "q"}


def run_play(env_id: str, env_kwargs: dict[str, Any], seed: int | None,
             stream: IO[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Play ``env_id`` from ``stream`` (stdin): text commands for text games, an action number
    for discrete actions (the ansi rendering shows the state). ``quit`` or end of input stops."""
    from pavlov.envs.factory import make_env

    stream = stream or sys.stdin
    probe = make_env(env_id, env_kwargs)
    text = isinstance(probe.action_space, gym.spaces.Text)
    discrete = isinstance(probe.action_space, gym.spaces.Discrete)
    ansi = "ansi" in (probe.metadata.get("render_modes") or [])
    probe.close()
    if not (text or discrete):
        raise PavlovError(f"pavlov play needs text or discrete actions; {env_id} has "
                          f"{probe.action_space}")  # fmt: skip
    env = make_env(env_id, env_kwargs, **({"render_mode": "ansi"} if ansi and not text else {}))
    obs, info = env.reset(seed=seed)
    total, steps, done = 0.0, 0, False
    stdout.print(_shown(env, obs, text))
    if text:
        stdout.print("[dim](type commands; 'quit' ends)[/dim]")
    else:
        stdout.print(f"[dim](actions 0..{env.action_space.n - 1}; 'quit' ends)[/dim]")
    while not done:
        stdout.print("> ", end="")
        line = stream.readline()
        if not line or line.strip().lower() in QUIT:
            stdout.print()  # end the prompt's line
            break
        command: Any = line.strip()
        if not text:
            try:
                command = int(command)
                if not 0 <= command < env.action_space.n:
                    raise ValueError
            except ValueError:
                stdout.print(f"an action is a number in 0..{env.action_space.n - 1}")
                continue
        obs, reward, terminated, truncated, info = env.step(command)
        total, steps, done = total + float(reward), steps + 1, terminated or truncated
        stdout.print(_shown(env, obs, text))
        if reward:
            stdout.print(f"[green]+{reward:g}[/green]" + (
                f" (score {info['score']}/{info['max_score']})" if "score" in info else ""))
    if done:
        stdout.print("[bold]" + ("You won." if info.get("won") or terminated else "Time is up.")
                     + "[/bold]")  # fmt: skip
    env.close()
    return {"env": env_id, "return": total, "steps": steps, "done": done,
            "won": bool(info.get("won", False))}  # fmt: skip


def _shown(env, obs, text: bool) -> str:
    from rich.markup import escape

    if text:
        return escape(str(obs))
    frame = env.render()
    return escape(str(frame if frame is not None else obs))


def is_text_game(env_id: str) -> bool:
    """Whether ``env_id`` is a registered env with text actions (no run directory needed)."""
    import pavlov.envs  # noqa: F401  registers pavlov/* ids

    spec = gym.registry.get(env_id)  # the generated games (BattleText has no baselines here)
    return spec is not None and str(spec.entry_point).startswith("pavlov.envs.text.env:")


def run_text_eval(env_id: str, opts: dict[str, Any], json_out: bool) -> dict[str, Any]:
    """The baselines on ``episodes`` held-out games (seeds from ``HELD_OUT`` + ``seed``):
    success rate (Wilson 95%), moves and score (normal 95%)."""
    from pavlov.envs.text import GameConfig
    from pavlov.envs.text.baselines import BASELINES, HELD_OUT, evaluate

    unknown = set(opts) - {"episodes", "seed", "agents", "env_kwargs"}
    if unknown:
        raise ConfigError(f"unknown eval option(s) for a text game: {', '.join(sorted(unknown))}")
    episodes = opts.get("episodes") or 100
    if not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be a positive integer, got {episodes!r}")
    agents = [a.strip() for a in (opts.get("agents") or "random,tabular,optimal").split(",")]
    for name in agents:
        if name not in BASELINES:
            raise ConfigError(f"unknown agent {name!r}; choose from {', '.join(BASELINES)}")
    try:
        cfg = GameConfig(**(opts.get("env_kwargs") or {}))
    except TypeError as err:
        raise ConfigError(f"env kwargs: {err}") from None
    first = HELD_OUT + int(opts.get("seed") or 0)
    games = list(range(first, first + episodes))
    results = {name: evaluate(BASELINES[name], games, cfg) for name in agents}
    rows = [[name, f"{r['success']:.0%} [{r['success_low']:.0%}, {r['success_high']:.0%}]",
             f"{r['moves']:.1f} ± {r['moves_ci']:.1f}", f"{r['score']:.2f} ± {r['score_ci']:.2f}"
             f" / {r['max_score']:g}"] for name, r in results.items()]  # fmt: skip
    title = f"{env_id} {cfg}: {episodes} held-out games (seeds {first}..{games[-1]})"
    stdout.print(table(title, ["agent", "success (95%)", "moves", "score"], rows))
    summary = {"env": env_id, "games": games, "config": vars(cfg), "agents": results}
    if json_out:
        emit_json(summary)
    return summary
