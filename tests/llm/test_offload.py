"""pavlov.llm.cpu.offload: a frozen copy whose weights live in a file computes exactly what an
in-memory copy computes, holds no weight memory outside ``loaded``, and leaves no file behind."""

from __future__ import annotations

import os

import pytest
import torch

from pavlov.llm.cpu import CpuConfig
from pavlov.llm.cpu.offload import is_offloaded, loaded, offload_copy
from pavlov.llm.models.tiny import tiny_causal_lm, tiny_random_lm
from pavlov.llm.trainers.online import OnlineConfig, train_online

V = 97
PROMPTS = ["hello there", "the cat", "a dog sat", "we"]


def vowel_share(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


def qwen2_untied():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


MODELS = {
    "llama": lambda: tiny_causal_lm()[0].eval(),  # tied embeddings
    "qwen2": qwen2_untied,  # untied, biases
    "gpt2": lambda: tiny_random_lm("gpt2", V, 0).eval(),  # transformer.h blocks
}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_offloaded_copy_computes_what_the_model_computed(arch, tmp_path):
    model = MODELS[arch]()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (3, 11), generator=torch.Generator().manual_seed(0))
    expected = logits(model, ids)
    copy = offload_copy(model, tmp_path)
    assert is_offloaded(copy) and not is_offloaded(model)
    assert os.listdir(tmp_path) == []  # an anonymous file: nothing to clean up, ever
    with torch.no_grad():  # the policy moves on; the copy keeps the weights it was made from
        for p in model.parameters():
            p.add_(1.0)
    with loaded(copy):
        assert torch.equal(logits(copy, ids), expected)
        with loaded(copy):  # nested use is fine
            assert torch.equal(logits(copy, ids), expected)
        assert torch.equal(logits(copy, ids), expected)
    # outside the block the copy holds no weights
    assert all(p.numel() == 0 for p in copy.parameters())
    assert not any(p.requires_grad for p in copy.parameters())
    with loaded(copy):  # and it loads again
        assert torch.equal(logits(copy, ids), expected)


def test_tied_weights_stay_tied_and_one_block_is_mapped_at_a_time(tmp_path):
    model, _ = tiny_causal_lm()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    copy = offload_copy(model, tmp_path)
    state = copy._pavlov_offload
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    layers = copy.model.layers

    def mapped():
        return [all(p.numel() for p in layer.parameters()) for layer in layers]

    with loaded(copy):
        assert mapped() == [False, False] and copy.model.embed_tokens.weight.numel()
        logits(copy, torch.tensor([[1, 2, 3]]))
        assert mapped() == [False, True]  # one block's weights at a time
        assert state.mapped == 1
        assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert mapped() == [False, False] and state.mapped == -1


def test_blocks_are_read_where_the_file_cannot_be_mapped(tmp_path, monkeypatch):
    import mmap

    model = MODELS["qwen2"]()
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(3))
    expected = logits(model, ids)
    copy = offload_copy(model, tmp_path)

    def no_mmap(*args, **kwargs):
        raise OSError(19, "No such device")  # ENODEV: what mmap says on such a file system

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    with loaded(copy):
        assert torch.equal(logits(copy, ids), expected)
        assert copy._pavlov_offload.mapped == len(copy.model.layers) - 1


def test_offloaded_copy_refuses_gradients(tmp_path):
    copy = offload_copy(MODELS["qwen2"](), tmp_path)
    with loaded(copy), pytest.raises(RuntimeError, match="without gradients"):
        copy(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(p.numel() == 0 for p in copy.parameters())  # freed after the failure too


def test_online_training_is_the_same_with_the_reference_offloaded():
    runs = []
    for offload in (True, False):
        model, tok = tiny_causal_lm()
        cfg = OnlineConfig(algo="grpo", max_steps=2, prompts_per_step=2, max_new_tokens=6,
                           learning_rate=1e-2, beta=0.1,
                           cpu=CpuConfig(offload_reference=offload))  # fmt: skip
        result = train_online(cfg, model, tok, PROMPTS, vowel_share)
        runs.append(result.history)
    on, off = runs
    assert on[-1]["kl/ref"] > 0  # the policy moved away from the reference by step 2
    for a, b in zip(on, off, strict=True):
        assert a["kl/ref"] == b["kl/ref"] and a["reward/mean"] == b["reward/mean"]


def test_blocks_sharing_weights_are_loaded_whole(tmp_path):
    model = tiny_random_lm("llama", V, 0).eval()
    layers = model.model.layers
    layers[1].mlp.up_proj.weight = layers[0].mlp.up_proj.weight  # ALBERT-style sharing
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(2))
    expected = logits(model, ids)
    copy = offload_copy(model, tmp_path)
    assert copy._pavlov_offload.blocks == []  # mapped whole: a block's unmap would drop the other's
    with loaded(copy):
        assert torch.equal(logits(copy, ids), expected)


def test_an_offloaded_reference_shares_prompts_as_the_policy_does(tmp_path):
    """Repeated long prompts (GRPO groups, a text game's history) run once through a shared
    key/value cache for the policy; the offloaded copy takes the same path, so the two give the
    same log-probs bit for bit and the KL before any update is exactly 0. (Run through every
    row, round-off differed by ~5e-7 on an AMX CPU: enough for Adam to move a policy whose
    rewards were all equal.)"""
    from pavlov.llm.scoring.logprobs import score_tokens

    model, _ = tiny_causal_lm()
    gen = torch.Generator().manual_seed(4)
    prompts = torch.randint(3, 500, (1, 190), generator=gen).repeat(2, 1)  # one prompt, 2 rows
    ids = torch.cat([prompts, torch.randint(3, 500, (2, 250), generator=gen)], 1)  # (2, 440)
    mask = torch.ones_like(ids)
    mask[:, :2] = 0  # left-padded
    response = 190  # the responses start after the shared prompt
    copy = offload_copy(model, tmp_path)
    with torch.no_grad():
        expected = score_tokens(model, ids, mask, response).logprobs
        with loaded(copy):
            assert torch.equal(score_tokens(copy, ids, mask, response).logprobs, expected)
