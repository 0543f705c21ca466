"""Tests for pavlov.llm.generation.rollout: the KV-cache sampling engine, on tiny random models.

The central check: the engine's per-token log-probs equal a plain full forward of the finished
sequences, row by row *without* padding, for a rotary (Llama) and an absolute-position (GPT-2)
model, so left padding, position ids and the cache are all consistent.
"""

from __future__ import annotations

import pytest
import torch

from pavlov.llm.generation.rollout import (
    Rollout,
    SamplingConfig,
    generate,
    left_pad,
    position_ids_from_mask,
    sample_next,
)
from pavlov.llm.models.tiny import tiny_random_lm

V = 97
torch.set_num_threads(2)


def tiny_model(arch: str, seed: int = 0):
    return tiny_random_lm(arch, V, seed)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return tiny_model(request.param)


def prompts(lengths=(5, 9, 3, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, V, (n,), generator=g) for n in lengths]
    return left_pad(rows, pad_token_id=0)


def row_logprobs_unpadded(model, rollout: Rollout, row: int, temperature: float):
    """Log-probs of row ``row``'s response tokens from one forward over its real tokens only."""
    keep = rollout.attention_mask[row].bool()
    ids = rollout.sequences[row][keep].unsqueeze(0)  # (1, n_real)
    n_resp = int(rollout.response_lengths[row])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature  # (n_real, V)
    logp = logits.log_softmax(-1)[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logp[-n_resp:]


# --- helpers ----------------------------------------------------------------------------------


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8], torch.tensor([9, 10])], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]


def test_sampling_config_validation_and_eos_normalisation():
    assert SamplingConfig(eos_token_ids=5).eos_token_ids == (5,)
    assert SamplingConfig(eos_token_ids=[1, 2]).eos_token_ids == (1, 2)
    for bad, field in [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ]:
        with pytest.raises(ValueError, match=field):
            SamplingConfig(**bad)


def test_sample_next_frequencies_and_truncation():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20_000, 4)
    g = torch.Generator().manual_seed(0)

    def freq(cfg):
        tokens, logp = sample_next(logits, cfg, g)
        # log-probs are before truncation, at the temperature
        expected = (logits / (cfg.temperature or 1.0)).log_softmax(-1)  # greedy: temperature 1
        expected = expected.gather(-1, tokens[:, None]).squeeze(-1)
        torch.testing.assert_close(logp, expected)
        return torch.bincount(tokens, minlength=4).float() / len(tokens)

    torch.testing.assert_close(
        freq(SamplingConfig()), torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0
    )
    # top_p = 0.7: the nucleus is {0, 1} (0.5 < 0.7 <= 0.8), renormalised to 0.625 / 0.375
    torch.testing.assert_close(
        freq(SamplingConfig(top_p=0.7)), torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0
    )
    # top_p = 0.5 exactly: token 0 alone reaches it
    assert freq(SamplingConfig(top_p=0.5)).tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(
        freq(SamplingConfig(top_k=3)),
        torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95,
        atol=0.015,
        rtol=0,
    )
    # top-k then top-p over the renormalised top-k: {0, 1, 2} -> .526/.316/.158; p=.8 -> {0, 1}
    torch.testing.assert_close(
        freq(SamplingConfig(top_k=3, top_p=0.8)),
        torch.tensor([0.625, 0.375, 0.0, 0.0]),
        atol=0.015,
        rtol=0,
    )
    # temperature 0.5 squares and renormalises the probabilities
    p2 = torch.tensor([0.25, 0.09, 0.0225, 0.0025])
    torch.testing.assert_close(
        freq(SamplingConfig(temperature=0.5)), p2 / p2.sum(), atol=0.015, rtol=0
    )
    assert freq(SamplingConfig(temperature=0)).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_sample_next_never_draws_zero_probability_tokens():
    inf = float("inf")
    logits = torch.tensor([[-inf, 0.0, -inf, 0.0, -inf]]).expand(20_000, 5)
    tokens, logp = sample_next(logits, SamplingConfig(), torch.Generator().manual_seed(1))
    counts = torch.bincount(tokens, minlength=5)
    assert counts[[0, 2, 4]].sum() == 0
    assert abs(counts[1].item() / 20_000 - 0.5) < 0.015
    torch.testing.assert_close(logp, torch.full((20_000,), -0.6931471805599453))


