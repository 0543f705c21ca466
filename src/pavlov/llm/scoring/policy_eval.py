"""Evaluating a language-model policy on held-out prompts: the reward model's score, a held-out
judge, KL to a reference, lengths and EOS rate, with per-sample rows for a before/after table.

The judge of the movie-review case study is VADER's compound score (Hutto & Gilbert 2014), a
lexicon-and-rules sentiment analyser in [-1, 1] that no trainer ever sees: a policy that games
the reward model without writing more positive reviews shows up as a rising reward-model score
with a flat judge score.

KL to the reference is the k1 estimate on the policy's own samples: for each sample the sum over
its response tokens of ``log pi(y_t | .) - log pi_ref(y_t | .)``, averaged over samples (an
unbiased estimate of ``KL(pi || pi_ref)`` between the sequence distributions; Schulman 2020,
"Approximating KL divergence"). The policy's log-probs are the sampler's own, of a draw at the
KL temperature without top-p; the reference's come from a forward pass under the same precision,
so a policy equal to its reference scores 0 to round-off (tested).
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pavlov.devices import module_device, to_device
from pavlov.llm.data.datasets import PromptExample, prompt_texts, tokenize_prompts
from pavlov.llm.generation.rollout import Rollout, SamplingConfig, generate, left_pad
from pavlov.llm.models.loading import ensure_pad_token
from pavlov.llm.scoring.logprobs import token_logprobs
from pavlov.llm.scoring.text import distinct_n, on_topic
from pavlov.llm.trainers.common import autocast

POSITIVE = 0.05
"""VADER's usual threshold: a compound score above it reads as positive."""

Scorer = Callable[[Sequence[str], Sequence[str]], list[float]]
"""``score(prompts, completions) -> one float per pair`` (a reward model)."""
LogprobFn = Callable[[Tensor, Tensor, int], Tensor]
"""``(sequences (B, L), attention_mask (B, L), start) -> (B, L - start)`` token log-probs."""


