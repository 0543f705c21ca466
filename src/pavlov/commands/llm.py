"""``pavlov sft``, ``pavlov reward-model``, ``pavlov dpo`` and ``pavlov generate``.

Training commands resolve options in this order (later wins): the trainer's defaults,
``--config FILE.yaml`` (top-level ``model``, ``data``, ``eval_data``, ``chat_template``,
``backbone`` and a ``trainer:`` section of config fields), flags, ``-o key=value``. Everything
that can be checked (config ranges, the model, the data files, prompt lengths) is checked before
the run directory exists; a run that fails before its first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pavlov.config import build_config, config_dict, parse_overrides, section
from pavlov.devices import resolve_device
from pavlov.errors import ConfigError, PavlovError
from pavlov.run import interrupt

TOP_KEYS = {"model", "data", "eval_data", "chat_template", "backbone", "name", "runs_dir", "resume",
            "nproc"}
SAVED_KEYS = ("model", "data", "eval_data", "chat_template", "backbone", "nproc")
BACKBONES = ("causal", "encoder")
GENERATE_KEYS = {"model", "prompt", "prompts", "max_new_tokens", "temperature", "top_k", "top_p",
                 "batch_size", "chat_template", "seed", "device"}


@dataclass(frozen=True)
class Command:
    name: str
    config: str  # "module:Class"
    train: str  # "module:function"

    def load(self, attr: str):
        import importlib

        module, name = getattr(self, attr).split(":")
        return getattr(importlib.import_module(module), name)


COMMANDS = {
    "sft": Command("sft", "pavlov.llm.trainers.sft:SFTConfig", "pavlov.llm.trainers.sft:train_sft"),
    "reward-model": Command(
        "reward-model",
        "pavlov.llm.trainers.reward:RewardConfig",
        "pavlov.llm.trainers.reward:train_reward_model",
    ),
    "dpo": Command("dpo", "pavlov.llm.trainers.dpo:DPOConfig", "pavlov.llm.trainers.dpo:train_dpo"),
}


# ---------------------------------------------------------------------------------------------
# Options


def resolve_options(
    command: str,
    opts: dict[str, Any],
    flags: dict[str, Any],
    overrides: list[str] | None,
    top_keys: set[str] = TOP_KEYS,
    saved_keys: tuple[str, ...] = SAVED_KEYS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(top-level options, trainer fields)`` from config file + flags + overrides (+ the saved
    config of a ``--resume`` run, which the others extend). ``top_keys``: the options a config
    file may set besides ``trainer:``; ``saved_keys``: those a resumed run takes from its own."""
    opts = dict(opts)
    trainer = section(opts.pop("trainer", None), "trainer")
    unknown = set(opts) - top_keys
    if unknown:
        raise ConfigError(
            f"unknown {command} option(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(sorted(top_keys | {'trainer'}))}"
        )
    trainer.update({k: v for k, v in flags.items() if v is not None})
    trainer.update(parse_overrides(overrides))
    if opts.get("resume"):
        from pavlov.run import open_run_dir

        path, saved = open_run_dir(opts["resume"])
        if not isinstance(saved, dict) or saved.get("command") != command:
            kind = (saved.get("command") or saved.get("algo")) if isinstance(saved, dict) else None
            raise ConfigError(f"--resume {path} is not a {command} run"
                              + (f" (it is a {kind!r} run)" if kind else ""))
        opts = {**{k: saved.get(k) for k in saved_keys}, **opts, "resume": path}
        trainer = {**saved.get("trainer", {}), **trainer}
    return opts, trainer


def _path(value: Any, what: str) -> str | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise PavlovError(f"{what} {path} does not exist")
    return str(path.resolve())


def _model_ref(value: Any) -> str | None:
    """A local model path made absolute (runs stay valid from any directory); names kept."""
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return str(path.resolve()) if path.exists() else str(value)


# ---------------------------------------------------------------------------------------------
# Models and data


def load_backbone(command: str, opts: dict[str, Any]):
    """``(model, tokenizer, kind)``; the tokenizer must have a pad (or eos) token."""
    from pavlov.llm.models.loading import ensure_pad_token, load_causal_lm, load_encoder

    kind = opts.get("backbone") or ("encoder" if opts.get("model") == "minilm" else "causal")
    if kind not in BACKBONES or (kind == "encoder" and command != "reward-model"):
        raise ConfigError(
            f"backbone must be 'causal' (or 'encoder' for reward-model), got {kind!r}"
        )
    if kind == "encoder":
        model, tokenizer = load_encoder(opts.get("model"))
    else:
        model, tokenizer = load_causal_lm(opts.get("model"))
    ensure_pad_token(tokenizer)
    return model, tokenizer, kind


