"""Rollout engines behind one interface: the Hugging Face ``generate`` engine gives what the
pavlov engine gives — log-probs of the sampled tokens under the sampling distribution, masks
ending at the first EOS — and trains GRPO. vLLM (GPU only) is refused in one line where it is
not installed; what it loads (the policy's effective weights) and how its samples become a
rollout are checked here on CPU."""

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
    try:
        import vllm  # noqa: F401
    except ImportError:  # here (no GPU build): one line naming the package
        with pytest.raises(ConfigError, match="engine 'vllm' needs the vllm package"):
            OnlineConfig(engine="vllm")
    with pytest.raises(ConfigError, match="engine"):
        OnlineConfig(engine="nope")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("lora", [True, False])
def test_sampler_weights_are_the_policy_after_an_update(arch, lora):
    """What a separate sampler (the vLLM engine) loads after an optimizer step: a plain copy of
    the untrained model given those weights computes the trained policy's logits (LoRA merged out
    of place, the live adapters untouched), and the later syncs' subset suffices."""
    import copy

    from pavlov.llm.models.loading import LoraSpec, apply_lora, sampler_weights

    model, tok = tiny_causal_lm(arch=arch)
    sampler = copy.deepcopy(model)  # the sampler's copy: the weights it started from
    if lora:
        targets = ("c_attn",) if arch == "gpt2" else ("q_proj", "v_proj")
        model = apply_lora(model, LoraSpec(r=4, dropout=0.0, target_modules=targets))
    ids, mask = _prompts(tok)
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(expected, sampler(input_ids=ids, attention_mask=mask).logits)
        names = set(sampler.state_dict())
        for changed_only in (True, False):
            weights = dict(sampler_weights(model, changed_only=changed_only))
            assert set(weights) <= names, set(weights) - names
            if not changed_only:  # every parameter the plain model holds (tied ones once)
                assert set(weights) == {n for n, _ in sampler.named_parameters()}
            fresh = copy.deepcopy(sampler)
            fresh.load_state_dict(weights, strict=False)
            torch.testing.assert_close(fresh(input_ids=ids, attention_mask=mask).logits,
                                       expected, atol=1e-5, rtol=1e-5)
    for k, v in model.state_dict().items():  # nothing merged in place
        assert torch.equal(v, before[k]), k


def test_samples_given_as_token_lists_make_the_engines_rollout():
    """The vLLM engine's last stage (token ids and log-probs per row -> Rollout) rebuilds the
    pavlov engine's rollout from its own samples: same sequences, masks, log-probs, EOS flags."""
    from pavlov.llm.generation.vllm_engine import rollout_from_samples

    model, tok = tiny_causal_lm()
    ids, mask = _prompts(tok)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, eos_token_ids=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, seed=3)  # fmt: skip
    r = ENGINES["pavlov"](model, ids, mask, cfg)
    P = ids.shape[1]
    samples = [(row[P:][m].tolist(), lp[m].tolist())
               for row, m, lp in zip(r.sequences, r.response_mask, r.logprobs, strict=True)]
    again = rollout_from_samples(ids, mask, samples, cfg)
    for name in ("sequences", "attention_mask", "response_mask", "logprobs", "response_lengths",
                 "eos_reached"):
        assert torch.equal(getattr(again, name), getattr(r, name)), name
    # tokens after an EOS are not part of the response; a row is cut at max_new_tokens
    eos, pad = tok.eos_token_id, tok.pad_token_id
    cut = rollout_from_samples(ids[:2], mask[:2], [([5, eos, 7], [-1.0, -2.0, -3.0]),
                                                   (list(range(5, 20)), [-0.5] * 15)], cfg)
    assert cut.response_mask.sum(1).tolist() == [2, 12]
    assert cut.eos_reached.tolist() == [True, False]
    assert cut.sequences[0, P:].tolist() == [5, eos] + [pad] * 10
    assert cut.logprobs[0].tolist() == [-1.0, -2.0] + [0.0] * 10


def test_vllm_options_come_from_the_config_and_are_checked():
    from pavlov.llm.generation import vllm_engine

    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        OnlineConfig(vllm_gpu_memory_utilization=1.5)
    saved = vllm_engine._OPTIONS
    try:
        vllm_engine.configure_vllm(vllm_engine.VLLMOptions(gpu_memory_utilization=0.5))
        assert vllm_engine._OPTIONS.gpu_memory_utilization == 0.5  # what the engine starts with
    finally:
        vllm_engine.configure_vllm(saved)