def test_sample_next_native_and_torch_paths_draw_the_same_tokens(monkeypatch):
    """The C sampler (``native.sample_rows``) takes the uniforms the torch path would: with the
    same seed both give the same tokens and log-probs (temperature applied first)."""
    import pavlov.llm.generation.rollout as rollout

    logits = torch.randn(64, 3000, generator=torch.Generator().manual_seed(3)) * 4
    cfg = SamplingConfig(temperature=0.7)
    fast = sample_next(logits, cfg, torch.Generator().manual_seed(5))
    monkeypatch.setattr(rollout, "sample_rows", lambda z, u: None)
    slow = sample_next(logits, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(fast[0], slow[0])
    torch.testing.assert_close(fast[1], slow[1], rtol=0, atol=1e-5)


def test_top_p_candidates_draw_what_the_whole_ranking_draws(monkeypatch):
    """Top-p ranks 256 or 4,096 candidates where they hold a row's nucleus, the whole
    vocabulary where not: the same tokens as ranking every logit, for sharp rows, flat rows
    (nucleus > 4,096 tokens) and bf16-rounded logits full of ties."""
    import pavlov.llm.generation.rollout as rollout

    g = torch.Generator().manual_seed(0)
    V = 20_000
    scale = torch.tensor([8.0] * 40 + [3.0] * 20 + [0.05] * 4).repeat_interleave(4)[:, None]
    logits = (torch.randn(256, V, generator=g) * scale).bfloat16().float()
    cfg = SamplingConfig(top_p=0.9)
    seen = []  # (rows, width) of each ranking
    real = rollout._ranked
    monkeypatch.setattr(rollout, "_ranked", lambda z, k: seen.append((len(z), k)) or real(z, k))
    fast = sample_next(logits, cfg, torch.Generator().manual_seed(1))
    assert [k for _, k in seen] == [256, 4096, V]  # all three widths were needed
    assert seen[0][0] == 256 and seen[-1][0] < seen[1][0] < 256
    monkeypatch.setattr(rollout, "NUCLEUS_WIDTHS", ())
    whole = sample_next(logits, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(fast[0], whole[0])
    torch.testing.assert_close(fast[1], whole[1], rtol=0, atol=0)


def test_top_p_ranks_ties_by_token_id():
    """Equal logits are ranked by token id, whatever the sort's order among equals: the nucleus
    of ``[1, 1, 1, 0]`` at top-p 0.5 is its first two tokens, each drawn half the time."""
    logits = torch.tensor([[1.0, 1.0, 1.0, -30.0]]).expand(20_000, 4)
    tokens, _ = sample_next(logits, SamplingConfig(top_p=0.5), torch.Generator().manual_seed(2))
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.5, 0.0, 0.0]), atol=0.015, rtol=0)


# --- engine vs a full forward -----------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(max_new_tokens=12, temperature=1.0, seed=1),
        SamplingConfig(max_new_tokens=12, temperature=0.7, seed=2),
        SamplingConfig(max_new_tokens=12, temperature=1.3, top_k=10, top_p=0.9, seed=3),
        SamplingConfig(max_new_tokens=12, temperature=0.0),
    ],
    ids=["t1", "t0.7", "t1.3-topk-topp", "greedy"],
)
def test_logprobs_equal_unpadded_full_forward(model, cfg):
    ids, mask = prompts()
    r = generate(model, ids, mask, cfg)
    assert r.sequences.shape == (4, 9 + 12) and r.logprobs.shape == (4, 12)
    assert r.prompt_length == 9 and r.response_mask.all() and not r.eos_reached.any()
    temperature = cfg.temperature or 1.0
    for row in range(4):
        expected = row_logprobs_unpadded(model, r, row, temperature)
        torch.testing.assert_close(r.logprobs[row], expected, atol=1e-5, rtol=0)


def test_logprobs_equal_padded_full_forward_with_position_ids(model):
    ids, mask = prompts(lengths=(2, 8, 5))
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.7, seed=4)
    r = generate(model, ids, mask, cfg)
    with torch.no_grad():
        logits = model(
            input_ids=r.sequences,
            attention_mask=r.attention_mask,
            position_ids=position_ids_from_mask(r.attention_mask),
        ).logits
    logp = (logits[:, :-1] / 0.7).log_softmax(-1).gather(-1, r.sequences[:, 1:, None])[..., 0]
    torch.testing.assert_close(r.logprobs, logp[:, r.prompt_length - 1 :], atol=1e-5, rtol=0)


def test_greedy_matches_hf_generate(model):
    ids, mask = prompts()
    ours = generate(model, ids, mask, SamplingConfig(max_new_tokens=8, temperature=0))
    theirs = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=8,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert torch.equal(ours.sequences, theirs)


def test_top_k_one_equals_greedy(model):
    ids, mask = prompts()
    greedy = generate(model, ids, mask, SamplingConfig(max_new_tokens=10, temperature=0))
    top1 = generate(model, ids, mask, SamplingConfig(max_new_tokens=10, top_k=1, seed=7))
    assert torch.equal(greedy.sequences, top1.sequences)
    torch.testing.assert_close(greedy.logprobs, top1.logprobs)  # both at temperature 1
    hot = generate(model, ids, mask, SamplingConfig(max_new_tokens=10, top_k=1, temperature=2.0))
    assert torch.equal(greedy.sequences, hot.sequences)
    tiny_p = generate(model, ids, mask, SamplingConfig(max_new_tokens=10, top_p=1e-6))
    assert torch.equal(greedy.sequences, tiny_p.sequences)


