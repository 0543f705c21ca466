"""Online RL for language models: PPO-RLHF with a critic, GRPO, RLOO and REINFORCE, one loop.

Every optimizer step of :func:`train_online` runs the same stages::

    prompts (a deterministic plan, resumable)  x group_size
      -> generate         the rollout engine, KV cache                llm.generation.rollout
      -> score            reward functions / reward models, validated llm.scoring.rewards
      -> reference        frozen-reference log-probs (beta 0: skipped) llm.scoring.logprobs
      -> old              the policy before the update (log-probs, PPO's values)
      -> advantages       token GAE (PPO) or sequence baselines      compute_advantages
      -> update           n_epochs x num_minibatches clipped steps   minibatch_loss
      -> log / checkpoint / adapt the KL coefficient

What differs between algorithms (``ALGOS``) is only the advantage and where the KL goes:

* ``"ppo"`` (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022): a value head on
  the policy's last hidden state; per-token rewards ``-beta * KL_t`` with the score added at the
  last response token (:func:`pavlov.math.rlhf.rlhf_token_rewards`, k1 by default); GAE over the
  response tokens (:func:`~pavlov.math.rlhf.token_gae`), advantages whitened over valid tokens,
  clipped value loss; ``beta`` fixed or adapted to ``target_kl``
  (:func:`~pavlov.math.rlhf.adaptive_kl_coef`).
* ``"grpo"`` (Shao et al. 2024): ``group_size`` responses per prompt, advantage
  :func:`~pavlov.math.group.group_advantages` on every token, ``beta * k3`` added to the loss.
* ``"rloo"`` (Ahmadian et al. 2024): leave-one-out baseline
  :func:`~pavlov.math.group.rloo_advantages` on ``score - beta * KL(sequence)``.
* ``"reinforce"``: REINFORCE with a moving-average baseline on ``score - beta * KL(sequence)``.

Each stage hands its output to the next (:class:`Old`, :class:`Advantages`); the loss reads
them and writes nothing back. Old log-probs: with one update per batch (``n_epochs ==
num_minibatches == 1``, the default) the update's own forward (:func:`policy_forward`, run by
the loop before the advantage stage) provides them (``old = new.detach()``), so the ratio is
exactly 1 and no separate pass is run; PPO then also takes its old values, and so its
advantages, from that pass. With several updates per batch one no-grad pass computes them.

The reference is the model as it is passed in: with LoRA (``lora=True``) the same network with
its adapters disabled (no copy); otherwise a frozen copy, or ``reference=`` given explicitly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from pavlov.devices import to_device
from pavlov.errors import ConfigError, check_choice, check_count, check_finite, check_range
from pavlov.llm import cpu
from pavlov.llm.cpu.offload import loaded, offload_copy
from pavlov.llm.data.datasets import PromptExample, prompt_texts, tokenize_prompts
from pavlov.llm.generation.engines import ENGINES
from pavlov.llm.generation.rollout import Rollout, SamplingConfig, left_pad
from pavlov.llm.generation.vllm_engine import VLLMOptions, check_vllm, configure_vllm
from pavlov.llm.models.loading import ensure_pad_token, is_peft_model, save_model
from pavlov.llm.scoring.logprobs import score_tokens
from pavlov.llm.trainers.common import (
    TrainConfig,
    autocast,
    batch_plan,
    check_context,
    clip_gradients,
    make_optimizer,
    make_scheduler,
    maybe_lora,
    place,
    seed_all,
    set_rng_state,
)
from pavlov.llm.trainers.loop import HINT, Loop, load_weights, run_steps
from pavlov.llm.trainers.sharding import resolve as resolve_sharding
from pavlov.math import (
    LOSS_AGGREGATIONS,
    adaptive_kl_coef,
    aggregate_token_loss,
    apply_missing_eos_penalty,
    clipped_value_loss,
    explained_variance,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_whiten,
    ppo_clip_terms,
    rlhf_token_rewards,
    rloo_advantages,
    token_gae,
)

ALGOS = ("ppo", "grpo", "rloo", "reinforce")
KL_MODES = ("auto", "reward", "loss")


@dataclass
class OnlineConfig(TrainConfig):
    """Online RL on sampled text; fields beyond :class:`TrainConfig` (whose ``batch_size``,
    ``epochs``, ``grad_accum_steps`` and ``group_by_length`` do not apply here)."""

    algo: str = "ppo"
    """``"ppo"`` (critic + GAE), ``"grpo"``, ``"rloo"`` or ``"reinforce"``; see the module doc."""
    max_steps: int = 100
    """Optimizer-step batches to run (each: generate, score, update), >= 1."""
    learning_rate: float = 1e-5
    """Peak AdamW learning rate (~1e-4 with LoRA)."""
    lr_schedule: str = "constant"
    """``"constant"`` (after warmup) or ``"linear"`` decay, as in :class:`TrainConfig`."""
    prompts_per_step: int = 8
    """Distinct prompts per batch; the batch has ``prompts_per_step * group_size`` responses."""
    group_size: int = 0
    """Responses sampled per prompt; 0 picks 1 for PPO / REINFORCE and 4 for GRPO / RLOO (which
    need >= 2: the group is their baseline)."""
    max_new_tokens: int = 32
    """Response length limit."""
    temperature: float = 1.0
    """Sampling temperature, > 0; log-probs and ratios refer to ``softmax(logits / T)``."""
    top_k: int = 0
    """Sample among the top-k tokens only (0: off). Ratios still use the untruncated
    distribution, as TRL does; keep off for exact on-policy updates."""
    top_p: float = 1.0
    """Nucleus sampling threshold in (0, 1] (1: off); see ``top_k``."""
    engine: str = "pavlov"
    """Rollout engine (:data:`pavlov.llm.generation.engines.ENGINES`): ``"pavlov"`` (our
    KV-cache loop with the CPU fast path and the replay tape) or ``"hf"`` (``model.generate``,
    any architecture or device) or ``"vllm"`` (a colocated vLLM engine on the GPU, weights
    pushed before each generation; the ``vllm`` extra, not run in this project)."""
    vllm_gpu_memory_utilization: float = 0.3
    """``engine="vllm"``: the share of the GPU's memory vLLM takes for its weights and KV cache
    (TRL's colocated default); the trainer keeps the rest. In (0, 1]."""
    n_epochs: int = 1
    """Passes over each batch (TRL's ``num_ppo_epochs`` / ``num_iterations``)."""
    num_minibatches: int = 1
    """Optimizer steps per pass; the batch's responses are split evenly among them."""
    clip_range: float = 0.2
    """PPO ratio clip range, > 0."""
    clip_range_high: float = 0.0
    """Upper clip range if > 0 (DAPO's clip-higher); 0 uses ``clip_range``."""
    beta: float = 0.05
    """KL coefficient to the reference, >= 0 (the initial value when ``target_kl`` > 0). 0 runs
    no reference model at all."""
    kl_estimator: str = ""
    """``"k1"``, ``"k2"`` or ``"k3"``; empty picks k3 for a KL in the loss (GRPO) and k1 for a
    KL in the reward (whose per-sequence sum is then an unbiased KL estimate)."""
    kl_mode: str = "auto"
    """Where the KL penalty goes: ``"reward"`` (PPO, RLOO, REINFORCE), ``"loss"`` (GRPO) or
    ``"auto"`` (those defaults)."""
    target_kl: float = 0.0
    """Adaptive KL control (Ziegler et al. 2019) towards this KL per response, nats; 0: fixed
    ``beta``. Only with the KL in the reward."""
    beta_min: float = 0.0
    """Floor of the adaptive ``beta`` (``target_kl`` > 0), >= 0: the controller may tighten the
    leash above ``beta`` and relax it again, but not below this. 0: Ziegler et al.'s controller,
    which starts relaxing it at the first step, while the policy still equals its reference
    and the KL is 0 by construction."""
    beta_max: float = 0.0
    """Ceiling of the adaptive ``beta`` (``target_kl`` > 0), >= 0 (at least ``beta_min``): the
    controller integrates the KL's error, so a mid-run KL peak winds ``beta`` up and it keeps
    pulling the policy back after the peak; the ceiling bounds that. 0: none. In the case study
    (``rl_options``, seeds 0-3) 0.2 let the held-out KL reach 5.4-7.9 and 0.25 met 20 goals of
    24 against 21 without it (docs/benchmarks.md, issue 17)."""
    kl_horizon: int = 10000
    """Responses over which the adaptive controller makes a full 20% correction."""
    kl_smoothing: float = 0.0
    """In [0, 1): the adaptive controller reads an exponential moving average of the batches'
    KL, ``ema = s * ema + (1 - s) * kl`` (0: each batch's own KL, Ziegler et al.). One small
    batch's KL is noisy (1-18 nats within one run of the case study)."""
    gamma: float = 1.0
    """Discount over response tokens (PPO)."""
    gae_lambda: float = 0.95
    """GAE lambda over response tokens (PPO)."""
    normalize_advantage: bool = True
    """Normalise advantages over the batch's valid tokens (PPO, RLOO, REINFORCE; GRPO's are
    already scaled by their group)."""
    whiten_rewards: bool = False
    """Scale PPO's token rewards to unit variance (mean kept) before GAE."""
    scale_rewards: bool = True
    """GRPO: divide by the group's reward std (False: Dr. GRPO's mean-only baseline)."""
    vf_coef: float = 0.1
    """Weight of the value loss (PPO), >= 0."""
    clip_range_vf: float = 0.2
    """PPO2 value clip range in reward units; 0 turns the clip off."""
    ent_coef: float = 0.0
    """Entropy bonus weight, >= 0 (0: entropy is only logged)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a response cut at ``max_new_tokens`` without EOS, >= 0."""
    loss_aggregation: str = "token"
    """Reduction of the per-token loss: ``"token"``, ``"sequence"`` or ``"constant"``
    (:func:`pavlov.math.rlhf.aggregate_token_loss`)."""
    baseline_decay: float = 0.9
    """REINFORCE: the baseline is this moving average of past batch mean rewards."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("algo", self.algo, ALGOS)
        if self.engine == "vllm":
            check_vllm()  # one line where the package is missing
        check_choice("engine", self.engine, ENGINES)
        check_count("max_steps", self.max_steps)
        for name in ("prompts_per_step", "max_new_tokens", "n_epochs", "num_minibatches"):
            check_count(name, getattr(self, name))
        check_count("kl_horizon", self.kl_horizon)
        check_count("group_size", self.group_size, minimum=0)
        if self.group_size == 0:
            self.group_size = 4 if self.algo in ("grpo", "rloo") else 1
        if self.algo in ("grpo", "rloo") and self.group_size < 2:
            raise ConfigError(f"{self.algo} needs group_size >= 2, got {self.group_size}")
        if self.batch_responses % self.num_minibatches:
            raise ConfigError(
                f"num_minibatches {self.num_minibatches} must divide the "
                f"{self.batch_responses} responses of a batch (prompts_per_step x group_size)"
            )
        check_range("temperature", self.temperature, 1e-6, math.inf)
        check_range("top_p", self.top_p, 1e-6, 1.0)
        check_range("vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, 1e-6, 1.0)
        check_count("top_k", self.top_k, minimum=0)
        check_range("clip_range", self.clip_range, 1e-6, math.inf)
        for name in ("clip_range_high", "beta", "beta_min", "beta_max", "target_kl", "vf_coef",
                     "clip_range_vf"):
            check_range(name, getattr(self, name), 0.0, math.inf)
        if 0 < self.beta_max < self.beta_min:
            raise ConfigError(f"beta_max must be 0 (no ceiling) or at least beta_min "
                              f"({self.beta_min!r}), got {self.beta_max!r}")
        for name in ("ent_coef", "missing_eos_penalty"):
            check_range(name, getattr(self, name), 0.0, math.inf)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_range("baseline_decay", self.baseline_decay, 0.0, 1.0)
        if not 0.0 <= self.kl_smoothing < 1.0:
            raise ConfigError(f"kl_smoothing must be in [0, 1), got {self.kl_smoothing!r}")
        check_choice("kl_mode", self.kl_mode, KL_MODES)
        check_choice("loss_aggregation", self.loss_aggregation, tuple(LOSS_AGGREGATIONS))
        if self.kl_estimator:
            check_choice("kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        if self.target_kl and self.kl_place == "loss":
            raise ConfigError("target_kl (adaptive KL) needs the KL in the reward (kl_mode)")

    @property
    def batch_responses(self) -> int:
        """Responses per batch, ``prompts_per_step * group_size``."""
        return self.prompts_per_step * self.group_size

    @property
    def kl_place(self) -> str:
        """``"reward"`` or ``"loss"``: ``kl_mode`` with ``"auto"`` resolved."""
        if self.kl_mode != "auto":
            return self.kl_mode
        return "loss" if self.algo == "grpo" else "reward"

    @property
    def estimator(self) -> str:
        """``kl_estimator`` with the default resolved."""
        return self.kl_estimator or ("k3" if self.kl_place == "loss" else "k1")

    @property
    def single_update(self) -> bool:
        """One optimizer step per batch: the update's forward gives the old log-probs."""
        return self.n_epochs == 1 and self.num_minibatches == 1


@dataclass
class OnlineResult:
    model: nn.Module
    """The trained policy (a peft model with LoRA)."""
    steps: int
    """Batches (each ``n_epochs * num_minibatches`` optimizer steps) done in total."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Every per-step record of this call (``step`` plus the metrics of :func:`train_online`)."""
    seconds: float = 0.0
    """Wall seconds of this call."""
    seconds_per_step: float = 0.0
    """Mean wall seconds per batch of this call."""


class ValueHead(nn.Module):
    """``V(s_t) = w . h_t + b`` on the policy's final hidden state; ``(B, T, H) -> (B, T)``.

    Zero-initialised: the first value estimates are 0, so the first advantages are the plain
    returns. Kept in float32 whatever the precision (it is tiny).
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.float()).squeeze(-1)


RewardFn = Callable[[list[str], list[str]], Sequence[float]]


# ---------------------------------------------------------------------------------------------
# One batch: what generation, scoring and the reference give


@dataclass
class Batch:
    """The samples of one step, ``N = prompts_per_step * group_size`` rows, ``T`` response
    columns after ``P`` prompt columns."""

    rollout: Rollout
    prompts: list[str]
    completions: list[str]
    scores: Tensor
    """``(N,)`` the reward functions' total, before any penalty."""
    ref_logp: Tensor | None
    """``(N, T)`` reference log-probs, or None when ``beta == 0``."""

    @property
    def mask(self) -> Tensor:
        return self.rollout.response_mask


@dataclass
class Played:
    """What a :data:`Sampler` returns for a step's rows."""

    rollout: Rollout
    """The rows, on the policy's device; ``response_mask`` marks the tokens trained on."""
    completions: list[str]
    """A text per row (logs, the reward tap)."""
    scores: Tensor
    """``(N,)`` each row's reward."""
    metrics: dict[str, float]
    """Step metrics of the playing (``episode/won``, ...)."""


Sampler = Callable[[nn.Module, list[int], SamplingConfig], Played]
"""``(policy, prompt index of each row, sampling) -> Played``: generation and scoring as one
stage, for rewards that come from playing (multi-turn episodes)."""


def _decode(tokenizer, rollout: Rollout) -> list[str]:
    """Response text of each row: the masked tokens, special tokens (EOS) dropped."""
    rows = rollout.responses
    return [
        tokenizer.decode(r[m].tolist(), skip_special_tokens=True)
        for r, m in zip(rows, rollout.response_mask, strict=True)
    ]


@contextlib.contextmanager
def _frozen(module: nn.Module, adapters_off: bool):
    """No grad, eval mode and, with ``adapters_off``, LoRA adapters disabled."""
    was_training = module.training
    module.eval()
    off = module.disable_adapter() if adapters_off else contextlib.nullcontext()
    try:
        with torch.no_grad(), off:
            yield
    finally:
        module.train(was_training)


# ---------------------------------------------------------------------------------------------
# Advantages


def sequence_advantages(cfg: OnlineConfig, scores: Tensor, baseline: float | None,
                        total: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``(N,)`` advantage of each response for GRPO / RLOO / REINFORCE from its (KL-adjusted)
    score; REINFORCE subtracts ``baseline`` (the batch mean when None; the whole batch's with
    ``total``, data parallel, see :func:`pavlov.math.masked.masked_whiten`)."""
    if cfg.algo == "grpo":
        return group_advantages(scores, cfg.group_size, scale_std=cfg.scale_rewards)
    if cfg.algo == "rloo":
        return rloo_advantages(scores, cfg.group_size)
    if baseline is None and total is not None:
        sums = total(torch.stack([scores.sum(), scores.new_tensor(float(len(scores)))]))
        return scores - sums[0] / sums[1]
    return scores - (scores.mean() if baseline is None else baseline)


class Advantages(NamedTuple):
    """What the advantage stage hands the update."""

    advantages: Tensor
    """``(N, T)`` per token, 0 outside the responses."""
    returns: Tensor | None
    """``(N, T)`` PPO's value targets (None for the other algorithms)."""
    metrics: dict[str, Tensor]
    """Per-batch metrics: KL to the reference, the KL-adjusted reward, explained variance."""


class Old(NamedTuple):
    """The policy before the update: ``(N, T)`` log-probs and PPO's values (else None)."""

    logp: Tensor
    values: Tensor | None


def compute_advantages(
    cfg: OnlineConfig, batch: Batch, old: Old, kl_coef: float, baseline: float | None,
    total: Callable[[Tensor], Tensor] | None = None,
) -> Advantages:
    """The advantage stage: per-token advantages (and PPO's returns) from the batch's scores,
    the reference log-probs and the policy before the update (``old``). ``total`` (data
    parallel): sums statistics over the ranks, so batch-wide normalisations use the whole
    batch."""
    old_logp, old_values = old
    mask = batch.mask
    scores = apply_missing_eos_penalty(
        batch.scores, batch.rollout.eos_reached, cfg.missing_eos_penalty
    )
    metrics: dict[str, Tensor] = {}
    in_reward = batch.ref_logp is not None and cfg.kl_place == "reward"
    if batch.ref_logp is not None:
        k1 = kl_penalty(old_logp, batch.ref_logp, "k1")
        metrics["kl/ref"] = masked_sum(k1, mask, dim=1).mean()
    if cfg.algo == "ppo":
        ref = batch.ref_logp if batch.ref_logp is not None else old_logp
        rewards, kl = rlhf_token_rewards(
            scores, old_logp, ref, mask, kl_coef if in_reward else 0.0, cfg.estimator
        )
        if cfg.whiten_rewards:
            rewards = torch.where(mask, masked_whiten(rewards, mask, shift_mean=False,
                                                      total=total), 0.0)  # fmt: skip
        adv, returns = token_gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
        metrics["value/explained_variance"] = torch.tensor(
            float(explained_variance(old_values, returns, mask))
        )
        metrics["reward/with_kl"] = masked_sum(rewards, mask, dim=1).mean()
    else:
        returns = None
        if in_reward:
            kl = kl_penalty(old_logp, batch.ref_logp, cfg.estimator)
            scores = scores - kl_coef * masked_sum(kl, mask, dim=1)
            metrics["reward/with_kl"] = scores.mean()
        adv = sequence_advantages(cfg, scores, baseline, total).unsqueeze(1).expand_as(old_logp)
    if cfg.normalize_advantage and cfg.algo != "grpo":
        adv = masked_whiten(adv, mask, total=total)
    return Advantages(torch.where(mask, adv, 0.0).detach(), returns, metrics)


# ---------------------------------------------------------------------------------------------
# The loss of one minibatch


class PolicyForward(NamedTuple):
    """One forward of the policy over some rows of the batch: ``(R, T)`` log-probs and entropies
    of the response tokens, and PPO's values (else None)."""

    logp: Tensor
    entropy: Tensor
    values: Tensor | None

    def detached(self) -> Old:
        return Old(self.logp.detach(), None if self.values is None else self.values.detach())


def policy_forward(
    cfg: OnlineConfig,
    model: nn.Module,
    value_head: ValueHead | None,
    batch: Batch,
    rows: Tensor,
    replay: Any = None,
) -> PolicyForward:
    """The policy's (differentiable) forward on ``rows``; ``replay``: the rollout's tape, to
    reuse the decode's linear outputs (:mod:`pavlov.llm.cpu.tape`; one update per batch only)."""
    r = batch.rollout
    scores = score_tokens(
        model, r.sequences[rows], r.attention_mask[rows], r.prompt_length,
        temperature=cfg.temperature, entropy=True, entropy_grad=cfg.ent_coef > 0,
        hidden=value_head is not None, replay=replay,
    )  # fmt: skip
    values = value_head(scores.hidden) if value_head is not None else None
    return PolicyForward(scores.logprobs, scores.entropy, values)


def minibatch_loss(
    cfg: OnlineConfig,
    out: PolicyForward,
    batch: Batch,
    rows: Tensor,
    old: Old,
    adv: Advantages,
    kl_coef: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy loss (+ KL loss, value loss, entropy bonus) of the forward ``out`` of
    ``rows``; ``old`` and ``adv`` cover the whole batch."""
    mask, logp = batch.mask[rows], out.logp
    old_logp = old.logp[rows]
    metrics: dict[str, Tensor] = {}
    terms, ratio = ppo_clip_terms(logp, old_logp, adv.advantages[rows], cfg.clip_range,
                                  cfg.clip_range_high or None)  # fmt: skip
    if batch.ref_logp is not None and cfg.kl_place == "loss":
        kl = kl_penalty(logp, batch.ref_logp[rows], cfg.estimator)
        terms = terms + kl_coef * kl
        metrics["kl/loss"] = masked_mean(kl.detach(), mask)
    loss = aggregate_token_loss(terms, mask, cfg.loss_aggregation)
    ent = masked_mean(out.entropy, mask)
    if cfg.ent_coef:
        loss = loss - cfg.ent_coef * ent
    if out.values is not None:
        vloss, vm = clipped_value_loss(
            out.values, old.values[rows], adv.returns[rows], cfg.clip_range_vf or None, mask
        )
        loss = loss + cfg.vf_coef * vloss
        metrics["value/loss"] = vm["value_loss"]
        metrics["value/clip_fraction"] = vm["value_clip_fraction"]
    with torch.no_grad():
        eps_high = cfg.clip_range_high or cfg.clip_range
        outside = (ratio < 1 - cfg.clip_range) | (ratio > 1 + eps_high)
        metrics["policy/clip_fraction"] = masked_mean(outside.float(), mask)
        metrics["policy/ratio_mean"] = masked_mean(ratio, mask)
        metrics["policy/approx_kl"] = masked_mean(kl_penalty(old_logp, logp, "k3"), mask)
        metrics["policy/entropy"] = ent.detach()
        metrics["loss"] = loss.detach()
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Training


def train_online(
    cfg: OnlineConfig,
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | PromptExample],
    reward: Any,
    *,
    reference: nn.Module | None = None,
    run=None,
    resume: tuple[Path, dict] | None = None,
    quiet: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    sampler: Sampler | None = None,
) -> OnlineResult:
    """Optimise ``model`` online against ``reward``; the model as passed in is the reference.

    Args:
        cfg: hyperparameters.
        model: the policy (a Hugging Face causal LM); wrapped with LoRA when ``cfg.lora``.
        tokenizer: its tokenizer (needs an EOS token; a pad token is added if missing).
        prompts: prompt strings or :class:`~pavlov.llm.data.datasets.PromptExample` (chat-rendered).
        reward: anything :func:`pavlov.llm.scoring.rewards.resolve_reward` accepts: a callable
            ``(prompts, completions) -> list[float]``, ``"vader"``, a saved reward model
            directory, or weighted combinations of those.
        reference: the frozen reference policy; None uses the initial model (see module doc).
        run: a :class:`pavlov.run.Run` for metrics, checkpoints and the final ``model/``.
        resume: ``(checkpoint dir, trainer state)`` from
            :func:`~pavlov.llm.trainers.loop.load_resume`.
        quiet: no progress bar.
        callback: ``callback(step, record)`` after every batch.
        sampler: the generate and score stages replaced by one (``reward`` unused): rows that
            are played rather than scored, e.g. multi-turn episodes in an environment
            (:func:`pavlov.llm.trainers.agent.train_agent`).

    Per-step record (also ``metrics.jsonl`` / TensorBoard with a run): ``reward/mean``,
    ``reward/std``, ``reward/<term>`` per reward function, ``kl/ref`` (mean per-response KL to the
    reference, k1), ``kl/coef``, ``policy/entropy``, ``policy/clip_fraction``,
    ``policy/approx_kl``, ``policy/ratio_mean``, ``loss``, ``grad_norm``, PPO's ``value/loss``,
    ``value/explained_variance`` and ``value/clip_fraction``, ``response/length``,
    ``response/eos_rate``, and ``time/generate``, ``time/reward``, ``time/reference``,
    ``time/learn``, ``time/step`` in seconds.
    """
    from pavlov.llm.scoring.rewards import compute_rewards, resolve_reward
    from pavlov.run import distributed

    dp = distributed.current()  # data parallel inside a process group (--nproc, torchrun)
    total = None
    if dp is not None:
        check_data_parallel(cfg, dp.world_size)
        if not dp.is_main:
            run = None  # rank 0 writes the run

        def total(t: Tensor) -> Tensor:  # batch statistics over the ranks
            sums = dp.sum_array(t.detach().double().cpu().numpy())
            return torch.from_numpy(sums).to(t.device, t.dtype)

    if sampler is not None and dp is not None:
        raise ConfigError("data-parallel training with a sampler (episodes) is not supported yet")
    reward_fn = resolve_reward(reward) if sampler is None else None
    pad_id = ensure_pad_token(tokenizer)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos token: responses could never end")
    prompt_ids = tokenize_prompts(prompts, tokenizer)
    texts = prompt_texts(prompts)
    if not prompt_ids:
        raise ConfigError("no prompts")
    longest = max(len(p) for p in prompt_ids)
    check_context(model, longest + cfg.max_new_tokens, "longest prompt + max_new_tokens")
    seed_all(cfg.seed)
    model = maybe_lora(model, cfg)
    device = place(model, cfg)
    lora = is_peft_model(model)
    if reference is None and cfg.beta > 0 and not lora:  # a copy before any update
        on_cpu = next(model.parameters()).device.type == "cpu"
        if cfg.cpu.on("offload_reference") and on_cpu:
            reference = offload_copy(model)
        else:
            reference = copy.deepcopy(model).requires_grad_(False)
    value_head = None
    if cfg.algo == "ppo":
        value_head = ValueHead(model.config.hidden_size).to(device)
    trainable = nn.ModuleDict({"policy": model, **({"value": value_head} if value_head else {})})
    plan = batch_plan(replace(cfg, batch_size=cfg.prompts_per_step, grad_accum_steps=1,
                              group_by_length=False), prompt_ids)  # fmt: skip
    updates = cfg.n_epochs * cfg.num_minibatches
    optimizer = make_optimizer(trainable, cfg)
    scheduler = make_scheduler(optimizer, cfg, cfg.max_steps * updates)
    state = {"kl_coef": cfg.beta, "baseline": None, "kl_ema": None}
    step = 0
    if resume is not None:
        load_weights(model, resume[0])
        saved = resume[1]
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        step = int(saved["step"])
        state.update({k: saved["task"][k] for k in ("kl_coef", "baseline")})
        state["kl_ema"] = saved["task"].get("kl_ema")  # absent in checkpoints before it
        if value_head is not None:
            value_head.load_state_dict(saved["task"]["value_head"])
    params = [p for p in trainable.parameters() if p.requires_grad]
    saver = _Saver(model, tokenizer, value_head, state, cfg)
    if cfg.engine == "vllm":  # one engine per process, started on the first generation
        configure_vllm(VLLMOptions(gpu_memory_utilization=cfg.vllm_gpu_memory_utilization))
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, eos_token_ids=tokenizer.eos_token_id, pad_token_id=pad_id,
        fast=cfg.cpu.enabled, bf16_weights=cfg.cpu.on("bf16_sampling"),
    )  # fmt: skip
    def one_step(i: int) -> dict[str, float]:
        """Step ``i + 1``: generate, score, reference, old policy, advantages, update."""
        t_step = time.perf_counter()
        step_prompts = plan.step(i)[0]
        rows = replace(sampling, seed=cfg.seed * 1_000_003 + i)
        if dp is not None:  # this rank's block of prompts, whole groups; the batch's draws
            n = len(step_prompts) // dp.world_size
            step_prompts = step_prompts[dp.rank * n : (dp.rank + 1) * n]
            rows = replace(rows, draw_rows=cfg.batch_responses,
                           row_offset=dp.rank * n * cfg.group_size)  # fmt: skip
        idx = [j for j in step_prompts for _ in range(cfg.group_size)]
        times: dict[str, float] = {}

        t = time.perf_counter()
        batch_prompts = [texts[j] for j in idx]
        if sampler is not None:  # generate and score by playing: one stage
            with autocast(cfg.precision, device):
                played = sampler(model, idx, rows)
            rollout, completions = played.rollout, played.completions
            scores, reward_metrics = played.scores.double(), played.metrics
            times["time/generate"], times["time/reward"] = time.perf_counter() - t, 0.0
        else:
            ids, attn = to_device(left_pad([prompt_ids[j] for j in idx], pad_id), device)
            with autocast(cfg.precision, device):
                rollout = ENGINES[cfg.engine](
                    model, ids, attn, rows,
                    record=cfg.single_update and cfg.cpu.on("replay_rollout"),
                )
            times["time/generate"] = time.perf_counter() - t

            t = time.perf_counter()
            completions = _decode(tokenizer, rollout)
            scores, reward_metrics = compute_rewards(reward_fn, batch_prompts, completions)
            times["time/reward"] = time.perf_counter() - t

        t = time.perf_counter()
        ref_logp = None
        if cfg.beta > 0:
            ref_module = model if reference is None else reference
            ref_logp = _logprobs(cfg, ref_module, rollout, adapters_off=reference is None)
        batch = Batch(rollout, batch_prompts, completions, scores.float().to(device), ref_logp)
        kl_coef = state["kl_coef"]
        first = None
        if not cfg.single_update:  # the policy before its updates, no grad
            old = _old_pass(cfg, model, value_head, rollout)
        times["time/reference"] = time.perf_counter() - t

        t = time.perf_counter()
        if cfg.single_update:  # the update's own forward is the policy before it
            first = _first_forward(cfg, model, value_head, batch)
            old = first.detached()
        adv = compute_advantages(cfg, batch, old, kl_coef, state["baseline"], total)
        metrics = _floats(adv.metrics)
        metrics.update(
            _update(cfg, model, value_head, batch, old, adv, kl_coef, first, optimizer,
                    scheduler, params, i + 1, dp)
        )  # fmt: skip
        times["time/learn"] = time.perf_counter() - t
        if dp is not None:  # the ranks' mean of every metric (equal shards: the batch's mean)
            metrics = {k: v / dp.world_size for k, v in dp.sum_dict(metrics).items()}

        if cfg.target_kl and "kl/ref" in metrics:
            kl, ema, s = metrics["kl/ref"], state["kl_ema"], cfg.kl_smoothing
            state["kl_ema"] = kl if ema is None else s * ema + (1.0 - s) * kl
            state["kl_coef"] = adaptive_kl_coef(
                kl_coef, state["kl_ema"], cfg.target_kl, cfg.kl_horizon, cfg.batch_responses,
                cfg.beta_min, cfg.beta_max,
            )
        mean_score = float(scores.mean())
        if dp is not None:
            mean_score = float(dp.sum_array([mean_score])[0]) / dp.world_size
        if cfg.algo == "reinforce":
            b = state["baseline"]
            d = cfg.baseline_decay
            state["baseline"] = mean_score if b is None else d * b + (1 - d) * mean_score
        times["time/step"] = time.perf_counter() - t_step
        record = {
            "reward/mean": mean_score,
            "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
            **{k: float(v) for k, v in reward_metrics.items() if k != "reward/mean"},
            **metrics,
            "kl/coef": kl_coef,
            "response/length": float(rollout.response_lengths.float().mean()),
            "response/eos_rate": float(rollout.eos_reached.float().mean()),
            "learning_rate": optimizer.param_groups[0]["lr"],
            **times,
        }
        return record

    # No eager attention here (cpu.eager_attention): with it step 3's KL ended ~1.2 nats higher
    # at three seeds of the demo, and the step was no faster (docs/benchmarks.md, issue 17).
    loop = Loop(cfg.algo, "reward/mean", cfg.max_steps, one_step, "time/step", saver, optimizer,
                scheduler, lambda: cpu.training(cfg.cpu, model, reference, value_head))
    model.train()
    done = run_steps(cfg, loop, step, run=run, quiet=quiet, callback=callback,
                     resume_log=None if resume is None else resume[1].get("metric_log"))
    return OnlineResult(
        model=model,
        steps=done.steps,
        history=done.log.history,
        seconds=done.seconds,
        seconds_per_step=done.seconds_per_step,
    )


def check_data_parallel(cfg: OnlineConfig, world_size: int) -> None:
    """What the data-parallel online step supports today: every algorithm (groups are whole on
    a rank; batch-wide normalisations sum their statistics over the ranks), the pavlov engine,
    one minibatch, no entropy bonus, PPO with the token loss aggregation, equal shards."""
    if cfg.algo == "ppo" and cfg.loss_aggregation != "token":
        raise ConfigError("data-parallel ppo takes loss_aggregation='token' for now")
    if cfg.engine != "pavlov":
        raise ConfigError("data-parallel sampling needs engine='pavlov' (the batch's own draws)")
    if cfg.num_minibatches != 1 or cfg.ent_coef:
        raise ConfigError("data-parallel online training takes num_minibatches=1 and ent_coef=0 "
                          "for now")
    if resolve_sharding(cfg.sharding, world_size) is not None:
        raise ConfigError("sharded (fsdp, deepspeed) training is for sft, reward-model and dpo; "
                          "online training runs plain data-parallel (sharding: none)")
    if cfg.prompts_per_step % world_size:
        raise ConfigError(f"prompts_per_step ({cfg.prompts_per_step}) must be a multiple of the "
                          f"number of processes ({world_size})")


def _floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _logprobs(cfg: OnlineConfig, module: nn.Module, rollout: Rollout, adapters_off: bool):
    """``(N, T)`` no-grad log-probs of the rollout's responses under ``module``."""
    with _frozen(module, adapters_off), loaded(module), \
            autocast(cfg.precision, rollout.sequences.device):
        return score_tokens(
            module, rollout.sequences, rollout.attention_mask, rollout.prompt_length,
            temperature=cfg.temperature, chunk_size=cfg.eval_batch_size,
        ).logprobs.float()  # fmt: skip


def _old_pass(cfg, model, value_head, rollout) -> Old:
    """Log-probs (and PPO values) of the batch before its first update, no grad."""
    with _frozen(model, False), autocast(cfg.precision, rollout.sequences.device):
        out = score_tokens(
            model, rollout.sequences, rollout.attention_mask, rollout.prompt_length,
            temperature=cfg.temperature, chunk_size=cfg.eval_batch_size,
            hidden=value_head is not None,
        )  # fmt: skip
        values = None if value_head is None else value_head(out.hidden).float()
    return Old(out.logprobs.float(), values)


def _first_forward(cfg, model, value_head, batch: Batch) -> PolicyForward:
    """With one update per batch: the update's forward over the whole batch, replaying the
    rollout's tape when it has one (the tape is spent by it)."""
    tape, batch.rollout.tape = batch.rollout.tape, None
    with autocast(cfg.precision, batch.scores.device):
        return policy_forward(cfg, model, value_head, batch, torch.arange(len(batch.scores)),
                              replay=tape)  # fmt: skip


def _update(cfg, model, value_head, batch, old, adv, kl_coef, first, optimizer, scheduler,
            params, step, dp=None):
    """``n_epochs x num_minibatches`` optimizer steps on the batch; mean metrics. ``first``: the
    forward of the first (and only) minibatch when the loop already ran it. With ``dp`` each
    rank's loss is weighted by its share of the batch's loss units (tokens, or rows) and the
    gradients are summed over the ranks: the step of one process on the whole batch."""
    n = len(batch.scores)
    size = n // cfg.num_minibatches
    sums: dict[str, float] = {}
    count = 0
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    for _ in range(cfg.n_epochs):
        order = torch.randperm(n, generator=generator) if cfg.num_minibatches > 1 else None
        for k in range(cfg.num_minibatches):
            rows = torch.arange(n) if order is None else order[k * size : (k + 1) * size]
            with autocast(cfg.precision, batch.scores.device):
                out = first if first is not None else policy_forward(
                    cfg, model, value_head, batch, rows)  # fmt: skip
                first = None
                loss, metrics = minibatch_loss(cfg, out, batch, rows, old, adv, kl_coef)
            del out
            check_finite("the loss", loss.detach(), step, hint=HINT)
            if dp is None:
                loss.backward()
            else:
                mask = batch.mask[rows]
                units = float(mask.sum()) if cfg.loss_aggregation == "token" else len(rows)
                (loss * (units / float(dp.sum_array([units])[0]))).backward()
                dp.sum_grads_(params)
            grad_norm = clip_gradients(params, cfg.max_grad_norm, optimizer)  # scaled in step()
            check_finite("the gradient norm", grad_norm, step, hint=HINT)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            metrics["grad_norm"] = grad_norm
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
    return {k: v / count for k, v in sums.items()}


@dataclass
class _Saver:
    """What :func:`~pavlov.llm.trainers.loop.save_trainer_checkpoint` needs: ``save`` and
    ``state``."""

    model: nn.Module
    tokenizer: Any
    value_head: ValueHead | None
    counters: dict
    cfg: OnlineConfig

    def save(self, path: Path, final: bool) -> None:
        save_model(self.model, self.tokenizer, path, merge=final and self.cfg.merge_lora)

    def state(self) -> dict[str, Any]:
        out = dict(self.counters)
        if self.value_head is not None:
            out["value_head"] = self.value_head.state_dict()
        return out


__all__ = [
    "ALGOS",
    "OnlineConfig",
    "OnlineResult",
    "ValueHead",
    "Advantages",
    "Old",
    "check_data_parallel",
    "PolicyForward",
    "compute_advantages",
    "minibatch_loss",
    "policy_forward",
    "sequence_advantages",
    "train_online",
]
