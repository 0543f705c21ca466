"""Sampling throughput: pavlov's KV-cache rollout engine vs Hugging Face ``model.generate``.

Both sample ``--batch`` responses of exactly ``--new-tokens`` tokens (no EOS: every row runs to
the limit, so both do the same work) after random ``--prompt-len``-token prompts, with the same
temperature / top-k / top-p, in one process on the same model:

* hf: ``model.generate(do_sample=True, ...)`` (greedy when ``--temperature 0``);
* pavlov: :func:`pavlov.llm.generation.rollout.generate`, which also returns the per-token log-probs
  (``generate`` is not asked for its scores: that is extra work it would do on top).

The model is ``--model`` (a local path or Hub name, loaded in fp32) or, by default, a randomly
initialised Llama shaped like SmolLM2-135M (hidden 576, 30 layers, 9 heads, 3 KV heads,
intermediate 1536, vocab 49152, tied embeddings): random weights time the same as trained ones.
``--ragged`` left-pads prompts of lengths drawn from ``[prompt_len / 2, prompt_len]``.
Each number is the best of ``--repeats`` interleaved runs (the least disturbed by other
processes), after one warm-up run each; ``--clock cpu`` measures this process's CPU time
instead of wall time (steadier beside other work). Acceptance: ratio = pavlov / hf tokens/s
>= 1.0. Prints a table and one JSON line.

    python benchmarks/sampling.py                      # SmolLM2-135M-shaped random llama
    python benchmarks/sampling.py --model path/to/model --batch 8 --new-tokens 32
    python benchmarks/sampling.py --smoke              # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

from pavlov.llm.generation.rollout import SamplingConfig, generate, left_pad

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def smollm2_shaped_llama(seed: int = 0, smoke: bool = False) -> torch.nn.Module:
    """A random-weight Llama with SmolLM2-135M's shapes (about 135M parameters); ``smoke``: the
    same architecture scaled down (hidden 72, 2 layers, intermediate 192, vocab 512)."""
    hidden, inter, layers, vocab = (72, 192, 2, 512) if smoke else (576, 1536, 30, 49152)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def make_prompts(batch: int, length: int, vocab: int, ragged: bool, seed: int = 0):
    """``(ids, mask)``, ``(batch, length)``, left-padded if ``ragged``."""
    g = torch.Generator().manual_seed(seed)
    lengths = [length] * batch
    if ragged:
        lengths = torch.randint(max(1, length // 2), length + 1, (batch,), generator=g).tolist()
        lengths[0] = length
    rows = [torch.randint(1, vocab, (n,), generator=g) for n in lengths]
    return left_pad(rows, pad_token_id=0)


def time_hf(model, ids, mask, args) -> float:
    greedy = args.temperature == 0
    gen_cfg = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else args.temperature,
        top_k=None if greedy else args.top_k,
        top_p=None if greedy else args.top_p,
        max_new_tokens=args.new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
    start = clock()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
    seconds = clock() - start
    assert out.shape[1] == ids.shape[1] + args.new_tokens, out.shape
    return seconds


def time_pavlov(model, ids, mask, args) -> float:
    cfg = SamplingConfig(
        max_new_tokens=args.new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_ids=(),
        seed=0,
    )
    start = clock()
    rollout = generate(model, ids, mask, cfg)
    seconds = clock() - start
    assert rollout.logprobs.shape == (ids.shape[0], args.new_tokens)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="path or Hub name; default: random llama")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--ragged", action="store_true", help="left-padded prompts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (best)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (the record, on an idle machine) or this process's CPU time summed over "
        "threads (steadier on a shared machine)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny random llama, batch 2, 4 new tokens, 1 repeat"
    )
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.prompt_len, args.new_tokens, args.repeats = 2, 8, 4, 1
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)

    if args.smoke and args.model is None:
        model, name = smollm2_shaped_llama(smoke=True), "random-llama-smoke"
    elif args.model is None:
        model, name = smollm2_shaped_llama(), "random-llama-smollm2-135m-shape"
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        name = args.model
    model.eval()
    ids, mask = make_prompts(args.batch, args.prompt_len, model.config.vocab_size, args.ragged)

    time_hf(model, ids, mask, args)  # warm-up: allocator, kernels, lazy imports
    time_pavlov(model, ids, mask, args)
    hf, ours = [], []
    for _ in range(args.repeats):  # interleaved so a burst of load hits both alike
        hf.append(time_hf(model, ids, mask, args))
        ours.append(time_pavlov(model, ids, mask, args))

    tokens = args.batch * args.new_tokens
    row = {
        "hf_seconds": round(min(hf), 3),
        "pavlov_seconds": round(min(ours), 3),
        "hf_tokens_per_s": round(tokens / min(hf), 1),
        "pavlov_tokens_per_s": round(tokens / min(ours), 1),
        "ratio": round(min(hf) / min(ours), 3),
    }
    header = f"{'method':<10}{'best s':>10}{'median s':>10}{'tokens/s':>12}{'ratio':>8}"
    print(
        f"{name}: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"T={args.temperature}, top_k={args.top_k}, top_p={args.top_p}, "
        f"{args.threads} threads{', ragged' if args.ragged else ''}"
    )
    print(header)
    print("-" * len(header))
    for label, times in (("hf", hf), ("pavlov", ours)):
        best, median = min(times), sorted(times)[len(times) // 2]
        ratio = min(hf) / best
        print(f"{label:<10}{best:>10.3f}{median:>10.3f}{tokens / best:>12.1f}{ratio:>8.2f}")
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
    }
    settings = {
        "model": name,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "ragged": args.ragged,
        "repeats": args.repeats,
        "clock": args.clock,
        "smoke": args.smoke,
    }
    print(json.dumps({"benchmark": "sampling", **meta, **settings, **row}))


if __name__ == "__main__":
    main()
