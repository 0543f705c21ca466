"""The one training loop of the LLM trainers.

:func:`run_steps` runs the steps of every trainer: metric records, the progress bar, held-out
evaluations, checkpoints, the final ``model/`` and resume from a step. What one step is comes
from the trainer as a :class:`Loop`. SFT, the reward model and DPO describe their work as a
:class:`Task` (plain functions: build a micro-batch, compute its loss, save the weights,
evaluate) and call :func:`fit`, which builds AdamW and the lr schedule and makes a step of
gradient accumulation with the loss weights, clipping and the NaN guard; the online trainers
(:mod:`pavlov.llm.trainers.online`) hand it their generate-score-update step.

Checkpoints (with a :class:`~pavlov.run.Run`)::

    runs/NAME/checkpoints/step_<n>/    weights saved by ``task.save`` (atomic directory)
                                       + trainer_state.pt: optimizer, scheduler, step, RNG
    runs/NAME/checkpoints/latest       "step_<n>", written last (atomic_write_text)
    runs/NAME/model/                   the final model, loadable by transformers / peft

Resume is exact: the batch plan is a function of ``(seed, step)``
(:class:`~pavlov.llm.trainers.common.BatchPlan`), and the weights, AdamW moments, scheduler
step and RNG state are restored, so an interrupted run continued with ``--resume`` gives the
same weights as an uninterrupted one. What may differ: raising ``max_steps`` on resume
lengthens the linear lr decay from that step on (the schedule is recomputed for the new total).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pavlov.devices import module_device, to_device
from pavlov.errors import ConfigError, PavlovError, check_finite
from pavlov.llm import cpu
from pavlov.llm.trainers import sharding
from pavlov.llm.trainers.common import (
    TrainConfig,
    autocast,
    batch_plan,
    clip_gradients,
    make_optimizer,
    make_scheduler,
    resolve_precision,
    rng_state,
    set_rng_state,
    trainable_parameters,
)
from pavlov.run import distributed, interrupt
from pavlov.run.distributed import DataParallel

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.pt"
HINT = "lower learning_rate, or use precision=fp32"
Metrics = dict[str, Tensor | float]


@dataclass
class Task:
    """What a trainer hands :func:`fit`: composed functions, no base class."""

    name: str
    """Short name for the progress bar (``"sft"``)."""
    model: nn.Module
    """The module whose trainable parameters are optimised (``requires_grad`` decides)."""
    lengths: list[int]
    """Tokens of each training example (pairs, sequences or packed blocks): their number is the
    data size the batch plan draws from; ``group_by_length`` sorts by them."""
    collate: Callable[[list[int]], Any]
    """Example indices -> a micro-batch."""
    loss: Callable[[Any], tuple[Tensor, Metrics]]
    """Micro-batch -> ``(mean loss, metrics)``; called under the precision's autocast."""
    weight: Callable[[Any], float]
    """How many units the micro-batch's mean is over (completion tokens for SFT, pairs or
    examples otherwise): micro-batch losses are weighted by ``weight / total`` of the step."""
    save: Callable[..., None]
    """``save(directory, final, weights=None)``: write loadable weights (and tokenizer) into a
    new directory, atomically; ``final`` is true for the run's ``model/`` (e.g. merge LoRA
    adapters there); ``weights``: a sharded model's whole state dict, gathered, to write
    instead of the live model's."""
    evaluate: Callable[[], dict[str, float]] | None = None
    """Held-out metrics (``eval/...``), called in eval mode under ``torch.no_grad()``."""
    key_metric: str = "loss"
    """Train metric shown on the progress bar."""
    state: Callable[[], dict[str, Any]] = dict
    """Extra resumable state saved in each checkpoint (e.g. DPO's reference log-probs)."""


@dataclass
class FitResult:
    steps: int
    """Optimizer steps done in total (including those before a resume)."""
    train: dict[str, float]
    """The last metric record (``train/...``)."""
    eval: dict[str, float]
    """The last evaluation (``eval/...``); empty without an evaluation function."""
    seconds: float
    """Wall seconds of this call (evaluations included)."""
    seconds_per_step: float = 0.0
    """Mean wall seconds per optimizer step of this call, evaluations excluded."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Every metric record of this call (also in ``metrics.jsonl`` with a run)."""


