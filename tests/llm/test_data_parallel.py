"""Data-parallel LLM trainers (torch.distributed, gloo, 2 processes with a timeout): the step's
gradient on two ranks equals one process's on the same global batch (SFT, reward model, DPO,
GRPO)."""

from __future__ import annotations

import pytest
import torch

from pavlov.llm.data.rt import rt_preferences, rt_sft
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.run import distributed

TRAINERS = ("sft", "reward", "dpo")


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP) tensor's whole value (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _whole_parameters(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter's whole value, flat (collective where FSDP or ZeRO-3 shards them)."""
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):  # DeepSpeed ZeRO-3: gather the partitions
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return torch.cat([p.detach().reshape(-1).clone() for p in params])
    return torch.cat([_whole(p.detach()).reshape(-1) for p in params])


def _first_gradients(sharding: str = "auto", zero_stage: int = 3) -> dict[str, dict]:
    """One optimizer step of SFT, the reward model and DPO on tiny models -> per trainer the
    step's (pre-clip) gradient, flat (None where DeepSpeed's engine clips), its loss and the
    parameters after the step."""
    from pavlov.llm.trainers import (
        DPOConfig,
        RewardConfig,
        SFTConfig,
        loop,
        train_dpo,
        train_reward_model,
        train_sft,
    )
    from pavlov.llm.trainers import sharding as shards

    torch.set_num_threads(1)
    shards.ZERO3_PERSISTENCE_THRESHOLD = 0  # ZeRO-3 partitions every weight of the tiny model
    seen: list[torch.Tensor] = []
    real = loop.clip_gradients

    def spy(params, *args, **kwargs):
        seen.append(torch.cat([_whole(p.grad).reshape(-1) for p in params]).clone())
        return real(params, *args, **kwargs)

    loop.clip_gradients = spy
    sft, pairs = rt_sft("train")[:12], rt_preferences("train")[:12]
    shared = dict(max_steps=1, batch_size=3, grad_accum_steps=2, max_length=48, seed=0,
                  sharding=sharding, zero_stage=zero_stage)  # fmt: skip
    runs = {
        "sft": lambda m, t: train_sft(SFTConfig(**shared), m, t, sft).fit,
        "reward": lambda m, t: train_reward_model(RewardConfig(**shared), m, t, pairs).fit,
        "dpo": lambda m, t: train_dpo(DPOConfig(**shared), m, t, pairs).fit,
    }
    out = {}
    try:
        for name, train in runs.items():
            seen.clear()
            model, tok = tiny_causal_lm()
            fit = train(model, tok)
            out[name] = {
                "grad": seen[0] if seen else None,
                "loss": fit.history[-1]["train/loss"],
                "params": _whole_parameters(model),
            }
    finally:
        loop.clip_gradients = real
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("sharding", "zero_stage"),
                         [("none", 3), ("fsdp", 3), ("deepspeed", 2), ("deepspeed", 3)])
def test_two_ranks_take_the_one_process_step_on_the_same_global_batch(sharding, zero_stage):
    """Plain data parallelism (whole weights on each rank, gradients summed), FSDP and
    DeepSpeed ZeRO-2 / ZeRO-3 (each rank holds half of the AdamW moments and gradients, and
    with FSDP and ZeRO-3 of the weights) all take one process's step."""
    if sharding == "deepspeed":
        pytest.importorskip("deepspeed")
    one = _first_gradients()
    ranks = distributed.launch(2, _first_gradients, sharding, zero_stage, all_ranks=True)
    for name in TRAINERS:
        a, b = ranks[0][name], ranks[1][name]
        assert torch.equal(a["params"], b["params"]), name
        ref = one[name]
        if sharding != "deepspeed":  # DeepSpeed's engine keeps its gradients partitioned
            assert torch.equal(a["grad"], b["grad"]), name
            err = (a["grad"] - ref["grad"]).norm() / ref["grad"].norm()
            assert err < 1e-5, (name, float(err))
        assert not torch.equal(a["params"], _whole_parameters(tiny_causal_lm()[0])), name
        assert a["loss"] == pytest.approx(ref["loss"], rel=1e-5), name
        torch.testing.assert_close(a["params"], ref["params"], rtol=0, atol=1e-6)


def _first_online_step(algo: str) -> dict[str, torch.Tensor]:
    """One online step (``algo``) on a tiny model: the (pre-clip) gradient, the first response
    token's advantages and the sampled responses of this process's rows, and the parameters
    after the step."""
    from pavlov.llm.trainers import online

    torch.set_num_threads(1)
    seen: dict[str, torch.Tensor] = {}
    real_clip, real_adv = online.clip_gradients, online.compute_advantages

    def clip(params, *args, **kwargs):
        seen["grad"] = torch.cat([p.grad.reshape(-1) for p in params]).clone()
        return real_clip(params, *args, **kwargs)

    def advantages(cfg, batch, *args, **kwargs):
        out = real_adv(cfg, batch, *args, **kwargs)
        seen["adv"], seen["responses"] = out.advantages[:, 0].clone(), batch.rollout.responses
        return out

    online.clip_gradients, online.compute_advantages = clip, advantages
    try:
        model, tok = tiny_causal_lm()
        cfg = online.OnlineConfig(algo=algo, max_steps=1, prompts_per_step=4, group_size=3,
                                  max_new_tokens=6, learning_rate=1e-3, beta=0.05)  # fmt: skip
        online.train_online(cfg, model, tok, ["hello there", "the cat sat", "a dog", "so it goes",
                                              "once upon a time"], _vowels)  # fmt: skip
    finally:
        online.clip_gradients, online.compute_advantages = real_clip, real_adv
    seen["params"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return seen


def _vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("algo", ["grpo", "rloo", "ppo", "reinforce"])
def test_two_ranks_take_the_one_process_online_step(algo):
    """Each rank samples its block of prompts (whole groups) with the batch's random draws:
    the same responses and advantages as one process (batch-wide normalisations over both
    ranks), the same gradient and step."""
    one = _first_online_step(algo)
    ranks = distributed.launch(2, _first_online_step, algo, all_ranks=True)
    adv = torch.cat([ranks[0]["adv"], ranks[1]["adv"]])
    torch.testing.assert_close(adv, one["adv"], rtol=0, atol=1e-6)
    assert adv.abs().sum() > 0  # the groups' rewards differ: a real gradient
    for r in (0, 1):  # the same tokens (pads aside: a rank's batch may stop earlier)
        mine = ranks[r]["responses"]
        full = one["responses"][r * 6 : (r + 1) * 6, : mine.shape[1]]
        assert torch.equal(mine, full), r
    assert torch.equal(ranks[0]["grad"], ranks[1]["grad"])
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    err = (ranks[0]["grad"] - one["grad"]).norm() / one["grad"].norm()
    assert err < 1e-5, float(err)
    # Adam's first step is ~lr * sign(g): a gradient entry near eps (1e-8) may move by ~1e-6
    torch.testing.assert_close(ranks[0]["params"], one["params"], rtol=0, atol=1e-5)
