"""``pavlov train agent``: a language model learns to play text games.

The run has three stages:

1. behaviour cloning on the planner's play of the training games (SFT with LoRA, merged), the
   warm start;
2. GRPO / RLOO / REINFORCE on whole episodes (:func:`pavlov.llm.trainers.agent.train_agent`);
3. held-out games played before training, after the warm start and after RL, each reported as
   a success rate with its Wilson 95% interval, mean moves and score.

It writes ``runs/NAME`` with ``config.yaml``, the RL stage's ``metrics.jsonl`` / TensorBoard /
checkpoints, ``model/``, ``summary.json`` and ``transcripts.md`` (the first held-out games as
each stage played them).

Fields (``-o key=value`` or a ``--config`` YAML's ``agent:`` section):

* the games, :class:`~pavlov.llm.trainers.agent.AgentConfig`: ``rooms``, ``locks``,
  ``objects``, ``containers`` (also ``--env-kwargs``), ``train_games``, ``max_turns``, ``reward``;
* the RL stage, :class:`~pavlov.llm.trainers.online.OnlineConfig`: ``algo``, ``max_steps``,
  ``group_size``, ``learning_rate``, ``beta`` and the rest;
* this command's own: ``model``, ``warm_start_steps`` (0: no warm start), ``warm_start_lr``
  and ``eval_games``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from pavlov.config import build_config, config_dict
from pavlov.errors import ConfigError, PavlovError, check_count

ENV_ID = "pavlov/TextGame-v0"
GAME_DEFAULTS = {"rooms": 3, "locks": 1, "objects": 2, "containers": 0, "max_turns": 8,
                 "train_games": 200}
"""The games of ``benchmarks/agent_learning.py``: 3 rooms, a locked door, 2 distractors."""
RL_DEFAULTS = {"algo": "grpo", "max_steps": 10, "prompts_per_step": 2, "group_size": 4,
               "max_new_tokens": 8, "temperature": 0.7, "learning_rate": 2e-4, "beta": 0.02,
               "lora": True, "lora_r": 16, "checkpoint_every": 5}
OWN = {"model": None, "warm_start_steps": 40, "warm_start_lr": 5e-4, "eval_games": 20}


def split_fields(fields: dict[str, Any]) -> tuple[dict, dict, dict]:
    """``-o`` fields -> (games, RL trainer, this command's own); unknown keys: one line."""
    from pavlov.llm.trainers.agent import AgentConfig
    from pavlov.llm.trainers.online import OnlineConfig

    game_keys = {f.name for f in dataclasses.fields(AgentConfig)}
    rl_keys = {f.name for f in dataclasses.fields(OnlineConfig)}
    game, rl, own = dict(GAME_DEFAULTS), dict(RL_DEFAULTS), dict(OWN)
    for key, value in fields.items():
        root = key.split(".")[0]  # dotted keys reach a trainer's groups (cpu.enabled)
        target = (game if key in game_keys else rl if root in rl_keys
                  else own if key in OWN else None)
        if target is None:
            raise ConfigError(f"unknown agent field {key!r}: games take "
                              f"{', '.join(sorted(game_keys))}; the RL stage any trainer field "
                              f"(e.g. algo, max_steps, learning_rate); and {', '.join(OWN)}")
        target[key] = value
    return game, rl, own


def write_transcripts(path, played: dict[str, list], games: int = 2) -> None:
    """``transcripts.md``: the first held-out games as each stage played them."""
    from pavlov.llm.trainers.agent import transcript
    from pavlov.run.checkpoint import atomic_write_text

    parts = ["# Held-out games, before and after training", ""]
    for i in range(min(games, len(next(iter(played.values()))))):
        for stage, episodes in played.items():
            parts += [f"## {stage}", "", transcript(episodes[i]), ""]
    atomic_write_text(path, "\n".join(parts))


def run_train_agent(opts: dict[str, Any], fields: dict[str, Any], *, quiet: bool,
                    json_out: bool) -> dict[str, Any]:
    """Validate everything, then warm start, RL and the three evaluations in one run dir."""
    from pavlov.envs.text.baselines import HELD_OUT
    from pavlov.llm.generation.rollout import SamplingConfig
    from pavlov.llm.models.loading import ensure_pad_token
    from pavlov.llm.trainers import SFTConfig, train_sft
    from pavlov.llm.trainers.agent import (
        AgentConfig,
        planner_examples,
        play_games,
        summarize_episodes,
        train_agent,
    )
    from pavlov.llm.trainers.online import OnlineConfig
    from pavlov.run import Run, default_run_name
    from pavlov.run.console import emit_json, stdout, table

    env_id = opts.get("env") or ENV_ID
    if env_id != ENV_ID:
        raise PavlovError(f"train agent plays {ENV_ID} games, not {env_id!r}")
    if opts.get("resume") or int(opts.get("nproc") or 1) > 1:
        raise PavlovError("train agent runs in one process and does not --resume yet: rerun it")
    from pavlov.envs.factory import parse_env_kwargs

    seed = int(opts.get("seed") or 0)
    game, rl, own = split_fields({**(parse_env_kwargs(opts.get("env_kwargs")) or {}), **fields})
    agent = build_config(AgentConfig, game, where="agent")
    cfg = build_config(OnlineConfig, {**rl, "seed": seed}, where="agent")
    check_count("warm_start_steps", own["warm_start_steps"], minimum=0)
    check_count("eval_games", own["eval_games"])
    if not float(own["warm_start_lr"]) > 0:
        raise ConfigError(f"warm_start_lr must be > 0, got {own['warm_start_lr']}")
    from pavlov.commands.llm import _model_ref, load_trained_lm

    model, tok = load_trained_lm(_model_ref(own["model"]))
    ensure_pad_token(tok)
    config = {"command": "train agent", "env": env_id, "seed": seed, "agent": config_dict(agent),
              "trainer": config_dict(cfg), **{k: v for k, v in own.items()}}
    run = Run.create(opts.get("runs_dir") or "runs",
                     opts.get("name") or default_run_name("agent", env_id), config)
    held_out = list(range(HELD_OUT, HELD_OUT + int(own["eval_games"])))
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              eos_token_ids=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              seed=seed + 1000)  # fmt: skip
    t0, results, played = time.perf_counter(), {}, {}

    def evaluate(stage: str, policy) -> None:
        played[stage] = play_games(policy, tok, agent, held_out, sampling)
        results[stage] = summarize_episodes(played[stage])

    with run:
        evaluate("untrained", model)
        if own["warm_start_steps"]:
            examples = planner_examples(agent, tok, list(range(agent.train_games)))
            sft = SFTConfig(seed=seed, max_steps=int(own["warm_start_steps"]), batch_size=8,
                            learning_rate=float(own["warm_start_lr"]), warmup_steps=2, lora=True,
                            lora_r=16, max_length=768, precision=cfg.precision,
                            device=cfg.device, checkpoint_every=0, group_by_length=True)
            model = train_sft(sft, model, tok, examples).model.merge_and_unload().eval()
            evaluate("warm_start", model)
        trained = train_agent(cfg, agent, model, tok, run=run, quiet=quiet or json_out)
        evaluate("rl", trained.model)
        write_transcripts(run.dir / "transcripts.md", played)
        summary = {"command": "train agent", "run": str(run.dir), "model": str(run.dir / "model"),
                   "held_out_games": len(held_out), "results": results, "steps": trained.steps,
                   "seconds": round(time.perf_counter() - t0, 1)}
        run.write_summary(summary)
    rows = [[stage, f"{r['success']:.0%} [{r['success_low']:.0%}, {r['success_high']:.0%}]",
             f"{r['moves']:.1f}", f"{r['score']:.2f}"] for stage, r in results.items()]
    stdout.print(table(f"agent on {len(held_out)} held-out games -> {run.dir}",
                       ["stage", "success (95% CI)", "moves", "score"], rows))
    if json_out:
        emit_json(summary)
    return summary