def fit(
    cfg: TrainConfig,
    task: Task,
    *,
    run=None,
    resume: dict[str, Any] | None = None,
    quiet: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Run the optimizer steps of ``cfg`` on ``task``; log, evaluate and checkpoint into ``run``.

    Args:
        cfg: the shared fields of :class:`~pavlov.llm.trainers.common.TrainConfig`.
        task: the trainer's functions.
        run: a :class:`pavlov.run.Run` (metrics, checkpoints, the final ``model/``) or None.
        resume: a ``trainer_state.pt`` dict (:func:`load_resume`); the task's weights must
            already be loaded from the same checkpoint.
        quiet: no progress bar.
        callback: ``callback(step, record)`` after every optimizer step (tests, stop rules).
    """
    dp = distributed.current()  # data parallel inside a process group (--nproc, torchrun)
    if dp is not None and not dp.is_main:
        run = None  # rank 0 writes the run: metrics, checkpoints, the final model
    shards = sharding.resolve(cfg.sharding, 1 if dp is None else dp.world_size,
                              zero_stage=cfg.zero_stage)  # fmt: skip
    if shards is not None and cfg.merge_lora:  # before any step, not at the final save
        raise ConfigError(f"merge_lora with sharding {_kind(shards)}: save the adapters, merge "
                          "later")
    if isinstance(shards, sharding.FsdpPlan):  # each rank keeps 1/N of the weights, ...
        sharding.shard(task.model, shards)
    plan = batch_plan(cfg, task.lengths)
    total = plan.total_steps(cfg.epochs, cfg.max_steps)
    params = [p for _, p in trainable_parameters(task.model)]
    optimizer = make_optimizer(task.model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total)
    engine = None  # DeepSpeed's: it reduces, clips and steps the optimizer (ZeRO partitions)
    if isinstance(shards, sharding.DeepSpeedPlan):
        engine = sharding.deepspeed_engine(task.model, optimizer, shards, cfg.max_grad_norm)
    start = 0
    if resume is not None and engine is not None:
        sharding.deepspeed_load_optimizer(engine, resume["optimizer"])
    elif resume is not None and shards is not None:
        sharding.load_optimizer(task.model, optimizer, resume["optimizer"])
    elif resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
    if resume is not None:
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start = int(resume["step"])

    def one_step(step: int) -> dict[str, float]:
        t_step = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        metrics = accumulate_gradients(cfg, task, plan.step(step), params, step + 1, optimizer,
                                       dp, engine)
        if engine is not None:  # reduce (ZeRO-1), clip and step inside the engine
            norm = sharding.deepspeed_step(engine)
            if norm is not None:
                metrics["train/grad_norm"] = norm
                check_finite("the gradient norm", torch.tensor(norm), step + 1, hint=HINT)
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        metrics["train/learning_rate"] = lr
        metrics["train/epoch"] = (step + 1) / plan.steps_per_epoch
        metrics["train/seconds_per_step"] = time.perf_counter() - t_step
        return metrics

    bf16 = resolve_precision(cfg.precision, module_device(task.model)) == "bf16"

    def training() -> contextlib.AbstractContextManager:
        if shards is not None:  # the CPU kernels read whole weights, not shards
            return contextlib.nullcontext()
        return cpu.training(cfg.cpu, task.model, bf16=bf16)

    loop = Loop(task.name, f"train/{task.key_metric}", total, one_step, "train/seconds_per_step",
                task, optimizer, scheduler, training,
                None if task.evaluate is None else lambda: _evaluate(cfg, task),
                sharded=shards is not None, engine=engine)  # fmt: skip
    task.model.train()
    done = run_steps(cfg, loop, start, run=run, quiet=quiet, callback=callback,
                     resume_log=None if resume is None else resume.get("metric_log"))
    return FitResult(
        steps=done.steps,
        train=done.log.last_train,
        eval=done.log.last_eval,
        seconds=done.seconds,
        seconds_per_step=done.seconds_per_step,
        history=done.log.history,
    )


@dataclass
class Loop:
    """A trainer's side of :func:`run_steps`, the one training loop of the LLM trainers (offline
    ones through :func:`fit`, the online ones directly): what one step is and what is saved."""

    name: str
    """Short name for the progress bar (``"sft"``, ``"grpo"``)."""
    key_metric: str
    """Record key shown on the progress bar (``"train/loss"``, ``"reward/mean"``)."""
    total: int
    """The step the run ends at."""
    step: Callable[[int], dict[str, float]]
    """``step(i)`` runs step ``i + 1`` (its optimizer step or steps) and returns its record."""
    seconds_key: str
    """The record's key for the step's own seconds (evaluations and checkpoints excluded)."""
    saver: Any
    """``save(directory, final)`` and ``state()``: see :class:`Task`."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    training: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    """Entered around the steps (not the final evaluation and save): heap policy, kernels."""
    evaluate: Callable[[], dict[str, float]] | None = None
    """Held-out metrics, every ``eval_every`` steps and at the end."""
    sharded: bool = False
    """The model is sharded over the ranks (:mod:`~pavlov.llm.trainers.sharding`): every rank
    takes part in gathering the weights and optimizer state that rank 0 saves."""
    engine: Any = None
    """DeepSpeed's engine when it holds the shards (its own state gathering)."""


