"""PPO-RLHF vs GRPO step time in pavlov at equal generated tokens (issue 5: PPO <= 1.5x GRPO).

Same SmolLM2-135M-Instruct (fp32, ``--threads`` torch threads), same reward (VADER compound of
the completion), one optimizer step per batch, lr 1e-5, beta 0.04, 32 new tokens per completion:

* GRPO: 2 prompts x 4 completions, KL (k3) in the loss;
* PPO-RLHF: 8 prompts x 1 completion, value head, KL (k1) in the reward, token GAE.

Both sample 8 x 32 tokens a step; PPO also computes its values in the update's forward pass.
Reports the median wall seconds per step over steps 3..N, interleaving the two (``--rounds``)::

    python benchmarks/ppo_vs_grpo.py --steps 10 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def run(algo: str, steps: int) -> dict:
    from pavlov.llm.data.rt import rt_movies, rt_prompt
    from pavlov.llm.models.loading import load_causal_lm
    from pavlov.llm.trainers.online import OnlineConfig, train_online

    model, tok = load_causal_lm("smollm2")
    prompts = [rt_prompt(m) for m in rt_movies("train")]
    group = 4 if algo == "grpo" else 1
    cfg = OnlineConfig(
        algo=algo, max_steps=steps, prompts_per_step=8 // group, group_size=group,
        max_new_tokens=32, learning_rate=1e-5, beta=0.04, checkpoint_every=0,
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {"grpo": [], "ppo": []}
    for _ in range(args.rounds):
        for algo in ("grpo", "ppo"):
            results[algo].append(run(algo, args.steps))
            r = results[algo][-1]
            print(f"{algo:5s} {r['median_step_s']:.2f} s/step, {r['mean_response_tokens']:.1f} "
                  f"tokens/completion, phases {r['phases']}", flush=True)  # fmt: skip
    ppo = statistics.median(r["median_step_s"] for r in results["ppo"])
    grpo = statistics.median(r["median_step_s"] for r in results["grpo"])
    print(json.dumps({"benchmark": "ppo_vs_grpo", "ppo_s": ppo, "grpo_s": grpo,
                      "ratio": ppo / grpo, "runs": results}))  # fmt: skip


if __name__ == "__main__":
    main()
