"""Tests for pavlov.llm.scoring.logprobs: response log-probs under a model, against the rollout
engine and against a naive full log-softmax."""

from __future__ import annotations

import pytest
import torch

from pavlov.llm.cpu.offload import loaded, offload_copy
from pavlov.llm.generation.rollout import SamplingConfig, generate, left_pad, position_ids_from_mask
from pavlov.llm.models.loading import LoraSpec, apply_lora
from pavlov.llm.models.tiny import tiny_random_lm
from pavlov.llm.scoring import logprobs as scoring
from pavlov.llm.scoring.logprobs import (
    score_tokens,
    sequence_logprob,
    token_logprobs,
    token_logprobs_and_entropy,
)
from pavlov.math.policy import categorical_entropy

V = 97
torch.set_num_threads(2)


def tiny_model(arch: str, seed: int = 0):
    return tiny_random_lm(arch, V, seed)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return tiny_model(request.param)


def rollout(model, temperature, eos=(), seed=0, max_new_tokens=12):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, V, (n,), generator=g) for n in (5, 9, 3, 7)]
    ids, mask = left_pad(rows, pad_token_id=0)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, eos_token_ids=eos, seed=seed
    )
    return generate(model, ids, mask, cfg)


def naive(model, ids, mask, start, temperature=1.0):
    """Full (B, L, V) log-softmax, gathered, masked by attention_mask."""
    with torch.no_grad():
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits
    logp = (logits[:, :-1] / temperature).log_softmax(-1)
    logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[:, start - 1 :]
    return torch.where(mask[:, start:].bool(), logp, 0.0), logits[:, start - 1 : -1] / temperature


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_engine(model, temperature):
    r = rollout(model, temperature)
    with torch.no_grad():
        lp = token_logprobs(
            model, r.sequences, r.attention_mask, r.prompt_length, temperature=temperature
        )
    assert lp.shape == r.logprobs.shape
    torch.testing.assert_close(lp, r.logprobs, atol=1e-5, rtol=0)


def test_token_logprobs_match_engine_with_eos_padding(model):
    free = rollout(model, 1.0)
    eos = (int(free.responses[0, 4]), int(free.responses[2, 1]))
    r = rollout(model, 1.0, eos=eos)
    assert not r.response_mask.all()  # some post-EOS padding to score around
    with torch.no_grad():
        lp = token_logprobs(model, r.sequences, r.attention_mask, r.prompt_length)
    torch.testing.assert_close(lp, r.logprobs, atol=1e-5, rtol=0)
    assert (lp[~r.response_mask] == 0).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_and_sequence_logprob(model, temperature):
    r = rollout(model, temperature, seed=3)
    ids, mask, P = r.sequences, r.attention_mask, r.prompt_length
    expected_lp, scaled_logits = naive(model, ids, mask, P, temperature)
    with torch.no_grad():
        lp, ent = token_logprobs_and_entropy(model, ids, mask, P, temperature=temperature)
        seq = sequence_logprob(model, ids, mask, P, temperature=temperature)
        avg = sequence_logprob(model, ids, mask, P, temperature=temperature, average=True)
    torch.testing.assert_close(lp, expected_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, categorical_entropy(scaled_logits), atol=1e-5, rtol=0)
    torch.testing.assert_close(seq, expected_lp.sum(-1), atol=1e-4, rtol=0)
    lengths = r.response_mask.sum(-1)
    torch.testing.assert_close(avg, expected_lp.sum(-1) / lengths, atol=1e-5, rtol=0)


def test_chunking_equals_unchunked():
    model = tiny_model("llama", seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (4, 64), generator=g)  # (B=4, T=64), V=97
    mask = torch.ones_like(ids)
    mask[1, :10] = 0  # one left-padded row
    mask[3, 50:] = 0  # one row with padding after its end
    whole = token_logprobs(model, ids, mask, 20)
    for chunk in (1, 3, 4, 100):
        torch.testing.assert_close(token_logprobs(model, ids, mask, 20, chunk_size=chunk), whole)
    lp, ent = token_logprobs_and_entropy(model, ids, mask, 20)
    lp1, ent1 = token_logprobs_and_entropy(model, ids, mask, 20, chunk_size=1)
    torch.testing.assert_close(lp1, lp)
    torch.testing.assert_close(ent1, ent)
    torch.testing.assert_close(whole, naive(model, ids, mask, 20)[0], atol=1e-5, rtol=0)


