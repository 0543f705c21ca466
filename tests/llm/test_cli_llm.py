"""`pavlov sft | reward-model | dpo | generate` on tiny models and tiny data files."""

from __future__ import annotations

import json

import pytest
import torch

from pavlov.cli import main
from pavlov.llm.models.loading import save_model
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.run.checkpoint import read_latest

PREFS = [
    {"prompt": f"Review of film {i}:", "chosen": " great, funny and warm", "rejected": " dull"}
    for i in range(6)
]
SFT = [{"prompt": f"Review of film {i}:", "completion": " a bold and beautiful story"} for i in
       range(6)]  # fmt: skip
FAST = ["-o", "batch_size=3", "-o", "learning_rate=1e-3", "-o", "max_length=64"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # unknown model paths fail at once, no retries


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-cli")
    model, tok = tiny_causal_lm()
    save_model(model, tok, root / "tiny")
    write_jsonl(root / "prefs.jsonl", PREFS)
    write_jsonl(root / "sft.jsonl", SFT)
    with open(root / "sft.csv", "w", encoding="utf-8") as f:
        f.write(
            "prompt,completion\n" + "".join(f'"{r["prompt"]}","{r["completion"]}"\n' for r in SFT)
        )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(PREFS), root / "prefs.parquet")
    write_jsonl(
        root / "labels.jsonl", [{"text": "great", "label": 1}, {"text": "dull", "label": 0}]
    )
    return root


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def train(command, files, tmp_path, capsys, *extra):
    args = [command, "--model", str(files / "tiny"), "--runs-dir", str(tmp_path / "runs"),
            "--name", "r", *FAST, "--json", *extra]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("command", "data", "key"),
    [
        ("sft", "sft.jsonl", "eval/perplexity"),
        ("sft", "sft.csv", "eval/loss"),
        ("reward-model", "prefs.parquet", "eval/accuracy"),
        ("dpo", "prefs.jsonl", "eval/rewards/accuracies"),
    ],
)
def test_train_commands_json_contract(command, data, key, files, tmp_path, capsys):
    s = train(command, files, tmp_path, capsys, "--data", str(files / data),
              "--eval-data", str(files / data))  # fmt: skip
    run = tmp_path / "runs" / "r"
    assert s["run"] == str(run) and s["model"] == str(run / "model")
    assert s["command"] == command and s["steps"] == 2 and s["seconds"] > 0
    assert key in s["metrics"] and "train/loss" in s["metrics"]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert read_latest(run / "checkpoints")[0] == "step_2"
    assert (run / "plots" / "train_loss.png").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 2]  # two steps + the evaluation
    assert list(run.glob("events.out.tfevents.*"))


