"""Reward-model training: Bradley-Terry on preference pairs, or BCE on labelled texts.

Pairwise (default): ``-log sigmoid(r(x, y_w) - r(x, y_l))`` averaged over pairs
(:func:`pavlov.math.preference.bradley_terry_loss`; Ouyang et al. 2022, eq. 1); chosen and
rejected sequences of a micro-batch go through the model in one forward pass. One epoch by
default: reward models overfit quickly (Ouyang et al. train for a single epoch). Metrics are
the pairwise accuracy (share of pairs with ``r_w > r_l``) and the mean margin ``r_w - r_l``, on
the training batches and on held-out pairs.

Pointwise (``mode="pointwise"``): ``BCE(sigmoid(r(y)), label)`` on texts labelled good (1) or
bad (0), e.g. :func:`pavlov.llm.rt_sentiment`; the scalar is read as a logit. Such a model
scores completions alone (its saved ``use_prompt`` is false).

The model (a head on a causal LM or an encoder) and its saved format are in
:mod:`pavlov.llm.trainers.reward_model`; :func:`~pavlov.llm.trainers.reward_model.load_reward_model`
turns a saved directory into the ``score(prompts, completions)`` function PPO/GRPO use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pavlov.devices import to_device
from pavlov.errors import ConfigError, PavlovError, check_choice
from pavlov.llm.data.datasets import LabeledText, PreferenceExample, read_records
from pavlov.llm.models.loading import ensure_pad_token
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
from pavlov.llm.trainers.reward_model import (
    POOLINGS,
    RewardModel,
    collate_rows,
    encode,
    freeze_unused,
    load_head,
    resolve_pooling,
    save_reward_model,
)
from pavlov.math.preference import bradley_terry_loss

MODES = ("pairwise", "pointwise")
POOLING_CHOICES = ("auto", *dict.fromkeys(p for ps in POOLINGS.values() for p in ps))
"""What ``pooling`` accepts: ``auto`` or a pooling some backbone kind allows."""


@dataclass
class RewardConfig(TrainConfig):
    """Reward-model training; fields beyond :class:`TrainConfig`."""

    learning_rate: float = 2e-5
    """Peak AdamW learning rate, > 0."""
    mode: str = "pairwise"
    """``"pairwise"``: Bradley-Terry on (prompt, chosen, rejected); ``"pointwise"``: binary
    cross-entropy on (text, label 0/1)."""

    pooling: str = "auto"
    """How the backbone's hidden states become one vector for the head: ``"auto"`` (the
    kind's own: the last real token of a causal LM, the mean over an encoder's tokens),
    ``"mean"``, ``"max"``, or ``"cls"`` (an encoder's first token). A mean scores the density
    of sentiment, so naming the film or its plot lowers the reward; ``"cls"`` does not
    (docs/benchmarks.md, issue 17)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        check_choice("pooling", self.pooling, POOLING_CHOICES)


@dataclass
class RewardResult:
    model: RewardModel
    fit: FitResult


# ---------------------------------------------------------------------------------------------
# Data


def load_labeled(source: str | os.PathLike | Sequence) -> list[LabeledText]:
    """Labelled texts from records with ``text`` (a non-empty string) and ``label`` (0 or 1,
    true/false); bad rows raise :class:`PavlovError` naming the file, row and field."""
    out = []
    for where, record in read_records(source):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            state = "missing" if text is None else "empty or not a string"
            raise PavlovError(f"{where}: field 'text' is {state}")
        label = record.get("label")
        if isinstance(label, str):
            label = {"0": 0, "1": 1, "true": 1, "false": 0}.get(label.strip().lower(), label)
        if label not in (0, 1) or isinstance(label, float) and not label.is_integer():
            raise PavlovError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
        out.append(LabeledText(text, int(label), where))
    if not out:
        raise PavlovError(f"{source}: no rows")
    return out


def encode_pairs(
    examples: Sequence[PreferenceExample], tokenizer, kind: str, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """``(chosen ids, rejected ids)`` per pair, each ``prompt + reply``."""
    prompts = [ex.prompt for ex in examples]
    sources = [ex.source for ex in examples]
    chat = bool(examples and examples[0].chat)
    chosen = encode(tokenizer, kind, prompts, [ex.chosen for ex in examples], max_length,
                    chat=chat, sources=sources)  # fmt: skip
    rejected = encode(tokenizer, kind, prompts, [ex.rejected for ex in examples], max_length,
                      chat=chat, sources=sources)  # fmt: skip
    return list(zip(chosen, rejected, strict=True))


def encode_labeled(
    examples: Sequence[LabeledText], tokenizer, kind: str, max_length: int
) -> list[tuple[list[int], float]]:
    rows = encode(tokenizer, kind, [""] * len(examples), [ex.text for ex in examples],
                  max_length, sources=[ex.source for ex in examples])  # fmt: skip
    return [(row, float(ex.label)) for row, ex in zip(rows, examples, strict=True)]


def collate_pairs(items: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """``2B`` rows: the ``B`` chosen sequences, then the ``B`` rejected ones (one forward)."""
    ids, mask = collate_rows([c for c, _ in items] + [r for _, r in items], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "pairs": len(items)}


def collate_labeled(items: Sequence[tuple[list[int], float]], pad_id: int) -> dict:
    ids, mask = collate_rows([row for row, _ in items], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([y for _, y in items])}


# ---------------------------------------------------------------------------------------------
# Losses (micro-batch means; the loop weights them by the number of pairs / examples)


def pairwise_loss(rm: RewardModel, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley-Terry loss of a :func:`collate_pairs` batch: ``(loss, {loss, accuracy, margin})``."""
    rewards = rm(batch["input_ids"], batch["attention_mask"])  # (2B,)
    n = batch["pairs"]
    return bradley_terry_loss(rewards[:n], rewards[n:])


def pointwise_loss(rm: RewardModel, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """``BCE(sigmoid(r), label)``: ``(loss, {loss, accuracy, reward})``; accuracy counts
    ``r > 0`` as predicting label 1."""
    rewards = rm(batch["input_ids"], batch["attention_mask"])  # (B,)
    labels = batch["labels"].to(rewards.dtype)
    loss = F.binary_cross_entropy_with_logits(rewards, labels)
    with torch.no_grad():
        accuracy = ((rewards > 0).float() == labels).float().mean()
    return loss, {"loss": loss.detach(), "accuracy": accuracy, "reward": rewards.detach().mean()}


LOSSES = {"pairwise": pairwise_loss, "pointwise": pointwise_loss}


def _units(batch: dict) -> int:
    return batch["pairs"] if "pairs" in batch else len(batch["labels"])


def evaluate_reward(rm: RewardModel, batches: Sequence[dict], mode: str) -> dict[str, float]:
    """Held-out means of the loss metrics, weighted by pairs / examples (call under no_grad)."""
    sums: dict[str, float] = {}
    total = 0
    for batch in batches:
        _, metrics = LOSSES[mode](rm, batch)
        w = _units(batch)
        total += w
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * w
    return {f"eval/{k}": v / max(total, 1) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------
# Training


def train_reward_model(
    cfg: RewardConfig,
    backbone,
    tokenizer,
    train_data: Sequence[PreferenceExample] | Sequence[LabeledText],
    eval_data: Sequence[PreferenceExample] | Sequence[LabeledText] | None = None,
    *,
    kind: str = "causal",
    base_model: str | None = None,
    run=None,
    resume: tuple[Path, dict] | None = None,
    quiet: bool = True,
    callback=None,
) -> RewardResult:
    """Train a scalar reward head (and the backbone, or its LoRA adapters).

    Args:
        cfg: hyperparameters; ``cfg.mode`` picks pairs (:class:`PreferenceExample`) or
            labelled texts (:class:`LabeledText`) as data.
        backbone: a causal LM (``kind="causal"``) or an encoder (``kind="encoder"``; LoRA is
            for causal backbones only).
        tokenizer: the backbone's tokenizer.
        base_model: where a LoRA backbone's base weights load from, recorded in the saved
            model (default: the backbone's ``name_or_path``).
        run, resume, quiet, callback: as in :func:`pavlov.llm.trainers.sft.train_sft`.
    """
    if cfg.lora and kind != "causal":
        raise ConfigError("lora: LoRA reward models need a causal backbone; encoders train fully")
    resolve_pooling(kind, cfg.pooling)  # a pooling the kind lacks: one line, before any work
    if kind == "causal":
        check_context(backbone, cfg.max_length)
    pad_id = ensure_pad_token(tokenizer)
    pairwise = cfg.mode == "pairwise"
    enc = encode_pairs if pairwise else encode_labeled
    collate = collate_pairs if pairwise else collate_labeled
    _check_data(train_data, cfg.mode)
    items = enc(train_data, tokenizer, kind, cfg.max_length)
    held_out = []
    if eval_data:
        _check_data(eval_data, cfg.mode)
        subset = evenly_spaced(eval_data, cfg.max_eval_examples)
        subset = enc(subset, tokenizer, kind, cfg.max_length)
        lengths = [len(item[0]) + (len(item[1]) if pairwise else 0) for item in subset]
        chunked = sorted_chunks(range(len(subset)), lengths, cfg.eval_batch_size)
        held_out = [collate([subset[i] for i in idx], pad_id) for idx in chunked]
    seed_all(cfg.seed)
    rm = RewardModel(maybe_lora(backbone, cfg), kind, bias=cfg.mode == "pointwise",
                     pooling=cfg.pooling)  # fmt: skip
    held_out = to_device(held_out, place(rm, cfg))
    freeze_unused(rm)
    if resume is not None:
        load_weights(rm.backbone, resume[0])
        load_head(rm, resume[0])
    meta = {
        "mode": cfg.mode,
        "max_length": cfg.max_length,
        "chat": bool(train_data[0].chat) if cfg.mode == "pairwise" else False,
        "use_prompt": cfg.mode == "pairwise",
        "base_model": base_model or getattr(backbone, "name_or_path", None) or None,
    }
    task = Task(
        name=f"reward-model ({cfg.mode})",
        model=rm,
        lengths=[len(item[0]) + (len(item[1]) if pairwise else 0) for item in items],
        collate=lambda idx: collate([items[i] for i in idx], pad_id),
        loss=lambda batch: LOSSES[cfg.mode](rm, batch),
        weight=_units,
        save=lambda path, final, weights=None: save_reward_model(
            rm, tokenizer, path, meta, merge=final and cfg.merge_lora, weights=weights
        ),
        evaluate=(lambda: evaluate_reward(rm, held_out, cfg.mode)) if held_out else None,
        key_metric="accuracy",
    )
    out = fit(
        cfg, task, run=run, resume=None if resume is None else resume[1], quiet=quiet,
        callback=callback,
    )  # fmt: skip
    return RewardResult(rm, out)


def _check_data(data: Sequence, mode: str) -> None:
    want = PreferenceExample if mode == "pairwise" else LabeledText
    if not data:
        raise PavlovError("no training examples")
    if not isinstance(data[0], want):
        raise ConfigError(
            f"mode: {mode!r} trains on {want.__name__} records, got {type(data[0]).__name__}"
        )
