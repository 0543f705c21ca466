"""Tiny random causal LMs with a real in-memory tokenizer, for fast tests (no files needed)."""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# Tiny models for tests

_TINY_CORPUS = (
    "The movie was great, funny and warm; I loved every minute of it.",
    "The film is a dull, slow mess and the plot makes no sense at all.",
    "A bold and beautiful story with a terrific cast.",
    "Review of the movie: it is bad, boring and far too long.",
    "What is 2 + 3? The answer is 5. What is 7 - 4? The answer is 3.",
    "User asks a question and the assistant gives a short, helpful answer.",
)
_TINY_SPECIALS = ("<pad>", "<|im_end|>", "<|im_start|>")
# ChatML, like SmolLM2's template but without its default system prompt.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in memory on a few sentences (lossless on any text).

    Special tokens: ``<pad>`` (id 0, pad), ``<|im_end|>`` (id 1, eos), ``<|im_start|>`` (id 2);
    ChatML chat template :data:`TINY_CHAT_TEMPLATE`; no bos. ``len(tok) <= vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 259 + 8:
        raise ValueError(
            f"vocab_size must be at least 267 (256 bytes + specials), got {vocab_size}"
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_TINY_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def tiny_causal_lm(vocab_size: int = 512, arch: str = "llama", seed: int = 0):
    """A tiny random causal LM and a real tokenizer, built without files (~10 ms), for tests.

    Args:
        vocab_size: model vocabulary (>= 267); the tokenizer (:func:`tiny_tokenizer`) uses at
            most this many ids.
        arch: ``"llama"`` (rotary positions, ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and a
            gated MLP: the default :class:`LoraSpec` fits) or ``"gpt2"`` (learned absolute
            positions: left padding without position ids changes its logits; LoRA target
            ``("c_attn",)``).
        seed: weight-init seed (the global RNG is left untouched).

    Both have hidden size 32, 2 layers, 4 heads, 256 positions, tied embeddings, no dropout,
    and are returned in eval mode with ``generation_config`` pad/eos set. Stable API: other
    modules' fast tests build on it.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer(vocab_size)
    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=True, bos_token_id=None, **ids,
        )  # fmt: skip
        cls = LlamaForCausalLM
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, **ids,
        )  # fmt: skip
        cls = GPT2LMHeadModel
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval(), tok


def tiny_random_lm(arch: str, vocab_size: int = 97, seed: int = 0):
    """A tokenizer-free tiny random causal LM (hidden 32, 2 layers) for engine/scoring tests that
    feed integer ids directly: ``"llama"`` (rotary, GQA 4/2 heads) or ``"gpt2"`` (absolute
    positions). Seeds torch's global RNG with ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128)  # fmt: skip
    else:
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=vocab_size, n_positions=128)
    return AutoModelForCausalLM.from_config(config).eval()
