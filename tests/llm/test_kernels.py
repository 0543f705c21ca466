"""Tests for pavlov.llm.cpu.kernels: oneDNN linears and the sparse tied-embedding gradient must give
the gradients PyTorch's defaults give (to float32 round-off), and be undone on exit."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pavlov.llm.cpu.kernels import (
    dnn_linear,
    inplace_tied_embedding,
    onednn_available,
    onednn_linears,
)
from pavlov.llm.cpu.lean import fast_kernels
from pavlov.llm.models.tiny import tiny_causal_lm, tiny_random_lm
from pavlov.llm.scoring.logprobs import score_tokens

torch.set_num_threads(2)


@pytest.mark.parametrize("bias", [False, True])
def test_dnn_linear_matches_f_linear_values_and_gradients(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 48, generator=g, requires_grad=True)
    w = torch.randn(40, 48, generator=g, requires_grad=True)
    b = torch.randn(40, generator=g, requires_grad=True) if bias else None
    out = dnn_linear(x, w, b)
    ref = torch.nn.functional.linear(x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    weights = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad((out * weights).sum(), [t for t in (x, w, b) if t is not None])
    want = torch.autograd.grad((ref * weights).sum(), [t for t in (x, w, b) if t is not None])
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_dnn_linear_falls_back_for_other_dtypes():
    x, w = torch.randn(4, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    assert dnn_linear(x, w).dtype == torch.float64
    torch.testing.assert_close(dnn_linear(x, w), x @ w.t())


def grads(model, ids, mask, **kernels):
    model.zero_grad(set_to_none=True)
    with fast_kernels(model, **kernels):
        score_tokens(model, ids, mask, 4).logprobs.pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_kernels_give_the_default_gradients(arch):
    model, _ = tiny_causal_lm(arch=arch)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    ids = torch.randint(3, 500, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    plain = grads(model, ids, mask, enabled=False)
    fast = grads(model, ids, mask)
    assert plain.keys() == fast.keys()
    for name in plain:
        assert not fast[name].is_sparse, name  # what the optimizer receives is dense
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_patches_are_undone_and_untied_embeddings_stay_dense():
    model, _ = tiny_causal_lm(arch="llama")
    q = model.model.layers[0].self_attn.q_proj
    with onednn_linears(model):
        assert ("forward" in q.__dict__) == onednn_available()
    assert "forward" not in q.__dict__
    with inplace_tied_embedding(model) as applied:
        assert applied and "forward" in model.get_input_embeddings().__dict__
    assert "forward" not in model.get_input_embeddings().__dict__
    untied = tiny_random_lm("llama", 97)  # LlamaConfig does not tie by default
    assert untied.get_input_embeddings().weight is not untied.get_output_embeddings().weight
    with inplace_tied_embedding(untied) as applied:
        assert not applied and "forward" not in untied.get_input_embeddings().__dict__


def test_heap_compaction_is_opt_in():
    import sys

    from pavlov.llm.cpu.heap import compact_heap
    from pavlov.llm.trainers.common import TrainConfig

    assert TrainConfig().cpu.compact_heap is False  # speed first: compaction costs page faults
    with compact_heap(True) as applied:
        assert applied == sys.platform.startswith("linux")
    with compact_heap(False) as applied:
        assert not applied


def test_training_reuses_the_heap_unless_compaction_is_asked_for(monkeypatch):
    import sys

    from pavlov.llm.cpu import CpuConfig, heap, training
    from pavlov.llm.cpu.heap import reuse_heap

    linux = sys.platform.startswith("linux")
    model = tiny_random_lm("llama", 97)
    with reuse_heap(True) as applied:
        assert applied == linux
        big = torch.ones(40 * 2**20 // 4)  # 40 MiB: from the heap now (mmap'd by default)
        assert big.sum().item() == big.numel()
    with reuse_heap(False) as applied:
        assert not applied
    calls = []
    monkeypatch.setattr(heap, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    for cfg, first in [
        (CpuConfig(), (heap.M_MMAP_THRESHOLD, 1 << 30)),  # reuse: big blocks from the heap
        (CpuConfig(compact_heap=True), (heap.M_MMAP_THRESHOLD, 64 * 1024)),  # compact wins
    ]:
        calls.clear()
        with training(cfg, model):
            assert calls[0] == first
    for cfg in [CpuConfig(reuse_heap=False), CpuConfig(enabled=False, compact_heap=True)]:
        calls.clear()
        with training(cfg, model):
            assert not calls  # no heap policy: switched off


def test_precision_auto_picks_bf16_only_where_bf16_matmuls_are_fast(monkeypatch):
    from pavlov.llm.trainers import common
    from pavlov.llm.trainers.common import TrainConfig, autocast

    TrainConfig(precision="auto")  # an accepted value
    for fast, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(common, "fast_bf16", lambda fast=fast: fast)
        assert common.resolve_precision("auto") == expected
        assert common.resolve_precision("fp32") == "fp32"
        assert common.resolve_precision("bf16") == "bf16"
        with autocast("auto"):
            assert torch.is_autocast_enabled("cpu") == (expected == "bf16")
    common._warn_slow_bf16.cache_clear()  # warned once per process
    with pytest.warns(RuntimeWarning, match="without AVX-512"), autocast("bf16"):
        assert torch.is_autocast_enabled("cpu")
    common._warn_slow_bf16.cache_clear()


class _Tied(torch.nn.Module):
    """Embedding -> tanh -> output projection sharing the embedding's weight."""

    def __init__(self, padding_idx=None):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(11, 4, padding_idx=padding_idx)
        self.out = torch.nn.Linear(4, 11, bias=False)
        self.out.weight = self.emb.weight

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.out

    def forward(self, ids, project=True):
        h = torch.tanh(self.emb(ids))
        return (self.out(h).log_softmax(-1)[..., 0] if project else h).pow(2).sum()