def load_data(command: str, opts: dict[str, Any], mode: str, tokenizer) -> tuple[list, list]:
    """Training and held-out examples: the user's files, or Rotten Tomatoes (split by movie)."""
    from pavlov.llm.data import datasets as data
    from pavlov.llm.data import rt
    from pavlov.llm.trainers.reward import load_labeled

    chat = bool(opts.get("chat_template"))
    if command == "sft":
        builtin, load = (
            rt.rt_sft,
            lambda f: data.load_sft(f, tokenizer=tokenizer, chat_template=chat),
        )
    elif command == "reward-model" and mode == "pointwise":
        builtin, load = rt.rt_sentiment, load_labeled
    else:
        builtin = rt.rt_preferences
        load = lambda f: data.load_preferences(f, tokenizer=tokenizer, chat_template=chat)
    if opts.get("data") is None:
        if opts.get("eval_data") is not None:
            return builtin("train"), load(opts["eval_data"])
        return builtin("train"), builtin("test")
    train = load(opts["data"])
    return train, load(opts["eval_data"]) if opts.get("eval_data") else []


# ---------------------------------------------------------------------------------------------
# Training commands


def run_llm_train(
    command: str,
    opts: dict[str, Any],
    flags: dict[str, Any],
    overrides: list[str] | None,
    *,
    quiet: bool,
    json_out: bool,
) -> dict[str, Any] | None:
    """Validate, load, train, save and summarise one ``sft`` / ``reward-model`` / ``dpo`` run.

    With ``nproc`` > 1 (``--nproc``) the run is data-parallel: N worker processes on this
    machine (torch's elastic launcher, gloo), each taking its share of every batch; inside
    torchrun / ``accelerate launch`` the processes join the group they are given. Rank 0 writes
    the run and prints; the others return None."""
    from pavlov.run.console import emit_json

    spec, given = COMMANDS[command], opts
    opts, trainer = resolve_options(command, opts, flags, overrides)
    cfg = build_config(spec.load("config"), trainer, where="trainer")
    device = resolve_device(cfg.device)  # a GPU that is not there: one line, no run directory
    from pavlov.llm.trainers.sharding import DeepSpeedPlan, plan_from_env

    plan = plan_from_env() if cfg.sharding == "auto" else None
    if isinstance(plan, DeepSpeedPlan):  # the accelerate config's choice, saved: --resume too
        cfg.sharding, cfg.zero_stage = "deepspeed", plan.stage
    elif plan is not None:
        cfg.sharding = "fsdp"
    for key in ("data", "eval_data"):
        opts[key] = _path(opts.get(key), f"--{key.replace('_', '-')}")
    opts["model"] = _model_ref(opts.get("model"))
    launched, dp = join_or_launch(opts, _worker, command, given, flags, overrides, quiet,
                                  json_out, device=device)  # fmt: skip
    if launched:
        return None
    main = dp is None or dp.is_main
    model, tokenizer, kind = load_backbone(command, opts)
    train, held_out = load_data(command, opts, getattr(cfg, "mode", ""), tokenizer)
    config = {"command": command, **{k: opts.get(k) for k in SAVED_KEYS}}
    if dp is not None and config["nproc"] is None and _one_node():
        config["nproc"] = dp.world_size  # launched by accelerate / torchrun: --resume alike
    config.update(backbone=kind, trainer=config_dict(cfg))
    kwargs = _trainer_kwargs(command, opts, kind)
    t0 = time.perf_counter()
    run, resume = open_llm_run(command, opts, config, main)
    with (run or contextlib.nullcontext(),
          interrupt.resumable(run and run.dir, command, enabled=dp is None)):
        result = spec.load("train")(
            cfg, model, tokenizer, train, held_out, run=run, resume=resume,
            quiet=quiet or json_out or not main, **kwargs,
        )  # fmt: skip
        if run is None:
            return None
        summary = _summary(command, run, result.fit, time.perf_counter() - t0)
        run.write_summary(summary)
    _plots(run.dir, command)
    _print_summary(summary)
    if json_out:
        emit_json(summary)
    return summary


def _one_node() -> bool:
    """All ranks on this machine (torchrun's ``LOCAL_WORLD_SIZE`` equals ``WORLD_SIZE``)."""
    import os

    return os.environ.get("LOCAL_WORLD_SIZE") == os.environ.get("WORLD_SIZE")


def _worker(command: str, opts: dict[str, Any], flags: dict[str, Any],
            overrides: list[str] | None, quiet: bool, json_out: bool) -> None:
    """One ``--nproc`` worker process: the same :func:`run_llm_train`, inside the group."""
    run_llm_train(command, opts, flags, overrides, quiet=quiet, json_out=json_out)


