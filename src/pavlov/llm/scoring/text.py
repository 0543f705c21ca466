"""Word statistics of generated text: distinct-n and the on-topic test. The held-out evaluation
(:mod:`pavlov.llm.scoring.policy_eval`: distinct-2 over all reviews, the on-topic share) and the
rewards (:func:`pavlov.llm.scoring.rewards.repetition_reward`: distinct-n inside one review) read
them from here, so neither imports the other. Words as
:func:`pavlov.llm.data.datasets.words` splits them."""

from __future__ import annotations

from collections.abc import Sequence

from pavlov.llm.data.datasets import words


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all n-grams of all ``texts``
    (n-grams do not cross texts); 0 when there are none. 1: no n-gram repeats anywhere; a
    policy that writes one phrase again and again tends to 1 / len(texts)."""
    grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def on_topic(text: str, topic: frozenset[str]) -> bool:
    """Whether ``text`` uses one of the ``topic`` words (lowercase, as :func:`words` splits)."""
    return not topic.isdisjoint(words(text))