def test_response_mask_form_right_padded_pairs():
    # DPO-style layout: prompt + response right-padded; responses start at different columns.
    model = tiny_model("gpt2", seed=2)
    g = torch.Generator().manual_seed(1)
    prompt_lens, resp_lens, L = [3, 6, 4], [5, 2, 7], 12
    ids = torch.zeros((3, L), dtype=torch.long)
    mask = torch.zeros_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, n) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        ids[i, : p + n] = torch.randint(3, V, (p + n,), generator=g)
        mask[i, : p + n] = 1
        resp[i, p : p + n] = True
    with torch.no_grad():
        lp = token_logprobs(model, ids, mask, resp)
        seq = sequence_logprob(model, ids, mask, resp)
    start = min(prompt_lens)
    assert lp.shape == (3, L - start)
    for i, (p, n) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        with torch.no_grad():
            logits = model(input_ids=ids[i : i + 1, : p + n]).logits[0]
        expected = logits[p - 1 : p + n - 1].log_softmax(-1).gather(-1, ids[i, p : p + n, None])
        torch.testing.assert_close(
            lp[i, p - start : p - start + n], expected[:, 0], atol=1e-5, rtol=0
        )
        assert (lp[i, : p - start] == 0).all() and (lp[i, p - start + n :] == 0).all()
        torch.testing.assert_close(seq[i], expected.sum(), atol=1e-5, rtol=0)


def test_gradients_flow_to_parameters():
    model = tiny_model("llama", seed=3).train()
    r = rollout(model, 1.0)
    lp = token_logprobs(model, r.sequences, r.attention_mask, r.prompt_length, chunk_size=2)
    (-lp.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def grouped_batch(seed=0):
    """Three left-padded prompts repeated in a shuffled order (GRPO's G completions per
    prompt), responses with pads after an EOS on two rows."""
    g = torch.Generator().manual_seed(seed)
    ids, mask = left_pad([torch.randint(3, V, (n,), generator=g) for n in (5, 9, 3)], 0)
    order = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    ids, mask = ids[order], mask[order]
    resp = torch.randint(3, V, (8, 6), generator=g)
    rmask = torch.ones(8, 6, dtype=mask.dtype)
    rmask[1, 4:], rmask[5, 2:] = 0, 0
    return torch.cat([ids, resp], 1), torch.cat([mask, rmask], 1), ids.shape[1]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "llama-lora"])
