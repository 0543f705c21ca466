"""Language models for RL: loading (embedded SmolLM2 policy, MiniLM encoder), padding, LoRA,
saving, tiny test models, prompt/SFT/preference data (files, datasets, Rotten Tomatoes) and
reward functions for online RL (callables, reward models, VADER, weighted sums).

Heavy imports (transformers, peft) happen inside the functions that need them.
"""

from pavlov.llm.data.datasets import (
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
from pavlov.llm.data.rt import rt_movies, rt_preferences, rt_sentiment, rt_sft, rt_split_of
from pavlov.llm.models.loading import (
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
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.llm.scoring.rewards import (
    RewardError,
    compute_rewards,
    resolve_reward,
    reward_model_fn,
    vader_reward,
    weighted_sum,
)

__all__ = [
    "LabeledText",
    "LoraSpec",
    "PackedBlock",
    "PreferenceExample",
    "PromptExample",
    "RewardError",
    "SFTExample",
    "TokenizedPreference",
    "TokenizedSFT",
    "apply_lora",
    "collate_packed",
    "collate_sft",
    "compute_rewards",
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
    "resolve_reward",
    "reward_model_fn",
    "rt_movies",
    "rt_preferences",
    "rt_sentiment",
    "rt_sft",
    "rt_split_of",
    "save_model",
    "tiny_causal_lm",
    "tokenize_preferences",
    "tokenize_sft",
    "vader_reward",
    "weighted_sum",
]
