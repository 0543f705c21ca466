"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290) and its IPO / hinge
variants, on sequence log-probabilities of the policy and a frozen reference.

The loss is ``DPO_LOSSES[cfg.loss_type]`` from :mod:`pavlov.math.preference`; sequence
log-probs come from :func:`pavlov.llm.scoring.logprobs.sequence_logprob` (no ``(B, T, V)``
log-softmax), with the chosen and rejected sequences of a micro-batch in one forward pass.
IPO is fed length-averaged log-probs, as TRL does (``average`` in ``sequence_logprob``).

The reference (``reference``):

* ``"precompute"`` (the default without LoRA): before the first step, the reference log-probs
  of every training pair the run will use (and of the held-out pairs) are computed once with
  the initial weights; no second model is ever held during training. They are saved in each
  checkpoint, so a resumed run needs no reference model unless it runs past the planned steps.
* ``"live"``: recomputed for each batch, from a frozen copy of the initial model (without
  LoRA; the copy costs one more model in memory) or, with LoRA, from the same model with its
  adapters disabled (``model.disable_adapter()``: no copy). ``"auto"`` picks live with LoRA.

Dropout is switched off by default (``disable_dropout``), so at step 0 policy and reference
agree exactly and the sigmoid loss is ``ln 2``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pavlov.devices import module_device, to_device
from pavlov.errors import ConfigError, PavlovError, check_choice, check_positive, check_range
from pavlov.llm.data.datasets import PreferenceExample, TokenizedPreference, tokenize_preferences
from pavlov.llm.models.loading import ensure_pad_token, is_peft_model, pad_right, save_model
from pavlov.llm.scoring.logprobs import sequence_logprob
from pavlov.llm.trainers.common import (
    TrainConfig,
    batch_plan,
    check_context,
    evenly_spaced,
    maybe_lora,
    place,
    seed_all,
    sorted_chunks,
)
from pavlov.llm.trainers.loop import FitResult, Task, fit, load_weights
from pavlov.math.preference import DPO_LOSSES

REFERENCES = ("auto", "precompute", "live")


@dataclass
class DPOConfig(TrainConfig):
    """DPO hyperparameters; fields beyond :class:`TrainConfig`."""

    learning_rate: float = 1e-6
    """Peak AdamW learning rate, > 0 (TRL's default for full fine-tuning; ~5e-5 to 5e-4 with
    LoRA)."""
    beta: float = 0.1
    """Inverse temperature of the implicit reward ``beta * log(pi / ref)`` (KL strength), > 0."""
    loss_type: str = "sigmoid"
    """``"sigmoid"`` (DPO), ``"ipo"`` (Azar et al. 2023) or ``"hinge"`` (SLiC)."""
    label_smoothing: float = 0.0
    """Conservative DPO's label-flip probability, in [0, 0.5]; sigmoid loss only."""
    reference: str = "auto"
    """``"precompute"``, ``"live"`` or ``"auto"`` (live with LoRA, precompute without)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("beta", self.beta)
        check_choice("loss_type", self.loss_type, tuple(DPO_LOSSES))
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError("label_smoothing must be 0 unless loss_type is 'sigmoid'")
        check_choice("reference", self.reference, REFERENCES)


@dataclass
class DPOResult:
    model: nn.Module
    fit: FitResult


# ---------------------------------------------------------------------------------------------
# Batches and log-probs


def collate_dpo(items: Sequence[TokenizedPreference], index: Sequence[int], pad_id: int) -> dict:
    """``2B`` right-padded rows (``B`` prompt+chosen, then ``B`` prompt+rejected) and a ``(2B, L)``
    response mask marking the reply tokens; ``index`` keys the precomputed reference table."""
    rows = [f.prompt_ids + f.chosen_ids for f in items]
    rows += [f.prompt_ids + f.rejected_ids for f in items]
    replies = [(len(f.prompt_ids), len(f.chosen_ids)) for f in items]
    replies += [(len(f.prompt_ids), len(f.rejected_ids)) for f in items]
    ids, mask, _ = pad_right(rows, pad_id)
    response = pad_right([[0] * p + [1] * r for p, r in replies], 0)[0].bool()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "response_mask": response,
        "index": torch.tensor(list(index), dtype=torch.long),
    }


def pair_logps(model: nn.Module, batch: dict, average: bool) -> tuple[Tensor, Tensor]:
    """Sequence log-probs ``(chosen (B,), rejected (B,))`` of a :func:`collate_dpo` batch."""
    logps = sequence_logprob(
        model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
        average=average,
    )  # fmt: skip  # (2B,)
    n = len(batch["index"])
    return logps[:n], logps[n:]


@contextlib.contextmanager
def _reference_mode(model: nn.Module, lora: bool):
    """No grad, eval mode, and with LoRA the adapters disabled (the base is the reference)."""
    was_training = model.training
    model.eval()
    adapters = model.disable_adapter() if lora else contextlib.nullcontext()
    try:
        with torch.no_grad(), adapters:
            yield
    finally:
        model.train(was_training)


def reference_table(
    scorer: Callable[[dict], tuple[Tensor, Tensor]],
    items: Sequence[TokenizedPreference],
    indices: Sequence[int],
    batch_size: int,
    pad_id: int,
    table: Tensor | None = None,
) -> Tensor:
    """``(N, 2)`` float32 table of reference (chosen, rejected) log-probs, filled at ``indices``
    (NaN elsewhere; an existing ``table`` is filled in place)."""
    if table is None:
        table = torch.full((len(items), 2), float("nan"))
    for idx in sorted_chunks(indices, _lengths(items), batch_size):
        batch = collate_dpo([items[i] for i in idx], idx, pad_id)
        chosen, rejected = scorer(batch)
        table[batch["index"]] = torch.stack([chosen, rejected], dim=-1).float().cpu()
    return table


# ---------------------------------------------------------------------------------------------
# Loss and evaluation


def dpo_batch_loss(
    model: nn.Module,
    batch: dict,
    reference: Callable[[dict], tuple[Tensor, Tensor]],
    cfg: DPOConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``DPO_LOSSES[cfg.loss_type]`` of one batch, plus the mean policy log-probs."""
    average = cfg.loss_type == "ipo"
    pi_chosen, pi_rejected = pair_logps(model, batch, average)
    ref_chosen, ref_rejected = reference(batch)
    loss, metrics = DPO_LOSSES[cfg.loss_type](
        pi_chosen, pi_rejected, ref_chosen, ref_rejected, cfg.beta, cfg.label_smoothing
    )
    metrics["logps/chosen"] = pi_chosen.detach().mean()
    metrics["logps/rejected"] = pi_rejected.detach().mean()
    return loss, metrics


