"""Every benchmark's smoke mode runs here, on tiny budgets, so none can rot unnoticed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, timeout: int = 300) -> dict:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_ddppo_benchmark_smoke():
    report = _run("ddppo.py", "--smoke")
    for t in report["throughput"].values():
        assert min(t["1proc"]["env_steps"], t["2proc"]["env_steps"]) >= 4096 and t["ratio"] > 0
    row = report["time_to_475"]["per_seed"][0]
    assert min(row[k]["env_steps"] for k in ("2proc", "2proc_split", "2proc_split_steps")) > 0
    assert row["2proc"]["transport"] in ("shm", "gloo")
    assert {"ratio_split", "ratio_split_steps"} <= report["time_to_475"].keys()


@pytest.mark.timeout(300)
def test_devices_benchmark_smoke_on_cpu():
    """The script benchmarks/gpu_check.sh runs on cuda, here on the CPU with tiny budgets."""
    report = _run("devices.py", "--device", "cpu", "--smoke")
    assert [r["algo"] for r in report["runs"]] == ["ppo", "dqn"]
    assert all(r["device"] == "cpu" and r["env_steps"] >= 2048 for r in report["runs"])


@pytest.mark.timeout(120)
def test_apg_vs_ppo_benchmark_smoke():
    report = _run("apg_vs_ppo.py", "--smoke")
    assert report["random_return"] < report["threshold"] < report["apg_reference_return"] < 0
    assert set(report["results"]) == {"apg", "ppo"}
    for rows in report["results"].values():
        assert [r["seed"] for r in rows] == [0]
        assert rows[0]["steps_run"] >= 3_200 and rows[0]["final_eval"] is not None
        if rows[0]["reached"]:  # the stop hook fired at an evaluation within the budget
            assert 0 < rows[0]["env_steps"] <= rows[0]["steps_run"] and rows[0]["seconds"] > 0


@pytest.mark.timeout(120)
def test_rollout_benchmark_smoke():
    report = _run("rollout.py", "--smoke")
    assert (report["steps"], report["repeats"], report["n_envs"]) == (4_096, 1, 8)
    assert report["raw_sps"] > 0 and report["pavlov_rollout_sps"] > 0
    assert report["ratio"] == pytest.approx(report["pavlov_rollout_sps"] / report["raw_sps"],
                                            rel=1e-2)


@pytest.mark.timeout(120)
def test_tabular_benchmark_smoke():
    report = _run("tabular.py", "--smoke")
    assert (report["steps"], report["repeats"]) == (2_000, 1)
    assert [r["env"] for r in report["results"]] == ["FrozenLake-v1", "Taxi-v4", "CliffWalking-v1"]
    for r in report["results"]:
        assert r["episodes"] >= 1
        assert min(r["raw_sps"], r["pavlov_sps"], r["callback_sps"]) > 0
        assert r["ratio"] > 0 and r["callback_ratio"] > 0


@pytest.mark.timeout(180)
def test_vs_sb3_benchmark_smoke():
    """Both libraries train PPO and DQN for the whole smoke budget and are evaluated."""
    report = _run("vs_sb3.py", "--smoke")
    assert report["smoke"] and set(report["algos"]) == {"ppo", "dqn"}
    for algo in report["algos"].values():
        (row,) = algo["per_seed"]
        assert set(row) == {"seed", "pavlov", "sb3"}
        for lib in ("pavlov", "sb3"):
            assert row[lib]["steps_run"] >= 1_024 and row[lib]["seconds_run"] > 0
            assert row[lib]["evals"] >= 1


@pytest.mark.timeout(180)
def test_sampling_benchmark_smoke():
    """pavlov's engine and HF ``generate`` both sample batch x new_tokens (the script checks
    the output shapes) on the tiny llama."""
    report = _run("sampling.py", "--smoke")
    assert report["smoke"] and report["model"] == "random-llama-smoke"
    assert (report["batch"], report["new_tokens"], report["repeats"]) == (2, 4, 1)
    tokens = report["batch"] * report["new_tokens"]
    for side in ("hf", "pavlov"):
        seconds, rate = report[f"{side}_seconds"], report[f"{side}_tokens_per_s"]
        assert seconds > 0 and rate > 0
        assert abs(rate * seconds - tokens) <= rate * 5e-4 + 0.05 * seconds  # JSON rounding
    assert report["ratio"] > 0


@pytest.mark.timeout(180)
def test_decode_kernels_benchmark_smoke():
    """Every kernel streams every tiny weight shape at a positive rate, and sampling runs with
    each decode kernel this machine has."""
    report = _run("decode_kernels.py", "--smoke")
    assert report["smoke"] and set(report["gb_per_s"]) == {"1", "2"}
    kernels = {"plain"}
    for rates in report["gb_per_s"].values():
        assert [name.split()[0] for name in rates] == ["q/o", "gate/up", "down", "lm_head"]
        for rate in rates.values():
            assert {"read", "mkl"} <= set(rate) and min(rate.values()) > 0
            kernels |= {"packed"} if "onednn_packed" in rate else set()
            kernels |= {"native"} if "native" in rate else set()
    seconds = report["sampling_seconds"]
    assert set(seconds) == kernels and min(seconds.values()) > 0


@pytest.mark.timeout(180)
def test_ppo_vs_grpo_benchmark_smoke():
    """Both algorithms train 3 steps on the tiny llama, sampling 8 rows of <= 4 tokens."""
    report = _run("ppo_vs_grpo.py", "--smoke")
    assert report["smoke"] and set(report["runs"]) == {"grpo", "ppo"}
    for algo, runs in report["runs"].items():
        (run,) = runs
        assert run["algo"] == algo and run["median_step_s"] > 0
        assert 0 < run["mean_response_tokens"] <= 4
        assert run["phases"]["time/generate"] > 0 and run["phases"]["time/learn"] > 0
        assert min(run["phases"].values()) >= 0
    assert report["ratio"] == pytest.approx(report["ppo_s"] / report["grpo_s"])


@pytest.mark.timeout(180)
def test_shared_prompts_benchmark_smoke():
    """Each scoring mode (full, packed, cached) runs a learn and a reference pass."""
    report = _run("shared_prompts.py", "--smoke")
    assert report["smoke"] and (report["prompts"], report["group"]) == (2, 4)
    (row,) = report["rows"]
    assert (row["prompt_len"], row["rows"], row["completion"]) == (9, 8, 4)
    assert row["saved_rows"] == (8 - 2) * 9 and row["default"] in {"full", "packed", "cached"}
    for fn in ("learn", "reference"):
        for mode in ("full", "packed", "cached"):
            assert row[f"{fn}_{mode}"] > 0
        for mode in ("packed", "cached"):
            assert row[f"{fn}_{mode}_ratio"] > 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("extra", [(), ("--lora", "--sharding", "fsdp"),
                                   ("--sharding", "deepspeed", "--zero-stage", "2")])
def test_llm_ddp_benchmark_smoke(extra):
    if "deepspeed" in extra:
        pytest.importorskip("deepspeed")
    report = _run("llm_ddp.py", "--smoke", *extra)
    assert report["sharding"] == (extra[extra.index("--sharding") + 1] if extra else "none")
    one, two = report["one_process"], report["two_processes"]
    assert len(one["step_seconds"]) == len(two["step_seconds"]) == 3
    assert one["median"] > 0 and two["median"] > 0
    assert report["ratio"] == pytest.approx(two["median"] / one["median"], abs=1e-3)
    assert two["transport"] in ("shm", "gloo") and one["transport"] == "-"


TRAINING = ("sft", "reward", "dpo", "grpo")


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_vs_trl_benchmark_smoke():
    report = _run("vs_trl.py", "--smoke", timeout=380)
    steps = report["settings"]["steps"]
    runs = report["runs"]
    assert [r for r in runs if "error" in r or "skipped" in r] == []
    summary = report["summary"]
    assert set(summary) == {*TRAINING, "sampling"}
    for task in TRAINING:
        for impl in ("pavlov", "trl"):
            row = summary[task][impl]
            assert _positive(row["median_step_s"]), (task, impl, row)
            (run,) = [r for r in runs if r["task"] == task and r["impl"] == impl]
            assert len(run["step_seconds"]) == steps, (task, impl)
            assert all(_positive(s) for s in run["step_seconds"]), (task, impl, run)
        assert _positive(summary[task]["pavlov_vs_trl"]["step_time"])
        assert summary[task]["batches_match"] is True, task  # GRPO: the same prompts per step
    for impl in ("pavlov", "trl"):
        (run,) = [r for r in runs if r["task"] == "grpo" and r["impl"] == impl]
        rewards = [s["reward_mean"] for s in run["grpo_steps"]]
        assert len(rewards) == steps and all(-1 <= r <= 1 for r in rewards), (impl, rewards)
        assert math.isfinite(summary["grpo"][impl]["reward_mean"])
    sampling = summary["sampling"]
    assert _positive(sampling["pavlov_tokens_per_s"]) and _positive(sampling["hf_tokens_per_s"])


@pytest.mark.timeout(200)
def test_vs_trl_profile_reports_each_sides_top_ops():
    """``--profile`` (what a lent GPU runs for SFT's per-length cost): both workers' top ops."""
    report = _run("vs_trl.py", "--smoke", "--tasks", "sft", "--profile", timeout=180)
    assert report["settings"]["profile"] is True
    for run in report["runs"]:
        host = run["profile"]["host"]
        assert 0 < len(host) <= 25 and run["profile"]["device"] == [], run["impl"]  # CPU here
        assert all(_positive(op["self_s"]) and op["calls"] >= 1 for op in host), run["impl"]
        assert [op["self_s"] for op in host] == sorted((op["self_s"] for op in host), reverse=True)
        assert any(op["op"].startswith("aten::") for op in host), run["impl"]


@pytest.mark.timeout(300)
def test_agent_rollout_benchmark_smoke():
    """Multi-turn episodes with the cache, with re-prefilling (same samples: the script checks)
    and single-turn sampling of as many tokens, on the tiny model."""
    report = _run("agent_rollout.py", "--smoke")
    assert report["smoke"] and report["episodes"] == 2 and report["turns"] == 4
    assert report["sampled_tokens"] > 0 and report["context_tokens"] > report["sampled_tokens"]
    for side in ("episodes", "reprefill", "single"):
        assert report[f"{side}_seconds"] > 0 and report[f"{side}_tokens_per_s"] > 0
    assert report["ratio_vs_single"] > 0 and report["ratio_vs_reprefill"] > 0


@pytest.mark.timeout(300)
def test_agent_learning_benchmark_smoke():
    """Untrained -> planner warm start -> GRPO on episodes, each evaluated on held-out games,
    on the tiny model."""
    report = _run("agent_learning.py", "--smoke")
    assert report["smoke"] and report["held_out_games"] == 2 and report["sft_examples"] > 0
    assert set(report["results"]) == {"untrained", "warm_start", "rl"}
    assert all(0 <= r["success"] <= 1 for r in report["results"].values())
    assert len(report["rl_curve"]) == 1 and set(report["seconds"]) >= {"sft", "rl"}


@pytest.mark.timeout(120)
def test_gpu_stand_in_unpack_builds_models_the_loaders_find(tmp_path):
    """benchmarks/gpu_stand_in.py --unpack (what a lent GPU machine runs): random weights in
    the carried architectures, where pavlov's loaders look for the embedded assets."""
    from transformers import BertConfig

    from pavlov.llm.models import assets
    from pavlov.llm.models.tiny import tiny_causal_lm, tiny_tokenizer

    pack = tmp_path / "pack"
    model, tok = tiny_causal_lm()
    model.config.save_pretrained(pack / "smollm2")
    tok.save_pretrained(pack / "smollm2")
    BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64).save_pretrained(pack / "minilm")
    tiny_tokenizer().save_pretrained(pack / "minilm")
    (pack / Path(assets.RT_CSV).name).write_bytes(b"not read here")
    site, cache = tmp_path / "site", tmp_path / "cache"
    env = {**__import__("os").environ, "PAVLOV_CACHE": str(cache)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_stand_in.py"), "--unpack",
                           str(pack), "--site", str(site)], capture_output=True, text=True,
                          timeout=100, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = ("from pavlov.llm.models import assets; from pavlov.llm.models.loading import "
             "load_causal_lm; m, _ = load_causal_lm('smollm2'); print(m.config.hidden_size, "
             "assets.minilm_dir(), assets.rt_corpus_path())")
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=100, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    size, minilm, rt = done.stdout.split()
    assert int(size) == model.config.hidden_size
    assert Path(minilm) == site / assets.MINILM_PACKAGE / "model"
    assert (Path(minilm) / "model.safetensors").is_file()
    assert Path(rt).read_bytes() == b"not read here"
