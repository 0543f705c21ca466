"""Language models for RL: loading (embedded SmolLM2 policy, MiniLM encoder), padding, LoRA,
saving, tiny test models, and prompt/SFT/preference data (files, datasets, Rotten Tomatoes).

Heavy imports (transformers, peft) happen inside the functions that need them.
"""

from pavlov.llm.data import (
    LabeledText,
    PackedBlock,
    PreferenceExample,
    PromptExample,
    SFTExample,
    TokenizedPreference,
    TokenizedSFT,
    collate_packed,
    collate_sft,
    load_preferences,
    load_prompts,
    load_sft,
    pack_sequences,
    tokenize_preferences,
    tokenize_sft,
)
from pavlov.llm.models import (
    LoraSpec,
    apply_lora,
    embed,
    ensure_pad_token,
    load_causal_lm,
    load_encoder,
    pad_left,
    pad_right,
    save_model,
)
from pavlov.llm.rt import rt_movies, rt_preferences, rt_sentiment, rt_sft, rt_split_of
from pavlov.llm.tiny import tiny_causal_lm

__all__ = [
    "LabeledText",
    "LoraSpec",
    "PackedBlock",
    "PreferenceExample",
    "PromptExample",
    "SFTExample",
    "TokenizedPreference",
    "TokenizedSFT",
    "apply_lora",
    "collate_packed",
    "collate_sft",
    "embed",
    "ensure_pad_token",
    "load_causal_lm",
    "load_encoder",
    "load_preferences",
    "load_prompts",
    "load_sft",
    "pack_sequences",
    "pad_left",
    "pad_right",
    "rt_movies",
    "rt_preferences",
    "rt_sentiment",
    "rt_sft",
    "rt_split_of",
    "save_model",
    "tiny_causal_lm",
    "tokenize_preferences",
    "tokenize_sft",
]