def evaluate_dpo(model, batches, reference, cfg: DPOConfig) -> dict[str, float]:
    """Held-out DPO metrics (``eval/rewards/accuracies``: implicit-reward accuracy), weighted by
    pairs; call under no_grad."""
    sums: dict[str, float] = {}
    total = 0
    for batch in batches:
        _, metrics = dpo_batch_loss(model, batch, reference, cfg)
        n = len(batch["index"])
        total += n
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
    return {f"eval/{k}": v / max(total, 1) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------
# Training


def train_dpo(
    cfg: DPOConfig,
    model: nn.Module,
    tokenizer,
    train_data: Sequence[PreferenceExample],
    eval_data: Sequence[PreferenceExample] | None = None,
    *,
    load_reference: Callable[[], nn.Module] | None = None,
    run=None,
    resume: tuple[Path, dict] | None = None,
    quiet: bool = True,
    callback=None,
) -> DPOResult:
    """Train ``model`` with DPO on preference pairs; ``model``'s initial weights are the reference.

    Args:
        cfg: hyperparameters.
        model: the policy (a causal LM), wrapped with LoRA when ``cfg.lora``.
        tokenizer: its tokenizer.
        train_data, eval_data: preference pairs (:func:`pavlov.llm.load_preferences`,
            :func:`pavlov.llm.rt_preferences`); eval gives ``eval/rewards/accuracies``.
        load_reference: loads the initial model again; needed only to resume a run without
            LoRA whose reference log-probs are not all in the checkpoint (``live``, or more
            steps than first planned).
        run, resume, quiet, callback: as in :func:`pavlov.llm.trainers.sft.train_sft`.
    """
    check_context(model, cfg.max_length)
    pad_id = ensure_pad_token(tokenizer)
    items = tokenize_preferences(train_data, tokenizer, cfg.max_length)
    eval_items = tokenize_preferences(
        evenly_spaced(eval_data or [], cfg.max_eval_examples), tokenizer, cfg.max_length
    )
    seed_all(cfg.seed)
    model = maybe_lora(model, cfg)
    device = place(model, cfg)
    if resume is not None:
        load_weights(model, resume[0])
    reference, tables = _prepare_reference(
        cfg, model, items, eval_items, pad_id, resume, load_reference
    )
    held_out = to_device([
        collate_dpo([eval_items[i] for i in idx], idx, pad_id)
        for idx in sorted_chunks(range(len(eval_items)), _lengths(eval_items), cfg.eval_batch_size)
    ], device)  # fmt: skip
    task = Task(
        name="dpo",
        model=model,
        lengths=_lengths(items),
        collate=lambda idx: collate_dpo([items[i] for i in idx], idx, pad_id),
        loss=lambda batch: dpo_batch_loss(model, batch, reference, cfg),
        weight=lambda batch: len(batch["index"]),
        save=lambda path, final, weights=None: save_model(
            model, tokenizer, path, merge=final and cfg.merge_lora, weights=weights
        ),
        evaluate=(lambda: evaluate_dpo(model, held_out, _lookup(tables["ref_eval"]), cfg))
        if held_out
        else None,
        key_metric="loss",
        state=lambda: dict(tables),
    )
    out = fit(
        cfg, task, run=run, resume=None if resume is None else resume[1], quiet=quiet,
        callback=callback,
    )  # fmt: skip
    return DPOResult(model, out)


class _Scorer:
    """Reference log-probs from a live module (LoRA: the same model, adapters disabled)."""

    def __init__(self, module: nn.Module | None, lora: bool, average: bool) -> None:
        self.module, self.lora, self.average = module, lora, average

    def __call__(self, batch: dict) -> tuple[Tensor, Tensor]:
        with _reference_mode(self.module, self.lora):
            return pair_logps(self.module, to_device(batch, module_device(self.module)),
                              self.average)  # fmt: skip


def _prepare_reference(cfg: DPOConfig, model, items, eval_items, pad_id, resume, load_reference):
    """``(reference function, {"ref_train", "ref_eval"} tables)`` for this run.

    Fills the held-out table and, when precomputing, the rows of every training pair the
    remaining steps use that the checkpoint does not already hold; then releases any separate
    reference model. Live without LoRA keeps a frozen copy of the initial weights.
    """
    lora = is_peft_model(model)
    live = cfg.reference == "live" or (cfg.reference == "auto" and lora)
    saved = resume[1]["task"] if resume is not None else {}
    tables = {"ref_train": saved.get("ref_train"), "ref_eval": saved.get("ref_eval")}
    plan = batch_plan(cfg, _lengths(items))
    start = int(resume[1]["step"]) if resume is not None else 0
    needed = [] if live else plan.indices(start, plan.total_steps(cfg.epochs, cfg.max_steps))
    table = tables["ref_train"]
    missing = [i for i in needed if table is None or bool(torch.isnan(table[i, 0]))]
    eval_missing = bool(eval_items) and tables["ref_eval"] is None
    scorer = _Scorer(None, lora, cfg.loss_type == "ipo")
    if live or missing or eval_missing:
        scorer.module = _reference_model(model, lora, resume is not None, load_reference)
    if eval_missing:
        tables["ref_eval"] = reference_table(
            scorer, eval_items, range(len(eval_items)), cfg.eval_batch_size, pad_id
        )
    if missing:
        tables["ref_train"] = reference_table(
            scorer, items, missing, cfg.eval_batch_size, pad_id, table
        )
    if live and not lora and scorer.module is model:
        scorer.module = copy.deepcopy(model).requires_grad_(False)  # before any update
    if not live:
        scorer.module = None  # release a separately loaded reference (precomputed now)
        gc.collect()
    return (scorer if live else _lookup(tables["ref_train"])), tables


def _reference_model(model, lora: bool, resumed: bool, load_reference) -> nn.Module:
    """The module that gives reference log-probs: the model itself (LoRA: adapters disabled;
    a fresh run: its weights are still the initial ones) or, on resume without LoRA, a fresh
    copy of the initial model from ``load_reference``."""
    if lora or not resumed:
        return model
    if load_reference is None:
        raise PavlovError(
            "resuming DPO without LoRA needs the reference model (load_reference) for reference "
            "log-probs not saved in the checkpoint"
        )
    return load_reference().requires_grad_(False)


def _lengths(items: Sequence[TokenizedPreference]) -> list[int]:
    """Tokens of a pair's two sequences (what a micro-batch pads)."""
    return [2 * len(f.prompt_ids) + len(f.chosen_ids) + len(f.rejected_ids) for f in items]


def _lookup(table: Tensor | None) -> Callable[[dict], tuple[Tensor, Tensor]]:
    def reference(batch: dict) -> tuple[Tensor, Tensor]:
        index = batch["index"]
        rows = table[index.cpu()].to(index.device)  # (B, 2); the table stays on the CPU
        return rows[:, 0], rows[:, 1]

    return reference
