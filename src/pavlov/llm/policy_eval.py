"""Evaluating a language-model policy on held-out prompts: the reward model's score, a held-out
judge, KL to a reference, lengths and EOS rate, with per-sample rows for a before/after table.

The judge of the movie-review case study is VADER's compound score (Hutto & Gilbert 2014), a
lexicon-and-rules sentiment analyser in [-1, 1] that no trainer ever sees: a policy that games
the reward model without writing more positive reviews shows up as a rising reward-model score
with a flat judge score.

KL to the reference is the k1 estimate on the policy's own samples: for each sample the sum over
its response tokens of ``log pi(y_t | .) - log pi_ref(y_t | .)``, averaged over samples (an
unbiased estimate of ``KL(pi || pi_ref)`` between the sequence distributions; Schulman 2020,
"Approximating KL divergence"). Both log-probs are recomputed with
:func:`pavlov.llm.scoring.token_logprobs` under the same precision, so a policy equal to its
reference scores exactly 0.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pavlov.llm.models import ensure_pad_token
from pavlov.llm.rollout import SamplingConfig, generate, left_pad
from pavlov.llm.scoring import token_logprobs
from pavlov.llm.trainers.common import autocast

POSITIVE = 0.05
"""VADER's usual threshold: a compound score above it reads as positive."""

Scorer = Callable[[Sequence[str], Sequence[str]], list[float]]
"""``score(prompts, completions) -> one float per pair`` (a reward model)."""
LogprobFn = Callable[[Tensor, Tensor, int], Tensor]
"""``(sequences (B, L), attention_mask (B, L), start) -> (B, L - start)`` token log-probs."""


def module_logprobs(
    model: nn.Module, *, base: bool = False, precision: str = "fp32", chunk_size: int | None = None
) -> LogprobFn:
    """Token log-probs under ``model`` (no grad, eval mode); ``base=True`` scores a peft model
    with its adapters disabled, i.e. the weights the adapters were trained on (the reference)."""

    def score(sequences: Tensor, attention_mask: Tensor, start: int) -> Tensor:
        was_training = model.training
        model.eval()
        adapters = model.disable_adapter() if base else contextlib.nullcontext()
        try:
            with torch.no_grad(), autocast(precision), adapters:
                return token_logprobs(
                    model, sequences, attention_mask, start, chunk_size=chunk_size
                ).float()
        finally:
            model.train(was_training)

    return score


@dataclass
class Sample:
    """One sampled completion and its scores."""

    label: str
    """What the prompt is about (the movie title)."""
    prompt: str
    completion: str
    reward: float
    """Reward-model score of ``prompt + completion``."""
    judge: float
    """Held-out judge score of the completion."""
    kl: float
    """Sum over the response tokens of ``log pi - log pi_ref`` (0 without a reference)."""
    tokens: int
    """Response tokens, EOS included."""
    eos: bool
    """The completion ended with EOS (false: cut at ``max_new_tokens``)."""


@dataclass
class PolicyEval:
    metrics: dict[str, float]
    """``reward/mean``, ``judge/mean``, ``judge/positive_fraction``, ``kl/ref``, ... (see
    :func:`summarize`)."""
    samples: list[Sample]
    """Sample ``j`` of prompt ``i`` is ``samples[j * n_prompts + i]``: the first ``n_prompts``
    rows hold one sample of every prompt."""


def evaluate_policy(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    reward: Scorer,
    judge: Scorer | None = None,
    reference: LogprobFn | None = None,
    labels: Sequence[str] | None = None,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    precision: str = "fp32",
) -> PolicyEval:
    """Sample ``samples_per_prompt`` completions per prompt and score them.

    Batch ``b`` is sampled with seed ``seed + b``: two policies evaluated with the same
    arguments see the same prompts in the same order and the same random numbers (common random
    numbers, less noise in a before/after difference).

    Args:
        model: the policy (any causal LM, or a peft wrapper of one).
        tokenizer: its tokenizer (eos ends a completion; eos is reused as pad when missing).
        prompts: plain-text prompts, tokenized as :func:`pavlov.llm.data.tokenize_sft` does.
        reward: the reward model, ``score(prompts, completions)``.
        judge: the held-out judge, ``judge(prompts, completions)``; default VADER's compound
            score (:func:`pavlov.llm.rewards.vader_reward`).
        reference: log-probs under the reference (:func:`module_logprobs`); None: KL is 0 (the
            policy is its own reference).
        labels: a short name per prompt for the sample rows (default: the prompt).
    """
    from pavlov.llm.rewards import vader_reward

    judge = judge if judge is not None else vader_reward()
    pad_id = ensure_pad_token(tokenizer)
    labels = list(labels) if labels is not None else list(prompts)
    order = [i for _ in range(samples_per_prompt) for i in range(len(prompts))]
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    eos = tokenizer.eos_token_id
    policy = module_logprobs(model, precision=precision, chunk_size=batch_size)
    rows: list[Sample] = []
    for b, first in enumerate(range(0, len(order), batch_size)):
        index = order[first : first + batch_size]
        ids, mask = left_pad([encoded[i] for i in index], pad_id)
        sampling = SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_token_ids=() if eos is None else eos,
            pad_token_id=pad_id,
            seed=seed + b,
        )
        with autocast(precision):
            out = generate(model, ids, mask, sampling)
        kl = torch.zeros(len(index))
        if reference is not None:
            logp = policy(out.sequences, out.attention_mask, out.prompt_length)  # (B, T)
            ref = reference(out.sequences, out.attention_mask, out.prompt_length)
            kl = ((logp - ref) * out.response_mask).sum(-1)  # (B,)
        texts = [
            tokenizer.decode(
                out.responses[r, : int(out.response_lengths[r])], skip_special_tokens=True
            )
            for r in range(len(index))
        ]
        batch_prompts = [prompts[i] for i in index]
        scores, judged = reward(batch_prompts, texts), judge(batch_prompts, texts)
        for r, i in enumerate(index):
            rows.append(
                Sample(
                    labels[i],
                    prompts[i],
                    texts[r],
                    float(scores[r]),
                    float(judged[r]),
                    float(kl[r]),
                    int(out.response_lengths[r]),
                    bool(out.eos_reached[r]),
                )
            )
    return PolicyEval(summarize(rows), rows)


def summarize(samples: Sequence[Sample]) -> dict[str, float]:
    """Means (and standard errors of the two scores) over samples."""

    def stderr(xs: list[float]) -> float:
        return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0

    reward = [s.reward for s in samples]
    judge = [s.judge for s in samples]
    return {
        "reward/mean": statistics.fmean(reward),
        "reward/stderr": stderr(reward),
        "judge/mean": statistics.fmean(judge),
        "judge/stderr": stderr(judge),
        "judge/positive_fraction": statistics.fmean(float(j > POSITIVE) for j in judge),
        "kl/ref": statistics.fmean(s.kl for s in samples),
        "response/length": statistics.fmean(s.tokens for s in samples),
        "response/eos_rate": statistics.fmean(float(s.eos) for s in samples),
        "samples": float(len(samples)),
    }