@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("project", [True, False])
def test_tied_embedding_gradient_added_in_place_equals_autograds(padding_idx, project):
    """Same ``.grad`` as plain autograd: with and without the projection in the loss (the
    lookup's rows then land in a fresh zero gradient), with a padding row (no gradient), and
    accumulated over two backward passes."""
    model = _Tied(padding_idx)
    ids = torch.tensor([[1, 3, 3, 7], [3, 0, 10, 1]])
    expected = []
    for patched in (False, True):
        model.zero_grad(set_to_none=True)
        with inplace_tied_embedding(model) if patched else contextlib.nullcontext(False) as on:
            assert on == patched
            for _ in range(2):
                model(ids, project).backward()
        expected.append(model.emb.weight.grad.clone())
    torch.testing.assert_close(expected[1], expected[0], rtol=1e-6, atol=1e-7)
    if padding_idx is not None:
        assert not project or expected[1][padding_idx].abs().sum() > 0  # projection's part only
        if not project:
            assert expected[1][padding_idx].abs().sum() == 0


@pytest.mark.filterwarnings("ignore:Using backward")
def test_tied_embedding_refuses_create_graph():
    model = _Tied()
    with inplace_tied_embedding(model), pytest.raises(RuntimeError, match="create_graph"):
        model(torch.tensor([[1, 2, 5]])).backward(create_graph=True)


@pytest.mark.parametrize("max_norm", [1e-3, 1e6, float("inf")])
@pytest.mark.parametrize("fused", [True, False])
def test_clip_gradients_folded_into_fused_adamw_equals_clip_then_step(max_norm, fused):
    """The clip left to the fused AdamW's step (``grad_scale``) gives the parameters and moments
    of ``clip_grad_norm_`` followed by the step; other optimizers are clipped in place."""
    from pavlov.llm.trainers.common import clip_gradients

    results = []
    for ours in (True, False):
        model = tiny_random_lm("llama", 97, 5).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=fused)
        ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))
        norms = []
        for _ in range(3):  # the scale is set again before every step
            model(input_ids=ids, labels=ids).loss.backward()
            if ours:
                norms.append(clip_gradients(params, max_norm, opt))
                assert (getattr(opt, "grad_scale", None) is not None) == fused
            else:
                norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
        state = [t for p in params for t in (p.detach(), *opt.state[p].values()) if t.dim()]
        results.append((torch.stack(norms), state))
    (n1, s1), (n2, s2) = results
    torch.testing.assert_close(n1, n2)
    assert len(s1) == len(s2) > len(params)
    for a, b in zip(s1, s2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    if max_norm == 1e-3:
        assert n1.min() > max_norm  # the clip did act


def test_clip_gradients_is_not_folded_when_the_optimizer_has_other_parameters():
    from pavlov.llm.trainers.common import clip_gradients

    model = tiny_random_lm("llama", 97, 5)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, fused=True)
    model(input_ids=torch.tensor([[3, 4, 5]]), labels=torch.tensor([[3, 4, 5]])).loss.backward()
    first = params[0].grad.clone()
    norm = clip_gradients(params[1:], 1e-6, opt)  # a subset: scaling all in step would be wrong
    assert getattr(opt, "grad_scale", None) is None
    torch.testing.assert_close(params[0].grad, first)  # not part of the clipped set
    assert norm > 0 and params[1].grad.norm() < 1e-5


