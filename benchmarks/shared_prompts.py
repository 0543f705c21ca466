"""Shared-prompt scoring: a GRPO learn pass with each distinct prompt run once vs every row.

GRPO scores G completions per prompt; the full forward runs the prompt columns G times.
:func:`pavlov.llm.scoring.logprobs.score_tokens` can run each distinct prompt once
(``share_prompts``):
packed (one forward over ``[prompt | response 1 | ... | response G]`` rows with a block mask) or
cached (the prompts' key/value cache copied to the rows that repeat them, then the responses).
This measures, on SmolLM2-135M in float32 with the trainers' kernels
(:func:`pavlov.llm.cpu.lean.fast_kernels`), the seconds of one policy learn pass (forward +
backward of the summed response log-probs) and of one no-grad reference pass in each mode
(``full``, ``packed``, ``cached``, each forced), for ``prompts x G`` rows, prompt lengths
``--prompt-lengths`` (random token ids, no padding) and response lengths ``--completions``, and
which mode the default picks. Median of ``--repeats`` alternating runs after one warm-up each.

    python benchmarks/shared_prompts.py --threads 2 --out docs/results/shared_prompts.json
    python benchmarks/shared_prompts.py --smoke   # seconds, tiny llama: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def _batch(prompts: int, group: int, prompt_len: int, completion: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(100, vocab, (prompts, prompt_len), generator=g)
    prompt = prompt.repeat_interleave(group, dim=0)  # (prompts x G, P): G rows per prompt
    response = torch.randint(100, vocab, (prompts * group, completion), generator=g)
    ids = torch.cat([prompt, response], dim=1)
    return ids, torch.ones_like(ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--prompt-lengths", default="9,64,256")
    parser.add_argument("--completions", default="32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny random llama, prompt length 9, 4-token completions, 1 repeat",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.prompt_lengths, args.completions, args.repeats = "9", "4", 1
    torch.set_num_threads(args.threads)

    from pavlov.llm.cpu.lean import fast_kernels
    from pavlov.llm.models.loading import load_causal_lm
    from pavlov.llm.models.tiny import tiny_causal_lm
    from pavlov.llm.scoring import logprobs as scoring

    if args.smoke:  # the same architecture (Llama, GQA, tied embeddings), hidden 32
        model, _ = tiny_causal_lm()
    else:
        model, _ = load_causal_lm("smollm2", dtype=torch.float32)
    vocab = model.config.vocab_size
    packing_pays = scoring._packing_pays
    modes = {
        "full": (False, packing_pays, scoring.SHARE_MIN_ROWS),
        "packed": (True, lambda *a: True, scoring.SHARE_MIN_ROWS),
        "cached": (True, lambda *a: False, 0),
    }

    def run(mode: str, fn, ids, mask, start) -> float:
        share, pays, minimum = modes[mode]
        default = scoring._packing_pays, scoring.SHARE_MIN_ROWS
        scoring._packing_pays, scoring.SHARE_MIN_ROWS = pays, minimum
        try:
            return fn(share, ids, mask, start)
        finally:
            scoring._packing_pays, scoring.SHARE_MIN_ROWS = default

    def learn(share: bool, ids, mask, start) -> float:
        t = time.perf_counter()
        out = scoring.score_tokens(model, ids, mask, start, share_prompts=share)
        out.logprobs.sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    def reference(share: bool, ids, mask, start) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            scoring.score_tokens(model, ids, mask, start, share_prompts=share)
        return time.perf_counter() - t

    rows = []
    with fast_kernels(model, None):
        for completion in (int(c) for c in args.completions.split(",")):
            for prompt_len in (int(p) for p in args.prompt_lengths.split(",")):
                ids, mask = _batch(args.prompts, args.group, prompt_len, completion, vocab, 0)
                batch = (ids, mask, prompt_len)
                times: dict[str, list[float]] = {}
                for fn in (learn, reference):
                    for mode in modes:
                        run(mode, fn, *batch)  # warm-up (oneDNN primitives for these shapes)
                    for _ in range(args.repeats):
                        for mode in modes:
                            times.setdefault(f"{fn.__name__}_{mode}", []).append(
                                run(mode, fn, *batch)
                            )
                B, U = len(ids), args.prompts
                width = prompt_len + args.group * completion
                saved = (B - U) * prompt_len
                if packing_pays(model, B, U, prompt_len, completion, width):
                    default = "packed"
                else:
                    default = "cached" if saved >= scoring.SHARE_MIN_ROWS else "full"
                row = {"prompt_len": prompt_len, "rows": B, "completion": completion,
                       "saved_rows": saved, "default": default}  # fmt: skip
                row.update({k: round(statistics.median(v), 3) for k, v in times.items()})
                for key in ("learn_packed", "learn_cached", "reference_packed", "reference_cached"):
                    full = row[key.split("_")[0] + "_full"]
                    row[key + "_ratio"] = round(row[key] / full, 3)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {"benchmark": "shared_prompts", "threads": args.threads, "prompts": args.prompts,
              "group": args.group, "torch": torch.__version__, "smoke": args.smoke,
              "rows": rows}  # fmt: skip
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