def test_seed_reproducibility(model):
    ids, mask = prompts()
    cfg = SamplingConfig(max_new_tokens=16, seed=123)
    a, b = generate(model, ids, mask, cfg), generate(model, ids, mask, cfg)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.logprobs, b.logprobs)
    c = generate(model, ids, mask, SamplingConfig(max_new_tokens=16, seed=124))
    assert not torch.equal(a.sequences, c.sequences)


def test_fast_decoder_samples_in_float32_under_bf16_autocast(model):
    """The fast decoder (Llama family) turns bf16 autocast off: with float32 weights
    (``bf16_weights=False``; with it, see test_decoder) the same tokens and log-probs as without
    autocast; the generic path (GPT-2) keeps the caller's autocast."""
    ids, mask = prompts()
    cfg = SamplingConfig(max_new_tokens=12, seed=7, bf16_weights=False)
    plain = generate(model, ids, mask, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = generate(model, ids, mask, cfg)
        assert torch.is_autocast_enabled("cpu")  # restored for the caller
    fast = model.config.model_type == "llama"
    assert torch.equal(plain.logprobs, cast.logprobs) == fast
    if fast:
        assert torch.equal(plain.sequences, cast.sequences)


# --- EOS handling -----------------------------------------------------------------------------


def test_masks_after_first_eos_and_early_stop(model):
    ids, mask = prompts()
    free = generate(model, ids, mask, SamplingConfig(max_new_tokens=12, temperature=0))
    # Make each row's greedy token at step 2 + row an EOS: rows stop at (or before) that step.
    eos = tuple(int(free.responses[row, 2 + row]) for row in range(4))
    cfg = SamplingConfig(max_new_tokens=12, temperature=0, eos_token_ids=eos, pad_token_id=1)
    r = generate(model, ids, mask, cfg)
    stops = []
    for row in range(4):
        hits = [t for t in range(12) if int(free.responses[row, t]) in eos]
        stops.append(hits[0])
    T = max(stops) + 1
    assert r.logprobs.shape == (4, T)  # stopped early once every row was done
    assert r.eos_reached.all()
    assert r.response_lengths.tolist() == [s + 1 for s in stops]
    for row, stop in enumerate(stops):
        expected_mask = [t <= stop for t in range(T)]
        assert r.response_mask[row].tolist() == expected_mask
        assert torch.equal(r.responses[row, : stop + 1], free.responses[row, : stop + 1])
        assert (r.responses[row, stop + 1 :] == 1).all()  # pad after EOS
        assert (r.logprobs[row, stop + 1 :] == 0).all()
        torch.testing.assert_close(r.logprobs[row, : stop + 1], free.logprobs[row, : stop + 1])
    assert torch.equal(r.attention_mask[:, r.prompt_length :], r.response_mask.long())
    assert torch.equal(r.attention_mask[:, : r.prompt_length], mask)


def test_eos_only_some_rows(model):
    ids, mask = prompts()
    free = generate(model, ids, mask, SamplingConfig(max_new_tokens=10, temperature=0))
    eos = int(free.responses[0, 3])
    r = generate(
        model, ids, mask, SamplingConfig(max_new_tokens=10, temperature=0, eos_token_ids=eos)
    )
    assert r.logprobs.shape[1] <= 10
    for row in range(4):
        hits = (free.responses[row] == eos).nonzero()
        if len(hits):
            assert r.eos_reached[row] and r.response_lengths[row] == int(hits[0]) + 1
        else:
            assert not r.eos_reached[row] and r.response_lengths[row] == r.logprobs.shape[1]


# --- misc -------------------------------------------------------------------------------------


def test_unpadded_prompts_without_mask_and_train_mode_restored():
    model = tiny_model("gpt2").train()
    ids = torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(5))
    r = generate(model, ids, None, SamplingConfig(max_new_tokens=5, temperature=0))
    assert model.training  # restored
    model.eval()
    r2 = generate(model, ids, torch.ones_like(ids), SamplingConfig(max_new_tokens=5, temperature=0))
    assert torch.equal(r.sequences, r2.sequences)  # dropout was off while sampling
    for row in range(3):
        torch.testing.assert_close(
            r.logprobs[row], row_logprobs_unpadded(model, r, row, 1.0), atol=1e-5, rtol=0
        )


def test_right_padded_prompts_are_rejected():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, torch.tensor([[1, 1, 0]]))
