"""Tests for pavlov.llm.cpu.decoder: the Llama-family fast decode path must compute exactly what the
model's own forward computes (to float32 round-off), with left padding and a static cache."""

from __future__ import annotations

import pytest
import torch

from pavlov.llm.cpu import decoder as decoder_module
from pavlov.llm.cpu.decoder import fast_decoder
from pavlov.llm.cpu.kernels import can_pack
from pavlov.llm.cpu.native import row_kernel_available
from pavlov.llm.generation.rollout import SamplingConfig, generate, left_pad, position_ids_from_mask
from pavlov.llm.models.loading import LoraSpec, apply_lora
from pavlov.llm.models.tiny import tiny_random_lm

V = 97
torch.set_num_threads(2)


def qwen2_with_bias():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1,
                         max_position_embeddings=128, tie_word_embeddings=False)  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # the bias path is exercised
    return model


def llama_with_lora(include_mlp: bool = True):
    """A tiny Llama under peft LoRA on every projection (or the attention ones), with non-zero
    B (peft starts B at 0, which would make the adapters invisible)."""
    spec = LoraSpec(r=4, alpha=8, include_mlp=include_mlp)
    model = apply_lora(tiny_random_lm("llama", V, 0), spec)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval()


def llama_with_large_gates():
    """Gate pre-activations far into both tails of the SiLU (|g| up to ~100): the C step's
    vectorised exp must saturate as the exact one does."""
    model = tiny_random_lm("llama", V, 0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.mul_(400.0)
    return model.eval()


MODELS = {
    "llama": lambda: tiny_random_lm("llama", V, 0),
    "qwen2": qwen2_with_bias,
    "llama-lora": llama_with_lora,
    "llama-lora-attention": lambda: llama_with_lora(include_mlp=False),
}


def batch(lengths=(5, 9, 3, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return left_pad([torch.randint(3, V, (n,), generator=g) for n in lengths], pad_token_id=0)


@pytest.fixture(params=["native", "packed", "plain"])
def packing(request, monkeypatch):
    """Run each test with each way of multiplying by the weights in the decode step: the C row
    kernel, oneDNN on packed weights, ``F.linear``."""
    kernel = request.param
    if kernel == "native" and not row_kernel_available():
        pytest.skip("no C compiler / AVX2 here: the native row kernel is unavailable")
    if kernel == "packed" and not can_pack():
        pytest.skip("this torch build has no oneDNN weight packing")
    monkeypatch.setattr(decoder_module, "_kernel", lambda model, rows: kernel)
    return kernel


def decode_and_forward(model, ids, mask, extra):
    """The decoder's logits for the prompts ``(B, P)`` and then each column of ``extra`` but the
    last (prefill + steps), and the model's own forward over prompt + extra."""
    B, P = ids.shape
    dec = fast_decoder(model, B, P + extra.shape[1])
    assert dec is not None
    with torch.no_grad():
        got = [dec.prefill(ids, mask, position_ids_from_mask(mask))]
        got += [dec.step(extra[:, t]) for t in range(extra.shape[1] - 1)]
        full_ids = torch.cat([ids, extra], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(extra)], dim=1)
        ref = model(input_ids=full_ids, attention_mask=full_mask,
                    position_ids=position_ids_from_mask(full_mask)).logits  # fmt: skip
    return dec, got, ref


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_logits_equal_the_models_forward(arch, packing):
    model = MODELS[arch]()
    ids, mask = batch()
    B, P = ids.shape
    extra = torch.randint(3, V, (B, 6), generator=torch.Generator().manual_seed(3))
    dec, got, ref = decode_and_forward(model, ids, mask, extra)
    # with the native kernel the decode steps ran as one C call per step
    assert (dec.native is not None) == (packing == "native")
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, P - 1 + t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_repeated_prompts_share_one_prefill(arch, packing, monkeypatch):
    """G completions per prompt (GRPO): the prefill runs each distinct prompt once and copies
    its caches; every row's logits still equal the model's forward."""
    model = MODELS[arch]()
    ids, mask = batch(lengths=(5, 9, 3))
    order = torch.tensor([0, 1, 0, 2, 1, 0])
    ids, mask = ids[order], mask[order]
    B, P = ids.shape
    rows = []
    real = decoder_module.LlamaDecoder._prefill
    monkeypatch.setattr(decoder_module.LlamaDecoder, "_prefill",
                        lambda self, i, *a: rows.append(len(i)) or real(self, i, *a))  # fmt: skip
    extra = torch.randint(3, V, (B, 4), generator=torch.Generator().manual_seed(7))
    dec, got, ref = decode_and_forward(model, ids, mask, extra)
    assert rows == [3]
    assert (dec.native is not None) == (packing == "native")
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, P - 1 + t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", [*sorted(MODELS), "llama-large-gates"])
def test_one_call_c_step_equals_the_per_op_step(arch):
    """The C decode step (:class:`pavlov.llm.cpu.native.DecodeLayers`) against the same decoder's
    torch ops, token by token, caches included."""
    if not row_kernel_available():
        pytest.skip("no C compiler / AVX2 here")
    model = llama_with_large_gates() if arch == "llama-large-gates" else MODELS[arch]()
    ids, mask = batch()
    B, P = ids.shape
    extra = torch.randint(3, V, (B, 7), generator=torch.Generator().manual_seed(5))
    fused, ops = fast_decoder(model, B, P + 7), fast_decoder(model, B, P + 7)
    with torch.no_grad():
        for dec in (fused, ops):
            dec.linear.kernel = "native"
            dec.prefill(ids, mask, position_ids_from_mask(mask))
        assert fused.native is not None
        ops.native = None
        for t in range(7):
            torch.testing.assert_close(fused.step(extra[:, t]), ops.step(extra[:, t]),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
    for a, b in zip(fused.k + fused.v, ops.k + ops.v, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def bf16_rounded(model):
    """A float32 copy of ``model`` (LoRA merged) whose projections without adapters and LM head
    hold their bf16-rounded weights: what the decoder multiplies by with ``bf16=True``."""
    import copy

    adapted = {n.removesuffix(".base_layer") for n, m in model.named_modules()
               if n.endswith(".base_layer")}  # fmt: skip
    ref = copy.deepcopy(model)
    if hasattr(ref, "merge_and_unload"):
        ref = ref.merge_and_unload()
    with torch.no_grad():
        for name, m in ref.named_modules():
            path = f"base_model.model.{name}"
            if name.startswith("model.layers.") and isinstance(m, torch.nn.Linear) and not any(
                    a in (name, path) for a in adapted):  # fmt: skip
                m.weight.copy_(m.weight.bfloat16().float())
        head = ref.lm_head.weight.detach().bfloat16().float()
        ref.lm_head.weight = torch.nn.Parameter(head)  # untied: the embeddings stay float32
    return ref.eval()


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_bf16_weights_decode_the_bf16_rounded_model(arch, packing):
    """``bf16=True`` (sampling under bf16 autocast): the C kernels widen bf16 copies of the
    weights exactly (the rounded model's float32 forward to round-off); oneDNN's packed bf16
    path (and a long prefill's bf16 GEMM) also rounds the activations, as autocast does (bf16
    tolerance); the plain path ignores it."""
    from pavlov.llm.cpu.kernels import onednn_bf16

    if packing == "packed" and not onednn_bf16():
        pytest.skip("no fast bf16 oneDNN here")
    model = MODELS[arch]()
    ids, mask = batch(lengths=(5, 7, 3, 6))  # 28 prompt rows: the row kernel's prefill too
    B, P = ids.shape
    extra = torch.randint(3, V, (B, 6), generator=torch.Generator().manual_seed(3))
    dec = fast_decoder(model, B, P + 6, bf16=True)
    assert dec.linear.bf16 == (packing != "plain")
    with torch.no_grad():
        got = [dec.prefill(ids, mask, position_ids_from_mask(mask))]
        got += [dec.step(extra[:, t]) for t in range(5)]
        ref_model = model if packing == "plain" else bf16_rounded(model)
        full_ids = torch.cat([ids, extra], 1)
        full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
        ref = ref_model(input_ids=full_ids, attention_mask=full_mask,
                        position_ids=position_ids_from_mask(full_mask)).logits  # fmt: skip
    assert (dec.native is not None) == (packing == "native")
    if packing != "plain":  # adapted projections keep float32 (bf16 would round the update off)
        q = dec.layers[0].self_attn.q_proj
        assert dec.linear.weights[id(q)].dtype == (torch.float32 if "lora" in arch
                                                   else torch.bfloat16)  # fmt: skip
    tol = dict(rtol=2e-2, atol=2e-2) if packing == "packed" else dict(rtol=1e-4, atol=1e-5)
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, P - 1 + t], **tol)
    if packing != "plain":  # the rounding is visible: not the float32 model's logits
        exact = model(input_ids=full_ids, attention_mask=full_mask,
                      position_ids=position_ids_from_mask(full_mask)).logits  # fmt: skip
        assert not torch.allclose(got[-1], exact[:, P + 4], rtol=1e-4, atol=1e-5)


def test_bf16_copies_are_reused_until_the_weight_changes(packing):
    """A second decoder on unchanged weights takes the first one's bf16 copies (no rounding
    anew per call); an in-place update of a weight (an optimizer step) gives a fresh copy, and
    the decode follows the new weights."""
    if packing == "plain":
        pytest.skip("the plain path keeps float32 weights")
    model = tiny_random_lm("llama", V, 0).eval()
    ids, mask = batch(lengths=(5, 7))
    B, P = ids.shape
    first = fast_decoder(model, B, P + 2, bf16=True)
    second = fast_decoder(model, B, P + 2, bf16=True)
    up = model.model.layers[0].mlp.up_proj
    assert second.linear.weights[id(up)] is first.linear.weights[id(up)]
    with torch.no_grad():
        before = second.prefill(ids, mask, position_ids_from_mask(mask))
        up.weight.mul_(2.0)  # in place, as AdamW steps: the version counter moves
    third = fast_decoder(model, B, P + 2, bf16=True)
    copy = third.linear.weights[id(up)]
    assert copy is not first.linear.weights[id(up)]
    assert torch.equal(copy, up.weight.detach().bfloat16())
    with torch.no_grad():
        after = third.prefill(ids, mask, position_ids_from_mask(mask))
    assert not torch.allclose(before, after)


def test_the_c_step_is_skipped_for_other_activations():
    model = tiny_random_lm("llama", V, 0)
    model.config.hidden_act = "gelu"
    for layer in model.model.layers:
        layer.mlp.act_fn = torch.nn.GELU()
    ids, mask = batch()
    dec = fast_decoder(model, ids.shape[0], ids.shape[1] + 3)
    with torch.no_grad():
        dec.prefill(ids, mask, position_ids_from_mask(mask))
    assert dec.native is None


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_fast_equals_generic(arch, temperature, packing):
    model = MODELS[arch]()
    ids, mask = batch()
    cfg = SamplingConfig(max_new_tokens=12, temperature=temperature, eos_token_ids=(5,), seed=4)
    fast = generate(model, ids, mask, cfg)
    slow = generate(model, ids, mask, SamplingConfig(**{**cfg.__dict__, "fast": False}))
    assert torch.equal(fast.sequences, slow.sequences)
    assert torch.equal(fast.response_mask, slow.response_mask)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, rtol=1e-4, atol=1e-5)


def test_lora_adapters_change_the_decoders_logits_and_can_be_disabled():
    model = llama_with_lora()
    ids, mask = batch()
    B, P = ids.shape
    positions = position_ids_from_mask(mask)
    with torch.no_grad():
        with_adapters = fast_decoder(model, B, P + 2).prefill(ids, mask, positions)
        with model.disable_adapter():
            without = fast_decoder(model, B, P + 2).prefill(ids, mask, positions)
            base = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(without, base[:, -1], rtol=1e-4, atol=1e-5)
    assert (with_adapters - without).abs().max() > 1e-2  # the adapters were applied


def test_unsupported_models_take_the_generic_path():
    from peft import LoraConfig, get_peft_model

    assert fast_decoder(tiny_random_lm("gpt2", V), 2, 16) is None
    dora = get_peft_model(tiny_random_lm("llama", V), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], use_dora=True))  # fmt: skip
    assert fast_decoder(dora, 2, 16) is None
    embedding = get_peft_model(tiny_random_lm("llama", V), LoraConfig(
        r=4, target_modules=["embed_tokens", "q_proj"]))  # fmt: skip
    assert fast_decoder(embedding, 2, 16) is None
    assert fast_decoder(tiny_random_lm("llama", V), 2, 16) is not None


