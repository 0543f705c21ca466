"""``pavlov rl``: online RL (PPO-RLHF, GRPO, RLOO, REINFORCE) of a causal LM against rewards.

Options resolve as for the other LLM commands (trainer defaults < ``--config FILE.yaml`` <
flags < ``-o key=value``), and everything that can be checked (config, rewards, model, prompts
and their lengths) is checked before the run directory exists.

Rewards (``--reward``, repeatable; ``reward:`` in a config file, a list or a mapping to
weights): ``vader`` (the lexicon sentiment judge), a saved reward-model run or directory, each
optionally weighted as ``SPEC=WEIGHT``; several are summed.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from pavlov.config import build_config, config_dict
from pavlov.devices import resolve_device
from pavlov.errors import ConfigError, PavlovError
from pavlov.run import interrupt

RL_KEYS = {"model", "prompts", "reward", "chat_template", "name", "runs_dir", "resume", "nproc"}
SAVED_KEYS = ("model", "prompts", "reward", "chat_template", "nproc")


def parse_rewards(values: Any) -> Any:
    """``--reward`` values (``SPEC`` or ``SPEC=WEIGHT``) or a config's ``reward:`` entry -> what
    :func:`pavlov.llm.scoring.rewards.resolve_reward` takes."""
    if values is None or values == []:
        raise ConfigError("rl needs a reward: --reward vader, --reward RUN_DIR, or SPEC=WEIGHT")
    if isinstance(values, dict):
        return {str(k): float(v) for k, v in values.items()}
    if isinstance(values, str):
        values = [values]
    terms = []
    for value in values:
        if isinstance(value, list | tuple) and len(value) == 2:  # a saved run's [spec, weight]
            terms.append((str(value[0]), float(value[1])))
            continue
        spec, sep, weight = str(value).rpartition("=")
        if not sep:
            terms.append((str(value), 1.0))
            continue
        try:
            terms.append((spec, float(weight)))
        except ValueError:
            raise ConfigError(f"--reward {value!r}: weight {weight!r} is not a number") from None
    return terms


def _prompts(opts: dict[str, Any], tokenizer) -> list:
    from pavlov.llm.data.datasets import load_prompts
    from pavlov.llm.data.rt import rt_movies, rt_prompt

    if opts.get("prompts") is None:
        return [rt_prompt(m) for m in rt_movies("train")]
    return load_prompts(
        opts["prompts"], tokenizer=tokenizer, chat_template=bool(opts.get("chat_template"))
    )


def run_rl(
    opts: dict[str, Any],
    flags: dict[str, Any],
    overrides: list[str] | None,
    *,
    quiet: bool,
    json_out: bool,
) -> dict[str, Any] | None:
    """Validate, load, train with :func:`pavlov.llm.trainers.online.train_online`, summarise.
    With ``nproc`` > 1 (GRPO) the run is data-parallel; rank 0 writes and prints."""
    from pavlov.commands.llm import (
        _model_ref,
        _path,
        join_or_launch,
        load_trained_lm,
        open_llm_run,
        resolve_options,
    )
    from pavlov.llm.scoring.rewards import resolve_reward
    from pavlov.llm.trainers.online import OnlineConfig, train_online
    from pavlov.run.console import emit_json

    given = opts
    opts, trainer = resolve_options("rl", opts, flags, overrides, RL_KEYS, SAVED_KEYS)
    cfg = build_config(OnlineConfig, trainer, where="trainer")
    device = resolve_device(cfg.device)  # a GPU that is not there: one line, no run directory
    reward_spec = parse_rewards(opts.get("reward"))
    opts["prompts"] = _path(opts.get("prompts"), "--prompts")
    opts["model"] = _model_ref(opts.get("model"))
    nproc = opts.get("nproc")
    if isinstance(nproc, int) and not isinstance(nproc, bool) and nproc > 1:
        from pavlov.llm.trainers.online import check_data_parallel

        check_data_parallel(cfg, nproc)  # before any worker starts
    launched, dp = join_or_launch(opts, _worker, given, flags, overrides, quiet, json_out,
                                  device=device)  # fmt: skip
    if launched:
        return None
    main = dp is None or dp.is_main
    reward = resolve_reward(reward_spec)
    model, tokenizer = load_trained_lm(opts["model"])
    prompts = _prompts(opts, tokenizer)
    config = {"command": "rl", **{k: opts.get(k) for k in SAVED_KEYS}}
    saved_reward = [list(t) for t in reward_spec] if isinstance(reward_spec, list) else reward_spec
    config.update(reward=saved_reward, trainer=config_dict(cfg))
    t0 = time.perf_counter()
    run, resume = open_llm_run(f"rl-{cfg.algo}", opts, config, main)
    with (run or contextlib.nullcontext(),
          interrupt.resumable(run and run.dir, "rl", enabled=dp is None)):
        result = train_online(cfg, model, tokenizer, prompts, reward, run=run, resume=resume,
                              quiet=quiet or json_out or not main)  # fmt: skip
        if run is None:
            return None
        last = result.history[-1] if result.history else {}
        summary = {
            "command": "rl",
            "algo": cfg.algo,
            "run": str(run.dir),
            "model": str(run.dir / "model"),
            "steps": result.steps,
            "seconds": round(time.perf_counter() - t0, 3),
            "seconds_per_step": round(result.seconds_per_step, 4),
            "metrics": {k: v for k, v in last.items() if k != "step"},
        }
        run.write_summary(summary)
    _plots(run.dir, cfg.algo)
    _print(summary)
    if json_out:
        emit_json(summary)
    return summary


def _worker(opts: dict[str, Any], flags: dict[str, Any], overrides: list[str] | None,
            quiet: bool, json_out: bool) -> None:
    """One ``--nproc`` worker process: the same :func:`run_rl`, inside the process group."""
    run_rl(opts, flags, overrides, quiet=quiet, json_out=json_out)


def _plots(run_dir: Path, algo: str) -> None:
    from pavlov.run.plots import plot_runs

    for metric in ("reward/mean", "kl/ref"):
        with contextlib.suppress(PavlovError):  # beta 0: no KL curve
            plot_runs([run_dir], metric, run_dir / "plots" / f"{metric.replace('/', '_')}.png",
                      window=5, title=f"{algo}: {metric}")  # fmt: skip


def _print(summary: dict[str, Any]) -> None:
    from pavlov.run.console import stdout, table

    keep = ("reward/mean", "kl/ref", "policy/entropy", "response/length", "time/step")
    rows = [[k, round(v, 4)] for k, v in summary["metrics"].items() if k in keep]
    rows += [["steps", summary["steps"]], ["seconds", summary["seconds"]]]
    stdout.print(table(f"rl {summary['algo']} -> {summary['model']}", ["metric", "value"], rows))
