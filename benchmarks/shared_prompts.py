"""Shared-prompt scoring: a GRPO learn pass with each distinct prompt run once vs every row.

GRPO scores G completions per prompt; the full forward runs the prompt columns G times.
:func:`pavlov.llm.scoring.score_tokens` can run each distinct prompt once and copy its key/value
cache to the rows that repeat it (``share_prompts``). This measures, on SmolLM2-135M in float32
with the trainers' kernels (:func:`pavlov.llm.kernels.fast_kernels`), the seconds of one policy
learn pass (forward + backward of the summed response log-probs) and of one no-grad reference
pass, with sharing forced on and off, for ``prompts x G`` rows, prompt lengths ``--prompt-lengths``
(random token ids, no padding) and ``--completion`` response tokens. Median of ``--repeats``
alternating runs after one warm-up each.

    python benchmarks/shared_prompts.py --threads 2 --out docs/results/shared_prompts.json
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
    parser.add_argument("--completion", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pavlov.llm import scoring
    from pavlov.llm.kernels import fast_kernels
    from pavlov.llm.models import load_causal_lm

    model, _ = load_causal_lm("smollm2", dtype=torch.float32)
    vocab = model.config.vocab_size
    rows = []
    with fast_kernels(model, None):
        for prompt_len in (int(p) for p in args.prompt_lengths.split(",")):
            ids, mask = _batch(args.prompts, args.group, prompt_len, args.completion, vocab, 0)

            def learn(share: bool, ids=ids, mask=mask, start=prompt_len) -> float:
                t = time.perf_counter()
                out = scoring.score_tokens(model, ids, mask, start, share_prompts=share)
                out.logprobs.sum().backward()
                model.zero_grad(set_to_none=True)
                return time.perf_counter() - t

            def reference(share: bool, ids=ids, mask=mask, start=prompt_len) -> float:
                t = time.perf_counter()
                with torch.no_grad():
                    scoring.score_tokens(model, ids, mask, start, share_prompts=share)
                return time.perf_counter() - t

            default = scoring.SHARE_MIN_ROWS
            scoring.SHARE_MIN_ROWS = 0  # force the shared path whatever the saving
            try:
                times: dict[str, list[float]] = {}
                for fn in (learn, reference):
                    fn(True), fn(False)  # warm-up (oneDNN primitives for these shapes)
                    for _ in range(args.repeats):
                        for share in (True, False):
                            key = f"{fn.__name__}_{'shared' if share else 'full'}"
                            times.setdefault(key, []).append(fn(share))
            finally:
                scoring.SHARE_MIN_ROWS = default
            saved = (len(ids) - args.prompts) * prompt_len
            row = {"prompt_len": prompt_len, "rows": len(ids), "completion": args.completion,
                   "saved_rows": saved, "used_by_default": saved >= default}  # fmt: skip
            row.update({k: round(statistics.median(v), 3) for k, v in times.items()})
            row["learn_ratio"] = round(row["learn_shared"] / row["learn_full"], 3)
            row["reference_ratio"] = round(row["reference_shared"] / row["reference_full"], 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {"benchmark": "shared_prompts", "threads": args.threads, "prompts": args.prompts,
              "group": args.group, "torch": torch.__version__, "rows": rows}  # fmt: skip
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
