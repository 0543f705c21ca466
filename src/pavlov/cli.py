"""The ``pavlov`` command.

Every command has ``--help``, takes flags or ``--config FILE.yaml``, and with ``--json`` prints
one machine-readable JSON object as its last line. Bad input prints one line and exits 2
(``--debug`` anywhere on the line shows the traceback instead).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pavlov.errors import PavlovError
from pavlov.run.console import emit_json  # noqa: F401  the --json contract, re-exported

try:  # the click that typer runs on: its own copy since typer 0.2x, else the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors
from pavlov.run.interrupt import Interrupted

app = typer.Typer(
    name="pavlov",
    help="Reinforcement learning from the textbook MDP to RL for language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file with any of these options.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]
EnvKwargsOpt = Annotated[
    str | None,
    typer.Option(
        "--env-kwargs", help='JSON object passed to gymnasium.make, e.g. \'{"map_name": "8x8"}\'.'
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default 0).")]


def _options(config: Path | None, **given: Any) -> dict[str, Any]:
    """Merge ``--config`` with the flags the user gave (flags left at None do not override).

    For commands that create a run (they take ``name`` and ``runs_dir``) the run name and the
    runs directory are checked here, before any model, data or env is loaded."""
    from pavlov.config import load_yaml
    from pavlov.run.rundir import check_run_name

    merged = load_yaml(config) if config is not None else {}
    merged.update({k: v for k, v in given.items() if v is not None})
    if "name" in given and merged.get("name") is not None:
        check_run_name(merged["name"])
    if "runs_dir" in given and not merged.get("resume"):
        _check_runs_dir(Path(str(merged.get("runs_dir") or "runs")))
    return merged


def _check_runs_dir(path: Path) -> None:
    """PavlovError unless ``path`` can hold new runs: it (or its nearest existing parent, when it
    does not exist yet) is a writable directory."""
    existing = path.expanduser()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PavlovError(f"--runs-dir {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PavlovError(f"--runs-dir {path}: {existing} is not writable")


@app.command()
def envs(
    all_: Annotated[
        bool, typer.Option("--all", help="List every registered Gymnasium id.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """List the environments pavlov knows, with their spaces and whether they are tabular."""
    from pavlov.commands.envs import run_envs

    run_envs(all_, json_)


@app.command()
def solve(
    env: Annotated[
        str, typer.Argument(help="Gymnasium id, e.g. FrozenLake-v1 or pavlov/Grid2x3-v0.")
    ],
    method: Annotated[
        str | None,
        typer.Option(help="auto | value-iteration | policy-iteration | finite-horizon."),
    ] = None,
    gamma: Annotated[float | None, typer.Option(help="Discount in [0, 1] (default 1).")] = None,
    horizon: Annotated[
        int | None, typer.Option(help="Steps for finite-horizon DP (default: the env's limit).")
    ] = None,
    episodes: Annotated[
        int | None, typer.Option(help="Episodes to evaluate the plan on (default 1000).")
    ] = None,
    seed: SeedOpt = None,
    env_kwargs: EnvKwargsOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Plan the optimal policy of a known MDP (dynamic programming) and evaluate it."""
    from pavlov.commands.solve import run_solve

    opts = _options(
        config,
        env=env,
        method=method,
        gamma=gamma,
        horizon=horizon,
        episodes=episodes,
        seed=seed,
        env_kwargs=env_kwargs,
    )
    run_solve(opts, json_)