@dataclass
class LoopResult:
    steps: int
    log: MetricLog
    seconds: float
    seconds_per_step: float


def run_steps(cfg: TrainConfig, loop: Loop, start: int, *, run=None, quiet: bool = True,
              callback: Callable[[int, dict[str, float]], None] | None = None,
              resume_log: dict[str, Any] | None = None) -> LoopResult:
    """Steps ``start + 1 .. loop.total``: log every ``log_every``, evaluate every ``eval_every``
    and at the end, checkpoint every ``checkpoint_every`` and at the end, write ``model/``.
    ``resume_log``: the checkpoint's partial metric averages. After SIGINT/SIGTERM (one
    process) the step in progress ends, a checkpoint is saved and
    :class:`~pavlov.run.interrupt.Interrupted` raised (:mod:`pavlov.run.interrupt`)."""
    from pavlov.run.console import ProgressBar

    t0, step, log = time.perf_counter(), start, MetricLog(run, cfg.log_every)
    if resume_log:
        log.load_state_dict(resume_log)
    dp = distributed.current()
    label = loop.key_metric.removeprefix("train/")
    with (
        loop.training(),
        ProgressBar(loop.total - step, loop.name, label, enabled=not quiet) as bar,
    ):
        saved = None  # the step whose checkpoint the loop wrote last
        while step < loop.total:
            record = loop.step(step)
            step += 1
            log.add(step, record, step == loop.total, record[loop.seconds_key])
            bar.update(1, record.get(loop.key_metric))
            evaluate_now = cfg.eval_every and step % cfg.eval_every == 0 and step < loop.total
            if loop.evaluate is not None and evaluate_now:
                log.evaluation(step, loop.evaluate())
            if callback is not None:  # before the checkpoint: what it logs is inside the cut
                callback(step, record)
            due = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
            if loop.sharded and due:  # the gathering is collective; rank 0 writes
                _sharded_checkpoint(run, cfg, loop, step, log)
                saved = step
            elif run is not None and (due or interrupt.requested() is not None):
                save_trainer_checkpoint(run, cfg, loop.saver, step, loop.optimizer,
                                        loop.scheduler, log)  # fmt: skip
                saved = step
            if dp is None:
                interrupt.check(step)
    if loop.evaluate is not None:
        log.evaluation(step, loop.evaluate())
    # The last step's checkpoint, unless the loop has just written it: writing it again would
    # replace a checkpoint that `latest` names, and a kill in between would leave it incomplete.
    fresh = step > start and saved != step
    if loop.sharded:
        weights = _sharded_checkpoint(run, cfg, loop, step, log, force=fresh)
        if run is not None:
            loop.saver.save(run.dir / "model", True, weights)
    elif run is not None:
        if fresh or not (run.dir / CHECKPOINTS / f"step_{step}").is_dir():
            save_trainer_checkpoint(run, cfg, loop.saver, step, loop.optimizer, loop.scheduler,
                                    log)
        loop.saver.save(run.dir / "model", True)
    per_step = log.train_seconds / (step - start) if step > start else 0.0
    return LoopResult(step, log, time.perf_counter() - t0, per_step)


