"""The kill harness: every trainer, killed at random moments and resumed, ends bitwise equal to
its uninterrupted run.

For each trainer (tabular Q-learning, DQN, PPO, A2C, SFT, reward model, DPO, GRPO, PPO-RLHF, and
PPO data-parallel over 2 gloo processes) the harness

1. runs ``pavlov ...`` once uninterrupted (the reference) and times it from the moment its run
   directory exists to its exit;
2. starts the same command again and SIGKILLs it at a random moment of that window, or at a
   random ``atomic_write`` (``PAVLOV_KILL_AT_WRITE=n``: after the temporary file is written,
   before the rename: a kill in the middle of saving a checkpoint or its pointer);
3. resumes it with ``pavlov ... --resume runs/NAME`` (a run killed before its first checkpoint
   starts from scratch) and compares: the final parameters and optimizer state (every tensor
   and array, bitwise) and ``metrics.jsonl`` without its wall-clock fields.

``make test`` runs one random kill and one kill during a write for Q-learning, PPO and SFT;
``make test-slow`` runs 5 random kills and 2 kills during writes for every trainer
(``docs/reliability.md`` has the tally and how to rerun it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

WALL_CLOCK = ("time", "charts/SPS")
"""Record fields that measure wall time; everything else must be identical."""
TIMEOUT = 240


@dataclass
class Case:
    start: list[str]
    """The command (``{runs}`` and ``{name}`` filled in); ``--resume`` continues it."""
    resume: list[str]
    """The resume command, ``{run}`` filled in."""
    kind: str
    """What the final state is: ``tabular`` (final.npz), ``deep`` (final.pt), ``llm``."""
    max_write: int
    """``PAVLOV_KILL_AT_WRITE`` is drawn from ``2 .. max_write`` (writes a run surely makes)."""


def deep(algo: str, *args: str) -> Case:
    return Case(["train", algo, "--env", "CartPole-v1", "--eval-episodes", "3", "-q",
                 "--runs-dir", "{runs}", "--name", "{name}", *args],
                ["train", "--resume", "{run}", "-q", "--eval-episodes", "3"], "deep", 8)


def llm(command: str, *args: str) -> Case:
    return Case([command, "--model", "{assets}/tiny", "--runs-dir", "{runs}", "--name", "{name}",
                 "-q", "-o", "checkpoint_every=2", "-o", "log_every=3", *args],
                [command, "--resume", "{run}", "-q"], "llm", 6)


TINY = ["-o", "batch_size=3", "-o", "learning_rate=1e-3", "-o", "max_length=64"]
ONLINE = ["--prompts", "{assets}/prompts.jsonl", "--reward", "{assets}/rm", "--max-steps", "8",
          "-o", "prompts_per_step=2", "-o", "group_size=2", "-o", "max_new_tokens=6",
          "-o", "learning_rate=1e-3"]
CASES = {
    "q-learning": Case(["train", "q-learning", "--env", "FrozenLake-v1", "--episodes", "10000",
                        "--checkpoint-every", "500", "--eval-episodes", "10", "-q",
                        "--runs-dir", "{runs}", "--name", "{name}"],
                       ["train", "--resume", "{run}", "-q"], "tabular", 20),
    "dqn": deep("dqn", "--total-steps", "6000", "--checkpoint-every", "600",
                "-o", "learning_starts=500"),
    "ppo": deep("ppo", "--total-steps", "24576", "--checkpoint-every", "2048"),
    # with evaluations: best.pt is written between the step checkpoints (and may be `latest`)
    "a2c": deep("a2c", "--total-steps", "12000", "--checkpoint-every", "1000",
                "--evaluate-every", "1500"),
    "ppo-2proc": deep("ppo", "--total-steps", "24576", "--checkpoint-every", "4096",
                      "--evaluate-every", "6144", "--nproc", "2"),
    "sft": llm("sft", "--data", "{assets}/sft.jsonl", "--max-steps", "12", *TINY),
    "reward-model": llm("reward-model", "--data", "{assets}/prefs.jsonl", "--max-steps", "12",
                        *TINY),
    "dpo": llm("dpo", "--data", "{assets}/prefs.jsonl", "--max-steps", "12", *TINY),
    "grpo": llm("rl", "--algo", "grpo", *ONLINE),
    "ppo-rlhf": llm("rl", "--algo", "ppo", *ONLINE),
}
QUICK = ["q-learning", "ppo", "sft"]


# --------------------------------------------------------------------------------- the harness


def pavlov_cmd(args: list[str], **fill: str) -> list[str]:
    return [sys.executable, "-m", "pavlov", *(a.format(**fill) for a in args)]


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PAVLOV_KILL_AT_WRITE"}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_to_end(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(args, env=env or env_with(), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def wait_for(path: Path, proc: subprocess.Popen) -> float:
    """Poll until ``path`` exists (the run directory is made) -> the time it appeared."""
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            break
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)
    return time.monotonic()


def reference(case: Case, runs: Path, assets: Path) -> tuple[Path, float]:
    """The uninterrupted run -> (its directory, seconds from its config.yaml to its exit)."""
    run = runs / "ref"
    proc = subprocess.Popen(pavlov_cmd(case.start, runs=str(runs), name="ref",
                                       assets=str(assets)),
                            env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    t0 = wait_for(run / "config.yaml", proc)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-2000:]
    return run, time.monotonic() - t0


def killed_and_resumed(case: Case, runs: Path, assets: Path, name: str, *, at: float | None,
                       write: int | None) -> Path:
    """Start the run, SIGKILL it ``at`` seconds after its directory appears (or during its
    ``write``-th atomic write), resume it to the end -> its directory."""
    run = runs / name
    extra = {} if write is None else {"PAVLOV_KILL_AT_WRITE": str(write)}
    proc = subprocess.Popen(pavlov_cmd(case.start, runs=str(runs), name=name, assets=str(assets)),
                            env=env_with(**extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    if at is not None:
        wait_for(run / "config.yaml", proc)
        time.sleep(at)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: --nproc workers die with it
    proc.wait(timeout=TIMEOUT)
    if write is not None:  # (a --nproc launcher exits with an error when rank 0 dies)
        assert proc.returncode != 0, f"write {write} was never reached"
    deadline = time.monotonic() + 60
    while group_alive(proc.pid):  # no orphaned worker left behind
        assert time.monotonic() < deadline, "a worker outlived its killed run by 60 s"
        time.sleep(0.1)
    if proc.returncode == 0:  # not killed (the uninterrupted rerun)
        return run
    if not run.exists():  # killed before it made its directory: the user starts it again
        run_to_end(pavlov_cmd(case.start, runs=str(runs), name=name, assets=str(assets)))
        return run
    run_to_end(pavlov_cmd(case.resume, run=str(run)))
    return run


# ------------------------------------------------------------------------------ comparisons


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK and "seconds" not in k
             and not k.startswith("time/")} for r in rows]


def final_state(run: Path, kind: str) -> dict:
    if kind == "tabular":
        with np.load(run / "checkpoints" / "final.npz") as f:
            return {k: f[k] for k in f.files}
    if kind == "deep":
        return torch.load(run / "checkpoints" / "final.pt", weights_only=False)
    from safetensors.torch import load_file

    from pavlov.run.checkpoint import read_latest

    step = read_latest(run / "checkpoints")[0]
    state = torch.load(run / "checkpoints" / step / "trainer_state.pt", weights_only=False)
    weights = {f.name: load_file(f) for f in sorted((run / "model").glob("*.safetensors"))}
    return {"weights": weights, **{k: state[k] for k in ("step", "optimizer", "scheduler",
                                                         "rng", "task", "metric_log")}}


def differences(a, b, path: str = "") -> list[str]:
    """Paths where two nested states differ (tensors and arrays bitwise, NaN equal to NaN)."""
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        # "envs": pickled sub-envs; pickle's bytes are not canonical (its memo follows object
        # identity), and what they hold is checked by the trajectories the metrics record
        return [d for k in a if k != "envs" for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(
            a.view(torch.uint8) if a.dim() else a.reshape(1).view(torch.uint8),
            b.view(torch.uint8) if b.dim() else b.reshape(1).view(torch.uint8))
        return [] if same else [path]
    if isinstance(a, np.ndarray):
        return [] if a.shape == b.shape and a.tobytes() == b.tobytes() else [path]
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r:.80} != {b!r:.80}"]


def assert_same_run(ref: Path, other: Path, kind: str, what: str) -> None:
    diff = differences(final_state(ref, kind), final_state(other, kind))
    assert not diff, f"{what}: final state differs in {len(diff)} places, e.g. {diff[:5]}"
    best = ref / "checkpoints" / "best.pt"  # the best evaluation's state, where evaluated
    if best.exists():
        diff = differences(*(torch.load(r / "checkpoints" / "best.pt", weights_only=False)
                             for r in (ref, other)))  # fmt: skip
        assert not diff, f"{what}: best.pt differs in {len(diff)} places, e.g. {diff[:5]}"
    m_ref, m_other = metrics(ref), metrics(other)
    first = next((i for i, (x, y) in enumerate(zip(m_ref, m_other, strict=False)) if x != y),
                 None)
    assert m_ref == m_other, (f"{what}: metrics.jsonl differs ({len(m_ref)} vs {len(m_other)} "
                              f"records; first difference at record {first})")
    assert not list((other / "checkpoints").glob(".*.tmp")), "a stray temporary file was left"


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A tiny causal LM, SFT and preference data, prompts and a tiny trained reward model."""
    from pavlov.llm.models.loading import save_model
    from pavlov.llm.models.tiny import tiny_causal_lm

    root = tmp_path_factory.mktemp("kill-assets")
    model, tok = tiny_causal_lm()
    save_model(model, tok, root / "tiny")

    def jsonl(name: str, rows: list[dict]) -> None:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("sft.jsonl", [{"prompt": f"Review of film {i}:", "completion": " a bold story"}
                        for i in range(8)])
    jsonl("prefs.jsonl", [{"prompt": f"Review of film {i}:", "chosen": " great and warm",
                           "rejected": " dull"} for i in range(8)])
    jsonl("prompts.jsonl", [{"prompt": f"Review of film {i}:"} for i in range(8)])
    run_to_end(pavlov_cmd(["reward-model", "--model", str(root / "tiny"), "--data",
                           str(root / "prefs.jsonl"), "--max-steps", "3", "--runs-dir",
                           str(root), "--name", "rm", "-q", *TINY]))
    return root


