"""pavlov.llm.cpu.tape: the policy's forward replaying the rollout's linear outputs must give the
log-probs and gradients of the plain forward (to float32 round-off), and only when valid."""

from __future__ import annotations

import pytest
import torch

from pavlov.llm.cpu import CpuConfig
from pavlov.llm.cpu import tape as replay_module
from pavlov.llm.cpu.lean import fast_kernels
from pavlov.llm.cpu.native import row_kernel_available
from pavlov.llm.generation.rollout import SamplingConfig, generate, left_pad
from pavlov.llm.models.loading import LoraSpec, apply_lora
from pavlov.llm.models.tiny import tiny_causal_lm, tiny_random_lm
from pavlov.llm.scoring import logprobs as scoring
from pavlov.llm.scoring.logprobs import score_tokens
from pavlov.llm.trainers.online import OnlineConfig, train_online

V = 97
torch.set_num_threads(2)
pytestmark = pytest.mark.skipif(
    not row_kernel_available(), reason="the tape is recorded by the native decode step"
)


def qwen2_with_bias():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1,
                         max_position_embeddings=128, tie_word_embeddings=False)  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


MODELS = {"llama": lambda: tiny_random_lm("llama", V, 0), "qwen2": qwen2_with_bias}
# two prompts of different lengths (left padding), each repeated as GRPO groups do, and EOS ids
# frequent enough that some rows stop early
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [5, 6, 7, 8, 9], [10, 11], [5, 6, 7, 8, 9], [10, 11]]
SAMPLING = SamplingConfig(max_new_tokens=10, temperature=0.9, eos_token_ids=(1, 2, 3, 4),
                          pad_token_id=0, seed=3)  # fmt: skip


def rollout(model, record=True, sampling=SAMPLING):
    ids, mask = left_pad([torch.tensor(p) for p in PROMPTS], 0)
    return generate(model, ids, mask, sampling, record=record)


def score_and_grads(model, r, replay, share):
    model.zero_grad(set_to_none=True)
    s = score_tokens(model, r.sequences, r.attention_mask, r.prompt_length, entropy=True,
                     temperature=SAMPLING.temperature,
                     replay=replay, share_prompts=share)  # fmt: skip
    weights = torch.linspace(-1.0, 1.0, s.logprobs.numel()).view_as(s.logprobs)
    (s.logprobs * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return s.logprobs.detach(), s.entropy, grads


@pytest.mark.parametrize("layout", ["packed", "plain"])
@pytest.mark.parametrize("name", list(MODELS))
def test_replayed_forward_gives_the_plain_log_probs_and_gradients(name, layout, monkeypatch):
    model = MODELS[name]()
    if layout == "packed":  # the tiny shapes would not pack by themselves
        monkeypatch.setattr(scoring, "_packing_pays", lambda *a: True)
    calls = []
    original = replay_module._ReplayLinear.forward
    monkeypatch.setattr(replay_module._ReplayLinear, "forward",
                        staticmethod(lambda *a: calls.append(1) or original(*a)))  # fmt: skip
    with fast_kernels(model):
        r = rollout(model)
        tape = r.tape
        assert tape is not None and tape.sampled == r.sequences.shape[1] - r.prompt_length
        assert not r.eos_reached.all() and r.eos_reached.any()  # early stops are exercised
        logp, ent, grads = score_and_grads(model, r, tape, layout == "packed")
        assert len(calls) == 4 * 2  # q, k, v, o in each of the 2 layers: it replayed
        assert all(t is None for t in tape.layers) and tape.logits is None  # spent, freed
        ref_logp, ref_ent, ref_grads = score_and_grads(model, r, None, layout == "packed")
    assert len(calls) == 8  # the plain pass computed its own
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=2e-5)
    torch.testing.assert_close(logp, r.logprobs, rtol=0, atol=2e-5)  # the sampler's, too
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=2e-5)
    for n, g in ref_grads.items():
        assert g.abs().max() > 0, n
        torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_a_tape_is_refused_after_the_weights_change_or_once_spent():
    model = MODELS["llama"]()
    r = rollout(model)
    assert r.tape.usable(model, r.sequences, r.prompt_length)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(0.0)  # any in-place update counts
    assert not r.tape.usable(model, r.sequences, r.prompt_length)
    r = rollout(model)
    assert not r.tape.usable(model, r.sequences[:, :-1], r.prompt_length)  # other columns
    assert not r.tape.usable(MODELS["llama"](), r.sequences, r.prompt_length)  # other model
    with torch.no_grad():
        assert not r.tape.usable(model, r.sequences, r.prompt_length)  # nothing to replay
    score_tokens(model, r.sequences, r.attention_mask, r.prompt_length, replay=r.tape)
    assert not r.tape.usable(model, r.sequences, r.prompt_length)
    # a refused tape leaves the plain forward: bitwise what it gives without one
    plain = score_tokens(model, r.sequences, r.attention_mask, r.prompt_length)
    again = score_tokens(model, r.sequences, r.attention_mask, r.prompt_length, replay=r.tape)
    assert torch.equal(plain.logprobs, again.logprobs)


