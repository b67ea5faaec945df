"""The server's level tally (one compiled pass) against np.bincount, row by row."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_server.engine import LevelTally


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    channels=st.integers(1, 300),
    sizes_from=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_tally_equals_bincount_of_each_row(
    rows: int, channels: int, sizes_from: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.choice(np.array(sizes_from, dtype=np.int64), channels)
    levels = rng.integers(0, 4, (rows, channels)).astype(np.uint8)
    counts, weights = LevelTally(sizes)(levels)
    for r in range(rows):
        np.testing.assert_array_equal(counts[r], np.bincount(levels[r], minlength=4))
        want = np.bincount(levels[r], weights=sizes.astype(np.float64), minlength=4)
        np.testing.assert_array_equal(weights[r].astype(np.float64), want)


def test_tally_of_a_level_none_reaches_is_zero() -> None:
    sizes = np.array([3, 5, 3], dtype=np.int64)
    counts, weights = LevelTally(sizes)(np.array([[0, 2, 0]], dtype=np.uint8))
    assert counts.tolist() == [[2, 0, 1, 0]]
    assert weights.tolist() == [[6, 0, 5, 0]]
    assert LevelTally(sizes).total == 11.0
