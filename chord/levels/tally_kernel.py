"""Channels and weights per level of each row of levels, as one compiled pass (the server's)."""

from __future__ import annotations

import numpy as np

from chord.jit import compiled


@compiled
def level_tally(  # pragma: no cover - compiled by numba; tests compare it with np.bincount
    levels: np.ndarray,
    size_class: np.ndarray,
    class_sizes: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray,
) -> None:
    """counts[r, l] = channels of row r at level l; weights[r, l] = their summed sizes.

    levels: uint8 [R, C] in 0..3; size_class: int [C] each channel's index into class_sizes
    (int64 [K], the distinct channel sizes); counts, weights: int64 [R, 4], written. The
    weights are class counts times class sizes, integers throughout, so they equal
    np.bincount(levels[r], weights=sizes) exactly.
    """
    n_rows, n_channels = levels.shape
    n_classes = class_sizes.shape[0]
    by_class = np.zeros((n_classes, 4), dtype=np.int64)
    for r in range(n_rows):
        by_class[:] = 0
        row = levels[r]
        for c in range(n_channels):
            by_class[size_class[c], row[c]] += 1
        for level in range(4):
            n = 0
            w = 0
            for k in range(n_classes):
                n += by_class[k, level]
                w += by_class[k, level] * class_sizes[k]
            counts[r, level] = n
            weights[r, level] = w


__all__ = ["level_tally"]
