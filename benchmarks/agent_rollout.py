"""Multi-turn episode throughput: a language model playing text games, one key/value cache per
episode across its turns, against single-turn sampling of the same number of tokens and against
re-prefilling the whole history every turn.

Three timings in one process on the same model (the embedded SmolLM2-135M-Instruct, fp32; a
tiny random llama with ``--smoke``), each the best of ``--repeats`` interleaved runs:

* ``episodes``: :func:`pavlov.llm.generation.episodes.play_group`, ``--episodes`` episodes of
  ``--turns`` turns (held-out games; an untrained model never wins, so every episode plays all
  its turns), at most ``--new-tokens`` tokens a turn: one forward over each turn's new fragment
  (the agent's last token and the game's answer) on the cache, one per sampled token;
* ``reprefill``: the same episodes, the whole history prefilled again each turn (a loop over a
  single-turn sampler), same samples;
* ``single``: :func:`pavlov.llm.generation.rollout.generate` on the first prompt, one row at a
  time, ``fast=False`` (the same plain PyTorch forward as the episodes), as many sampled tokens
  as the episodes sampled.

Turns/s and sampled tokens/s for each; acceptance (issue 20): episodes tokens/s >= 0.8x single.

    python benchmarks/agent_rollout.py                 # SmolLM2, 4 episodes x 6 turns
    python benchmarks/agent_rollout.py --smoke         # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import torch

from pavlov.envs.text.baselines import HELD_OUT
from pavlov.llm.generation.episodes import ChatTurns, play_episode
from pavlov.llm.generation.rollout import SamplingConfig, generate
from pavlov.llm.trainers.agent import AgentConfig


def load(smoke: bool):
    if smoke:
        from pavlov.llm.models.tiny import tiny_causal_lm

        return (*tiny_causal_lm(), "tiny-random-llama")
    from pavlov.llm.models.loading import ensure_pad_token, load_causal_lm

    model, tok = load_causal_lm(None)
    ensure_pad_token(tok)
    return model, tok, "SmolLM2-135M-Instruct"


def run_episodes(model, tok, agent, games, sampling, reuse_cache: bool):
    env, turns, out = agent.make_env(), ChatTurns(tok), []
    t0 = time.perf_counter()
    for i, game in enumerate(games):
        gen = torch.Generator().manual_seed(sampling.seed + i)
        out.append(play_episode(model, tok, env, game, replace(sampling, seed=sampling.seed + i),
                                turns=turns, max_turns=agent.max_turns, generator=gen,
                                show=agent.show, act=agent.act, reuse_cache=reuse_cache))
    return time.perf_counter() - t0, out


def run_single(model, tok, prompt_ids, counts, sampling):
    """One ``generate`` call per episode, row by row, each sampling that episode's token count
    (no EOS stop: exactly that many)."""
    t0 = time.perf_counter()
    for i, n in enumerate(counts):
        cfg = replace(sampling, max_new_tokens=n, eos_token_ids=(), seed=sampling.seed + i,
                      fast=False)  # fmt: skip
        out = generate(model, torch.tensor([prompt_ids[i]]), None, cfg)
        assert out.responses.shape == (1, n)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 episodes x 2 turns")
    args = parser.parse_args(argv)
    if args.smoke:
        args.episodes, args.turns, args.new_tokens, args.repeats = 2, 2, 4, 1
    torch.set_num_threads(args.threads)
    model, tok, name = load(args.smoke)
    model.eval()
    agent = AgentConfig(rooms=2, locks=0, max_turns=args.turns)
    games = list(range(HELD_OUT, HELD_OUT + args.episodes))
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.7,
                              eos_token_ids=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              seed=0)  # fmt: skip
    best = {"episodes": float("inf"), "reprefill": float("inf"), "single": float("inf")}
    with torch.no_grad():
        for _ in range(args.repeats):
            seconds, episodes = run_episodes(model, tok, agent, games, sampling, True)
            best["episodes"] = min(best["episodes"], seconds)
            seconds, again = run_episodes(model, tok, agent, games, sampling, False)
            best["reprefill"] = min(best["reprefill"], seconds)
            assert [e.ids for e in again] == [e.ids for e in episodes], "same samples"
            counts = [sum(e.agent) for e in episodes]
            best["single"] = min(best["single"], run_single(
                model, tok, [e.prompt_ids for e in episodes], counts, sampling))
    tokens = sum(sum(e.agent) for e in episodes)
    turns = sum(e.turns for e in episodes)
    context = sum(len(e.prompt_ids) + len(e.ids) for e in episodes)
    report = {
        "model": name, "smoke": args.smoke, "episodes": args.episodes, "turns": turns,
        "sampled_tokens": tokens, "context_tokens": context, "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        **{f"{k}_seconds": round(v, 4) for k, v in best.items()},
        **{f"{k}_tokens_per_s": round(tokens / v, 2) for k, v in best.items()},
        "episodes_turns_per_s": round(turns / best["episodes"], 3),
        "ratio_vs_single": round(best["single"] / best["episodes"], 3),
        "ratio_vs_reprefill": round(best["reprefill"] / best["episodes"], 3),
    }  # fmt: skip
    for k in ("episodes", "reprefill", "single"):
        print(f"{k:<10} {best[k]:8.2f} s  {tokens / best[k]:8.1f} sampled tokens/s")
    print(f"episodes: {turns} turns, {turns / best['episodes']:.2f} turns/s; "
          f"{report['ratio_vs_single']:.2f}x single-turn tokens/s (goal >= 0.8), "
          f"{report['ratio_vs_reprefill']:.2f}x re-prefilling")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
