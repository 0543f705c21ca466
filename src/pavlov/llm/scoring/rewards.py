"""Reward functions for the online RL trainers (PPO-RLHF, GRPO, RLOO).

A reward function is any callable ``fn(prompts, completions) -> B floats`` (a sequence, a 1-D
tensor or a 1-D numpy array), where ``prompts`` and ``completions`` are two lists of ``B``
strings. This module provides

* :func:`vader_reward`: VADER's compound sentiment of each completion, in ``[-1, 1]`` (also the
  held-out judge of the sentiment case study);
* :func:`reward_model_fn`: a saved pavlov reward model
  (:func:`~pavlov.llm.trainers.reward_model.load_reward_model`) as a named reward function;
* :func:`relevance_reward`: how much each completion is about its prompt's reference text (the
  cosine of their all-MiniLM-L6-v2 sentence embeddings, in ``[-1, 1]``);
* :func:`fluency_reward`: the mean per-token log-likelihood of each completion, given its
  prompt, under a fixed language model (the untouched base model of the case study);
* :func:`repetition_reward`: minus the share of each completion's word bigrams that repeat an
  earlier one of the same completion (degenerate loops);
* :func:`weighted_sum`: ``sum_i w_i * f_i``, remembering each term's values of its last call;
* :func:`resolve_reward`: what a user passes (a callable, ``"vader"``, a reward-model
  directory, a list or ``{spec: weight}`` dict of those) -> one reward function;
* :func:`compute_rewards`: call one and check the result. A function that raises, returns the
  wrong number of values, a non-number, NaN or inf raises :class:`RewardError` naming it, so no
  update is ever made from bad rewards.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor

from pavlov.errors import ConfigError, PavlovError

__all__ = [
    "NamedReward",
    "RewardError",
    "RewardFn",
    "WeightedSum",
    "compute_rewards",
    "fluency_reward",
    "resolve_reward",
    "reward_model_fn",
    "relevance_reward",
    "repetition_reward",
    "reward_name",
    "vader_reward",
    "weighted_sum",
]

RewardValues: TypeAlias = Sequence[float] | Tensor | np.ndarray
RewardFn: TypeAlias = Callable[[list[str], list[str]], RewardValues]
"""``fn(prompts, completions) -> rewards``: two lists of ``B`` strings -> ``B`` numbers."""

VADER_FIELDS = ("compound", "pos", "neu", "neg")


class RewardError(PavlovError):
    """A reward function raised or returned something other than one finite number per
    completion. The message names the function; training stops before any update."""


@dataclass(frozen=True)
class NamedReward:
    """A reward function with a display name (error messages, ``reward/<name>`` metrics)."""

    fn: RewardFn
    name: str

    def __call__(self, prompts: list[str], completions: list[str]) -> RewardValues:
        return self.fn(prompts, completions)


def reward_name(fn: Any) -> str:
    """A readable name: ``fn.name`` if set, else the function's qualified name without its
    ``<locals>`` prefix (``"length"``, ``"Judge.score"``, ``"<lambda>"``), else the class name."""
    name = getattr(fn, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(qualname, str):
        return qualname.rsplit("<locals>.", 1)[-1]
    return type(fn).__name__


# ---------------------------------------------------------------------------------------------
# Reward functions


@functools.cache
def _vader_analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()  # reads its lexicon file once (~50 ms)


def vader_reward(field: str = "compound") -> NamedReward:
    """VADER sentiment of each completion (the prompt is ignored): ``polarity_scores(text)
    [field]``; ``"compound"`` is in ``[-1, 1]``, the others (shares of ``pos``/``neu``/``neg``
    words) in ``[0, 1]``. Named ``"vader"`` (``"vader_<field>"`` for the others)."""
    if field not in VADER_FIELDS:
        raise ConfigError(f"vader field must be one of {', '.join(VADER_FIELDS)}, got {field!r}")
    analyzer = _vader_analyzer()

    def vader(prompts: list[str], completions: list[str]) -> list[float]:
        return [analyzer.polarity_scores(text)[field] for text in completions]

    return NamedReward(vader, "vader" if field == "compound" else f"vader_{field}")


def relevance_reward(
    references: Mapping[str, str], encoder: Any = None, tokenizer: Any = None, *,
    cap: float = 1.0,
) -> NamedReward:
    """How much each completion is about what its prompt asks about: the cosine between the
    sentence embeddings of the completion and of ``references[prompt]``, in ``[-1, 1]``.

    A preference-trained reward model rewards what its pairs differ in (in the case study:
    sentiment) and nothing else, so a policy can drift to praise that would fit any film. Adding
    this term (:func:`weighted_sum`) pays for staying on the subject, as multi-objective RLHF
    adds one reward per goal (Llama 2's helpfulness and safety models; Touvron et al. 2023).
    With the embedded all-MiniLM-L6-v2 (mean-pooled, L2-normed: :func:`pavlov.llm.models.
    loading.embed`), against "Catch Me If You Can. An FBI agent tracks down ... a young con
    artist ...": "A wonderful film about a con artist who impersonates a pilot." 0.66, "Catch
    Me If You Can is a wonderful film." 0.52, "A wonderful film." 0.25, "A great addition to
    any holiday decor." -0.01.

    Args:
        references: prompt -> the text its completions should be about (embedded once each).
        encoder, tokenizer: a sentence encoder (``AutoModel``) and its tokenizer; default the
            embedded all-MiniLM-L6-v2 (:func:`pavlov.llm.models.loading.load_encoder`).
        cap: pay the cosine up to this value, ``min(cos, cap)``; 1: uncapped. A cap below
            what naming the film and its plot earns (~0.5-0.7 above) pays for being about the
            film without paying more for retelling its synopsis than for praising it.

    Named ``"relevance"``. A prompt without a reference raises :class:`RewardError`.
    """
    from pavlov.llm.models.loading import embed, load_encoder

    if encoder is None:
        encoder, tokenizer = load_encoder(None)
    encoder.eval().requires_grad_(False)
    cache: dict[str, Tensor] = {}

    def relevance(prompts: list[str], completions: list[str]) -> list[float]:
        missing = sorted({p for p in prompts if p not in cache})
        unknown = [p for p in missing if p not in references]
        if unknown:
            raise RewardError(f"relevance: no reference text for prompt {unknown[0]!r}")
        with torch.inference_mode():
            if missing:
                cache.update(zip(missing, embed(encoder, tokenizer,
                                                [references[p] for p in missing]), strict=True))
            e = embed(encoder, tokenizer, completions)  # (B, H), unit rows
            refs = torch.stack([cache[p] for p in prompts])  # (B, H)
            cos = (e * refs).sum(-1).clamp(-1.0, 1.0).tolist()
            return [min(c, cap) for c in cos]  # the cap exactly, not its float32 rounding

    return NamedReward(relevance, "relevance")


def fluency_reward(
    model: Any,
    tokenizer: Any,
    *,
    precision: str = "fp32",
    batch_size: int = 32,
    empty: float = -10.0,
    floor: float | None = None,
    surprise: float | None = None,
) -> NamedReward:
    """How natural each completion reads to a fixed language model: the mean log-probability
    per token of the completion given its prompt, ``f = (1/T) sum_t log p(y_t | x, y_<t)``, in
    nats (<= 0; SmolLM2-135M gives the case study's reviews about -2.7); with a ``floor``, only
    the shortfall below it, ``min(0, f - floor)`` (a hinge: text at least that natural earns
    the same 0, so the term stops pulling towards bland, likely text once it is reached); with
    ``surprise`` (tau, nats), only each token's surprisal beyond tau,
    ``-(1/T) sum_t max(0, -log p(y_t | x, y_<t) - tau)``: a token the model finds plausible
    costs nothing, a very unlikely one (a praise word where the model expects none, a broken
    word) costs what it exceeds tau by, so the term charges for the outliers without pulling
    the whole text towards the model's own phrasing.

    Reward models and KL penalties to a fine-tuned reference leave the policy free to drift to
    text the pretrained model finds odd (stacked adjectives, clipped sentences); this term pays
    for staying in the pretrained model's language, as InstructGPT's pretraining mix does with
    a loss (Ouyang et al. 2022, PPO-ptx). It is the negative of the case study's fluency NLL, so
    with it in the reward that NLL is a target, not an independent check: distinct-2 and the
    judge then guard against bland, repetitive text the model finds likely.

    Args:
        model: a causal LM, used frozen (no grad, eval mode; never trained here).
        tokenizer: its tokenizer; a completion's tokens are ``tokenizer(completion)`` after
            ``tokenizer(prompt)`` (special tokens only on the prompt).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`~pavlov.llm.trainers.common.
            autocast` on the model's device).
        batch_size: sequences per forward pass.
        empty: the score ``f`` of an empty completion (no token to average; far below any text
            so that stopping at once never pays).
        floor: None: the score is ``f``; a level in nats (e.g. the mean ``f`` of the model
            being fine-tuned, before it is: :func:`pavlov.llm.case_study.steps.fluency_level`):
            the score is ``min(0, f - floor)``.
        surprise: None, or tau > 0 in nats: the score is minus the mean, over the
            completion's tokens, of each token's surprisal beyond tau (not with ``floor``).

    Named ``"fluency"``.
    """
    from pavlov.devices import module_device
    from pavlov.llm.models.loading import pad_right
    from pavlov.llm.scoring.logprobs import sequence_logprob, token_logprobs
    from pavlov.llm.trainers.common import autocast

    if floor is not None and surprise is not None:
        raise ValueError("fluency_reward: floor and surprise are alternatives; give one")
    if surprise is not None and not surprise > 0:
        raise ValueError(f"fluency_reward: surprise must be > 0 nats, got {surprise!r}")
    model.eval().requires_grad_(False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def fluency(prompts: list[str], completions: list[str]) -> list[float]:
        device = module_device(model)
        out = [float(empty)] * len(prompts)
        rows = [i for i, c in enumerate(completions) if c]
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo : lo + batch_size]
            pairs = [(tokenizer(prompts[i])["input_ids"],
                      tokenizer(completions[i], add_special_tokens=False)["input_ids"])
                     for i in chunk]  # fmt: skip
            # right-padded prompt+completion rows and their completion mask (as DPO's batches)
            ids, attn, _ = pad_right([p + c for p, c in pairs], pad)
            resp = pad_right([[0] * len(p) + [1] * len(c) for p, c in pairs], 0)[0].bool()
            ids, attn, resp = ids.to(device), attn.to(device), resp.to(device)
            with torch.inference_mode(), autocast(precision, device):
                if surprise is None:
                    mean = sequence_logprob(model, ids, attn, resp, average=True)  # (b,)
                else:  # (b, T) log-probs, 0 outside the completion: no excess there
                    logp = token_logprobs(model, ids, attn, resp).float()
                    excess = (-logp - surprise).clamp_(min=0.0).sum(-1)  # (b,)
                    mean = -excess / torch.tensor([max(len(c), 1) for _, c in pairs],
                                                  device=device)  # fmt: skip
            for r, i in enumerate(chunk):
                out[i] = float(mean[r]) if pairs[r][1] else float(empty)
        return out if floor is None else [min(0.0, f - floor) for f in out]

    return NamedReward(fluency, "fluency")


def repetition_reward(n: int = 2) -> NamedReward:
    """How much each completion repeats itself: minus the share of its word ``n``-grams that
    repeat an earlier ``n``-gram of the same completion, ``-(1 - distinct_n(completion))``, in
    ``[-1, 0]`` (words as :func:`~pavlov.llm.data.datasets.words` splits them; a completion with
    fewer than ``n`` words scores 0). "A gripping, moving drama." scores 0; "Harvard Man:
    Harvard Man: Harvard Man: Harvard Man:" -0.71 (2 distinct bigrams of 7); loops of one
    phrase tend to -1.

    Neither a reward model nor a KL penalty charges much for such loops (the case study's reward
    model scores a title repeated eight times between -1.4 and 0), and the fluency term does
    not either: a repeated phrase is easy for the base model to predict. This is distinct-n
    (Li et al. 2016) inside one text, the guard the case study reads over all reviews. Named
    ``"repetition"``."""
    if n < 1:
        raise ValueError(f"repetition_reward: n must be >= 1, got {n!r}")
    from pavlov.llm.data.datasets import words
    from pavlov.llm.scoring.text import distinct_n

    def repetition(prompts: list[str], completions: list[str]) -> list[float]:
        return [distinct_n([text], n) - 1.0 if len(words(text)) >= n else 0.0
                for text in completions]  # fmt: skip

    return NamedReward(repetition, "repetition")


def reward_model_fn(
    path_or_scorer: str | Path | Callable, *, batch_size: int = 16, name: str | None = None
) -> NamedReward:
    """A pavlov reward model as a reward function.

    Args:
        path_or_scorer: a directory saved by
            :func:`~pavlov.llm.trainers.reward_model.save_reward_model` (or a run directory
            holding one in ``model/``), or an already loaded
            :class:`~pavlov.llm.trainers.reward_model.RewardScorer`.
        batch_size: sequences per forward pass when loading from a path.
        name: display name; default the directory's name (the run's for ``<run>/model``).
    """
    if isinstance(path_or_scorer, str | Path):
        from pavlov.llm.trainers.reward_model import load_reward_model

        scorer = load_reward_model(path_or_scorer, batch_size=batch_size)
    else:
        scorer = path_or_scorer
    if name is None:
        path = getattr(scorer, "config", {}).get("path")
        name = _dir_name(Path(path)) if path else "reward_model"
    return NamedReward(scorer, name)


def _dir_name(path: Path) -> str:
    path = path.resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name


class WeightedSum:
    """``r = sum_i w_i * f_i(prompts, completions)``, each term checked as in
    :func:`compute_rewards`. After a call, :attr:`last_values` maps each term's name to its
    unweighted values ``(B,)`` float32 (for ``reward/<name>`` metrics). A weight of 0 logs a
    term without training on it (e.g. a held-out judge)."""

    def __init__(self, terms: Sequence[tuple[str, RewardFn, float]]) -> None:
        if not terms:
            raise ConfigError("a weighted sum of rewards needs at least one term")
        self.terms: list[tuple[str, RewardFn, float]] = []
        for name, fn, weight in terms:
            if not callable(fn):
                raise ConfigError(f"reward term {name!r} is not callable: {fn!r}")
            if (
                isinstance(weight, bool)
                or not isinstance(weight, Real)
                or not math.isfinite(weight)
            ):
                raise ConfigError(
                    f"weight of reward {name!r} must be a finite number, got {weight!r}"
                )
            self.terms.append((_unique(name, {n for n, _, _ in self.terms}), fn, float(weight)))
        self.name = " + ".join(f"{w:g}*{n}" for n, _, w in self.terms)
        self.last_values: dict[str, Tensor] = {}

    def __call__(self, prompts: list[str], completions: list[str]) -> Tensor:
        """Rewards ``(B,)`` float32; raises :class:`RewardError` naming a failing term."""
        values = {name: _call_checked(fn, name, prompts, completions) for name, fn, _ in self.terms}
        total = sum(w * values[name] for name, _, w in self.terms)  # (B,) float64
        self.last_values = {name: v.float() for name, v in values.items()}
        return total.float()

    def __repr__(self) -> str:
        return f"WeightedSum({self.name})"


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    return out


def weighted_sum(
    terms: Sequence[tuple[RewardFn, float]] | Mapping[str, tuple[RewardFn, float]],
) -> WeightedSum:
    """``sum_i w_i * f_i`` from ``[(fn, weight), ...]`` (terms named by :func:`reward_name`,
    repeats get ``_2``, ``_3``) or ``{name: (fn, weight)}``."""
    if isinstance(terms, Mapping):
        return WeightedSum([(name, fn, w) for name, (fn, w) in terms.items()])
    return WeightedSum([(reward_name(fn), fn, w) for fn, w in terms])


# ---------------------------------------------------------------------------------------------
# From user input


RewardSpec: TypeAlias = RewardFn | str | Path | Sequence[Any] | Mapping[Any, float]


def resolve_reward(spec: RewardSpec) -> RewardFn:
    """One reward function from what a user passes.

    * a callable: itself (a loaded ``RewardScorer`` is wrapped by :func:`reward_model_fn`);
    * ``"vader"``: :func:`vader_reward`;
    * a path (``str`` or ``Path``) to a saved pavlov reward model (holding ``reward_config.json``,
      or a run directory with it in ``model/``): :func:`reward_model_fn`;
    * a list of those (weights 1) or of ``(spec, weight)`` pairs, or a dict ``{spec: weight}``:
      their :class:`WeightedSum` (a single term of weight 1 is returned as is).

    Anything else raises :class:`~pavlov.errors.ConfigError` saying what was wrong.
    """
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        pairs = [spec] if _is_pair(spec) else [x if _is_pair(x) else (x, 1.0) for x in spec]
    else:
        return _resolve_one(spec)
    if not pairs:
        raise ConfigError("no reward function given (empty list)")
    terms = [(_resolve_one(s), w) for s, w in pairs]
    if len(terms) == 1 and terms[0][1] == 1:
        return terms[0][0]
    return weighted_sum(terms)


def _is_pair(x: Any) -> bool:
    return (
        isinstance(x, tuple | list) and len(x) == 2
        and isinstance(x[1], Real) and not isinstance(x[1], bool)
        and not isinstance(x[0], Real)
    )  # fmt: skip


def _resolve_one(spec: Any) -> RewardFn:
    from pavlov.llm.trainers.reward_model import RewardScorer, read_reward_config

    if isinstance(spec, RewardScorer):
        return reward_model_fn(spec)
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec.lower() == "vader":
        return vader_reward()
    if not isinstance(spec, str | Path):
        raise ConfigError(
            "a reward must be a callable, 'vader', a reward-model directory, or a list/dict of "
            f"those; got {type(spec).__name__} {spec!r}"
        )
    if not Path(spec).exists():
        raise ConfigError(
            f"unknown reward {str(spec)!r}: not 'vader' and no such reward-model directory"
        )
    try:
        read_reward_config(spec)
    except PavlovError as err:
        raise ConfigError(f"reward {str(spec)!r}: {err}") from None
    return reward_model_fn(spec)


# ---------------------------------------------------------------------------------------------
# Calling and checking


def compute_rewards(
    fn: RewardFn, prompts: Sequence[str], completions: Sequence[str]
) -> tuple[Tensor, dict[str, float]]:
    """Call ``fn`` on ``B`` prompt/completion pairs and check its result.

    Returns:
        ``(rewards, metrics)``: rewards ``(B,)`` float32 on the CPU; metrics
        ``{"reward/<name>": mean}`` for ``fn`` or, for a :class:`WeightedSum`, for each of its
        terms (unweighted).

    Raises:
        RewardError: ``fn`` (or a term) raised, or did not return ``B`` finite numbers; the
            message names it, e.g. ``reward function 'vader' returned nan for completions[5]``.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    name = reward_name(fn)
    values = _call_checked(fn, name, list(prompts), list(completions))  # (B,) float64
    terms = fn.last_values if isinstance(fn, WeightedSum) else {name: values}
    metrics = {f"reward/{k}": float(v.mean()) for k, v in terms.items()} if len(values) else {}
    return values.float(), metrics


def _call_checked(fn: RewardFn, name: str, prompts: list[str], completions: list[str]) -> Tensor:
    """``fn(prompts, completions)`` as a checked ``(B,)`` float64 CPU tensor."""
    who = f"reward function {name!r}"
    try:
        out = fn(list(prompts), list(completions))
    except RewardError:
        raise  # a weighted sum's term, already named
    except Exception as err:
        detail = str(err).strip().splitlines()
        raise RewardError(
            f"{who} raised {type(err).__name__}{': ' + detail[0] if detail else ''}"
        ) from err
    values = _as_tensor(out, who, len(completions))
    finite = torch.isfinite(values.float())  # float32 overflow counts as inf
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        text = completions[i] if len(completions[i]) <= 40 else completions[i][:40] + "..."
        raise RewardError(f"{who} returned {values[i].item()} for completions[{i}] ({text!r})")
    return values


def _as_tensor(out: Any, who: str, n: int) -> Tensor:
    """``out`` (sequence of numbers, tensor or array) as ``(n,)`` float64 CPU, or RewardError."""
    if isinstance(out, np.ndarray) and out.dtype.kind in "biuf":
        out = torch.tensor(out)
    if isinstance(out, Tensor):
        if out.dtype.is_complex:
            raise RewardError(f"{who} returned a {out.dtype} tensor; rewards must be real")
        if out.shape != (n,):
            raise RewardError(
                f"{who} returned a tensor of shape {tuple(out.shape)} for {n} completions; "
                f"expected ({n},)"
            )
        return out.detach().to("cpu", torch.float64)
    if isinstance(out, str | bytes | Mapping) or not isinstance(out, Iterable):
        raise RewardError(f"{who} returned a {type(out).__name__}, not a list of {n} numbers")
    items = list(out)
    if len(items) != n:
        raise RewardError(f"{who} returned {len(items)} values for {n} completions")
    return torch.tensor([_number(x, who, i) for i, x in enumerate(items)], dtype=torch.float64)


def _number(x: Any, who: str, i: int) -> float:
    if not isinstance(x, str | bytes) and x is not None:
        try:
            return float(x)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise RewardError(f"{who} returned {x!r} for completions[{i}], not a number")
