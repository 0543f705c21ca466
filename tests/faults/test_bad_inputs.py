"""Bad input: one line naming the problem, exit code 2, nothing left behind.

The promise of the ``pavlov`` command and library (see :mod:`pavlov.cli`, :mod:`pavlov.errors`):
whatever a user gets wrong (an env id, a space an algorithm cannot handle, a config value, key,
type or file, ``--env-kwargs``, a data file, a reward function, a model directory, a checkpoint,
a run name, an option, a device, a learning rate that ends in NaN)

* the CLI exits with code 2 and prints exactly one line on stderr, ``pavlov: error: ...``, that
  names the cause, and no traceback (``--debug`` shows one);
* the Python API raises a :class:`~pavlov.errors.PavlovError` (``ConfigError``, ``RewardError``,
  ...) whose one-line message names the cause;
* nothing is written: no run directory (not even a partial one), checkpoint, plot or file, and a
  run handed to ``eval`` or ``--resume`` is left exactly as it was.

Each row of :data:`CLI_CASES` and :data:`API_CASES` is one bad input, named by its parametrize id
(``<category>-<what>``); ``pytest --collect-only -q tests/faults`` lists them, and
:func:`test_the_tables_hold_at_least_70_distinct_bad_inputs` keeps the count. Rows marked
``xfail(strict=True)`` are known gaps: the reason names the file that must change.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pavlov.agents import dqn
from pavlov.cli import click_errors, main
from pavlov.commands.train import train_run
from pavlov.config import build_config, load_yaml
from pavlov.envs.factory import make_env
from pavlov.errors import ConfigError, PavlovError
from pavlov.llm import load_causal_lm, load_preferences, load_prompts, load_sft
from pavlov.llm.models.loading import save_model
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.llm.scoring.rewards import RewardError, resolve_reward, weighted_sum
from pavlov.llm.trainers.dpo import DPOConfig
from pavlov.llm.trainers.online import OnlineConfig, train_online
from pavlov.llm.trainers.sft import SFTConfig, train_sft
from pavlov.run import Run
from pavlov.tabular.control import TabularConfig

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
AS_ROOT = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions"
)


def gap(reason: str):
    """A known gap of the promise whose fix lies in a file being changed elsewhere."""
    return pytest.mark.xfail(strict=True, reason=reason)


# ---------------------------------------------------------------------------------------------
# Fixtures: tiny real runs, a tiny model, and the broken files built from them

SFT = {"prompt": "Review of film:", "completion": " a bold and beautiful story"}
PREF = {"prompt": "Review of film:", "chosen": " great and warm", "rejected": " dull"}
DQN = ("-o learning_starts=32 -o train_freq=16 -o gradient_steps=4 -o batch_size=8 "
       "-o hidden_sizes=[8]")  # fmt: skip
PPO = "-o n_envs=1 -o n_steps=32 -o batch_size=16 -o n_epochs=2 -o hidden_sizes=[8]"
LLM = "-o batch_size=2 -o max_length=32 --max-steps 2"


def _cli(args: list[str]) -> tuple[int, str]:
    """``pavlov ARGS`` in-process, output captured -> (exit code, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as e:
            return e.code, err.getvalue()
    raise AssertionError("pavlov did not exit")


def _make(args: str) -> None:
    code, err = _cli(shlex.split(args))
    assert code == 0, err


def _jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _variant(root: Path, source: str, name: str) -> Path:
    shutil.copytree(root / source, root / name)
    return root / name


@pytest.fixture(scope="module")
def files(tmp_path_factory, _offline) -> Path:
    """Everything the cases read: never written to by a case (run dirs are copied first)."""
    root = tmp_path_factory.mktemp("faults")
    model, tok = tiny_causal_lm()
    save_model(model, tok, root / "tiny")
    _data_files(root)
    _config_files(root)
    _model_dirs(root)
    runs = f"--runs-dir {root} --eval-episodes 1 --quiet"
    _make(f"train q-learning --env FrozenLake-v1 --episodes 20 {runs} --name tab")
    _make(f"train dqn --env CartPole-v1 --total-steps 64 {DQN} {runs} --name dqn")
    _make(f"train ppo --env CartPole-v1 --total-steps 64 {PPO} {runs} --name ppo")
    _make(f"sft --model {root}/tiny --data {root}/sft.jsonl --runs-dir {root} --name sft "
          f"{LLM} --quiet")  # fmt: skip
    _broken_runs(root)
    return root


@pytest.fixture(scope="module")
def _offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # a missing model path fails at once, no retries
        yield mp


def _data_files(root: Path) -> None:
    _jsonl(root / "sft.jsonl", [SFT] * 4)
    _jsonl(root / "prefs.jsonl", [PREF] * 4)
    _jsonl(root / "prompts.jsonl", [{"prompt": "Review of film:"}] * 4)
    (root / "empty.jsonl").write_text("")
    (root / "blank.jsonl").write_text("\n  \n\n")
    (root / "notjson.jsonl").write_text("prompt: not json\n")
    _jsonl(root / "array.jsonl", ["[1, 2, 3]"])
    _jsonl(root / "no_completion.jsonl", [{"prompt": "x"}])
    _jsonl(root / "int_completion.jsonl", [{"prompt": "x", "completion": 5}])
    _jsonl(root / "empty_prompt.jsonl", [{"prompt": "", "completion": "y"}])
    _jsonl(root / "messages_str.jsonl", [{"messages": "hello"}])
    _jsonl(root / "same_pair.jsonl", [{**PREF, "rejected": PREF["chosen"]}])
    _jsonl(root / "list_chosen.jsonl", [{**PREF, "chosen": ["a"]}])
    _jsonl(root / "word_labels.jsonl", [{"text": "great", "label": "good"}])
    _jsonl(root / "blank_prompt.jsonl", [{"prompt": "   "}])
    _jsonl(root / "text_not_prompt.jsonl", [{"text": "Review of film:"}])
    (root / "header_only.csv").write_text("prompt,completion\n")
    (root / "garbage.parquet").write_bytes(b"PAR1 this is not a parquet file")
    (root / "sft.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    (root / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    (root / "dir.jsonl").mkdir()


def _config_files(root: Path) -> None:
    cfg = root / "cfg"
    cfg.mkdir()
    (cfg / "unclosed.yaml").write_text("episodes: [1, 2\n")
    (cfg / "list.yaml").write_text("- episodes\n- 5\n")
    (cfg / "tabs.yaml").write_text("\tepisodes: 3\n")
    (cfg / "truncated.json").write_text('{"episodes": 5, "agent": {')
    (cfg / "binary.yaml").write_bytes(b"\xff\xfe\x00episodes: 3\n")
    (cfg / "dir.yaml").mkdir()
    (cfg / "unknown_top.yaml").write_text("not_a_key: 1\n")
    (cfg / "unknown_agent.yaml").write_text("agent:\n  episodes: 5\n  bogus_field: 3\n")
    (cfg / "agent_scalar.yaml").write_text("agent: 5\n")
    (cfg / "trainer_list.yaml").write_text("trainer: [1, 2]\n")
    (cfg / "case_study_scalar.yaml").write_text("case_study: 3\n")
    (cfg / "gamma_word.json").write_text('{"agent": {"gamma": "high"}}')
    (cfg / "rl_agent.yaml").write_text("agent:\n  beta: 0.1\n")


def _model_dirs(root: Path) -> None:
    (root / "empty_model").mkdir()
    (root / "garbage_config").mkdir()
    (root / "garbage_config" / "config.json").write_text("{this is not json")
    (root / "alien_config").mkdir()
    (root / "alien_config" / "config.json").write_text('{"model_type": "no-such-arch"}')
    for p in _variant(root, "tiny", "no_weights").glob("*.safetensors"):
        p.unlink()
    _truncate(next(_variant(root, "tiny", "truncated_weights").glob("*.safetensors")))
    (root / "weights.bin").write_bytes(b"\x00" * 16)


def _broken_runs(root: Path) -> None:
    _truncate(_variant(root, "ppo", "ppo_truncated") / "checkpoints" / "final.pt")
    _truncate(_variant(root, "tab", "tab_truncated") / "checkpoints" / "final.npz")
    (_variant(root, "ppo", "ppo_no_pointer") / "checkpoints" / "latest").unlink()
    (_variant(root, "ppo", "ppo_dangling") / "checkpoints" / "latest").write_text("gone.pt\n")
    shutil.rmtree(_variant(root, "ppo", "ppo_no_checkpoints") / "checkpoints")
    (_variant(root, "ppo", "ppo_bad_yaml") / "config.yaml").write_text("algo: [ppo\n")
    (_variant(root, "ppo", "ppo_list_yaml") / "config.yaml").write_text("- ppo\n")
    shutil.copy(root / "dqn/checkpoints/final.pt",
                _variant(root, "ppo", "ppo_with_dqn_ckpt") / "checkpoints" / "final.pt")
    shutil.copy(root / "ppo/checkpoints/final.pt",
                _variant(root, "tab", "tab_with_torch_ckpt") / "checkpoints" / "final.npz")
    _npz(_variant(root, "tab", "tab_wrong_shape") / "checkpoints" / "final.npz",
         Q=np.zeros((3, 2)))  # FrozenLake has 16 states x 4 actions
    _npz(_variant(root, "tab", "tab_no_q") / "checkpoints" / "final.npz", W=np.zeros(3))
    for name, file in [("sft_truncated_state", "trainer_state.pt"),
                       ("sft_truncated_weights", "model.safetensors")]:
        _truncate(next(_variant(root, "sft", name).glob(f"checkpoints/step_*/{file}")))


# ---------------------------------------------------------------------------------------------
# The CLI: (arguments, a piece of the one error line). {files}: the fixture dir; {tmp}: this
# case's empty dir (the working directory, so a default runs/ would land there); {copy:RUN}:
# a fresh copy of the fixture run RUN in {tmp}, which must come out unchanged.

T = "--model {files}/tiny"  # the tiny saved causal LM
R = "--runs-dir {tmp}/runs --name bad"

CLI_CASES = [
    # --- unknown env ids
    pytest.param("solve CartPol-v1", "did you mean 'CartPole-v1'", id="env-typo"),
    pytest.param("train dqn --env frozenlake-v1", "unknown env 'frozenlake-v1'", id="env-case"),
    pytest.param("solve gym/FrozenLake-v1", "unknown env 'gym/FrozenLake-v1'",
                 id="env-unknown-namespace"),
    pytest.param("train q-learning --env pavlov/NoSuch-v0", "unknown env 'pavlov/NoSuch-v0'",
                 id="env-unknown-in-pavlov-namespace"),
    pytest.param("train ppo --env ALE/Pong-v5", "unknown env 'ALE/Pong-v5'",
                 id="env-not-installed"),
    pytest.param("play FrozenLak-v1", "unknown env 'FrozenLak-v1'", id="env-play-typo"),
    # --- spaces an algorithm cannot handle
    pytest.param("train dqn --env Pendulum-v1", "dqn supports Discrete action spaces",
                 id="space-dqn-box-actions"),
    pytest.param("train apg --env CartPole-v1", "apg supports Box action spaces",
                 id="space-apg-discrete-actions"),
    pytest.param("train q-learning --env CartPole-v1", "needs a discrete observation space",
                 id="space-tabular-box-obs"),
    pytest.param("train sarsa --env MountainCar-v0", "sarsa needs a discrete observation",
                 id="space-sarsa-box-obs"),
    pytest.param("train model-based --env Pendulum-v1", "model-based needs a discrete",
                 id="space-model-based-box"),
    pytest.param("solve MountainCar-v0", "needs a Discrete observation space",
                 id="space-solve-box"),
    # --- config values out of range
    pytest.param("train q-learning --env FrozenLake-v1 --episodes -5",
                 "episodes must be a positive integer", id="range-negative-episodes"),
    pytest.param("train q-learning --env FrozenLake-v1 --gamma 1.5", "gamma must be in [0.0, 1.0]",
                 id="range-gamma-above-1"),
    pytest.param("train sarsa --env FrozenLake-v1 --gamma -0.1", "gamma must be in",
                 id="range-gamma-negative"),
    pytest.param("train q-learning --env FrozenLake-v1 --alpha 0", "alpha must be in (0, 1]",
                 id="range-alpha-zero"),
    pytest.param("train q-learning --env FrozenLake-v1 -o epsilon_end=1.5", "epsilon_end",
                 id="range-epsilon-above-1"),
    pytest.param("train q-learning --env FrozenLake-v1 --exploration softmax -o temperature=0",
                 "temperature must be positive", id="range-zero-temperature"),
    pytest.param("train q-learning --env FrozenLake-v1 --eval-episodes 0",
                 "eval_episodes must be positive", id="range-zero-eval-episodes"),
    pytest.param("train dqn --env CartPole-v1 --total-steps 0", "total_steps must be",
                 id="range-zero-total-steps"),
    pytest.param("train dqn --env CartPole-v1 -o learning_rate=-1",
                 "learning_rate must be positive", id="range-negative-learning-rate"),
    pytest.param("train dqn --env CartPole-v1 -o exploration_final_eps=1.5",
                 "exploration_final_eps must be in [0.0, 1.0]", id="range-dqn-epsilon"),
    pytest.param("train dqn --env CartPole-v1 -o tau=2", "tau must be in", id="range-dqn-tau"),
    pytest.param("train dqn --env CartPole-v1 -o hidden_sizes=[0]", "hidden_sizes",
                 id="range-zero-width-layer"),
    pytest.param("train ppo --env CartPole-v1 -o clip_range=0", "clip_range must be positive",
                 id="range-ppo-clip"),
    pytest.param("train ppo --env CartPole-v1 -o gae_lambda=1.5", "gae_lambda must be in",
                 id="range-ppo-gae-lambda"),
    pytest.param("train ppo --env CartPole-v1 -o batch_size=10000",
                 "batch_size must be in [1, n_steps * n_envs", id="range-ppo-batch-too-big"),
    pytest.param("train ppo --env CartPole-v1 --checkpoint-every -1",
                 "checkpoint_every must be >= 0", id="range-negative-checkpoint-every"),
    pytest.param("train ppo --env CartPole-v1 --nproc 0", "nproc must be positive",
                 id="range-zero-nproc"),
    pytest.param("train dqn --env CartPole-v1 --nproc 2", "--nproc is for ppo, a2c",
                 id="range-nproc-for-dqn"),
    pytest.param("solve FrozenLake-v1 --gamma nan", "gamma must be in", id="range-nan-gamma"),
    pytest.param("solve FrozenLake-v1 --horizon 0", "horizon must be positive",
                 id="range-zero-horizon"),
    pytest.param("plot {copy:tab} --window 0 --out {tmp}/p.png", "--window must be positive",
                 id="range-zero-plot-window"),
    pytest.param("eval {copy:tab} --episodes 0", "episodes must be positive",
                 id="range-zero-eval-episodes-eval"),
    pytest.param(f"generate {T} --prompt hi --temperature -1", "temperature must be >= 0",
                 id="range-negative-temperature"),
    pytest.param(f"generate {T} --prompt hi --top-k -1", "top_k must be >= 0",
                 id="range-negative-top-k"),
    pytest.param(f"generate {T} --prompt hi --batch-size 0", "batch_size must be a positive",
                 id="range-zero-generate-batch"),
    pytest.param(f"generate {T} --prompt hi --max-new-tokens 0", "max_new_tokens must be >= 1",
                 id="range-zero-max-new-tokens"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} -o learning_rate=-1",
                 "learning_rate must be positive", id="range-sft-learning-rate"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} -o warmup_steps=-1",
                 "warmup_steps must be an integer >= 0", id="range-sft-warmup"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} -o weight_decay=-0.1",
                 "weight_decay must be in", id="range-sft-weight-decay"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} --max-steps -1",
                 "max_steps must be an integer >= 0", id="range-sft-max-steps"),
    pytest.param(f"dpo {T} --data {{files}}/prefs.jsonl {R} -o label_smoothing=0.9",
                 "label_smoothing must be in [0.0, 0.5]", id="range-dpo-label-smoothing"),
    pytest.param(f"rl {T} --reward vader --beta -1 {R}", "beta must be in",
                 id="range-rl-negative-beta"),
    pytest.param(f"rl {T} --reward vader -o temperature=0 {R}", "temperature must be in",
                 id="range-rl-zero-temperature"),
    pytest.param(f"rl {T} --reward vader=inf {R}", "must be a finite number",
                 id="range-rl-infinite-weight"),
    # --- bad choice strings
    pytest.param("train q-learning --env FrozenLake-v1 --exploration bogus",
                 "exploration must be one of", id="choice-exploration"),
    pytest.param("train q-learning --env FrozenLake-v1 -o epsilon_decay=sometimes",
                 "epsilon_decay must be one of", id="choice-epsilon-decay"),
    pytest.param("train dqn --env CartPole-v1 -o loss=l3", "loss must be one of",
                 id="choice-dqn-loss"),
    pytest.param("train ppo --env CartPole-v1 -o vectorization=threads", "vectorization must be",
                 id="choice-vectorization"),
    pytest.param("train nosuch --env CartPole-v1", "unknown algorithm 'nosuch'",
                 id="choice-algorithm"),
    pytest.param("solve FrozenLake-v1 --method magic", "method must be one of",
                 id="choice-solve-method"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} -o lr_schedule=zigzag",
                 "lr_schedule must be one of", id="choice-lr-schedule"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} -o precision=fp8",
                 "precision must be one of", id="choice-precision"),
    pytest.param(f"dpo {T} --data {{files}}/prefs.jsonl {R} -o loss_type=nope",
                 "loss_type must be one of", id="choice-dpo-loss"),
    pytest.param(f"reward-model {T} --data {{files}}/prefs.jsonl {R} -o mode=listwise",
                 "mode must be one of", id="choice-reward-mode"),
    pytest.param(f"reward-model {T} --data {{files}}/prefs.jsonl {R} --backbone rnn",
                 "backbone must be", id="choice-backbone"),
    pytest.param(f"rl {T} --reward vader --algo dpo {R}", "algo must be one of",
                 id="choice-rl-algo"),
    pytest.param("rlhf --algo bogus", "algo must be one of", id="choice-rlhf-algo"),
    # --- unknown config fields (-o and YAML)
    pytest.param("train q-learning --env FrozenLake-v1 -o epsilon=0.1",
                 "unknown agent key(s) epsilon", id="field-unknown-override"),
    pytest.param("train ppo --env CartPole-v1 -o clip_eps=0.1",
                 "clip_eps is now called clip_range", id="field-renamed"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} -o lr=1e-4",
                 "unknown trainer key(s) lr", id="field-unknown-trainer-key"),
    pytest.param("rlhf -o nope=1", "unknown case_study key(s) nope", id="field-unknown-rlhf"),
    pytest.param("rlhf -o sft.nope=1", "unknown sft_options key(s) nope",
                 id="field-unknown-rlhf-step"),
    pytest.param("train q-learning --env FrozenLake-v1 -o novalue", "must look like key=value",
                 id="field-override-without-equals"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/unknown_top.yaml",
                 "unknown train option(s) not_a_key", id="field-yaml-unknown-top"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/unknown_agent.yaml",
                 "unknown agent key(s) bogus_field", id="field-yaml-unknown-agent"),
    pytest.param(f"sft {T} -c {{files}}/cfg/unknown_top.yaml {R}",
                 "unknown sft option(s) not_a_key", id="field-yaml-unknown-sft"),
    pytest.param(f"generate {T} --prompt hi -c {{files}}/cfg/unknown_top.yaml",
                 "unknown generate option(s) not_a_key", id="field-yaml-unknown-generate"),
    pytest.param("plot {copy:tab} -c {files}/cfg/unknown_top.yaml --out {tmp}/p.png",
                 "unknown plot option(s) not_a_key", id="field-yaml-unknown-plot"),
    pytest.param("eval {copy:tab} -c {files}/cfg/unknown_top.yaml",
                 "unknown eval option(s) not_a_key", id="field-yaml-unknown-eval"),
    pytest.param(f"rl {T} --reward vader -c {{files}}/cfg/rl_agent.yaml {R}",
                 "unknown rl option(s) agent", id="field-yaml-agent-section-in-rl"),
    # --- malformed YAML and JSON config files
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/unclosed.yaml",
                 "is not valid YAML", id="yaml-unclosed-list"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/tabs.yaml",
                 "is not valid YAML", id="yaml-tab-indent"),
    pytest.param("solve FrozenLake-v1 -c {files}/cfg/list.yaml", "must hold a mapping, got list",
                 id="yaml-top-level-list"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/truncated.json",
                 "truncated.json is not valid YAML", id="json-truncated"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/binary.yaml",
                 "is not UTF-8 text", id="yaml-binary"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/dir.yaml",
                 "cannot read config file", id="yaml-is-a-directory"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {tmp}/missing.yaml",
                 "cannot read config file", id="yaml-missing"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/agent_scalar.yaml",
                 "agent must be a mapping", id="yaml-agent-not-a-mapping"),
    pytest.param(f"sft {T} -c {{files}}/cfg/trainer_list.yaml {R}", "trainer must be a mapping",
                 id="yaml-trainer-not-a-mapping"),
    pytest.param("rlhf -c {files}/cfg/case_study_scalar.yaml", "case_study must be a mapping",
                 id="yaml-case-study-not-a-mapping"),
    # --- malformed --env-kwargs
    pytest.param("train q-learning --env FrozenLake-v1 --env-kwargs {bad",
                 "--env-kwargs is not valid JSON", id="env-kwargs-not-json"),
    pytest.param("train ppo --env CartPole-v1 --env-kwargs [1,2]",
                 "--env-kwargs must be a JSON object, got list", id="env-kwargs-list"),
    pytest.param("play FrozenLake-v1 --env-kwargs '\"8x8\"'",
                 "--env-kwargs must be a JSON object, got str", id="env-kwargs-string"),
    pytest.param("solve FrozenLake-v1 --env-kwargs '{\"no_such_kwarg\": 1}'",
                 "unexpected keyword argument 'no_such_kwarg'", id="env-kwargs-unknown-kwarg"),
    pytest.param("solve FrozenLake-v1 --env-kwargs '{\"map_name\": \"9x9\"}'",
                 "no such value '9x9'", id="env-kwargs-bad-value"),
    # --- wrong types
    pytest.param("train q-learning --env FrozenLake-v1 --episodes ten",
                 "Invalid value for '--episodes'", id="type-flag-not-an-int"),
    pytest.param("train q-learning --env FrozenLake-v1 --seed 1.5", "Invalid value for '--seed'",
                 id="type-seed-float"),
    pytest.param("train q-learning --env FrozenLake-v1 -o episodes=1.5", "episodes must be int",
                 id="type-fractional-int"),
    pytest.param("train q-learning --env FrozenLake-v1 -o gamma=[1,2]",
                 "gamma must be float, got [1, 2]", id="type-list-for-float"),
    pytest.param("train dqn --env CartPole-v1 -o learning_rate=true",
                 "learning_rate must be float, got True", id="type-bool-for-float"),
    pytest.param("train dqn --env CartPole-v1 -o double_q=maybe", "double_q must be bool",
                 id="type-word-for-bool"),
    pytest.param("train dqn --env CartPole-v1 -o double_q=2", "double_q must be bool, got 2",
                 id="type-number-for-bool"),
    pytest.param("train dqn --env CartPole-v1 -o hidden_sizes=64",
                 "hidden_sizes must be a list, got 64", id="type-scalar-for-list"),
    pytest.param("train q-learning --env FrozenLake-v1 -c {files}/cfg/gamma_word.json",
                 "gamma must be float, got 'high'", id="type-json-word-for-float"),
    # --- datasets: empty, malformed, wrong schema
    pytest.param(f"sft {T} --data {{files}}/empty.jsonl {R}", "empty.jsonl: no rows",
                 id="data-empty-file"),
    pytest.param(f"sft {T} --data {{files}}/blank.jsonl {R}", "blank.jsonl: no rows",
                 id="data-blank-lines-only"),
    pytest.param(f"sft {T} --data {{files}}/notjson.jsonl {R}", "row 1: invalid JSON",
                 id="data-not-jsonl"),
    pytest.param(f"sft {T} --data {{files}}/array.jsonl {R}", "expected a JSON object, got list",
                 id="data-row-not-an-object"),
    pytest.param(f"sft {T} --data {{files}}/no_completion.jsonl {R}",
                 "field 'completion' is missing", id="data-missing-key"),
    pytest.param(f"sft {T} --data {{files}}/int_completion.jsonl {R}",
                 "field 'completion' must be a string, got int", id="data-wrong-type"),
    pytest.param(f"sft {T} --data {{files}}/empty_prompt.jsonl {R}", "field 'prompt' is empty",
                 id="data-empty-string"),
    pytest.param(f"sft {T} --data {{files}}/messages_str.jsonl {R}", "field 'messages'",
                 id="data-messages-not-a-list"),
    pytest.param(f"sft {T} --data {{files}}/header_only.csv {R}", "header_only.csv: no rows",
                 id="data-csv-header-only"),
    pytest.param(f"sft {T} --data {{files}}/garbage.parquet {R}", "not a readable Parquet file",
                 id="data-garbage-parquet"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl.gz {R}", "unsupported data file type .gz",
                 id="data-unsupported-suffix"),
    pytest.param(f"sft {T} --data {{files}}/latin1.jsonl {R}", "cannot read",
                 id="data-not-utf8"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl --eval-data {{files}}/empty.jsonl {R}",
                 "empty.jsonl: no rows", id="data-empty-eval-file"),
    pytest.param(f"dpo {T} --data {{files}}/same_pair.jsonl {R}", "are identical",
                 id="data-identical-pair"),
    pytest.param(f"dpo {T} --data {{files}}/list_chosen.jsonl {R}",
                 "field 'chosen' must be a string, got list", id="data-list-for-string"),
    pytest.param(f"dpo {T} --data {{files}}/dir.jsonl {R}", "cannot read",
                 id="data-is-a-directory"),
    pytest.param(f"reward-model {T} --data {{files}}/sft.jsonl {R}", "field 'chosen' is missing",
                 id="data-sft-rows-for-preferences"),
    pytest.param(f"reward-model {T} --data {{files}}/word_labels.jsonl {R} -o mode=pointwise",
                 "field 'label' must be 0 or 1", id="data-word-label"),
    pytest.param(f"rl {T} --reward vader --prompts {{files}}/blank_prompt.jsonl {R}",
                 "field 'prompt' is empty", id="data-blank-prompt"),
    pytest.param(f"generate {T} --prompts {{files}}/text_not_prompt.jsonl",
                 "field 'prompt' is missing", id="data-prompts-wrong-key"),
    # --- reward specs (the reward functions themselves: API_CASES)
    pytest.param(f"rl {T} --reward {{files}}/tiny {R}", "not a pavlov reward model",
                 id="reward-lm-dir-as-reward-model"),
    pytest.param(f"rl {T} --reward vadr {R}", "unknown reward 'vadr'", id="reward-typo"),
    # --- missing or corrupt model directories
    pytest.param(f"dpo --model {{tmp}}/missing --data {{files}}/prefs.jsonl {R}",
                 "unknown model path", id="model-missing-dir"),
    pytest.param(f"sft --model {{files}}/empty_model --data {{files}}/sft.jsonl {R}",
                 "cannot load a model from", id="model-empty-dir"),
    pytest.param("generate --model {files}/garbage_config --prompt hi", "not a valid JSON file",
                 id="model-garbage-config"),
    pytest.param(f"sft --model {{files}}/alien_config --data {{files}}/sft.jsonl {R}",
                 "no-such-arch", id="model-unknown-architecture"),
    pytest.param(f"sft --model {{files}}/no_weights --data {{files}}/sft.jsonl {R}",
                 "cannot load a model from", id="model-no-weights"),
    pytest.param(f"sft --model {{files}}/truncated_weights --data {{files}}/sft.jsonl {R}",
                 "cannot load a model from", id="model-truncated-weights"),
    pytest.param("rl --model {files}/empty_model --reward vader " + R, "cannot load a model",
                 id="model-empty-dir-rl"),
    pytest.param("generate --model {files}/weights.bin --prompt hi", "unknown model path",
                 id="model-file-not-dir"),
    # --- checkpoints and runs given to eval / --resume
    pytest.param("eval {copy:ppo_truncated}", "unreadable (truncated or corrupt)",
                 id="ckpt-eval-truncated-pt"),
    pytest.param("eval {copy:tab_truncated}", "unreadable (truncated or corrupt)",
                 id="ckpt-eval-truncated-npz"),
    pytest.param("eval {copy:ppo_dangling}", "names a missing file gone.pt",
                 id="ckpt-eval-dangling-pointer"),
    pytest.param("eval {copy:ppo_no_pointer}", "no checkpoint", id="ckpt-eval-no-pointer"),
    pytest.param("eval {copy:ppo_no_checkpoints}", "no checkpoint", id="ckpt-eval-no-dir"),
    pytest.param("eval {copy:ppo_bad_yaml}", "config.yaml is not valid YAML",
                 id="ckpt-eval-bad-config-yaml"),
    pytest.param("eval {copy:ppo_list_yaml}", "config.yaml", id="ckpt-eval-config-not-mapping"),
    pytest.param("eval {copy:sft}", "is a `pavlov sft` run", id="ckpt-eval-llm-run"),
    pytest.param("eval {copy:ppo_with_dqn_ckpt}", "dqn", id="ckpt-eval-other-algo-checkpoint"),
    pytest.param("eval {copy:tab_with_torch_ckpt}", "not a q-learning checkpoint",
                 id="ckpt-eval-torch-file-in-tabular-run"),
    pytest.param("eval {copy:tab_wrong_shape}", "Q table has shape (3, 2)",
                 id="ckpt-eval-q-table-of-other-env"),
    pytest.param("eval {copy:tab_no_q}", "no Q table", id="ckpt-eval-npz-without-q"),
    pytest.param("train --resume {copy:ppo_truncated} --total-steps 128",
                 "unreadable (truncated or corrupt)", id="ckpt-resume-truncated"),
    pytest.param("train ppo --resume {copy:dqn} --total-steps 128", "is a dqn run",
                 id="ckpt-resume-ppo-from-dqn-run"),
    pytest.param("train --resume {copy:ppo} --env MountainCar-v0", "got env='MountainCar-v0'",
                 id="ckpt-resume-other-env"),
    pytest.param("train --resume {copy:ppo_with_dqn_ckpt} --total-steps 128 --quiet",
                 "cannot resume PPO from a 'dqn' state", id="ckpt-resume-other-algo-checkpoint"),
    pytest.param("train sarsa --resume {copy:tab} --episodes 40", "is a q-learning run",
                 id="ckpt-resume-tabular-other-algo"),
    pytest.param("train --resume {files}/cfg --total-steps 128", "not a pavlov run directory",
                 id="ckpt-resume-not-a-run"),
    pytest.param("sft --resume {copy:ppo}", "is not a sft run (it is a 'ppo' run)",
                 id="ckpt-resume-sft-from-train-run"),
    pytest.param("dpo --resume {copy:sft}", "is not a dpo run (it is a 'sft' run)",
                 id="ckpt-resume-dpo-from-sft-run"),
    pytest.param("rlhf --resume {copy:sft}", "is not a pavlov rlhf run",
                 id="ckpt-resume-rlhf-from-sft-run"),
    pytest.param("rlhf --resume {files}/cfg", "not a pavlov run directory",
                 id="ckpt-resume-rlhf-not-a-run"),
    pytest.param("rlhf --resume {copy:sft} --algo ppo -o rl_steps=3", "drop algo, -o",
                 id="ckpt-resume-rlhf-with-settings"),
    pytest.param("sft --resume {copy:sft_truncated_state} --max-steps 3",
                 "trainer_state.pt is unreadable", id="ckpt-resume-llm-truncated-state"),
    pytest.param("sft --resume {copy:sft_truncated_weights} --max-steps 3 --quiet",
                 "model.safetensors are unreadable", id="ckpt-resume-llm-truncated-weights"),
    pytest.param("plot {copy:tab} --metric no/such --out {tmp}/p.png",
                 "metric 'no/such' not found", id="run-plot-unknown-metric"),
    # --- run names and run directories
    pytest.param("train q-learning --env FrozenLake-v1 --name ../x", "run name '../x'",
                 id="name-parent-dir"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl --name a/b", "run name 'a/b'",
                 id="name-with-slash"),
    pytest.param(f"rl {T} --reward vader --name .hidden", "run name '.hidden'",
                 id="name-hidden"),
    pytest.param("train q-learning --env FrozenLake-v1 --name ''", "run name ''",
                 id="name-empty"),
    pytest.param("rlhf --name ../x", "run name '../x'", id="name-rlhf-parent-dir"),
    pytest.param("train q-learning --env FrozenLake-v1 --episodes 5 --runs-dir {copy:tab}/.. "
                 "--name tab", "already exists", id="name-existing-run"),
    pytest.param("train q-learning --env FrozenLake-v1 --runs-dir {files}/sft.jsonl",
                 "is not a directory", id="runs-dir-is-a-file"),
    pytest.param(f"dpo {T} --data {{files}}/prefs.jsonl --runs-dir {{files}}/sft.jsonl/runs",
                 "is not a directory", id="runs-dir-under-a-file"),
    pytest.param("train q-learning --env FrozenLake-v1 --episodes 5 --runs-dir {readonly}/runs",
                 "is not writable", id="runs-dir-read-only", marks=AS_ROOT),
    # --- CLI options and arguments
    pytest.param("train q-learning --env FrozenLake-v1 --bogus", "No such option: --bogus",
                 id="option-unknown"),
    pytest.param(f"sft {T} --backbone encoder", "No such option: --backbone",
                 id="option-of-another-command"),
    pytest.param("trian q-learning", "No such command 'trian'", id="option-unknown-command"),
    pytest.param("solve", "Missing argument", id="option-missing-argument"),
    pytest.param("train q-learning --env FrozenLake-v1 --episodes", "requires an argument",
                 id="option-missing-value"),
    pytest.param("train", "train needs an algorithm", id="option-train-without-algo"),
    pytest.param("train q-learning", "train needs an environment", id="option-train-without-env"),
    pytest.param(f"generate {T}", "generate needs --prompt", id="option-generate-without-prompt"),
    pytest.param(f"rl {T} {R}", "rl needs a reward", id="option-rl-without-reward"),
    # --- devices
    pytest.param("train ppo --env CartPole-v1 --device cuda", "no CUDA GPU",
                 id="device-cuda-without-gpu", marks=NO_GPU),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} --device cuda:0", "no CUDA GPU",
                 id="device-cuda0-without-gpu-sft", marks=NO_GPU),
    pytest.param("train dqn --env CartPole-v1 --device tpu", "device must be",
                 id="device-unknown"),
    pytest.param(f"dpo {T} --data {{files}}/prefs.jsonl {R} --device cuda:x", "device must be",
                 id="device-bad-index"),
    # --- NaN losses: the guard stops before the optimizer step; no checkpoint, no run dir
    pytest.param(f"train dqn --env CartPole-v1 --total-steps 400 {DQN} -o learning_rate=1e30 "
                 f"{R}", "not finite", id="nan-dqn"),
    pytest.param(f"train ppo --env CartPole-v1 --total-steps 256 {PPO} -o learning_rate=1e30 "
                 f"{R}", "not finite", id="nan-ppo"),
    pytest.param(f"train a2c --env CartPole-v1 --total-steps 256 -o n_envs=1 -o hidden_sizes=[8] "
                 f"-o learning_rate=1e30 {R}", "not finite", id="nan-a2c"),
    pytest.param(f"sft {T} --data {{files}}/sft.jsonl {R} {LLM} -o learning_rate=inf",
                 "the loss is not finite", id="nan-sft"),
    pytest.param(f"rl {T} --reward vader --prompts {{files}}/prompts.jsonl {R} --max-steps 3 "
                 "-o prompts_per_step=2 -o max_new_tokens=4 -o learning_rate=1e30 "
                 "-o max_grad_norm=0", "not finite", id="nan-rl"),
]