class MetricLog:
    """Averages step metrics over ``every`` steps into records for ``run.log`` (and keeps them
    in ``history``); ``train_seconds`` sums the steps' own seconds, evaluations excluded."""

    def __init__(self, run, every: int) -> None:
        self.run, self.every = run, every
        self.sums: dict[str, float] = {}
        self.n = 0
        self.train_seconds = 0.0
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        """The steps averaged since the last record (what a checkpoint between records needs)."""
        return {"sums": dict(self.sums), "n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.n = dict(state["sums"]), int(state["n"])

    def add(self, step: int, metrics: dict[str, float], force: bool, seconds: float) -> None:
        self.train_seconds += seconds
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        if step % self.every == 0 or force:
            self.last_train = {k: v / self.n for k, v in self.sums.items()}
            self.sums, self.n = {}, 0
            self._write(step, self.last_train)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self.last_eval = metrics
            self._write(step, metrics)

    def _write(self, step: int, record: dict[str, float]) -> None:
        self.history.append({"step": step, **record})
        if self.run is not None:
            self.run.log(step, record)


def accumulate_gradients(
    cfg: TrainConfig,
    task: Task,
    micro: list[list[int]],
    params: list,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    dp: DataParallel | None = None,
    engine: Any = None,
) -> dict[str, float]:
    """Forward/backward over the micro-batches of one step; return weighted-mean metrics.

    Each micro-batch mean loss is scaled by ``weight / total weight`` before backward, so the
    accumulated gradient is that of the mean over the whole step (per token for SFT). With
    ``dp`` (data parallel) each rank takes its token-balanced share of each micro-batch
    (:meth:`~pavlov.run.distributed.DataParallel.share`),
    the total weight is the ranks' sum, and the gradients and metrics are summed over the ranks:
    the step's gradient equals one process's on the whole batch.
    """
    # FSDP and DeepSpeed sum (reduce-scatter) in the backward
    sharded = engine is not None or sharding.is_sharded(task.model)
    fillers: set[int] = set()
    if dp is not None:  # this rank's share of every micro-batch's examples
        shares = [dp.share(idx, task.lengths) for idx in micro]
        if sharded:  # every rank runs as many forwards and backwards (collectives in each)
            fillers = {i for i, idx in enumerate(shares) if not idx and micro[i]}
            shares = [micro[i][:1] if i in fillers else idx for i, idx in enumerate(shares)]
        micro = shares
    device = module_device(task.model)
    batches = [to_device(task.collate(idx), device) for idx in micro if len(idx)]
    weights = [0.0 if i in fillers else float(task.weight(b))  # a filler example weighs nothing
               for i, b in enumerate(batches)]  # fmt: skip
    total = sum(weights)
    if dp is not None:  # the step's loss is a mean over all ranks' units (tokens, pairs)
        total = float(dp.sum_array([total])[0])
    total = total or 1.0
    sums: dict[str, float] = {}
    for i, (batch, w) in enumerate(zip(batches, weights, strict=True)):
        with autocast(cfg.precision, device):
            loss, metrics = task.loss(batch)
        check_finite("the loss", loss.detach(), step, hint=HINT)
        last = i == len(batches) - 1
        if engine is not None:
            sharding.deepspeed_backward(engine, loss * (w / total), last)
        else:
            if sharded:  # exchange gradients in the step's last backward only
                task.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            (loss * (w / total)).backward()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * w / total
    if dp is not None:  # the ranks' parts add up to the step's gradient and metrics
        if not sharded:
            dp.sum_grads_(params)
        sums = dp.sum_dict(sums)
    if engine is not None:  # the engine clips in its step
        return {f"train/{k}": v for k, v in sums.items()}
    grad_norm = clip_gradients(params, cfg.max_grad_norm, optimizer)  # scaled in optimizer.step()
    check_finite("the gradient norm", grad_norm, step, hint=HINT)
    out = {f"train/{k}": v for k, v in sums.items()}
    out["train/grad_norm"] = float(grad_norm)
    return out


def _kind(shards) -> str:
    return "deepspeed" if isinstance(shards, sharding.DeepSpeedPlan) else "fsdp"


def _evaluate(cfg: TrainConfig, task: Task) -> dict[str, float]:
    if task.evaluate is None:
        return {}
    was_training = task.model.training
    task.model.eval()
    try:
        with torch.no_grad(), autocast(cfg.precision, module_device(task.model)):
            return {k: float(v) for k, v in task.evaluate().items()}
    finally:
        task.model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _sharded_checkpoint(run, cfg: TrainConfig, loop: Loop, step: int, log: MetricLog,
                        force: bool = True) -> dict[str, Tensor]:
    """Every rank: gather the sharded model's and optimizer's state to rank 0, which writes the
    checkpoint (when ``force`` or none exists for ``step``) -> the gathered weights (rank 0)."""
    if loop.engine is not None:
        weights, optim = sharding.deepspeed_state(loop.engine)
    else:
        weights, optim = sharding.full_state(loop.saver.model, loop.optimizer)
    if run is not None and (force or not (run.dir / CHECKPOINTS / f"step_{step}").is_dir()):
        save_trainer_checkpoint(run, cfg, loop.saver, step, loop.optimizer, loop.scheduler, log,
                                weights=weights, optimizer_state=optim)  # fmt: skip
    return weights


def save_trainer_checkpoint(run, cfg: TrainConfig, task: Task, step: int, optimizer,
                            scheduler, log: MetricLog | None = None, *,
                            weights: dict[str, Tensor] | None = None,
                            optimizer_state: dict[str, Any] | None = None) -> Path:
    """``checkpoints/step_<n>/`` (weights + ``trainer_state.pt``), then the ``latest`` pointer.

    The weights directory is written atomically by ``task.save`` and the state file with
    :func:`~pavlov.run.checkpoint.atomic_write`; the pointer is written last, with the run's log
    cut, so it only ever names a complete checkpoint. Older step directories beyond
    ``keep_checkpoints`` are removed. ``log``'s partial averages (steps since its last record)
    are saved too, so a resumed run writes the same records. ``weights`` and
    ``optimizer_state``: a sharded run's whole state, gathered (else the live model's and
    ``optimizer.state_dict()``).
    """
    from pavlov.run.checkpoint import prune_checkpoints, remove_stray_temps

    root = run.dir / CHECKPOINTS
    remove_stray_temps(root)
    path = root / f"step_{step}"
    try:
        _write_checkpoint(run, cfg, task, step, optimizer, scheduler, log, root, path, weights,
                          optimizer_state)  # fmt: skip
    except OSError as e:  # disk full, read-only, quota: the previous checkpoint stays whole
        raise PavlovError(f"could not write checkpoint {path}: {e.strerror or e}") from None
    run.mark_checkpointed()  # a later failure keeps the run (resumable) instead of deleting it
    prune_checkpoints(root, cfg.keep_checkpoints, protect=path.name)
    return path


def _write_checkpoint(run, cfg: TrainConfig, task: Task, step: int, optimizer, scheduler,
                      log: MetricLog | None, root: Path, path: Path,
                      weights: dict[str, Tensor] | None = None,
                      optimizer_state: dict[str, Any] | None = None) -> None:
    from pavlov.config import config_dict
    from pavlov.run.checkpoint import atomic_write, write_latest

    if weights is None:
        task.save(path, False)
    else:
        task.save(path, False, weights)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": config_dict(cfg),
        "task": task.state(),
        "metric_log": {} if log is None else log.state_dict(),
    }
    atomic_write(path / STATE_FILE, lambda f: torch.save(state, f))
    write_latest(root, path.name, run.cut())  # last: only ever names a whole checkpoint