def run_agent_eval(path, config: dict[str, Any], opts: dict[str, Any], json_out: bool
                   ) -> dict[str, Any]:
    """``pavlov eval RUN`` of a ``train agent`` run: its ``model/`` plays ``episodes`` held-out
    games (seeds from ``HELD_OUT + seed``), beside the baselines on the same games; success rate
    (Wilson 95%), moves and score. The agent has the run's ``max_turns`` commands a game, the
    baselines 50 moves."""
    from pavlov.envs.text.baselines import BASELINES, HELD_OUT, evaluate
    from pavlov.llm.generation.rollout import SamplingConfig
    from pavlov.llm.models.loading import ensure_pad_token
    from pavlov.llm.trainers.agent import AgentConfig, evaluate_agent
    from pavlov.run.console import emit_json, stdout, table

    unknown = set(opts) - {"episodes", "seed", "agents"}
    if unknown:
        raise ConfigError(f"unknown eval option(s) for an agent run: {', '.join(sorted(unknown))}")
    episodes = opts.get("episodes") or 20
    check_count("episodes", episodes)
    agents = [a.strip() for a in (opts.get("agents") or "random,tabular,optimal").split(",")]
    for name in agents:
        if name not in BASELINES:
            raise ConfigError(f"unknown agent {name!r}; choose from {', '.join(BASELINES)}")
    if not (path / "model").is_dir():
        raise PavlovError(f"{path} has no model/ (the run did not finish): nothing to evaluate")
    agent = build_config(AgentConfig, config["agent"], where="agent")
    trainer = config.get("trainer") or {}
    from pavlov.commands.llm import load_trained_lm

    model, tok = load_trained_lm(str(path / "model"))
    ensure_pad_token(tok)
    first = HELD_OUT + int(opts.get("seed") or 0)
    games = list(range(first, first + episodes))
    sampling = SamplingConfig(max_new_tokens=int(trainer.get("max_new_tokens", 8)),
                              temperature=float(trainer.get("temperature", 0.7)),
                              eos_token_ids=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              seed=int(config.get("seed", 0)) + 1000)  # fmt: skip
    results = {f"llm ({path.name})": evaluate_agent(model.eval(), tok, agent, games, sampling)}
    for name in agents:
        results[name] = evaluate(BASELINES[name], games, agent.game)
    rows = [[name, f"{r['success']:.0%} [{r['success_low']:.0%}, {r['success_high']:.0%}]",
             f"{r['moves']:.1f}", f"{r['score']:.2f}"] for name, r in results.items()]
    stdout.print(table(f"{agent.game}: {episodes} held-out games (seeds {first}..{games[-1]}); "
                       f"the agent has {agent.max_turns} commands, the baselines 50",
                       ["agent", "success (95%)", "moves", "score"], rows))
    summary = {"run": str(path), "games": games, "agents": results}
    if json_out:
        emit_json(summary)
    return summary
