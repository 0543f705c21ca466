"""The steps of the case study (:mod:`pavlov.llm.case_study.pipeline`): SFT, the reward model, step
3 (online RL or DPO) and the held-out evaluation, each writing its own sub-run.

A step that finishes writes ``stage.json`` (its summary) into its sub-run, last. With ``resume``
(``pavlov rlhf --resume``) a finished step is loaded from its ``model/`` instead of trained, and
an unfinished one continues from its trainer's latest checkpoint (:func:`_stage`)."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pavlov.config import config_dict

STAGE_FILE = "stage.json"
"""Written into a step's sub-run once the step is done: its info (steps, seconds, metrics)."""


def _info(fit) -> dict[str, Any]:
    return {
        "steps": fit.steps,
        "seconds": round(fit.seconds, 2),
        "metrics": {**fit.train, **fit.eval},
    }


def finished(run, name: str, resume: bool) -> dict[str, Any] | None:
    """The info of step ``name`` if this is a resumed run and that step is done, else None."""
    path = run.dir / name / STAGE_FILE
    return json.loads(path.read_text()) if resume and path.is_file() else None


@contextlib.contextmanager
def _stage(run, name: str, config: dict[str, Any], resume: bool) -> Iterator[tuple[Any, Any]]:
    """``(sub-run, trainer resume point or None)`` of an unfinished step: in a resumed run,
    reopened at its latest checkpoint; else created (a step killed before its first checkpoint
    starts again from scratch)."""
    from pavlov.llm.trainers.loop import load_resume
    from pavlov.run import Run
    from pavlov.run.checkpoint import read_latest

    path = run.dir / name
    if resume and read_latest(path / "checkpoints") is not None:
        point = load_resume(path)
        with Run.reopen(path, config) as sub:
            yield sub, point
        return
    if path.exists():
        shutil.rmtree(path)
    with Run.create(run.dir, name, config) as sub:
        yield sub, None


