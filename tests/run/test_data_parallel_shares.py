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
    indices = [10, 11, 12, 13, 14, 15, 16, 17]
    lengths = {10: 30, 11: 58, 12: 21, 13: 46, 14: 40, 15: 18, 16: 29, 17: 28}
    shares = [DataParallel(rank, 2).share(indices, lengths) for rank in (0, 1)]
    assert shares == [[11, 13, 14], [10, 12, 15, 16, 17]]


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
        if len(set(lengths[i] for i in indices)) == 1:  # equal lengths: equal counts (+-1)
            sizes = [len(s) for s in shares]
            assert max(sizes) - min(sizes) <= 1