def join_or_launch(opts: dict[str, Any], worker, *args: Any, device: Any = "cpu"):
    """``--nproc N`` (``opts["nproc"]``): start N workers running ``worker(*args)`` on this
    machine and return ``(True, None)`` when they are done; inside a worker (or torchrun's, or
    alone) join the process group there is: ``(False, DataParallel or None)``, over nccl when
    ``device`` is a CUDA device, else gloo."""
    from pavlov.run import distributed

    nproc = 1 if opts.get("nproc") is None else opts["nproc"]
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ConfigError(f"nproc must be a positive integer, got {nproc!r}")
    if nproc > 1 and not distributed.launched():
        distributed.launch(nproc, worker, *args)
        return True, None
    return False, distributed.init(str(device))


def open_llm_run(prefix: str, opts: dict[str, Any], config: dict[str, Any], main: bool = True):
    """``(run, resume)``: ``--resume``'s run reopened with its latest checkpoint's state, or a
    new run ``runs_dir/name`` (default ``<prefix>-<model>-<time>``) and None. A data-parallel
    rank other than 0 (``main`` false) writes nothing: ``(None, the checkpoint's state)``."""
    from pavlov.llm.trainers.loop import load_resume
    from pavlov.run import Run, default_run_name
    from pavlov.run.checkpoint import read_latest
    from pavlov.run.console import notice

    def resume_point():  # None: the run died before its first checkpoint, start from scratch
        if read_latest(Path(opts["resume"]) / "checkpoints") is None:
            if main:
                notice(f"{opts['resume']} has no checkpoint yet (stopped before its first "
                       "one): starting it from scratch")
            return None
        return load_resume(opts["resume"])

    if not main:
        return None, resume_point() if opts.get("resume") else None
    if opts.get("resume"):
        resume = resume_point()  # before reopening: a run with a bad checkpoint stays as is
        return Run.reopen(opts["resume"], config), resume
    name = opts.get("name") or default_run_name(prefix, Path(opts["model"] or "smollm2").name)
    return Run.create(opts.get("runs_dir") or "runs", name, config), None


def _trainer_kwargs(command: str, opts: dict[str, Any], kind: str) -> dict[str, Any]:
    if command == "reward-model":
        default = "minilm" if kind == "encoder" else "smollm2"
        return {"kind": kind, "base_model": opts.get("model") or default}
    if command == "dpo":
        from pavlov.llm.models.loading import load_causal_lm

        return {"load_reference": lambda: load_causal_lm(opts.get("model"))[0]}
    return {}


def _summary(command: str, run, fit, seconds: float) -> dict[str, Any]:
    return {
        "command": command,
        "run": str(run.dir),
        "model": str(run.dir / "model"),
        "steps": fit.steps,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(fit.seconds_per_step, 4),
        "metrics": {**fit.train, **fit.eval},
    }


def _plots(run_dir: Path, command: str) -> None:
    from pavlov.run.plots import plot_runs

    key = {"sft": "eval/loss", "reward-model": "eval/accuracy", "dpo": "eval/rewards/accuracies"}
    for metric in ("train/loss", key[command]):
        with contextlib.suppress(PavlovError):  # no held-out data: no eval curve
            plot_runs(
                [run_dir], metric, run_dir / "plots" / f"{metric.replace('/', '_')}.png",
                window=1 if metric.startswith("eval") else 10, title=f"{command}: {metric}",
            )  # fmt: skip


def _print_summary(summary: dict[str, Any]) -> None:
    from pavlov.run.console import stdout, table

    rows = [[k, v] for k, v in summary["metrics"].items() if not k.endswith("seconds_per_step")]
    rows += [["steps", summary["steps"]], ["seconds", summary["seconds"]]]
    stdout.print(table(f"{summary['command']} -> {summary['model']}", ["metric", "value"], rows))


# ---------------------------------------------------------------------------------------------
# Generation


