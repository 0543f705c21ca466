"""PPO-RLHF vs GRPO step time in pavlov at equal generated tokens (issue 5: PPO <= 1.5x GRPO).

Same SmolLM2-135M-Instruct (fp32, ``--threads`` torch threads), same reward (VADER compound of
the completion), one optimizer step per batch, lr 1e-5, beta 0.04, 32 new tokens per completion:

* GRPO: 2 prompts x 4 completions, KL (k3) in the loss;
* PPO-RLHF: 8 prompts x 1 completion, value head, KL (k1) in the reward, token GAE.

Both sample 8 x 32 tokens a step; PPO also computes its values in the update's forward pass.
Reports the median wall seconds per step over steps 3..N, interleaving the two (``--rounds``)::

    python benchmarks/ppo_vs_grpo.py --steps 10 --rounds 1
    python benchmarks/ppo_vs_grpo.py --smoke   # seconds, tiny llama: the test suite runs this

``--smoke``: a tiny random Llama (:func:`pavlov.llm.models.tiny.tiny_causal_lm`), 3 steps, 4 new
tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def run(algo: str, steps: int, smoke: bool = False) -> dict:
    from pavlov.llm.data.rt import rt_movies, rt_prompt
    from pavlov.llm.models.loading import load_causal_lm
    from pavlov.llm.models.tiny import tiny_causal_lm
    from pavlov.llm.trainers.online import OnlineConfig, train_online

    model, tok = tiny_causal_lm() if smoke else load_causal_lm("smollm2")
    prompts = [rt_prompt(m) for m in rt_movies("train")]
    group = 4 if algo == "grpo" else 1
    cfg = OnlineConfig(
        algo=algo, max_steps=steps, prompts_per_step=8 // group, group_size=group,
        max_new_tokens=4 if smoke else 32, learning_rate=1e-5, beta=0.04, checkpoint_every=0,
    )  # fmt: skip
    out = train_online(cfg, model, tok, prompts, "vader")
    times = [r["time/step"] for r in out.history[2:]]
    tokens = [r["response/length"] for r in out.history]
    return {
        "algo": algo,
        "median_step_s": statistics.median(times),
        "mean_response_tokens": statistics.mean(tokens),
        "phases": {
            k: statistics.median(r[k] for r in out.history[2:])
            for k in ("time/generate", "time/reward", "time/reference", "time/learn")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a tiny llama, 3 steps, 4 tokens")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.rounds = 3, 1  # the median skips 2 warm-up steps
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {"grpo": [], "ppo": []}
    for _ in range(args.rounds):
        for algo in ("grpo", "ppo"):
            results[algo].append(run(algo, args.steps, args.smoke))
            r = results[algo][-1]
            print(f"{algo:5s} {r['median_step_s']:.2f} s/step, {r['mean_response_tokens']:.1f} "
                  f"tokens/completion, phases {r['phases']}", flush=True)  # fmt: skip
    ppo = statistics.median(r["median_step_s"] for r in results["ppo"])
    grpo = statistics.median(r["median_step_s"] for r in results["grpo"])
    print(json.dumps({"benchmark": "ppo_vs_grpo", "smoke": args.smoke, "ppo_s": ppo,
                      "grpo_s": grpo, "ratio": ppo / grpo, "runs": results}))  # fmt: skip


if __name__ == "__main__":
    main()
