"""Decode-step matmuls: how fast each kernel streams SmolLM2-135M's weights with a few rows.

A decode step multiplies ``B`` rows (one new token per sequence) by every weight matrix, so its
speed is the rate at which a kernel gets through the weights. For each weight shape of the model
this measures, in GB/s of weights read (median of 15 passes over 60 distinct copies of the
matrix, so that the data comes from memory, not cache):

* ``read``: ``W.sum()``, a plain read: the memory bound for this machine and thread count;
* ``mkl``: ``F.linear`` (PyTorch's float32 CPU path);
* ``onednn_packed``: oneDNN on a weight reordered for that row count (reorder not counted);
* ``native``: the C row kernel of :mod:`pavlov.llm.cpu.native` on the weight as it is.

Then the whole sampling of 8 prompts x 32 new tokens on the real model through the rollout
engine with each decode kernel (median of 3, reorder included for ``packed``).

    python benchmarks/decode_kernels.py --threads 2 --out docs/results/decode_kernels.json
    python benchmarks/decode_kernels.py --smoke   # seconds, tiny llama: the test suite runs this

``--smoke`` runs every kernel on the weight shapes of a tiny random Llama (hidden 32, the same
architecture; :func:`pavlov.llm.models.tiny.tiny_causal_lm`), one pass over 64 KB of copies per
shape, then 2 prompts x 4 tokens once per decode kernel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def weight_shapes(hidden: int, inter: int, vocab: int) -> dict[str, tuple[int, int]]:
    """The ``(out, in)`` weight shapes of a Llama decoder layer and its head, by name."""
    return {f"q/o ({hidden}x{hidden})": (hidden, hidden),
            f"gate/up ({inter}x{hidden})": (inter, hidden),
            f"down ({hidden}x{inter})": (hidden, inter),
            f"lm_head ({vocab}x{hidden})": (vocab, hidden)}  # fmt: skip


SHAPES = weight_shapes(576, 1536, 49152)  # SmolLM2-135M
COPIES_ELEMENTS = 60 * 576 * 576  # >= ~80 MB of weights per shape: out of cache


def _median_seconds(fn, repeats: int = 15) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rate(gb: float, op, x: torch.Tensor, weights: list[torch.Tensor], repeats: int) -> float:
    """GB/s of weights read by ``op(x, w)`` over all ``weights``."""
    return gb / _median_seconds(lambda: [op(x, w) for w in weights], repeats)


def kernel_rates(
    rows: int,
    shapes: dict = SHAPES,
    elements: int = COPIES_ELEMENTS,
    repeats: int = 15,
    digits: int = 1,
) -> dict:
    """GB/s of each kernel per weight shape: ``elements`` weight elements in distinct copies
    per shape (at least one), median of ``repeats`` passes, rounded to ``digits``."""
    from pavlov.llm.cpu.kernels import can_pack, pack_weight, packed_linear
    from pavlov.llm.cpu.native import row_kernel_available, row_linear

    out = {}
    for name, (n, k) in shapes.items():
        copies = max(1, elements // (n * k))
        weights = [torch.randn(n, k) for _ in range(copies)]
        x = torch.randn(rows, k)
        gb = n * k * 4 * copies / 1e9
        rates = {
            "read": _rate(gb, lambda _, w: w.sum(), x, weights, repeats),
            "mkl": _rate(gb, F.linear, x, weights, repeats),
        }
        if can_pack():
            packed = [pack_weight(w, rows) for w in weights]
            rates["onednn_packed"] = _rate(gb, packed_linear, x, packed, repeats)
            del packed
        if row_kernel_available():
            rates["native"] = _rate(gb, row_linear, x, weights, repeats)
        out[name] = {k: round(v, digits) for k, v in rates.items()}
        line = "  ".join(f"{k} {v:.1f}" for k, v in out[name].items())
        print(f"  rows={rows} {name:22s} {line}", flush=True)
    return out


def sampling_seconds(
    kernels: list[str], prompts: int, tokens: int, model, tok, repeats: int = 3
) -> dict:
    """Median seconds of sampling ``prompts x tokens`` with ``model`` per decode kernel."""
    from pavlov.llm.cpu import decoder
    from pavlov.llm.data.rt import rt_movies, rt_prompt
    from pavlov.llm.generation.rollout import SamplingConfig, generate, left_pad

    model.eval()
    ids = [tok(rt_prompt(m))["input_ids"] for m in rt_movies("train")[:prompts]]
    ids, mask = left_pad(ids, tok.pad_token_id)
    cfg = SamplingConfig(max_new_tokens=tokens, temperature=1.0, eos_token_ids=[],
                         pad_token_id=tok.pad_token_id, seed=0)  # fmt: skip
    original = decoder._kernel
    out = {}
    try:
        for kernel in kernels:
            decoder._kernel = lambda model, rows, kernel=kernel: kernel
            seconds = [0.0] * repeats
            for i in range(repeats):
                start = time.perf_counter()
                generate(model, ids, mask, cfg)
                seconds[i] = time.perf_counter() - start
            out[kernel] = round(statistics.median(seconds), 3)
            print(f"  sampling {prompts}x{tokens} with {kernel}: {out[kernel]:.2f} s", flush=True)
    finally:
        decoder._kernel = original
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny random llama's shapes, 2 prompts x 4 tokens, one pass",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pavlov.llm.cpu.kernels import can_pack
    from pavlov.llm.cpu.native import row_kernel_available
    from pavlov.llm.models.loading import load_causal_lm
    from pavlov.llm.models.tiny import tiny_causal_lm

    if args.smoke:
        args.prompts, args.tokens = 2, 4
        model, tok = tiny_causal_lm()
        c = model.config
        shapes = weight_shapes(c.hidden_size, c.intermediate_size, c.vocab_size)
        elements, repeats, digits = 1 << 14, 1, 4  # tiny rates: more digits
    else:
        model, tok = load_causal_lm("smollm2", dtype=torch.float32)
        shapes, elements, repeats, digits = SHAPES, COPIES_ELEMENTS, 15, 1

    kernels = ["plain"] + (["packed"] if can_pack() else [])
    kernels += ["native"] if row_kernel_available() else []
    result = {
        "benchmark": "decode_kernels",
        "threads": args.threads,
        "torch": torch.__version__,
        "smoke": args.smoke,
        "gb_per_s": {
            str(rows): kernel_rates(rows, shapes, elements, repeats, digits)
            for rows in (1, args.prompts)
        },
        "sampling_seconds": sampling_seconds(
            kernels, args.prompts, args.tokens, model, tok, 1 if args.smoke else 3
        ),
    }
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
