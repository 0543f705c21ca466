"""Data-parallel overhead of the LLM trainers: a 2-process step (1 thread each) vs a 1-process
step (2 threads) on the same global batch.

Both sides run :func:`pavlov.llm.trainers.train_sft` (or ``--task dpo``) on SmolLM2-135M-Instruct
(fp32) with the same examples in the same global batches; the 2-process side is started by
:func:`pavlov.run.distributed.launch` (what ``pavlov sft --nproc 2`` uses): each rank takes its
share of each micro-batch (balanced in padded tokens) and the ranks sum their gradients before
each step.
Reported: the median of ``train/seconds_per_step`` over steps 3..N of each side, and the ratio
2-process / 1-process (goal <= 1.15), with the 2-process side's ``transport`` for the gradient
sums (``shm``: DeepSpeed's shared-memory all-reduce, :mod:`pavlov.run.shm`; ``gloo``: TCP, or
under ``PAVLOV_CPU_ALLREDUCE=gloo``). Run it on an idle machine.

    python benchmarks/llm_ddp.py                    # SmolLM2, SFT, 8 steps of 8 sequences
    python benchmarks/llm_ddp.py --task dpo
    python benchmarks/llm_ddp.py --lora             # LoRA r=16: tiny gradients to exchange
    python benchmarks/llm_ddp.py --sharding fsdp    # the 2 ranks shard the model (FSDP2)
    python benchmarks/llm_ddp.py --sharding deepspeed --zero-stage 2   # DeepSpeed's ZeRO engine
    python benchmarks/llm_ddp.py --smoke            # tiny Llama, 3 steps: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from pavlov.run import distributed


def run(task: str, steps: int, batch: int, threads: int, smoke: bool, lora: bool = False,
        sharding: str = "none", zero_stage: int = 3) -> dict:
    """One training run (this process's part of it) -> its step seconds."""
    from pavlov.llm.data.rt import rt_preferences, rt_sft
    from pavlov.llm.trainers import DPOConfig, SFTConfig, train_dpo, train_sft

    torch.set_num_threads(threads)
    if smoke:
        from pavlov.llm.models.tiny import tiny_causal_lm

        model, tok = tiny_causal_lm()
    else:
        from pavlov.llm.models.loading import load_causal_lm

        model, tok = load_causal_lm("smollm2", dtype=torch.float32)
    shared = dict(max_steps=steps, batch_size=batch, max_length=128, seed=0, eval_every=0,
                  learning_rate=2e-4 if lora else 2e-5, lora=lora, sharding=sharding,
                  zero_stage=zero_stage)  # fmt: skip
    if task == "sft":
        fit = train_sft(SFTConfig(**shared), model, tok, rt_sft("train")[: steps * batch]).fit
    else:
        pairs = rt_preferences("train")[: steps * batch]
        fit = train_dpo(DPOConfig(**shared), model, tok, pairs).fit
    seconds = [r["train/seconds_per_step"] for r in fit.history if "train/seconds_per_step" in r]
    dp = distributed.current()
    return {"step_seconds": [round(s, 4) for s in seconds],
            "median": statistics.median(seconds[2:] or seconds),
            "transport": dp.transport if dp else "-"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("sft", "dpo"), default="sft")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="global sequences (pairs) a step")
    parser.add_argument("--threads", type=int, default=2, help="of the 1-process side")
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 instead of all weights")
    parser.add_argument("--sharding", choices=("none", "fsdp", "deepspeed"), default="none",
                        help="of the 2-process side")
    parser.add_argument("--zero-stage", type=int, choices=(1, 2, 3), default=3,
                        help="DeepSpeed's ZeRO stage (--sharding deepspeed)")
    parser.add_argument("--smoke", action="store_true", help="tiny Llama, 3 steps of 4")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch = 3, 4
    t0 = time.perf_counter()
    one = run(args.task, args.steps, args.batch, args.threads, args.smoke, args.lora)
    print(f"1 process, {args.threads} threads: {one}", flush=True)
    two = distributed.launch(2, run, args.task, args.steps, args.batch,
                             max(1, args.threads // 2), args.smoke, args.lora,
                             args.sharding, args.zero_stage)  # fmt: skip
    print(f"2 processes, {max(1, args.threads // 2)} thread(s) each: {two}", flush=True)
    report = {
        "benchmark": "llm_ddp", "task": args.task, "smoke": args.smoke, "lora": args.lora,
        "sharding": args.sharding, "zero_stage": args.zero_stage,
        "machine": platform.processor() or platform.machine(), "steps": args.steps,
        "batch": args.batch, "one_process": one, "two_processes": two,
        "ratio": round(two["median"] / one["median"], 3),
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    print(f"2-process / 1-process step time: {report['ratio']} (goal <= 1.15)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