def test_masked_gqa_sdpa_skips_the_key_value_copies_with_the_same_results(monkeypatch):
    """Under a padding mask Transformers copies grouped k/v heads per query head; inside
    masked_gqa_sdpa torch's SDPA gets them grouped: same log-probs and gradients, no copies, and
    the environment switch is restored on exit."""
    import os

    import transformers.integrations.sdpa_attention as sdpa

    from pavlov.llm.cpu.kernels import GQA_SWITCH, masked_gqa_sdpa

    model = tiny_random_lm("llama", 97, 3)  # 4 query / 2 key-value heads
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = torch.randint(3, 97, (3, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: Transformers keeps an explicit mask
    copies = []
    real = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda h, n: (copies.append(n), real(h, n))[1])

    def run(enabled):
        model.zero_grad(set_to_none=True)
        copies.clear()
        with masked_gqa_sdpa(enabled):
            logp = score_tokens(model, ids, mask, 4).logprobs
            logp.pow(2).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(copies)

    monkeypatch.delenv(GQA_SWITCH, raising=False)
    plain_logp, plain_grads, plain_copies = run(False)
    fast_logp, fast_grads, fast_copies = run(True)
    assert plain_copies > 0 and fast_copies == 0
    assert GQA_SWITCH not in os.environ
    torch.testing.assert_close(fast_logp, plain_logp, rtol=1e-5, atol=1e-6)
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)
    monkeypatch.setenv(GQA_SWITCH, "0")
    with masked_gqa_sdpa():
        assert os.environ[GQA_SWITCH] == "1"
    assert os.environ[GQA_SWITCH] == "0"


def test_eager_attention_under_bf16_same_scores_and_only_in_the_block():
    """eager_attention switches SDPA models (a LoRA-wrapped Llama with a padding mask here) to
    the eager path inside the block and back on exit; under bf16 autocast the log-probs and
    gradients agree with SDPA's to bf16 round-off. training() asks for it under bf16 only."""
    from pavlov.llm.cpu import CpuConfig, training
    from pavlov.llm.cpu.kernels import eager_attention
    from pavlov.llm.trainers.common import TrainConfig, maybe_lora

    model = maybe_lora(tiny_random_lm("llama", 97, 3), TrainConfig(lora=True, lora_r=4))
    base = model.get_base_model()
    assert base.config._attn_implementation == "sdpa"
    ids = torch.randint(3, 97, (3, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0

    def run(enabled):
        model.zero_grad(set_to_none=True)
        with eager_attention(model, None, enabled=enabled):
            assert base.config._attn_implementation == ("eager" if enabled else "sdpa")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logp = score_tokens(model, ids, mask, 4).logprobs.float()
            logp.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logp.detach(), grads

    sdpa_logp, sdpa_grads = run(False)
    eager_logp, eager_grads = run(True)
    assert base.config._attn_implementation == "sdpa"
    assert sdpa_grads.keys() == eager_grads.keys() and sdpa_grads
    torch.testing.assert_close(eager_logp, sdpa_logp, rtol=0.02, atol=0.05)
    for name in sdpa_grads:
        scale = sdpa_grads[name].abs().max()
        torch.testing.assert_close(eager_grads[name], sdpa_grads[name], rtol=0.05,
                                   atol=0.05 * float(scale))
    for bf16, cfg, expect in [(True, CpuConfig(), "eager"), (False, CpuConfig(), "sdpa"),
                              (True, CpuConfig(eager_attention=False), "sdpa"),
                              (True, CpuConfig(enabled=False), "sdpa")]:
        with training(cfg, model, bf16=bf16):
            assert base.config._attn_implementation == expect
        assert base.config._attn_implementation == "sdpa"