def module_logprobs(
    model: nn.Module,
    *,
    base: bool = False,
    precision: str = "fp32",
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> LogprobFn:
    """Token log-probs of ``softmax(logits / temperature)`` under ``model`` (no grad, eval mode);
    ``base=True`` scores a peft model with its adapters disabled, i.e. the weights the adapters
    were trained on (the reference)."""

    def score(sequences: Tensor, attention_mask: Tensor, start: int) -> Tensor:
        was_training = model.training
        model.eval()
        adapters = model.disable_adapter() if base else contextlib.nullcontext()
        device = module_device(model)  # the model's; the log-probs come back to the input's
        try:
            with torch.no_grad(), autocast(precision, device), adapters:
                return token_logprobs(
                    model, sequences.to(device), attention_mask.to(device), start,
                    chunk_size=chunk_size, temperature=temperature,
                ).float().to(sequences.device)  # fmt: skip
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
    """Sum over the response tokens of ``log pi - log pi_ref`` (0 without a reference); on a
    sample at the KL temperature, which is this one unless the evaluation samples otherwise."""
    tokens: int
    """Response tokens, EOS included."""
    eos: bool
    """The completion ended with EOS (false: cut at ``max_new_tokens``)."""
    nll: float = 0.0
    """Sum of ``-log p_fluency`` over the response's text tokens (EOS excluded; 0 without a
    fluency model)."""
    on_topic: bool | None = None
    """The completion uses one of the prompt's topic words (None: no topic words given)."""


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
    prompts: Sequence[str | PromptExample],
    *,
    reward: Scorer,
    judge: Scorer | None = None,
    reference: LogprobFn | None = None,
    fluency: LogprobFn | None = None,
    topics: Sequence[frozenset[str]] | None = None,
    labels: Sequence[str] | None = None,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    kl_temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    precision: str = "fp32",
) -> PolicyEval:
    """Sample ``samples_per_prompt`` completions per prompt and score them.

    Batch ``b`` is sampled with seed ``seed + b``: two policies evaluated with the same
    arguments see the same prompts in the same order and the same random numbers (common random
    numbers, less noise in a before/after difference).

    The completions are sampled as a reader would see them (``temperature``, ``top_p``). KL to
    the reference compares the two models' distributions at ``kl_temperature`` (the training
    sampling's), so it is estimated on samples drawn that way: the same samples when the
    reader's sampling is that one, else on a second draw of each batch (same seeds, no top-p).
    Either way the policy's log-probs are the sampler's own and only the reference runs a forward.

    Args:
        model: the policy (any causal LM, or a peft wrapper of one).
        tokenizer: its tokenizer (eos ends a completion; eos is reused as pad when missing).
        prompts: plain-text prompts (tokenized with the tokenizer's special tokens) or
            chat-rendered :class:`~pavlov.llm.data.datasets.PromptExample` (without).
        reward: the reward model, ``score(prompts, completions)``.
        judge: the held-out judge, ``judge(prompts, completions)``; default VADER's compound
            score (:func:`pavlov.llm.scoring.rewards.vader_reward`).
        reference: log-probs under the reference at ``kl_temperature`` (:func:`module_logprobs`);
            None: KL is 0 (the policy is its own reference).
        fluency: log-probs under a fixed model for the fluency NLL (:func:`module_logprobs` of
            the untouched base model); None: not measured.
        topics: topic words per prompt (lowercase) for the on-topic share; None: not measured.
        labels: a short name per prompt for the sample rows (default: the prompt).
    """
    from pavlov.llm.scoring.rewards import vader_reward

    judge = judge if judge is not None else vader_reward()
    if topics is not None and len(topics) != len(prompts):
        raise ValueError(f"topics has {len(topics)} entries for {len(prompts)} prompts")
    pad_id = ensure_pad_token(tokenizer)
    encoded = tokenize_prompts(prompts, tokenizer)
    prompts = prompt_texts(prompts)
    labels = list(labels) if labels is not None else list(prompts)
    order = [i for _ in range(samples_per_prompt) for i in range(len(prompts))]
    eos = tokenizer.eos_token_id
    same_draw = temperature == kl_temperature and top_p == 1.0
    device = module_device(model)

    def sample(ids: Tensor, mask: Tensor, b: int, t: float, p: float) -> Rollout:
        sampling = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=t, top_p=p, pad_token_id=pad_id,
            eos_token_ids=() if eos is None else eos, seed=seed + b,
        )  # fmt: skip
        with autocast(precision, device):
            return generate(model, ids, mask, sampling)

    rows: list[Sample] = []
    for b, first in enumerate(range(0, len(order), batch_size)):
        index = order[first : first + batch_size]
        ids, mask = to_device(left_pad([encoded[i] for i in index], pad_id), device)
        out = sample(ids, mask, b, temperature, top_p)
        kl = torch.zeros(len(index))
        if reference is not None:
            # The sampler's log-probs are the policy's at kl_temperature: (B, T), 0 past each
            # response (a forward of the policy would recompute them, ~7 s of the demo).
            draw = out if same_draw else sample(ids, mask, b, kl_temperature, 1.0)
            ref = reference(draw.sequences, draw.attention_mask, draw.prompt_length)
            kl = ((draw.logprobs - ref) * draw.response_mask).sum(-1).cpu()  # (B,)
        nll = torch.zeros(len(index))
        text_tokens = (out.response_lengths - out.eos_reached.long()).cpu()  # (B,) EOS excluded
        if fluency is not None:
            columns = torch.arange(out.responses.shape[1])
            text = columns[None, :] < text_tokens[:, None]  # (B, T)
            logp = fluency(out.sequences, out.attention_mask, out.prompt_length).cpu()
            nll = -(logp * text).sum(-1)
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
                    labels[i], prompts[i], texts[r], float(scores[r]), float(judged[r]),
                    float(kl[r]), int(out.response_lengths[r]), bool(out.eos_reached[r]),
                    nll=float(nll[r]),
                    on_topic=None if topics is None else on_topic(texts[r], topics[i]),
                )  # fmt: skip
            )
    metrics = summarize(rows)
    if fluency is not None:
        counted = sum(s.tokens - s.eos for s in rows)
        metrics["fluency/nll"] = sum(s.nll for s in rows) / max(1, counted)
    return PolicyEval(metrics, rows)


def summarize(samples: Sequence[Sample]) -> dict[str, float]:
    """Means (and standard errors of the two scores) over samples, distinct-2 over their texts
    and, where the samples know it, the on-topic share."""

    def stderr(xs: list[float]) -> float:
        return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0

    reward = [s.reward for s in samples]
    judge = [s.judge for s in samples]
    metrics = {
        "reward/mean": statistics.fmean(reward),
        "reward/stderr": stderr(reward),
        "judge/mean": statistics.fmean(judge),
        "judge/stderr": stderr(judge),
        "judge/positive_fraction": statistics.fmean(float(j > POSITIVE) for j in judge),
        "kl/ref": statistics.fmean(s.kl for s in samples),
        "response/length": statistics.fmean(s.tokens for s in samples),
        "response/eos_rate": statistics.fmean(float(s.eos) for s in samples),
        "text/distinct2": distinct_n([s.completion for s in samples], 2),
        "samples": float(len(samples)),
    }
    topical = [s.on_topic for s in samples if s.on_topic is not None]
    if topical:
        metrics["topic/on_topic"] = statistics.fmean(float(t) for t in topical)
    return metrics
