"""Language-model trainers: supervised fine-tuning, reward models, DPO and online RL.

Each trainer is a typed config dataclass and a ``train_*`` function that builds a
:class:`~pavlov.llm.trainers.loop.Task` (plain functions: batches, loss, save, evaluate) and
runs the shared loop :func:`~pavlov.llm.trainers.loop.fit` (AdamW + linear warmup/decay,
gradient accumulation, clipping, NaN guard, metrics, checkpoints, resume).

* :func:`train_sft` / :class:`SFTConfig`: completion-only cross-entropy, optional packing.
* :func:`train_reward_model` / :class:`RewardConfig`: Bradley-Terry (pairs) or BCE (labels) on
  a scalar head over a causal LM or an encoder; :func:`load_reward_model` gives
  ``score(prompts, completions) -> list[float]``.
* :func:`train_dpo` / :class:`DPOConfig`: DPO / IPO / hinge with a precomputed or live
  reference (LoRA: the base model with adapters disabled).
"""

from pavlov.llm.trainers.common import TrainConfig
from pavlov.llm.trainers.dpo import DPOConfig, DPOResult, train_dpo
from pavlov.llm.trainers.loop import FitResult, Task, fit, load_resume
from pavlov.llm.trainers.online import OnlineConfig, OnlineResult, train_online
from pavlov.llm.trainers.reward import RewardConfig, RewardResult, load_labeled, train_reward_model
from pavlov.llm.trainers.reward_model import RewardModel, RewardScorer, load_reward_model
from pavlov.llm.trainers.sft import SFTConfig, SFTResult, sft_loss, train_sft

__all__ = [
    "DPOConfig",
    "DPOResult",
    "FitResult",
    "OnlineConfig",
    "OnlineResult",
    "RewardConfig",
    "RewardModel",
    "RewardResult",
    "RewardScorer",
    "SFTConfig",
    "SFTResult",
    "Task",
    "TrainConfig",
    "fit",
    "load_labeled",
    "load_resume",
    "load_reward_model",
    "sft_loss",
    "train_dpo",
    "train_online",
    "train_reward_model",
    "train_sft",
]
