"""How a data-parallel step deals its examples to the ranks: token-balanced shares."""

from __future__ import annotations

import itertools
import random

import pytest

from pavlov.run.distributed import DataParallel, _balanced_cuts


def _largest_run(longest: list[int], cuts: list[int]) -> int:
    return max([(b - a) * longest[a] for a, b in itertools.pairwise(cuts) if b > a] or [0])


def test_the_cuts_minimise_the_largest_padded_run_as_an_exhaustive_search_does():
    rng = random.Random(0)
    for _ in range(400):
        n, parts = rng.randint(0, 9), rng.randint(1, 4)
        longest = sorted((rng.randint(0, 30) for _ in range(n)), reverse=True)
        cuts = _balanced_cuts(longest, parts)
        assert len(cuts) == parts + 1 and cuts[0] == 0 and cuts[-1] == n
        assert cuts == sorted(cuts)
        best = min(
            _largest_run(longest, [0, *inner, n])
            for inner in itertools.combinations_with_replacement(range(n + 1), parts - 1)
        )
        assert _largest_run(longest, cuts) == best, (longest, parts, cuts)


def test_the_rank_with_the_longest_examples_takes_fewer_of_them():
    # 8 padded SFT sequences on 2 ranks: every other one would pad to 58 and to 46 tokens
    # (4 x 58 = 232 against 184); balanced, rank 0 takes 3 x 58 = 174 and rank 1 5 x 30 = 150
    indices = [0, 1, 2, 3, 4, 5, 6, 7]
    lengths = [30, 58, 21, 46, 40, 18, 29, 28]
    shares = [DataParallel(rank, 2).share(indices, lengths) for rank in (0, 1)]
    assert shares == [[1, 3, 4], [0, 2, 5, 6, 7]]


@pytest.mark.parametrize(("n", "world_size"), [(8, 2), (7, 2), (7, 3), (2, 4)])
def test_equal_lengths_give_equal_counts(n, world_size):
    shares = [DataParallel(r, world_size).share(list(range(n)), [16] * n)
              for r in range(world_size)]  # fmt: skip
    sizes = [len(s) for s in shares]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_the_shares_split_the_batch_exactly_once_in_its_own_order(world_size):
    rng = random.Random(world_size)
    for _ in range(50):
        indices = rng.sample(range(100), rng.randint(0, 12))
        lengths = [rng.randint(1, 64) for _ in range(100)]
        shares = [DataParallel(r, world_size).share(indices, lengths) for r in range(world_size)]
        assert sorted(i for share in shares for i in share) == sorted(indices)
        for share in shares:  # a share keeps the batch's order
            assert share == [i for i in indices if i in share]