def latest_trainer_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint directory that ``run_dir/checkpoints/latest`` names."""
    from pavlov.run.checkpoint import read_latest

    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    latest = read_latest(root)
    if latest is None:
        raise PavlovError(f"no checkpoint to resume in {run_dir} (missing {pointer})")
    path = root / latest[0]
    if not (path / STATE_FILE).is_file():
        raise PavlovError(f"checkpoint {path} named by {pointer} is incomplete or missing")
    return path


def load_resume(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(checkpoint dir, trainer state)`` of a run's latest checkpoint."""
    path = latest_trainer_checkpoint(run_dir)
    check_weights_readable(path)  # before the run is reopened: a bad checkpoint changes nothing
    try:
        return path, torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or corrupt: zip, pickle and EOF errors differ
        raise PavlovError(f"checkpoint {path / STATE_FILE} is unreadable (truncated or "
                          f"corrupt): {type(e).__name__}") from None


def check_weights_readable(directory: Path) -> None:
    """PavlovError unless every ``*.safetensors`` file in ``directory`` is whole: its header
    parses and its tensors' byte ranges end exactly at the end of the file (a truncated copy
    fails here, in microseconds, instead of half-way through loading)."""
    import json
    import struct

    for file in sorted(directory.glob("*.safetensors")):
        try:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                      default=0)
            ok = file.stat().st_size == 8 + n + end
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            ok = False
        if not ok:
            raise PavlovError(f"checkpoint weights {file} are unreadable (truncated or corrupt)")


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load weights written by ``save_pretrained`` into a live model, in place.

    A peft model takes ``adapter_model.safetensors``; a plain one ``model.safetensors`` (tied
    weights such as a tied ``lm_head`` are restored through the tensor they share).
    """
    from safetensors.torch import load_file

    from pavlov.llm.models.loading import is_peft_model

    directory = Path(directory)
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        return
    file = directory / "model.safetensors"
    if not file.is_file():
        raise PavlovError(f"{directory}: no model.safetensors to resume from")
    missing, unexpected = model.load_state_dict(load_file(file), strict=False)
    tied = {n for n, _ in model.named_parameters()}  # named_parameters lists a tied weight once
    really_missing = [m for m in missing if m in tied]
    if really_missing or unexpected:
        raise PavlovError(
            f"{file} does not fit the model (missing {really_missing[:3]}, "
            f"unexpected {list(unexpected)[:3]})"
        )
