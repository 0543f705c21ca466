"""Data-parallel LLM trainers (torch.distributed, gloo, 2 processes with a timeout): the step's
gradient on two ranks equals one process's on the same global batch."""

from __future__ import annotations

import pytest
import torch

from pavlov.llm.data.rt import rt_preferences, rt_sft
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.run import distributed

TRAINERS = ("sft", "reward", "dpo")


def _first_gradients() -> dict[str, dict]:
    """One optimizer step of SFT, the reward model and DPO on tiny models -> per trainer the
    step's (pre-clip) gradient, flat, its loss and the parameters after the step."""
    from pavlov.llm.trainers import (
        DPOConfig,
        RewardConfig,
        SFTConfig,
        loop,
        train_dpo,
        train_reward_model,
        train_sft,
    )

    torch.set_num_threads(1)
    seen: list[torch.Tensor] = []
    real = loop.clip_gradients

    def spy(params, *args, **kwargs):
        seen.append(torch.cat([p.grad.reshape(-1) for p in params]).clone())
        return real(params, *args, **kwargs)

    loop.clip_gradients = spy
    sft, pairs = rt_sft("train")[:12], rt_preferences("train")[:12]
    shared = dict(max_steps=1, batch_size=3, grad_accum_steps=2, max_length=48, seed=0)
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
                "grad": seen[0],
                "loss": fit.history[-1]["train/loss"],
                "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
            }
    finally:
        loop.clip_gradients = real
    return out


@pytest.mark.timeout(240)
def test_two_ranks_take_the_one_process_step_on_the_same_global_batch():
    one = _first_gradients()
    ranks = distributed.launch(2, _first_gradients, all_ranks=True)
    for name in TRAINERS:
        a, b = ranks[0][name], ranks[1][name]
        assert torch.equal(a["grad"], b["grad"]) and torch.equal(a["params"], b["params"]), name
        ref = one[name]
        err = (a["grad"] - ref["grad"]).norm() / ref["grad"].norm()
        assert err < 1e-5, (name, float(err))
        assert a["loss"] == pytest.approx(ref["loss"], rel=1e-5), name
        torch.testing.assert_close(a["params"], ref["params"], rtol=0, atol=1e-6)
