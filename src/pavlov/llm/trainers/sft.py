"""Supervised fine-tuning: next-token cross-entropy on the completion tokens only.

Prompt tokens carry the label -100 (:func:`pavlov.llm.data.datasets.tokenize_sft`) and do not enter
the loss. The loss of an optimizer step is the mean over all completion tokens of the step, so a
long completion weighs more than a short one (TRL's default), and gradient accumulation weights
micro-batches by their token counts (``2 x B/2`` equals ``1 x B``).

Packing (``packing=True``) concatenates whole examples into blocks of ``max_length`` tokens
(:func:`pavlov.llm.data.datasets.pack_sequences`); the model is called with restarting
``position_ids``,
no attention mask and ``use_cache=False``, so transformers masks attention block-diagonally and
the loss equals that of the padded batch. ``batch_size`` then counts blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from pavlov.devices import to_device
from pavlov.llm.data.datasets import (
    IGNORE_INDEX,
    SFTExample,
    collate_packed,
    collate_sft,
    pack_sequences,
    tokenize_sft,
)
from pavlov.llm.scoring.logprobs import NO_LOGITS, plain_lm_head
from pavlov.llm.trainers.common import (
    TrainConfig,
    check_context,
    evenly_spaced,
    maybe_lora,
    place,
    seed_all,
    sorted_chunks,
)
from pavlov.llm.trainers.loop import FitResult, Task, fit, load_weights


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning; fields beyond :class:`TrainConfig`."""

    learning_rate: float = 2e-5
    """Peak AdamW learning rate (TRL's SFT default), > 0; ~1e-4 to 2e-4 with LoRA."""
    packing: bool = False
    """Pack whole examples into blocks of ``max_length`` tokens (no padding, fewer forwards)."""
    disable_dropout: bool = False
    """Set every dropout probability to 0 (LoRA dropout included); SFT keeps the model's dropout
    by default, as TRL's SFT does."""


@dataclass
class SFTResult:
    model: nn.Module
    """The trained model (a peft model with LoRA)."""
    fit: FitResult


def sft_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean next-token cross-entropy over the labelled (completion) tokens of a batch.

    ``loss = -sum_t log p(y_t | y_<t) / n``, the sum over positions whose label is not -100
    and ``n`` their count; the logits at column ``t - 1`` predict the label at column ``t``.

    Args:
        model: a causal LM.
        batch: :func:`~pavlov.llm.data.datasets.collate_sft` output (``input_ids``,
        ``attention_mask``,
            ``position_ids``, ``labels``, each ``(B, T)``) or :func:`collate_packed` output (no
            ``attention_mask``: called with ``use_cache=False``).

    Returns:
        ``(loss, {"loss"})``; ``loss`` is float32.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"][:, 1:]  # (B, T-1)
    keep = labels != IGNORE_INDEX
    head = plain_lm_head(model)
    if head is None:
        logits = model(**inputs, use_cache=False).logits[:, :-1][keep]  # (K, V)
    else:
        # Project only the K labelled positions onto the vocabulary (not prompts or padding):
        # the LM head is ~20% of SmolLM2's FLOPs per position, and a (B, T, V) logits tensor
        # and its gradient are never built. The final hidden state is the head's input.
        out = model(**inputs, use_cache=False, logits_to_keep=NO_LOGITS,
                    output_hidden_states=True)  # fmt: skip
        logits = head(out.hidden_states[-1][:, :-1][keep])  # (K, V)
    nll = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
    loss = nll / keep.sum().clamp(min=1)
    return loss, {"loss": loss.detach()}


def label_tokens(batch: dict[str, Tensor]) -> int:
    """Number of tokens the loss is over (labels after the shift that are not -100)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def sft_batches(
    examples: Sequence[SFTExample], tokenizer, cfg: SFTConfig
) -> tuple[list, Callable[[list], dict[str, Tensor]]]:
    """Tokenized items and their collate function: padded sequences or packed blocks."""
    from pavlov.llm.models.loading import ensure_pad_token

    pad_id = ensure_pad_token(tokenizer)
    features = tokenize_sft(examples, tokenizer, cfg.max_length)
    if cfg.packing:
        return pack_sequences(features, cfg.max_length, pad_id), collate_packed
    return features, lambda items: collate_sft(items, pad_id)


def evaluate_sft(model: nn.Module, batches: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """Token-weighted held-out loss and perplexity ``exp(loss)`` (call under no_grad)."""
    nll, tokens = 0.0, 0
    for batch in batches:
        loss, _ = sft_loss(model, batch)
        n = label_tokens(batch)
        nll, tokens = nll + float(loss) * n, tokens + n
    mean = nll / max(tokens, 1)
    return {"eval/loss": mean, "eval/perplexity": math.exp(min(mean, 50.0))}


def train_sft(
    cfg: SFTConfig,
    model: nn.Module,
    tokenizer,
    train_data: Sequence[SFTExample],
    eval_data: Sequence[SFTExample] | None = None,
    *,
    run=None,
    resume: tuple[Path, dict] | None = None,
    quiet: bool = True,
    callback=None,
) -> SFTResult:
    """Fine-tune ``model`` on ``train_data``; evaluate loss / perplexity on ``eval_data``.

    Args:
        cfg: hyperparameters.
        model: a causal LM (loaded with :func:`pavlov.llm.load_causal_lm`); wrapped with LoRA
            adapters when ``cfg.lora``.
        tokenizer: its tokenizer (a pad token is required; eos is reused when missing).
        train_data, eval_data: examples (:func:`pavlov.llm.load_sft`, :func:`pavlov.llm.rt_sft`).
        run: a :class:`pavlov.run.Run` for metrics, checkpoints and the final ``model/``.
        resume: ``(checkpoint dir, trainer state)`` from
            :func:`~pavlov.llm.trainers.loop.load_resume`.
        quiet: no progress bar.
        callback: ``callback(step, metrics)`` after each optimizer step.
    """
    from pavlov.llm.models.loading import save_model

    check_context(model, cfg.max_length)
    items, collate = sft_batches(train_data, tokenizer, cfg)  # validates before any work
    held_out = []
    if eval_data:
        eval_items, _ = sft_batches(evenly_spaced(eval_data, cfg.max_eval_examples), tokenizer, cfg)
        lengths = [len(f.input_ids) for f in eval_items]
        chunked = sorted_chunks(range(len(eval_items)), lengths, cfg.eval_batch_size)
        held_out = [collate([eval_items[i] for i in idx]) for idx in chunked]
    seed_all(cfg.seed)
    model = maybe_lora(model, cfg)
    held_out = to_device(held_out, place(model, cfg))
    if resume is not None:
        load_weights(model, resume[0])
    task = Task(
        name="sft",
        model=model,
        lengths=[len(f.input_ids) for f in items],
        collate=lambda idx: collate([items[i] for i in idx]),
        loss=lambda batch: sft_loss(model, batch),
        weight=label_tokens,
        save=lambda path, final, weights=None: save_model(
            model, tokenizer, path, merge=final and cfg.merge_lora, weights=weights
        ),
        evaluate=(lambda: evaluate_sft(model, held_out)) if held_out else None,
    )
    out = fit(
        cfg, task, run=run, resume=None if resume is None else resume[1], quiet=quiet,
        callback=callback,
    )  # fmt: skip
    return SFTResult(model, out)