def _expand(text: str, files: Path, tmp: Path) -> list[str]:
    """Split a case's arguments; copy each ``{copy:RUN}`` into ``tmp`` and fill placeholders."""
    args = []
    for arg in shlex.split(text):
        while "{copy:" in arg:
            start = arg.index("{copy:")
            end = arg.index("}", start)
            name = arg[start + 6 : end]
            if not (tmp / name).exists():
                shutil.copytree(files / name, tmp / name)
            arg = arg[:start] + str(tmp / name) + arg[end + 1 :]
        if "{readonly}" in arg:
            (tmp / "readonly").mkdir(exist_ok=True)
            (tmp / "readonly").chmod(0o555)
        for key, value in {"files": files, "tmp": tmp, "readonly": tmp / "readonly"}.items():
            arg = arg.replace("{" + key + "}", str(value))
        args.append(arg)
    return args


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def assert_nothing_written(root: Path, before: dict[str, tuple[int, int]]) -> None:
    """No file under ``root`` written, changed or removed; ``runs/`` (if made) holds no run."""
    assert snapshot(root) == before, "a failed call wrote, changed or removed files"
    runs = root / "runs"
    assert not runs.exists() or not any(runs.iterdir()), sorted(runs.iterdir())


def assert_one_line(code, err: str, message: str) -> None:
    """Exit code 2 and one ``pavlov: error:`` line on stderr naming the cause."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pavlov: error: "), err
    assert message in lines[0], err


@pytest.mark.parametrize(("args", "message"), CLI_CASES)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
    args, message, files, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = _expand(args, files, tmp_path)
    before = snapshot(tmp_path)
    try:
        code, err = _cli(argv)
    finally:
        if (tmp_path / "readonly").exists():
            (tmp_path / "readonly").chmod(0o755)
    assert_one_line(code, err, message)
    assert_nothing_written(tmp_path, before)


# ---------------------------------------------------------------------------------------------
# The Python API: (a call that must raise, the error class, a piece of its message). Each call
# gets the fixture dir and an empty working directory, which must stay empty (but for a runs/
# emptied of the run that failed).


def _online(reward):
    """GRPO on a tiny model against ``reward`` inside a new run ``runs/r`` of the cwd."""

    def call(files: Path, tmp: Path) -> None:
        model, tok = tiny_causal_lm()
        cfg = OnlineConfig(algo="grpo", max_steps=1, prompts_per_step=2, group_size=2,
                           max_new_tokens=4)  # fmt: skip
        with Run.create(tmp / "runs", "r", {}) as run:
            train_online(cfg, model, tok, ["hello there", "the cat"], reward, run=run)

    return call


def raises_error(prompts, completions):
    raise RuntimeError("judge offline\nsecond line of the judge's error")


def returns_nan(prompts, completions):
    return [float("nan")] * len(completions)


def returns_inf(prompts, completions):
    return [math.inf] * len(completions)


def returns_one(prompts, completions):
    return [1.0]


def returns_text(prompts, completions):
    return "good"


def returns_none(prompts, completions):
    return None


def returns_words(prompts, completions):
    return ["high"] * len(completions)


def returns_matrix(prompts, completions):
    return torch.zeros(len(completions), 2)


def returns_overflow(prompts, completions):
    return [1e300] * len(completions)  # finite, but inf as float32


def _train_sft_on_nothing(files: Path, tmp: Path) -> None:
    model, tok = tiny_causal_lm()
    train_sft(SFTConfig(max_steps=1), model, tok, [], [])


API_CASES = [
    # --- config values, keys and types
    pytest.param(lambda f, t: build_config(SFTConfig, {"lr": 1e-4}), ConfigError,
                 "unknown config key(s) lr", id="config-unknown-key"),
    pytest.param(lambda f, t: build_config(SFTConfig, {"learning_rate": [1]}), ConfigError,
                 "learning_rate must be float", id="config-list-for-float"),
    pytest.param(lambda f, t: build_config(SFTConfig, {"learning_rate": True}), ConfigError,
                 "learning_rate must be float, got True", id="config-bool-for-float"),
    pytest.param(lambda f, t: SFTConfig(learning_rate=-1), ConfigError,
                 "learning_rate must be positive", id="config-sft-learning-rate"),
    pytest.param(lambda f, t: DPOConfig(beta=0), ConfigError, "beta must be positive",
                 id="config-dpo-beta"),
    pytest.param(lambda f, t: OnlineConfig(algo="grpo", group_size=1), ConfigError,
                 "group_size >= 2", id="config-online-group-size"),
    pytest.param(lambda f, t: TabularConfig(epsilon_start=1.5), ConfigError,
                 "epsilon_start must be in", id="config-tabular-epsilon"),
    pytest.param(lambda f, t: dqn.Config(learning_rate=0), ConfigError,
                 "learning_rate must be positive", id="config-dqn-learning-rate"),
    pytest.param(lambda f, t: load_yaml(f / "cfg" / "binary.yaml"), PavlovError,
                 "is not UTF-8 text", id="config-yaml-binary"),
    # --- envs and spaces
    pytest.param(lambda f, t: make_env("NoSuchEnv-v0"), PavlovError,
                 "unknown env 'NoSuchEnv-v0'", id="env-make-unknown"),
    pytest.param(lambda f, t: make_env("FrozenLake-v1", {"map_name": 5}), PavlovError,
                 "no such value 5", id="env-make-bad-kwarg-value"),
    pytest.param(lambda f, t: dqn.train("Pendulum-v1", dqn.Config(total_steps=10)), PavlovError,
                 "dqn supports Discrete action", id="space-dqn-train-box-actions"),
    pytest.param(lambda f, t: train_run("q-learning", "CartPole-v1", {}, runs_dir=t / "runs"),
                 PavlovError, "needs a discrete observation", id="space-train-run-tabular-box"),
    pytest.param(lambda f, t: train_run("q-learning", "FrozenLake-v1", {"episodes": 2},
                                        runs_dir=t / "runs", name="../x", eval_episodes=1),
                 PavlovError, "run name '../x'", id="name-train-run-parent-dir"),
    # --- data
    pytest.param(lambda f, t: load_sft([]), PavlovError, "no rows", id="data-load-sft-empty"),
    pytest.param(lambda f, t: load_sft([{"prompt": 1, "completion": "x"}]), PavlovError,
                 "field 'prompt' must be a string", id="data-load-sft-int-prompt"),
    pytest.param(lambda f, t: load_preferences([{"prompt": "a", "chosen": "b"}]), PavlovError,
                 "field 'rejected' is missing", id="data-load-preferences-missing-key"),
    pytest.param(lambda f, t: load_prompts(["a bare string"]), PavlovError,
                 "expected a dict, got str", id="data-load-prompts-strings"),
    pytest.param(_train_sft_on_nothing, ConfigError, "no training examples",
                 id="data-train-sft-no-examples"),
    # --- models
    pytest.param(lambda f, t: load_causal_lm(str(f / "empty_model")), PavlovError,
                 "cannot load a model from", id="model-load-empty-dir"),
    pytest.param(lambda f, t: load_causal_lm(str(f / "truncated_weights")), PavlovError,
                 "cannot load a model from", id="model-load-truncated-weights"),
    # --- reward specs
    pytest.param(lambda f, t: resolve_reward(42), ConfigError, "a reward must be a callable",
                 id="reward-resolve-number"),
    pytest.param(lambda f, t: resolve_reward(str(t / "nope")), ConfigError,
                 "no such reward-model directory", id="reward-resolve-missing-path"),
    pytest.param(lambda f, t: resolve_reward([]), ConfigError, "no reward function given",
                 id="reward-resolve-empty-list"),
    pytest.param(lambda f, t: weighted_sum([(5, 1.0)]), ConfigError, "is not callable",
                 id="reward-weighted-not-callable"),
    pytest.param(lambda f, t: weighted_sum([(returns_one, math.nan)]), ConfigError,
                 "must be a finite number, got nan", id="reward-weighted-nan-weight"),
    # --- reward functions that fail inside online training: RewardError, no run left
    *[pytest.param(_online(fn), RewardError, message,
                   id=f"reward-fn-{fn.__name__.replace('_', '-')}")
      for fn, message in [
          (raises_error, "'raises_error' raised RuntimeError: judge offline"),
          (returns_nan, "'returns_nan' returned nan for completions[0]"),
          (returns_inf, "'returns_inf' returned inf for completions[0]"),
          (returns_one, "'returns_one' returned 1 values for 4 completions"),
          (returns_text, "'returns_text' returned a str, not a list of 4 numbers"),
          (returns_none, "'returns_none' returned a NoneType"),
          (returns_words, "'returns_words' returned 'high' for completions[0], not a number"),
          (returns_matrix, "'returns_matrix' returned a tensor of shape (4, 2)"),
          (returns_overflow, "'returns_overflow' returned 1e+300"),
      ]],
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), API_CASES)
def test_api_bad_input_raises_a_one_line_pavlov_error_and_writes_nothing(
    call, error, message, files, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        call(files, tmp_path)
    assert isinstance(info.value, PavlovError)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and message in text, text
    assert_nothing_written(tmp_path, {})


# ---------------------------------------------------------------------------------------------


def test_the_tables_hold_at_least_70_distinct_bad_inputs():
    ids = [p.id for p in CLI_CASES] + [p.id for p in API_CASES]
    assert len(ids) == len(set(ids))
    assert len(CLI_CASES) + len(API_CASES) >= 70, (len(CLI_CASES), len(API_CASES))


def test_debug_shows_the_traceback_of_a_usage_error_too():
    with pytest.raises(click_errors.UsageError):
        main(["train", "--bogus", "--debug"])


def test_a_bug_is_not_turned_into_a_one_line_error(monkeypatch):
    """Only PavlovError and usage errors are the user's: anything else keeps its traceback."""

    def broken(*args):
        raise KeyError("a bug")

    monkeypatch.setattr("pavlov.commands.envs.run_envs", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["envs"])


def test_help_and_the_bare_command_still_work():
    assert _cli(["train", "--help"])[0] == 0
    code, err = _cli([])
    assert code == 2 and "Traceback" not in err