@pytest.fixture(scope="module")
def references(tmp_path_factory, assets):
    """``name -> (reference run, window)``, each trainer's uninterrupted run made once."""
    cache: dict[str, tuple[Path, float]] = {}

    def get(name: str) -> tuple[Path, float]:
        if name not in cache:
            cache[name] = reference(CASES[name], tmp_path_factory.mktemp(f"ref-{name}"), assets)
        return cache[name]

    return get


def kill_plan(name: str, n_random: int, n_writes: int, window: float) -> list[dict]:
    """The kill moments of one trainer, from a generator seeded by its name (reproducible)."""
    rng = random.Random(name)
    case = CASES[name]
    plan = [{"at": rng.uniform(0.02, 0.98) * window, "write": None} for _ in range(n_random)]
    plan += [{"at": None, "write": n} for n in rng.sample(range(2, case.max_write + 1), n_writes)]
    return plan


def check_trainer(name: str, n_random: int, n_writes: int, tmp_path: Path, assets: Path,
                  references, tally: dict | None = None) -> None:
    case = CASES[name]
    runs = tmp_path / "runs"
    ref, window = references(name)
    again = killed_and_resumed(case, runs, assets, "again", at=None, write=None)
    assert_same_run(ref, again, case.kind, "an uninterrupted rerun (determinism)")
    for i, kill in enumerate(kill_plan(name, n_random, n_writes, window)):
        what = (f"killed {kill['at']:.2f} s into a {window:.2f} s run" if kill["at"] is not None
                else f"killed during atomic write #{kill['write']}")
        run = killed_and_resumed(case, runs, assets, f"kill{i}", **kill)
        assert_same_run(ref, run, case.kind, what)
        if tally is not None:
            tally.setdefault(name, []).append(what)