def test_no_tape_without_record_or_for_lora():
    model = MODELS["llama"]()
    assert rollout(model, record=False).tape is None
    lora = apply_lora(MODELS["llama"](), LoraSpec(r=4, alpha=8))
    assert rollout(lora).tape is None


def test_decode_step_checks_the_tape_it_writes_to():
    model = MODELS["llama"]()
    from pavlov.llm.cpu.decoder import fast_decoder

    ids, mask = left_pad([torch.tensor(p) for p in PROMPTS[:2]], 0)
    dec = fast_decoder(model, 2, ids.shape[1] + 4, record=True)
    dec.prefill(ids, mask, torch.cumsum(mask, 1) - 1)
    layers = dec.tape.layers
    with pytest.raises(ValueError, match="does not fit"):
        dec.native(torch.zeros(2, 32), dec.filled, layers[:1], 0, 1)  # one layer short
    with pytest.raises(ValueError, match="does not fit"):
        dec.native(torch.zeros(2, 32), dec.filled, layers, dec.tape.rows - 1, 1)  # past the end


def tiny_grpo(replay: bool, **kw) -> OnlineConfig:
    return OnlineConfig(algo="grpo", max_steps=1, prompts_per_step=2, group_size=3,
                        max_new_tokens=8, learning_rate=1e-3,
                        cpu=CpuConfig(replay_rollout=replay), **kw)


def vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


@pytest.mark.parametrize("kw, used", [({}, True), ({"n_epochs": 2}, False)])
def test_grpo_replays_with_one_update_per_batch_only(kw, used, monkeypatch):
    entered = []
    original = scoring.replaying
    monkeypatch.setattr(scoring, "replaying", lambda *a: entered.append(1) or original(*a))
    recs = {}
    for replay in (False, True):
        model, tok = tiny_causal_lm()
        out = train_online(tiny_grpo(replay, **kw), model, tok, ["hello there", "the cat"],
                           vowels)  # fmt: skip
        recs[replay] = out.history[0]
    assert bool(entered) == used
    a, b = recs[True], recs[False]  # the same samples, the same first update
    assert a["reward/mean"] == b["reward/mean"]
    for key in ("loss", "policy/entropy", "grad_norm", "kl/loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_a_tape_replays_only_the_sequences_it_sampled():
    model = MODELS["llama"]()
    r = rollout(model)
    flipped = r.sequences.flip(0)  # the same rows in another order
    assert not r.tape.usable(model, flipped, r.prompt_length)
    assert r.tape.usable(model, r.sequences.clone(), r.prompt_length)


@pytest.mark.slow
def test_smollm2_replayed_update_matches_the_computed_one():
    """The embedded SmolLM2-135M (30 layers): the replayed forward's log-probs and gradients
    against the computed ones, on a GRPO-shaped batch (2 prompts x 3 completions)."""
    from pavlov.llm.models.loading import load_causal_lm

    model, tok = load_causal_lm("smollm2", dtype=torch.float32)
    prompts = ["Review of Titanic:", "Review of Fargo, a film by the Coen brothers:"]
    ids, mask = left_pad([torch.tensor(tok(p)["input_ids"]) for p in prompts for _ in range(3)],
                         tok.pad_token_id or 0)  # fmt: skip
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, eos_token_ids=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id or 0, seed=0)  # fmt: skip
    with fast_kernels(model):
        r = generate(model, ids, mask, sampling, record=True)
        assert r.tape is not None
        logp, _, grads = score_and_grads(model, r, r.tape, True)
        ref_logp, _, ref_grads = score_and_grads(model, r, None, True)
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=2e-4)
    total = sum((grads[n] - g).pow(2).sum() for n, g in ref_grads.items()).sqrt()
    norm = sum(g.pow(2).sum() for g in ref_grads.values()).sqrt()
    assert total / norm < 1e-3