def test_shared_prompts_equal_the_full_forward(arch, monkeypatch):
    """Each distinct prompt run once, either packed with its responses into one row (block
    mask) or with its cache copied to the rows that repeat it: log-probs, hidden states and
    parameter gradients equal the full forward's."""
    if arch == "llama-lora":
        model = apply_lora(tiny_model("llama", seed=4), LoraSpec(r=4, alpha=8, include_mlp=True))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
        model.eval()  # no adapter dropout: both passes must see the same function
    else:
        model = tiny_model(arch, seed=4)
    ids, mask, start = grouped_batch()
    calls = []
    model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape),
                                with_kwargs=True)  # fmt: skip
    packing_pays = scoring._packing_pays
    results = []
    for share, pack, minimum in ((True, True, 0), (True, False, 0), (False, True, 0),
                                 (True, False, 10**6)):  # fmt: skip
        monkeypatch.setattr(scoring, "SHARE_MIN_ROWS", minimum)
        monkeypatch.setattr(scoring, "_packing_pays", packing_pays if pack else
                            lambda *a: False)  # fmt: skip
        model.zero_grad()
        calls.clear()
        out = score_tokens(model, ids, mask, start, hidden=True, share_prompts=share)
        (out.logprobs.sum() + 0.01 * out.hidden.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert torch.isfinite(grads).all()
        results.append((out.logprobs.detach(), out.hidden.detach(), grads, list(calls)))
    packed, cached, full, below = results
    # 3 prompts (lengths 5, 9, 3 padded to 9), each followed by its rows' 6-token responses: the
    # first prompt has 3 rows, so 9 + 3 x 6 = 27 columns
    assert packed[3] == [(3, start + 3 * 6)]
    assert cached[3] == [(3, start), (8, ids.shape[1] - start)]  # 3 prompts, then 8 responses
    assert full[3] == below[3] == [tuple(ids.shape)]  # one full forward (off / too few rows)
    assert full[2].abs().max() > 0
    for result in (packed, cached):
        for a, b in zip(result[:3], full[:3], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packing_is_used_where_it_saves_work():
    """The cost model packs short prompts with a few short responses (the GRPO benchmark's
    2 prompts x 4 x (9 + 32) tokens on a SmolLM2-sized model) and long prompts with short
    responses, but not many long responses (the masked attention over G x C columns would cost
    more than the prompt rows saved), nor with a non-SDPA attention or rows longer than a
    sliding window."""
    from types import SimpleNamespace

    def pays(B, U, start, n, attn="sdpa", window=None):
        config = SimpleNamespace(_attn_implementation=attn, hidden_size=576,
                                 num_attention_heads=9, sliding_window=window)  # fmt: skip
        G = B // U
        return scoring._packing_pays(SimpleNamespace(config=config), B, U, start, n,
                                     start + G * n)  # fmt: skip

    assert pays(8, 2, 9, 32)
    assert pays(8, 2, 256, 32)
    assert not pays(16, 1, 256, 256)
    assert pays(8, 2, 64, 32) and not pays(8, 2, 64, 128)  # measured: packed 0.62 / 0.93 of
    # the full pass where the cache path took 0.70 / 0.82
    assert not pays(8, 2, 9, 32, attn="eager")
    assert pays(8, 2, 9, 32, window=4096) and not pays(8, 2, 9, 32, window=32)
    assert not pays(8, 2, 1, 2048)  # too little saved for a 4 x 2048-column score matrix


def test_packed_scoring_of_an_offloaded_model_is_one_call():
    """An offloaded reference (weights read back per call) packs its shared prompts into its
    single forward, and gives the in-memory model's log-probs."""
    model = tiny_model("llama", seed=5)
    ids, mask, start = grouped_batch(1)
    expected = score_tokens(model, ids, mask, start, share_prompts=False).logprobs
    frozen = offload_copy(model)
    calls = []
    frozen.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape),
                                 with_kwargs=True)  # fmt: skip
    with torch.no_grad(), loaded(frozen):
        got = score_tokens(frozen, ids, mask, start).logprobs
    assert calls == [(3, start + 3 * 6)]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_validation():
    model = tiny_model("llama")
    ids, mask = torch.ones((2, 5), dtype=torch.long), torch.ones((2, 5), dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(model, ids, mask, 2, temperature=0.0)
    with pytest.raises(ValueError, match="column"):
        token_logprobs(model, ids, mask, 0)
    with pytest.raises(ValueError, match="response mask"):
        token_logprobs(model, ids, mask, torch.ones((2, 4), dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(model, ids, mask, 2, chunk_size=0)
    assert token_logprobs(model, ids, mask, 5).shape == (2, 0)
    assert sequence_logprob(model, ids, mask, 5).tolist() == [0.0, 0.0]


def test_packed_scoring_under_bf16_autocast():
    """The packed path under bf16 autocast (the trainers' ``precision: bf16``): one packed call,
    log-probs within bf16 round-off of the full forward's, finite gradients."""
    model = tiny_model("llama", seed=6)
    ids, mask, start = grouped_batch(2)
    calls = []
    model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape),
                                with_kwargs=True)  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = score_tokens(model, ids, mask, start, share_prompts=False).logprobs
        calls.clear()
        packed = score_tokens(model, ids, mask, start).logprobs
        packed.sum().backward()
    assert calls == [(3, start + 3 * 6)]
    assert packed.dtype == torch.float32
    torch.testing.assert_close(packed, full, rtol=0, atol=1e-2)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