def test_cache_overflow_is_an_error():
    model = tiny_random_lm("llama", V)
    ids, mask = batch((3, 2))
    dec = fast_decoder(model, 2, 4)
    with torch.no_grad():
        dec.prefill(ids, mask, position_ids_from_mask(mask))
        dec.step(torch.tensor([4, 4]))
        with pytest.raises(ValueError, match="cache is full"):
            dec.step(torch.tensor([4, 4]))


@pytest.mark.parametrize("bf16_weights", [True, False])
def test_generate_under_bf16_autocast_samples_with_bf16_weights_where_bf16_is_fast(
        bf16_weights, monkeypatch):  # fmt: skip
    from pavlov.llm.generation import rollout

    seen = []
    real = rollout.fast_decoder
    monkeypatch.setattr(rollout, "fast_decoder", lambda *a: seen.append(a[-1]) or real(*a))
    model = MODELS["llama-lora"]()
    ids, mask = batch()
    cfg = SamplingConfig(max_new_tokens=4, seed=1, bf16_weights=bf16_weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, ids, mask, cfg)
    generate(model, ids, mask, cfg)  # float32 precision: float32 weights, whatever the flag
    from pavlov.llm.cpu.kernels import onednn_bf16

    assert seen == [bf16_weights and onednn_bf16(), False]
    assert out.logprobs.dtype == torch.float32 and bool(out.response_mask.all())