def load_trained_lm(path: str | None):
    """``(model, tokenizer)`` from a model directory, a run directory (its ``model/``), a
    LoRA adapter directory (base from its ``adapter_config.json``) or a name (``None``: the
    embedded SmolLM2)."""
    from pavlov.llm.models.loading import load_causal_lm

    p = Path(path).expanduser() if path is not None else None
    if p is not None and (p / "config.yaml").is_file() and (p / "model").is_dir():
        p = p / "model"
    if p is not None and (p / "reward_config.json").is_file():
        raise PavlovError(f"{p} is a reward model, not a language model to generate with")
    if p is None or not (p / "adapter_config.json").is_file():
        return load_causal_lm(str(p) if p is not None else None)
    from transformers import AutoTokenizer

    from pavlov.llm.trainers.common import load_adapters

    base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
    model, _ = load_causal_lm(base or None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as err:
        raise PavlovError(f"cannot load the tokenizer of {p}: {err}") from err
    return load_adapters(model, p).eval(), tokenizer


def _prompts(opts: dict[str, Any], tokenizer) -> list:
    from pavlov.llm.data.datasets import PromptExample, load_prompts

    chat = bool(opts.get("chat_template"))
    given = [{"prompt": p} for p in opts.get("prompt") or []]
    out = []
    if given:
        for i, ex in enumerate(load_prompts(given, tokenizer=tokenizer, chat_template=chat), 1):
            out.append(PromptExample(ex.prompt, ex.chat, f"--prompt {i}"))
    if opts.get("prompts"):
        out += load_prompts(opts["prompts"], tokenizer=tokenizer, chat_template=chat)
    if not out:
        raise PavlovError("generate needs --prompt TEXT or --prompts FILE")
    return out


def _sampling(opts: dict[str, Any], tokenizer, pad_id: int):
    from pavlov.llm.generation.rollout import SamplingConfig

    eos = tokenizer.eos_token_id
    try:
        return SamplingConfig(
            max_new_tokens=int(opts.get("max_new_tokens", 64)),
            temperature=float(opts.get("temperature", 1.0)),
            top_k=int(opts.get("top_k") or 0),
            top_p=float(opts.get("top_p", 1.0)),
            eos_token_ids=() if eos is None else eos,
            pad_token_id=pad_id,
            seed=int(opts.get("seed") or 0),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _prompt_ids(examples, tokenizer, model, max_new_tokens: int) -> list[list[int]]:
    from pavlov.llm.trainers.common import context_length

    limit = context_length(model.get_base_model() if hasattr(model, "get_base_model") else model)
    rows = []
    for ex in examples:
        ids = list(tokenizer(ex.prompt, add_special_tokens=not ex.chat)["input_ids"])
        if not ids:
            raise PavlovError(f"{ex.source}: prompt has no tokens")
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise PavlovError(
                f"{ex.source}: prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} "
                f"exceeds the model's context of {limit} tokens"
            )
        rows.append(ids)
    return rows


def run_generate(opts: dict[str, Any], json_out: bool) -> dict[str, Any]:
    """Sample completions with the rollout engine (KV cache) and print or return them."""
    import dataclasses

    from pavlov.errors import check_count
    from pavlov.llm.generation.rollout import generate, left_pad
    from pavlov.llm.models.loading import ensure_pad_token
    from pavlov.run.console import emit_json

    unknown = set(opts) - GENERATE_KEYS
    if unknown:
        raise ConfigError(f"unknown generate option(s) {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join(sorted(GENERATE_KEYS))}")
    batch_size = 8 if opts.get("batch_size") is None else opts["batch_size"]
    check_count("batch_size", batch_size)
    device = resolve_device(opts.get("device") or "auto")
    model, tokenizer = load_trained_lm(_model_ref(opts.get("model")))
    model.to(device)
    pad_id = ensure_pad_token(tokenizer)
    examples = _prompts(opts, tokenizer)
    sampling = _sampling(opts, tokenizer, pad_id)
    rows = _prompt_ids(examples, tokenizer, model, sampling.max_new_tokens)
    t0, completions = time.perf_counter(), []
    for b, start in enumerate(range(0, len(rows), batch_size)):
        ids, mask = (t.to(device) for t in left_pad(rows[start : start + batch_size], pad_id))
        cfg = dataclasses.replace(sampling, seed=sampling.seed + b)
        out = generate(model, ids, mask, cfg)
        for r in range(ids.shape[0]):
            n = int(out.response_lengths[r])
            completions.append({
                "prompt": examples[start + r].prompt,
                "completion": tokenizer.decode(out.responses[r, :n], skip_special_tokens=True),
                "tokens": n,
                "eos": bool(out.eos_reached[r]),
            })  # fmt: skip
    seconds = time.perf_counter() - t0
    tokens = sum(c["tokens"] for c in completions)
    result = {
        "model": str(opts.get("model") or "smollm2"),
        "completions": completions,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
    }
    _print_completions(result)
    if json_out:
        emit_json(result)
    return result


def _print_completions(result: dict[str, Any]) -> None:
    from rich.markup import escape

    from pavlov.run.console import stdout

    for c in result["completions"]:
        stdout.print(f"[bold]{escape(c['prompt'])}[/bold]{escape(c['completion'])}")
    n, speed = len(result["completions"]), result["tokens_per_second"]
    stdout.print(f"[dim]{n} completions, {speed} tokens/s[/dim]")
