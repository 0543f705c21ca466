"""A language agent learns text games: SmolLM2-135M-Instruct, behaviour-cloned on the planner's
play of training games (SFT with LoRA), then GRPO on whole episodes, evaluated on held-out games
before, after the warm start and after RL (success rate with Wilson 95% intervals).

    python benchmarks/agent_learning.py --seed 0          # ~20 min on 2 CPU cores
    python benchmarks/agent_learning.py --smoke           # the test suite: tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pavlov.envs.text.baselines import HELD_OUT
from pavlov.llm.generation.rollout import SamplingConfig
from pavlov.llm.trainers import SFTConfig, train_sft
from pavlov.llm.trainers.agent import AgentConfig, evaluate_agent, planner_examples, train_agent
from pavlov.llm.trainers.online import OnlineConfig


def load(smoke: bool):
    if smoke:
        from pavlov.llm.models.tiny import tiny_causal_lm

        model, tok = tiny_causal_lm()
        model.config.max_position_embeddings = 4096  # rotary: episodes outgrow its nominal 256
        return model, tok
    from pavlov.llm.models.loading import ensure_pad_token, load_causal_lm

    model, tok = load_causal_lm(None)
    ensure_pad_token(tok)
    return model, tok


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rooms", type=int, default=3)
    p.add_argument("--locks", type=int, default=1)
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--containers", type=int, default=0)
    p.add_argument("--max-turns", type=int, default=8)
    p.add_argument("--sft-games", type=int, default=200)
    p.add_argument("--sft-steps", type=int, default=40)
    p.add_argument("--rl-steps", type=int, default=10)
    p.add_argument("--eval-games", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.sft_games, args.sft_steps, args.rl_steps, args.eval_games = 4, 2, 1, 2
        args.max_turns = 2
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load(args.smoke)
    agent = AgentConfig(rooms=args.rooms, locks=args.locks, objects=args.objects,
                        containers=args.containers, max_turns=args.max_turns,
                        train_games=args.sft_games)  # fmt: skip
    held_out = list(range(HELD_OUT, HELD_OUT + args.eval_games))
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.7, eos_token_ids=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, seed=args.seed + 1000)  # fmt: skip
    precision = "fp32" if args.smoke else "auto"
    laps, results = {}, {}

    def lap(name):
        laps[name] = round(time.perf_counter() - t0 - sum(laps.values()), 1)

    results["untrained"] = evaluate_agent(model, tok, agent, held_out, sampling)
    lap("eval_untrained")
    examples = planner_examples(agent, tok, list(range(args.sft_games)))
    sft = SFTConfig(seed=args.seed, max_steps=args.sft_steps, batch_size=8, learning_rate=5e-4,
                    warmup_steps=2, lora=True, lora_r=16, max_length=2048 if args.smoke else 768,
                    precision=precision,
                    checkpoint_every=0, group_by_length=True)  # fmt: skip
    out = train_sft(sft, model, tok, examples)
    model = out.model.merge_and_unload().eval()
    lap("sft")
    results["warm_start"] = evaluate_agent(model, tok, agent, held_out, sampling)
    lap("eval_warm_start")
    rl = OnlineConfig(algo="grpo", seed=args.seed, max_steps=args.rl_steps, prompts_per_step=2,
                      group_size=4, max_new_tokens=8, temperature=0.7, learning_rate=2e-4,
                      beta=0.02, lora=True, lora_r=16, precision=precision, checkpoint_every=0)
    trained = train_agent(rl, agent, model, tok)
    history = trained.history
    lap("rl")
    results["rl"] = evaluate_agent(trained.model, tok, agent, held_out, sampling)
    lap("eval_rl")
    report = {
        "smoke": args.smoke, "seed": args.seed, "game": vars(agent.game),
        "held_out_games": len(held_out), "sft_examples": len(examples),
        "results": results, "seconds": laps, "total_seconds": round(time.perf_counter() - t0, 1),
        "rl_curve": [{k: r[k] for k in ("step", "reward/mean", "episode/won", "episode/turns")}
                     for r in history],
    }  # fmt: skip
    for name, r in results.items():
        print(f"{name:<11} success {r['success']:.0%} [{r['success_low']:.0%}, "
              f"{r['success_high']:.0%}]  moves {r['moves']:.1f}  score {r['score']:.2f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