# ---------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("name", QUICK)
def test_a_killed_run_resumes_bitwise(name, tmp_path, assets, references):
    check_trainer(name, 1, 1, tmp_path, assets, references)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_every_trainer_survives_five_random_kills_and_two_during_writes(name, tmp_path, assets,
                                                                       references):
    tally: dict = {}
    check_trainer(name, 5, 2, tmp_path, assets, references, tally)
    report = os.environ.get("PAVLOV_KILL_REPORT")  # docs/reliability.md's tally
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"trainer": name, "survived": tally[name]}) + "\n")


# ------------------------------------------------------------ signals, early kills, full disks


@pytest.mark.parametrize("name", QUICK)
def test_sigterm_saves_a_checkpoint_prints_the_resume_command_and_resumes_bitwise(
        name, tmp_path, assets, references):
    case = CASES[name]
    runs = tmp_path / "runs"
    ref, _ = references(name)
    run = runs / "term"
    proc = subprocess.Popen(pavlov_cmd(case.start, runs=str(runs), name="term",
                                       assets=str(assets)),
                            env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for(run / "checkpoints" / "latest", proc)  # mid-training: after its first checkpoint
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last and f"--resume {run}" in last
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    run_to_end(pavlov_cmd(case.resume, run=str(run)))
    assert_same_run(ref, run, case.kind, "after SIGTERM")


@pytest.mark.parametrize("name", ["q-learning", "ppo"])
def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch(name, tmp_path, assets,
                                                                       references):
    case = CASES[name]
    runs = tmp_path / "runs"
    ref, _ = references(name)
    # write 1 is config.yaml, write 2 the first checkpoint: killed before it is renamed
    proc = subprocess.run(pavlov_cmd(case.start, runs=str(runs), name="early",
                                     assets=str(assets)),
                          env=env_with(PAVLOV_KILL_AT_WRITE="2"), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    run = runs / "early"
    assert not (run / "checkpoints" / "latest").exists()
    out = run_to_end(pavlov_cmd(case.resume, run=str(run)))
    notes = [line for line in out.stderr.splitlines() if line.startswith("pavlov: note:")]
    assert len(notes) == 1 and "no checkpoint yet" in notes[0] and "from scratch" in notes[0]
    assert_same_run(ref, run, case.kind, "killed before its first checkpoint")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(
        tmp_path, monkeypatch, capsys):
    import errno

    from pavlov.cli import main
    from pavlov.run import checkpoint
    from pavlov.run.rundir import load_run_checkpoint

    real, calls = checkpoint.atomic_write, []

    def failing(path, write):
        calls.append(Path(path).name)
        if Path(path).name == "step_0000000600.npz":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", failing)
    args = ["train", "q-learning", "--env", "FrozenLake-v1", "--episodes", "1000",
            "--checkpoint-every", "300", "-q", "--runs-dir", str(tmp_path), "--name", "full"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert "could not write checkpoint" in err[0] and "No space left on device" in err[0]
    assert "Traceback" not in err[0]
    run = tmp_path / "full"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert len(load_run_checkpoint(run)["returns"]) == 300  # the previous one, whole
    assert not list((run / "checkpoints").glob(".*.tmp"))
    monkeypatch.setattr(checkpoint, "atomic_write", real)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(run), "-q", "--eval-episodes", "10"])
    assert exc.value.code == 0
    assert len(load_run_checkpoint(run)["returns"]) == 1000


def test_only_the_newest_checkpoints_are_kept(tmp_path, capsys):
    from pavlov.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "ppo", "--env", "CartPole-v1", "--total-steps", "4096", "-o",
              "n_steps=128", "--checkpoint-every", "512", "--keep-checkpoints", "3", "-q",
              "--eval-episodes", "2", "--runs-dir", str(tmp_path), "--name", "k"])
    assert exc.value.code == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "k" / "checkpoints").iterdir())
    # one update is 8 envs x 128 steps: checkpoints at 1024, 2048, 3072, 4096; the first goes
    assert names == ["final.pt", "latest", "step_0000002048.pt", "step_0000003072.pt",
                     "step_0000004096.pt"]


def test_a_read_only_file_system_at_the_start_is_one_line_and_no_run(tmp_path, monkeypatch,
                                                                      capsys):
    """(As root chmod cannot make a directory read-only, so the write fails by hand here.)"""
    import errno

    from pavlov.cli import main
    from pavlov.run import checkpoint

    def read_only(path, write):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoint, "atomic_write", read_only)
    with pytest.raises(SystemExit) as exc:
        main(["train", "q-learning", "--env", "FrozenLake-v1", "--episodes", "10", "-q",
              "--runs-dir", str(tmp_path / "runs"), "--name", "ro"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "Read-only file system" in err[0], err
    assert list((tmp_path / "runs").iterdir()) == []  # no half-made run directory
