"""Rollout engines behind one interface: the Hugging Face ``generate`` engine gives what the
pavlov engine gives — log-probs of the sampled tokens under the sampling distribution, masks
ending at the first EOS — and trains GRPO; vLLM is refused in one line."""

from __future__ import annotations

import pytest
import torch

from pavlov.errors import ConfigError
from pavlov.llm.generation.engines import ENGINES, hf_generate
from pavlov.llm.generation.rollout import SamplingConfig, left_pad
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.llm.scoring.logprobs import token_logprobs
from pavlov.llm.trainers.online import OnlineConfig, train_online


def _prompts(tok):
    rows = [torch.tensor(tok(p)["input_ids"]) for p in ["hello there", "the cat sat on", "a"]]
    return left_pad(rows, tok.pad_token_id)


@pytest.mark.parametrize("engine", ["pavlov", "hf"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.7), dict(temperature=1.0, top_k=5),
                                      dict(temperature=0.0)])
def test_each_engine_returns_the_log_probs_of_its_samples(engine, sampling):
    model, tok = tiny_causal_lm()
    ids, mask = _prompts(tok)
    cfg = SamplingConfig(max_new_tokens=10, eos_token_ids=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, seed=1, **sampling)  # fmt: skip
    r = ENGINES[engine](model, ids, mask, cfg)
    assert r.sequences.shape[1] == ids.shape[1] + r.response_mask.shape[1]
    temperature = sampling["temperature"] or 1.0
    ref = token_logprobs(model, r.sequences, r.attention_mask, r.prompt_length,
                         temperature=temperature)  # fmt: skip
    torch.testing.assert_close(r.logprobs, torch.where(r.response_mask, ref, 0.0), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    for row, m, done in zip(r.sequences[:, ids.shape[1]:], r.response_mask, r.eos_reached,
                            strict=True):  # fmt: skip
        eos_at = (row == tok.eos_token_id).nonzero()
        if done:  # the mask ends at the first EOS, pads after it
            first = int(eos_at[0])
            assert m[: first + 1].all() and not m[first + 1 :].any()
        else:
            assert m.all()
    again = ENGINES[engine](model, ids, mask, cfg)
    assert torch.equal(again.sequences, r.sequences)  # seeded: reproducible


def test_greedy_engines_agree():
    model, tok = tiny_causal_lm()
    ids, mask = _prompts(tok)
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.0, eos_token_ids=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    a, b = ENGINES["pavlov"](model, ids, mask, cfg), hf_generate(model, ids, mask, cfg)
    n = min(a.response_mask.shape[1], b.response_mask.shape[1])
    assert torch.equal(a.sequences[:, : ids.shape[1] + n], b.sequences[:, : ids.shape[1] + n])


def test_grpo_trains_with_the_hf_engine_and_vllm_is_refused():
    model, tok = tiny_causal_lm()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = OnlineConfig(algo="grpo", max_steps=2, prompts_per_step=2, group_size=3,
                       max_new_tokens=6, learning_rate=1e-3, engine="hf")  # fmt: skip
    out = train_online(cfg, model, tok, ["hello there", "the cat"],
                       lambda p, c: [float(len(x)) for x in c])  # fmt: skip
    assert out.steps == 2 and all(r["response/length"] > 0 for r in out.history)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="vllm engine is not part of this build"):
        OnlineConfig(engine="vllm")
    with pytest.raises(ConfigError, match="engine"):
        OnlineConfig(engine="nope")