def test_sft_resume_continues_the_step_count(files, tmp_path, capsys):
    train("sft", files, tmp_path, capsys, "--data", str(files / "sft.jsonl"))
    run = tmp_path / "runs" / "r"
    code, out, err = run_cli(["sft", "--resume", str(run), "--max-steps", "5", "--json"], capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["steps"] == 5 and s["run"] == str(run)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_lora_dpo_then_generate_from_the_run(files, tmp_path, capsys):
    s = train("dpo", files, tmp_path, capsys, "--data", str(files / "prefs.jsonl"), "--lora")
    assert (tmp_path / "runs" / "r" / "model" / "adapter_config.json").is_file()
    code, out, err = run_cli(
        ["generate", "--model", s["run"], "--prompt", "Review of Up:", "--prompt", "What is",
         "--max-new-tokens", "5", "--temperature", "0", "--json"], capsys,
    )  # fmt: skip
    assert code == 0, err
    g = json.loads(out.strip().splitlines()[-1])
    assert [c["prompt"] for c in g["completions"]] == ["Review of Up:", "What is"]
    assert all(1 <= c["tokens"] <= 5 for c in g["completions"])


def test_generate_from_a_prompt_file_is_seeded(files, capsys):
    args = [
        "generate",
        "--model",
        str(files / "tiny"),
        "--prompts",
        str(files / "sft.jsonl"),
        "--max-new-tokens",
        "4",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
    ]
    runs = [json.loads(run_cli(a, capsys)[1].strip().splitlines()[-1])
            for a in (args, args, [*args, "--device", "cpu"])]  # fmt: skip
    assert len(runs[0]["completions"]) == len(SFT)
    assert runs[0]["completions"] == runs[1]["completions"] == runs[2]["completions"]


def test_pointwise_reward_model_on_labelled_texts(files, tmp_path, capsys):
    s = train("reward-model", files, tmp_path, capsys, "--data", str(files / "labels.jsonl"),
              "-o", "mode=pointwise")  # fmt: skip
    assert s["steps"] == 1
    from pavlov.llm.trainers import load_reward_model

    assert len(load_reward_model(s["run"])(["x"], ["great"])) == 1


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing under runs/


def _bad_files(files, tmp_path):
    missing = [dict(PREFS[0]), *PREFS[1:]]
    del missing[0]["rejected"]
    write_jsonl(tmp_path / "missing.jsonl", missing)
    write_jsonl(tmp_path / "empty.jsonl", [PREFS[0], {**PREFS[1], "chosen": "  "}])
    write_jsonl(tmp_path / "long.jsonl", [{**PREFS[0], "prompt": "word " * 300}])
    (tmp_path / "prefs.txt").write_text("prompt\tchosen\trejected\n")
    model, tok = tiny_causal_lm()
    tok.pad_token, tok.eos_token = None, None
    save_model(model, tok, tmp_path / "nopad")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["dpo", "--data", "{tmp}/missing.jsonl"],
            "missing.jsonl row 1: field 'rejected' is missing",
        ),
        (
            ["reward-model", "--data", "{tmp}/empty.jsonl"],
            "empty.jsonl row 2: field 'chosen' is empty",
        ),
        (["dpo", "--data", "{tmp}/long.jsonl"], "long.jsonl row 1: prompt is"),
        (["dpo", "--data", "{tmp}/prefs.txt"], "unsupported data file type .txt"),
        (["dpo", "--data", "{tmp}/nope.jsonl"], "does not exist"),
        (["sft", "--model", "{tmp}/nopad", "--data", "{files}/sft.jsonl"], "neither a pad"),
        (["sft", "--model", "{tmp}/no-such-model", "--data", "{files}/sft.jsonl"], "no-such-model"),
        (["dpo", "--data", "{files}/prefs.jsonl", "-o", "beta=0"], "beta must be positive"),
        (["dpo", "--data", "{files}/prefs.jsonl", "-o", "betta=1"], "unknown trainer key"),
        (["sft", "--data", "{files}/sft.jsonl", "-o", "max_length=100000"], "context"),
        (["sft", "--resume", "{tmp}/runs"], "not a pavlov run directory"),
        (["generate", "--model", "{files}/tiny"], "--prompt"),
        (
            ["generate", "--model", "{files}/tiny", "--prompt", "hi", "--max-new-tokens", "300"],
            "exceeds the model's context",
        ),
        (["generate", "--model", "{files}/tiny", "--prompt", "hi", "--top-p", "0"], "top_p"),
        (["sft", "--data", "{files}/sft.jsonl", "--device", "gpu"], "device must be 'auto'"),
        (["dpo", "--data", "{files}/prefs.jsonl", "--device", "cuda:x"], "device must be"),
        (["generate", "--model", "{files}/tiny", "--prompt", "hi", "--device", "tpu"], "device"),
        *([(["reward-model", "--data", "{files}/prefs.jsonl", "--device", "cuda"],
            "device 'cuda': torch sees no CUDA GPU here"),
           (["sft", "--data", "{files}/sft.jsonl", "--device", "cuda:1"], "no CUDA GPU"),
           (["generate", "--model", "{files}/tiny", "--prompt", "hi", "--device", "cuda"],
            "no CUDA GPU")]
          if not torch.cuda.is_available() else []),
    ],
)
def test_bad_input_one_line_exit_2_no_run_dir(args, message, files, tmp_path, capsys):
    _bad_files(files, tmp_path)
    args = [a.format(tmp=tmp_path, files=files) for a in args]
    if "--model" not in args:
        args += ["--model", str(files / "tiny")]
    if args[0] != "generate":
        args += ["--runs-dir", str(tmp_path / "runs"), "--name", "bad"]
    code, out, err = run_cli(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pavlov: error:"), err
    assert message in lines[0]
    assert not (tmp_path / "runs" / "bad").exists()


# --- pavlov rl -------------------------------------------------------------------------------


def rl_args(files, tmp_path, *extra):
    write_jsonl(files / "prompts.jsonl", [{"prompt": f"Review of film {i}:"} for i in range(4)])
    return ["rl", "--model", str(files / "tiny"), "--prompts", str(files / "prompts.jsonl"),
            "--runs-dir", str(tmp_path / "runs"), "--name", "r", "--max-steps", "2",
            "-o", "prompts_per_step=2", "-o", "max_new_tokens=6", *extra]  # fmt: skip


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_command_trains_saves_and_resumes(algo, files, tmp_path, capsys):
    code, out, err = run_cli(rl_args(files, tmp_path, "--algo", algo, "--reward", "vader",
                                     "--json", "-o", "checkpoint_every=1"), capsys)  # fmt: skip
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    run = tmp_path / "runs" / "r"
    assert s["steps"] == 2 and s["algo"] == algo and s["model"] == str(run / "model")
    assert {"reward/mean", "kl/ref", "time/step"} <= set(s["metrics"])
    assert (run / "model" / "model.safetensors").is_file()
    assert (run / "plots" / "reward_mean.png").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    code, out, err = run_cli(["rl", "--resume", str(run), "--max-steps", "3", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "rl needs a reward"),
        (("--reward", "vadr"), "unknown reward 'vadr'"),
        (("--reward", "vader=x"), "weight 'x' is not a number"),
        (("--reward", "vader", "--algo", "grpo", "-o", "group_size=1"), "group_size >= 2"),
        (("--reward", "vader", "-o", "max_new_tokens=100000"), "context"),
        (("--reward", "vader", "--device", "gpu"), "device must be"),
        *([(("--reward", "vader", "--device", "cuda"), "no CUDA GPU")]
          if not torch.cuda.is_available() else []),
    ],
)
def test_rl_bad_input_one_line_exit_2_no_run_dir(extra, message, files, tmp_path, capsys):
    code, _, err = run_cli(rl_args(files, tmp_path, *extra), capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.timeout(300)
def test_sft_trains_data_parallel_with_nproc_rank_0_writes_one_run_and_resumes(files, tmp_path):
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "pavlov", "sft", "--model", str(files / "tiny"), "--data",
            str(files / "sft.jsonl"), "--runs-dir", str(tmp_path / "runs"), "--name", "dp",
            *FAST, "-o", "max_steps=2", "-o", "checkpoint_every=1", "--nproc", "2", "--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    run = tmp_path / "runs" / "dp"
    assert summary["steps"] == 2 and summary["run"] == str(run)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["dp"]
    assert (run / "model" / "model.safetensors").is_file()
    assert read_latest(run / "checkpoints")[0] == "step_2"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == sorted(set(steps)) and steps[-1] == 2  # one writer: no duplicated records
    # --resume continues data-parallel (nproc is saved with the run) to a longer budget
    done = subprocess.run([sys.executable, "-m", "pavlov", "sft", "--resume", str(run),
                           "--max-steps", "3", "--json"], capture_output=True, text=True,
                          timeout=280, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == sorted(set(steps)) and steps[-1] == 3
    assert read_latest(run / "checkpoints")[0] == "step_3"


FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_reshard_after_forward: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
num_machines: 1
num_processes: 2
main_training_function: main
mixed_precision: 'no'
use_cpu: false
"""


DEEPSPEED_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
num_machines: 1
num_processes: 2
main_training_function: main
mixed_precision: 'no'
use_cpu: false
"""


@pytest.mark.timeout(400)
@pytest.mark.parametrize("kind", ["fsdp", "deepspeed"])
def test_accelerate_launch_with_a_sharding_config_saves_whole_and_resumes(files, tmp_path, kind):
    """``accelerate launch`` with the user's FSDP or DeepSpeed (ZeRO-3) accelerate config: the
    two ranks shard the model, the run's checkpoints and ``model/`` are whole, a ``--resume``
    continues sharded, and after 2 steps and a resume to 3 the weights equal a plain
    data-parallel run's that did the same (same batches, same lr schedule)."""
    import os
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file

    if kind == "deepspeed":
        pytest.importorskip("deepspeed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG if kind == "fsdp" else DEEPSPEED_CONFIG)
    common = ["sft", "--model", str(files / "tiny"), "--data", str(files / "sft.jsonl"),
              "--runs-dir", str(tmp_path / "runs"), *FAST, "-o", "checkpoint_every=1",
              "--json"]  # fmt: skip
    launch = [accelerate, "launch", "--config_file", str(tmp_path / "fsdp.yaml"),
              "--main_process_port", "0", "-m", "pavlov"]  # fmt: skip
    done = subprocess.run([*launch, *common, "--name", "fsdp", "-o", "max_steps=2"],
                          capture_output=True, text=True, timeout=180, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "fsdp"
    import yaml

    trainer = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert trainer["sharding"] == kind and trainer["zero_stage"] == 3
    state = torch.load(run / "checkpoints" / "step_2" / "trainer_state.pt", weights_only=False)
    if kind == "fsdp":
        assert any(isinstance(k, str) for k in state["optimizer"]["state"])  # gathered, by name
    else:  # each rank's ZeRO partition of the AdamW moments, gathered to rank 0
        assert state["optimizer"]["zero_stage"] == 3 and len(state["optimizer"]["ranks"]) == 2
    done = subprocess.run([sys.executable, "-m", "pavlov", *common, "--name", "plain",
                           "-o", "max_steps=2", "--nproc", "2", "-o", "sharding=none"],
                          capture_output=True, text=True, timeout=180, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("fsdp", "plain"):  # each resumes as it ran (sharded, or not)
        done = subprocess.run([sys.executable, "-m", "pavlov", "sft", "--resume",
                               str(tmp_path / "runs" / name), "--max-steps", "3", "--json"],
                              capture_output=True, text=True, timeout=180, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert read_latest(tmp_path / "runs" / name / "checkpoints")[0] == "step_3"
    sharded = load_file(run / "model" / "model.safetensors")
    plain = load_file(tmp_path / "runs" / "plain" / "model" / "model.safetensors")
    assert sharded.keys() == plain.keys()
    for name, w in plain.items():
        torch.testing.assert_close(sharded[name], w, rtol=0, atol=1e-5)
    first = load_file(files / "tiny" / "model.safetensors")
    moved = max(float((plain[k] - first[k]).abs().max()) for k in first)
    assert moved > 1e-3  # three real steps of lr 1e-3


def test_a_bad_nproc_is_one_line_and_exit_2(files, tmp_path, capsys):
    code, out, err = run_cli(["sft", "--model", str(files / "tiny"), "--runs-dir",
                              str(tmp_path / "runs"), "--nproc", "0"], capsys)  # fmt: skip
    assert code == 2 and err.strip() == "pavlov: error: nproc must be a positive integer, got 0"
    assert not (tmp_path / "runs").exists()


@pytest.mark.timeout(300)
def test_grpo_trains_data_parallel_with_nproc(files, tmp_path):
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "pavlov", "rl", "--algo", "grpo", "--model",
            str(files / "tiny"), "--reward", "vader", "--runs-dir", str(tmp_path / "runs"),
            "--name", "g", "--max-steps", "2", "-o", "prompts_per_step=2", "-o", "group_size=2",
            "-o", "max_new_tokens=6", "--nproc", "2", "--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["algo"] == "grpo"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["g"]
    assert (tmp_path / "runs" / "g" / "model" / "model.safetensors").is_file()


def test_data_parallel_online_training_says_what_it_supports(files, tmp_path, capsys):
    code, _, err = run_cli(["rl", "--algo", "ppo", "--model", str(files / "tiny"), "--reward",
                            "vader", "--runs-dir", str(tmp_path / "runs"), "--nproc", "2", "-o",
                            "num_minibatches=2"], capsys)  # fmt: skip
    assert code == 2 and "data-parallel online training takes num_minibatches=1" in err
    assert not (tmp_path / "runs").exists()


def test_sharded_online_training_is_refused_in_one_line(files, tmp_path, capsys):
    code, _, err = run_cli(["rl", "--algo", "grpo", "--model", str(files / "tiny"), "--reward",
                            "vader", "--runs-dir", str(tmp_path / "runs"), "--nproc", "2", "-o",
                            "sharding=fsdp"], capsys)  # fmt: skip
    assert code == 2 and "sharded (fsdp, deepspeed) training is for sft, reward-model" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