@app.command()
def train(
    algo: Annotated[
        str | None,
        typer.Argument(
            help="q-learning, sarsa, expected-sarsa, model-based, linear-q, "
            "dqn, reinforce, a2c, ppo, apg (omit with --resume); agent: a language model "
            "learns pavlov/TextGame-v0 (warm start + GRPO)."
        ),
    ] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Gymnasium id.")] = None,
    episodes: Annotated[int | None, typer.Option(help="Training episodes (tabular).")] = None,
    total_steps: Annotated[
        int | None, typer.Option(help="Training env steps (deep agents).")
    ] = None,
    gamma: Annotated[float | None, typer.Option(help="Discount in [0, 1].")] = None,
    alpha: Annotated[float | None, typer.Option(help="Step size in (0, 1].")] = None,
    exploration: Annotated[
        str | None, typer.Option(help="epsilon-greedy | glie | softmax | greedy | random.")
    ] = None,
    seed: SeedOpt = None,
    override: Annotated[
        list[str] | None,
        typer.Option("--set", "-o", help="Any config field: -o epsilon_decay=linear (repeatable)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default algo-env-time).")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Where runs go (default runs/).")] = None,
    eval_episodes: Annotated[
        int | None, typer.Option(help="Greedy evaluation episodes at the end (default 1000).")
    ] = None,
    evaluate_every: Annotated[
        int | None, typer.Option(help="Deep agents: env steps between evaluations (0: none).")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Env steps (deep agents) or episodes (tabular) between "
                                 "checkpoints (0: final only).")
    ] = None,
    keep_checkpoints: Annotated[
        int | None, typer.Option(help="Newest step checkpoints kept on disk (default 2).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue runs/NAME from its latest checkpoint, bit "
                                  "for bit (after a kill, too).")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Deep agents: cpu | cuda | cuda:N | auto (networks and updates; "
                     "envs stay on the CPU). Default cpu."),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(help="PPO: data-parallel worker processes on this machine (DD-PPO; "
                     "torchrun for several machines)."),
    ] = None,
    env_kwargs: EnvKwargsOpt = None,
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Train an agent; writes runs/NAME with config, metrics, TensorBoard, plots, checkpoints."""
    from pavlov.commands.train import run_train
    from pavlov.config import parse_overrides, section

    opts = _options(
        config,
        algo=algo,
        env=env,
        seed=seed,
        name=name,
        runs_dir=runs_dir,
        eval_episodes=eval_episodes,
        env_kwargs=env_kwargs,
        evaluate_every=evaluate_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        resume=resume,
        nproc=nproc,
    )
    agent = section(opts.pop("agent", None), "agent")
    agent.update(
        {
            k: v
            for k, v in dict(
                episodes=episodes,
                total_steps=total_steps,
                gamma=gamma,
                alpha=alpha,
                exploration=exploration,
                device=device,
            ).items()
            if v is not None
        }
    )
    agent.update(parse_overrides(override))
    run_train(opts, agent, quiet=quiet, json_out=json_)


@app.command(name="eval")
def eval_(
    run: Annotated[
        Path,
        typer.Argument(help="A run directory (runs/q-learning-...), or a text-game env id "
                       "(pavlov/TextGame-v0) to evaluate its baselines on held-out games."),
    ],
    episodes: Annotated[
        int | None, typer.Option(help="Episodes (default 1000; text games: games, 100).")
    ] = None,
    seed: SeedOpt = None,
    gif: Annotated[
        Path | None, typer.Option(help="Also record one episode (rgb_array) to this GIF.")
    ] = None,
    agents: Annotated[
        str | None,
        typer.Option(help="Text games and `train agent` runs: comma-separated baselines "
                     "(random,tabular,optimal)."),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="Deep agents: `latest` (default) or `best`, the state of the run's "
                     "best evaluation during training (`--evaluate-every`)."),
    ] = None,
    env_kwargs: EnvKwargsOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Evaluate a trained run's greedy policy (mean return with a 95% interval, success rate),
    or a text game's baselines on held-out games (success rate, moves, score; 95% intervals)."""
    from pavlov.commands.text import is_text_game, run_text_eval
    from pavlov.commands.train import run_eval
    from pavlov.envs.factory import parse_env_kwargs

    if is_text_game(str(run)):
        opts = _options(config, episodes=episodes, seed=seed, agents=agents,
                        env_kwargs=parse_env_kwargs(env_kwargs))  # fmt: skip
        run_text_eval(str(run), opts, json_)
        return
    opts = _options(config, episodes=episodes, seed=seed, gif=gif, agents=agents,
                    checkpoint=checkpoint)  # fmt: skip
    run_eval(run, opts, json_)


@app.command()
def play(
    env: Annotated[str, typer.Argument(help="An env id: pavlov/TextGame-v0, FrozenLake-v1, ...")],
    seed: Annotated[int | None, typer.Option(help="Seed (text games: the game).")] = None,
    env_kwargs: EnvKwargsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Play an environment in the terminal: type commands in a text game, action numbers in a
    discrete env; 'quit' ends."""
    from pavlov.commands.text import run_play
    from pavlov.envs.factory import parse_env_kwargs

    summary = run_play(env, parse_env_kwargs(env_kwargs), seed)
    if json_:
        emit_json(summary)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories to overlay.")],
    metric: Annotated[str | None, typer.Option(help="Metric name in metrics.jsonl.")] = None,
    window: Annotated[int | None, typer.Option(help="Rolling-mean window (default 100).")] = None,
    out: Annotated[Path | None, typer.Option(help="PNG path (default plot.png).")] = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Overlay learning curves (rolling mean) of several runs into one PNG."""
    from pavlov.commands.plot import run_plot

    opts = _options(config, metric=metric, window=window, out=out)
    run_plot(runs, opts, json_)


@app.command()
def tour(
    out: Annotated[Path, typer.Option(help="Where the tour's runs and plots go.")] = Path(
        "runs/tour"
    ),
    json_: JsonOpt = False,
) -> None:
    """The tabular tour: plan and learn on the 2x3 grid, BattleMDP and FrozenLake."""
    from pavlov.tour import run_tour

    run_tour(out, json_)


# ---------------------------------------------------------------------------------------------
# Language models: sft, reward-model, dpo, generate (thin wrappers over pavlov.commands.llm)

ModelOpt = Annotated[
    str | None,
    typer.Option(help="Model directory, .gguf file or run dir (default: embedded SmolLM2)."),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        help="Training data .jsonl/.csv/.parquet (default: Rotten Tomatoes, train split)."
    ),
]
EvalDataOpt = Annotated[
    Path | None,
    typer.Option(help="Held-out data file (default: Rotten Tomatoes test split, built-in data)."),
]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-o", help="Any trainer field: -o learning_rate=1e-4 (repeatable)."),
]
LoraOpt = Annotated[
    bool | None, typer.Option("--lora/--no-lora", help="Train LoRA adapters only (default off).")
]
MaxStepsOpt = Annotated[
    int | None, typer.Option(help="Optimizer steps (default: one epoch of the data).")
]
NameOpt = Annotated[str | None, typer.Option(help="Run name (default command-model-time).")]
RunsDirOpt = Annotated[Path | None, typer.Option(help="Where runs go (default runs/).")]
ResumeOpt = Annotated[
    Path | None, typer.Option(help="Continue runs/NAME from its latest checkpoint.")
]
ChatOpt = Annotated[
    bool | None,
    typer.Option("--chat-template/--no-chat-template", help="Render prompts as chat turns."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
DeviceOpt = Annotated[
    str | None,
    typer.Option(help="auto (a CUDA GPU, else MPS, else the CPU; the default) | cpu | cuda | "
                 "cuda:N | mps. precision auto is bf16 on GPUs that have it."),
]
NprocOpt = Annotated[
    int | None,
    typer.Option(help="Data-parallel worker processes on this machine (gloo; torchrun for "
                 "several machines). Default 1."),
]


def _llm_train(command: str, config, opts: dict[str, Any], flags: dict[str, Any], override,
               quiet: bool, json_: bool) -> None:  # fmt: skip
    from pavlov.commands.llm import run_llm_train

    run_llm_train(command, _options(config, **opts), flags, override, quiet=quiet, json_out=json_)


@app.command()
def sft(
    model: ModelOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    max_steps: MaxStepsOpt = None,
    lora: LoraOpt = None,
    seed: SeedOpt = None,
    override: OverrideOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    resume: ResumeOpt = None,
    chat_template: ChatOpt = None,
    nproc: NprocOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Supervised fine-tuning of a causal LM on prompt -> completion data (loss on completions)."""
    opts = dict(model=model, data=data, eval_data=eval_data, name=name, runs_dir=runs_dir,
                resume=resume, chat_template=chat_template, nproc=nproc)  # fmt: skip
    flags = dict(max_steps=max_steps, lora=lora, seed=seed, device=device)
    _llm_train("sft", config, opts, flags, override, quiet, json_)


@app.command(name="reward-model")
def reward_model(
    model: ModelOpt = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="causal (head on an LM) or encoder (default model: embedded MiniLM)."),
    ] = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    max_steps: MaxStepsOpt = None,
    lora: LoraOpt = None,
    seed: SeedOpt = None,
    override: OverrideOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    resume: ResumeOpt = None,
    chat_template: ChatOpt = None,
    nproc: NprocOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Train a scalar reward model on preference pairs (-o mode=pointwise: labelled texts)."""
    opts = dict(model=model, backbone=backbone, data=data, eval_data=eval_data, name=name,
                runs_dir=runs_dir, resume=resume, chat_template=chat_template,
                nproc=nproc)  # fmt: skip
    flags = dict(max_steps=max_steps, lora=lora, seed=seed, device=device)
    _llm_train("reward-model", config, opts, flags, override, quiet, json_)


@app.command()
def dpo(
    model: ModelOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    max_steps: MaxStepsOpt = None,
    lora: LoraOpt = None,
    seed: SeedOpt = None,
    override: OverrideOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    resume: ResumeOpt = None,
    chat_template: ChatOpt = None,
    nproc: NprocOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Direct Preference Optimization (also IPO, hinge: -o loss_type=ipo) on preference pairs."""
    opts = dict(model=model, data=data, eval_data=eval_data, name=name, runs_dir=runs_dir,
                resume=resume, chat_template=chat_template, nproc=nproc)  # fmt: skip
    flags = dict(max_steps=max_steps, lora=lora, seed=seed, device=device)
    _llm_train("dpo", config, opts, flags, override, quiet, json_)


@app.command()
def generate(
    model: ModelOpt = None,
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt (repeatable).")] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="File of prompts (.jsonl/.csv/.parquet, field 'prompt').")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per completion (64).")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 is greedy (default 1).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k filter (0: off).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus filter in (0, 1] (1: off).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts per batch (8).")] = None,
    chat_template: ChatOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Sample completions from a model or a trained run (KV-cache rollout engine)."""
    from pavlov.commands.llm import run_generate

    opts = _options(config, model=model, prompt=prompt, prompts=prompts,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, batch_size=batch_size, chat_template=chat_template,
                    seed=seed, device=device)  # fmt: skip
    run_generate(opts, json_)


@app.command()
def rlhf(
    algo: Annotated[
        str | None,
        typer.Option(help="Step 3: rloo (default) | ppo | grpo (against the reward model) | dpo."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Half the step-3 steps (a smoke run); the rest as the demo."),
    ] = False,
    override: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-o",
            help="A case-study field (-o rl_steps=20) or a step's trainer field "
            "(-o sft.warmup_steps=0, -o rm.weight_decay=0.01, -o rl.beta=0.1); repeatable.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default rlhf-ALGO-time).")] = None,
    runs_dir: RunsDirOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue runs/NAME (killed or stopped) from its last checkpoint."),
    ] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The positive-movie-review case study: SFT -> reward model -> PPO, evaluated on held-out
    movies by the reward model and a held-out judge (VADER); what `make demo` runs."""
    from pavlov.commands.rlhf import run_rlhf

    opts = _options(config, algo=algo, name=name, runs_dir=runs_dir, resume=resume)
    if device is not None:  # a case-study field: the flag is -o device=...
        override = [*(override or []), f"device={device}"]
    run_rlhf(opts, override, quick=quick, quiet=quiet, json_out=json_)


@app.command()
def rl(
    algo: Annotated[
        str | None, typer.Option(help="ppo (critic + GAE, default) | grpo | rloo | reinforce.")
    ] = None,
    model: ModelOpt = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompts .jsonl/.csv/.parquet (default: Rotten Tomatoes movies)."),
    ] = None,
    reward: Annotated[
        list[str] | None,
        typer.Option(help="vader | a reward-model run/dir, optionally SPEC=WEIGHT (repeatable)."),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Batches to run (100).")] = None,
    beta: Annotated[float | None, typer.Option(help="KL coefficient to the reference.")] = None,
    lora: LoraOpt = None,
    seed: SeedOpt = None,
    override: OverrideOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    resume: ResumeOpt = None,
    chat_template: ChatOpt = None,
    nproc: NprocOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Online RL of a causal LM against reward functions: PPO-RLHF, GRPO, RLOO, REINFORCE."""
    from pavlov.commands.rl import run_rl

    opts = _options(config, model=model, prompts=prompts, reward=reward, name=name,
                    runs_dir=runs_dir, resume=resume, chat_template=chat_template,
                    nproc=nproc)  # fmt: skip
    flags = dict(algo=algo, max_steps=max_steps, beta=beta, lora=lora, seed=seed, device=device)
    run_rl(opts, flags, override, quiet=quiet, json_out=json_)


def _error(message: str, code: int = 2) -> None:
    """``pavlov: error: MESSAGE`` as one line on stderr, then exit with ``code``."""
    print(f"pavlov: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors (bad options too) become one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        # not standalone: click's usage errors come here instead of a multi-line usage box
        code = app(args=argv, prog_name="pavlov", standalone_mode=False)
    except PavlovError as e:
        if debug:
            raise
        _error(str(e))
    except click_errors.NoArgsIsHelpError as e:  # bare `pavlov`: the help is printed
        sys.exit(e.exit_code)
    except click_errors.UsageError as e:  # unknown option, bad value type, missing argument
        if debug:
            raise
        where = e.ctx.command_path if e.ctx is not None else "pavlov"
        _error(f"{e.format_message()} (see `{where} --help`)", e.exit_code)
    except click_errors.ClickException as e:
        if debug:
            raise
        _error(e.format_message(), e.exit_code)
    except typer.Abort:  # end of input at a prompt
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:  # SIGINT/SIGTERM: the run saved a checkpoint and stopped
        print(f"pavlov: stopped by {e}; saved. Continue with: {e.resume}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