def _done(sub_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Mark a step finished (``stage.json``, atomically): a resumed run loads it from now on."""
    from pavlov.run.checkpoint import atomic_write_text

    atomic_write_text(sub_dir / STAGE_FILE, json.dumps(info, indent=2) + "\n")
    return info


def sft(sft_cfg, inputs, run, quiet: bool, resume: bool = False):
    """Step 1; returns the SFT model with its adapters merged (the step-3 start and reference)."""
    from pavlov.llm.models.loading import merge_adapters
    from pavlov.llm.trainers import train_sft
    from pavlov.llm.trainers.common import load_adapters

    info = finished(run, "sft", resume)
    if info is not None:  # the saved adapters on the same base: the same merged weights
        model = load_adapters(inputs.policy, run.dir / "sft" / "model")
        inputs.policy = None
        return merge_adapters(model).eval(), info
    config = {"command": "sft", "trainer": config_dict(sft_cfg)}
    with _stage(run, "sft", config, resume) as (sub, point):
        out = train_sft(sft_cfg, inputs.policy, inputs.tokenizer, inputs.sft_train,
                        inputs.sft_test, run=sub, resume=point, quiet=quiet)  # fmt: skip
    inputs.policy = None  # the merged model below replaces it
    return merge_adapters(out.model).eval(), _done(sub.dir, _info(out.fit))


def reward_model(cfg, rm_cfg, inputs, run, quiet: bool, resume: bool = False):
    """Step 2; returns the saved model reloaded as a scorer (bf16 autocast when asked)."""
    from pavlov.devices import module_device
    from pavlov.llm.scoring.rewards import reward_model_fn
    from pavlov.llm.trainers import load_reward_model, train_reward_model
    from pavlov.llm.trainers.common import autocast

    info = finished(run, "reward_model", resume)
    if info is None:
        rm_run = {"command": "reward-model", "backbone": cfg.rm_backbone,
                  "trainer": config_dict(rm_cfg)}  # fmt: skip
        with _stage(run, "reward_model", rm_run, resume) as (sub, point):
            out = train_reward_model(
                rm_cfg, inputs.rm_backbone, inputs.rm_tokenizer, inputs.pref_train,
                inputs.pref_test, kind=cfg.rm_backbone,
                base_model=cfg.policy if cfg.rm_backbone == "causal" else None,
                run=sub, resume=point, quiet=quiet,
            )  # fmt: skip
        info = _info(out.fit)
        info["accuracy"] = out.fit.eval.get("eval/accuracy")
        _done(sub.dir, info)
    inputs.rm_backbone = None
    scorer = load_reward_model(run.dir / "reward_model" / "model", batch_size=cfg.eval_batch_size,
                               device=cfg.device)  # fmt: skip

    def score(prompts, completions) -> list[float]:
        with autocast(cfg.precision, module_device(scorer.model)):
            return scorer(prompts, completions)

    if inputs.forms is not None:  # the policy reads chat prompts; the reward model the plain ones
        score = inputs.forms.scorer(score)
    return reward_model_fn(score, name="reward_model"), info


def evaluate(cfg, model, inputs, scorer, reference):
    """The held-out evaluation: reviews sampled as a reader sees them (``eval_temperature``,
    ``eval_top_p``), KL at the training temperature, fluency under the untouched base model."""
    from pavlov.llm.scoring.policy_eval import evaluate_policy, module_logprobs

    fluency = module_logprobs(
        inputs.fluency_model, precision=cfg.precision, chunk_size=cfg.eval_batch_size
    )
    return evaluate_policy(
        model, inputs.tokenizer, inputs.eval_prompts, reward=scorer, reference=reference,
        fluency=fluency, topics=inputs.eval_topics, labels=inputs.eval_labels,
        samples_per_prompt=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, kl_temperature=cfg.temperature,
        seed=cfg.seed + 1000, batch_size=cfg.eval_batch_size, precision=cfg.precision,
    )  # fmt: skip


def step3(cfg, rl_cfg, sft_model, inputs, scorer, run, quiet: bool, resume: bool = False):
    """Step 3 from the merged SFT model: ``(policy, reference log-prob fn, info, history)``;
    ``history``: the step's logged records (``rl/metrics.jsonl``), one per step."""
    from pavlov.llm.models.loading import is_peft_model
    from pavlov.llm.scoring.policy_eval import module_logprobs

    # Without LoRA the step-3 trainer changes the SFT weights themselves: keep a copy to score
    # the reference with. With LoRA the reference is the base under the adapters (no copy).
    frozen = None if rl_cfg.lora else copy.deepcopy(sft_model).requires_grad_(False)
    info = finished(run, "rl", resume)
    if info is not None:
        policy = _load_policy(sft_model, run.dir / "rl" / "model")
    else:
        sub_config = {"command": cfg.algo, "trainer": config_dict(rl_cfg)}
        with _stage(run, "rl", sub_config, resume) as (sub, point):
            if cfg.algo == "dpo":
                policy, info = _dpo(rl_cfg, sft_model, inputs, sub, point, quiet)
            else:
                policy, info = _online_rl(cfg, rl_cfg, sft_model, inputs, scorer, sub, point,
                                          quiet)  # fmt: skip
            if cfg.rl_interpolation < 1:
                interpolate(policy, cfg.rl_interpolation, frozen, sub.dir, inputs.tokenizer)
                info["interpolation"] = cfg.rl_interpolation
        if "metrics" not in info:  # the logs are whole now that the sub-run is closed
            last = logged_history(sub.dir)[-1]
            info["metrics"] = {k: v for k, v in last.items() if k != "step"}
        _done(sub.dir, info)
    policy.eval()
    options = {
        "precision": cfg.precision, "chunk_size": cfg.eval_batch_size,
        "temperature": cfg.temperature,
    }  # fmt: skip
    if frozen is None and is_peft_model(policy):
        reference = module_logprobs(policy, base=True, **options)
    else:
        reference = module_logprobs(frozen if frozen is not None else sft_model, **options)
    return policy, reference, info, logged_history(run.dir / "rl")


def interpolate(policy, eta: float, start, sub_dir: Path, tokenizer) -> None:
    """Keep the share ``eta`` of step 3's weight change (``rl_interpolation``), in place; the
    trained policy is kept as ``trained_model/`` and ``model/`` (what ``--resume`` loads) holds
    the interpolated one. ``start``: the SFT weights for a full fine-tuning (None with LoRA)."""
    from pavlov.llm.models.loading import interpolate_update, save_model

    trained = sub_dir / "trained_model"
    if trained.exists():
        shutil.rmtree(trained)
    shutil.copytree(sub_dir / "model", trained)
    interpolate_update(policy, eta, start)
    save_model(policy, tokenizer, sub_dir / "model")  # atomic: the old one until it is whole


def _load_policy(sft_model, path: Path):
    """A finished step 3's policy: its adapters on the SFT model, or its whole weights."""
    from pavlov.llm.trainers.common import load_adapters
    from pavlov.llm.trainers.loop import load_weights

    if (path / "adapter_config.json").is_file():
        return load_adapters(sft_model, path)
    load_weights(sft_model, path)
    return sft_model


def logged_history(sub_dir: Path) -> list[dict[str, float]]:
    """A sub-run's ``metrics.jsonl`` as one record per step (records of one step merged, e.g. a
    step's training metrics and its ``judge/train_mean``; wall-clock ``time`` left out), in
    step order: the curves of the report, the same for a resumed run as for an uninterrupted
    one."""
    from pavlov.run.rundir import read_metrics

    merged: dict[int, dict[str, float]] = {}
    for record in read_metrics(sub_dir):
        step = int(record["step"])
        row = merged.setdefault(step, {"step": step})
        row.update({k: v for k, v in record.items() if k not in ("step", "time")})
    return [merged[k] for k in sorted(merged)]


def _dpo(dpo_cfg, sft_model, inputs, sub, point, quiet: bool):
    from pavlov.llm.trainers import train_dpo

    # No held-out pairs here: the case study's own evaluation follows (and DPO's would cost
    # a reference pass over every test pair).
    pairs = inputs.pref_train
    if inputs.forms is not None:
        pairs = [inputs.forms.preference(x) for x in pairs]
    out = train_dpo(dpo_cfg, sft_model, inputs.tokenizer, pairs, None, run=sub, resume=point,
                    quiet=quiet)  # fmt: skip
    return out.model, _info(out.fit)


class JudgeTap:
    """The reward function of step 3, which also scores the same completions with the held-out
    judge for the judge-vs-KL curve: the trainer gets the reward model's scores, never the
    judge's."""

    name = "reward_model"

    def __init__(self, reward, judge) -> None:
        self.reward, self.judge, self.pending = reward, judge, []

    def __call__(self, prompts, completions) -> list[float]:
        self.pending.extend(float(x) for x in self.judge(prompts, completions))
        return self.reward(prompts, completions)

    def take(self) -> float | None:
        """Mean judge score of the completions seen since the last call (None: none)."""
        scores, self.pending = self.pending, []
        return sum(scores) / len(scores) if scores else None


def _online_rl(cfg, rl_cfg, sft_model, inputs, scorer, sub, point, quiet: bool):
    from pavlov.llm.scoring.rewards import (
        fluency_reward,
        repetition_reward,
        vader_reward,
        weighted_sum,
    )
    from pavlov.llm.trainers.online import train_online

    tap = JudgeTap(scorer, vader_reward())
    terms = {"reward_model": (tap, 1.0)}
    if cfg.relevance_weight:
        terms["relevance"] = (inputs.relevance, cfg.relevance_weight)
    floor = None
    if cfg.fluency_weight:  # the frozen base model, on the policy's own prompts
        options = {"precision": cfg.precision, "batch_size": cfg.eval_batch_size}
        if cfg.fluency_hinge:
            plain = fluency_reward(inputs.fluency_model, inputs.tokenizer, **options)
            floor = fluency_level(cfg, sft_model, inputs, plain)
            if point is None:  # a resumed step 3 has it logged (the same value, recomputed)
                sub.log(0, {"reward/fluency_floor": floor})
        fluency = fluency_reward(inputs.fluency_model, inputs.tokenizer, floor=floor,
                                 surprise=cfg.fluency_surprise or None, **options)
        terms["fluency"] = (fluency, cfg.fluency_weight)
    if cfg.repetition_weight:
        terms["repetition"] = (repetition_reward(), cfg.repetition_weight)
    # logged per term: reward/reward_model, reward/relevance, reward/fluency, reward/repetition
    reward = weighted_sum(terms) if len(terms) > 1 else tap

    def callback(step: int, record: dict) -> None:  # before the step's checkpoint: inside it
        score = tap.take()
        if score is not None:
            sub.log(step, {"judge/train_mean": score})

    t0 = time.perf_counter()
    out = train_online(rl_cfg, sft_model, inputs.tokenizer, prompts=inputs.rl_prompts,
                       reward=reward, run=sub, resume=point, quiet=quiet,
                       callback=callback)  # fmt: skip
    info = {
        "steps": out.steps,
        "seconds": round(time.perf_counter() - t0, 2),
        **({} if floor is None else {"fluency_floor": round(floor, 4)}),
    }
    return out.model, info  # its "metrics": the last logged record, once the sub-run is closed


FLUENCY_REVIEWS = 64
"""Reviews of the SFT model that set the fluency hinge's floor (two batches of 32)."""


def fluency_level(cfg, model, inputs, fluency) -> float:
    """The SFT model's own fluency before step 3, the floor of ``fluency_hinge``: the mean
    ``fluency`` score (mean log-prob per token under the base model) of ``FLUENCY_REVIEWS``
    reviews it samples as step 3 will (training prompts, ``temperature``, no nucleus; its own
    seed stream), empty reviews left out. Training prompts only: the held-out movies stay
    unseen until the evaluation."""
    from pavlov.llm.scoring.policy_eval import evaluate_policy
    from pavlov.llm.trainers.common import evenly_spaced

    prompts = evenly_spaced(inputs.rl_prompts, FLUENCY_REVIEWS)
    out = evaluate_policy(
        model, inputs.tokenizer, prompts, reward=fluency,
        judge=lambda p, c: [0.0] * len(c), samples_per_prompt=1,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0,
        kl_temperature=cfg.temperature, seed=cfg.seed + 2000, batch_size=cfg.eval_batch_size,
        precision=cfg.precision,
    )  # fmt: skip
    scores = [s.reward for s in out.samples if s.completion]
    if not scores:
        raise RuntimeError("fluency_hinge: every review of the SFT model was empty")
    return sum(scores) / len(scores)
