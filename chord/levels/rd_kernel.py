"""The rate-distortion rule's prefix search as one compiled pass per row (the server's path)."""

from __future__ import annotations

import numpy as np

from chord.jit import compiled

_N_BUCKETS = 4096  # key ranges per row; only the one where the budget runs out is sorted


@compiled
def rd_levels(  # pragma: no cover - compiled by numba; tests compare it with the full sort
    imp: np.ndarray,
    gains: np.ndarray,
    kind: np.ndarray,
    sizes: np.ndarray,
    step_bits: np.ndarray,
    base: np.ndarray,
    target: np.ndarray,
    levels: np.ndarray,
    spent: np.ndarray,
) -> None:
    """Levels of each row by the rd rule (chord.levels.rd.assign_levels_rd states it).

    imp: float32 [R, C] finite importance; gains: float32 [T, C, 3] log gain per bit of each
    channel's steps under tier kind T; kind: int [R] each row's tier kind; sizes: float64 [C]
    weights per channel; step_bits: float64 [T, 3] bits each step adds; base: float64 [R] bits
    at level 0; target: float64 [R] the budget in bits. Writes levels (uint8 [R, C]) and spent
    (float64 [R], bits of the chosen levels).

    A step's key is imp + gain (float32, as numpy adds them); steps are taken in descending key
    order, ties by step index (3c + k), while the bits stay within target + 1e-9, then one more
    step if that lands closer to target. Per row: the span the row's importance range and its
    tier's gains bound is cut into 4,096 equal ranges (a monotone map: a range holds a run of
    the order), bits are summed per range in the same pass that forms the keys, and only the
    range where the budget runs out is sorted (stably, so ties keep step order). Bits are
    integer-valued, so every sum is exact and the result equals a full sort's.
    """
    n_rows, n_ch = imp.shape
    n_steps = 3 * n_ch
    bucket = np.empty(n_steps, dtype=np.int32)
    hist = np.empty(_N_BUCKETS, dtype=np.float64)
    # Bounds on each kind's gains: with the row's importance range they bound its keys, so one
    # pass computes keys and ranges together (keys are recomputed for the one sorted range).
    gmax = np.full(gains.shape[0], -np.inf)
    gmin = np.full(gains.shape[0], np.inf)
    for t in range(gains.shape[0]):
        for c in range(n_ch):
            for k in range(3):
                gmax[t] = max(gmax[t], gains[t, c, k])
                gmin[t] = min(gmin[t], gains[t, c, k])
    for row in range(n_rows):
        t = kind[row]
        imax, imin = -np.inf, np.inf
        for c in range(n_ch):
            imax, imin = max(imax, imp[row, c]), min(imin, imp[row, c])
        top = imax + gmax[t]  # >= every key but for float32 rounding (< 1 range; clamped)
        span = top - (imin + gmin[t])
        scale = (_N_BUCKETS - 1.5) / span if span > 0 else 0.0
        hist[:] = 0.0
        for c in range(n_ch):
            x, size = imp[row, c], sizes[c]
            for k in range(3):
                key = x + gains[t, c, k]  # float32, as numpy adds them
                b = min(max(int((top - np.float64(key)) * scale), 0), _N_BUCKETS - 1)
                bucket[3 * c + k] = b
                hist[b] += size * step_bits[t, k]
        limit = target[row] + 1e-9
        at = base[row]
        cross = _N_BUCKETS
        for b in range(_N_BUCKETS):
            if at + hist[b] > limit:
                cross = b
                break
            at += hist[b]
        for c in range(n_ch):
            levels[row, c] = ((bucket[3 * c] < cross) + (bucket[3 * c + 1] < cross)
                              + (bucket[3 * c + 2] < cross))
        if cross == _N_BUCKETS:  # every step fits
            spent[row] = at
            continue
        # The overshooting range: its steps in descending key, ties by index (stable sort).
        members = np.flatnonzero(bucket == cross)
        keys = np.empty(members.size, dtype=np.float32)
        for m in range(members.size):
            i = members[m]
            keys[m] = imp[row, i // 3] + gains[t, i // 3, i % 3]
        order = members[np.argsort(-keys, kind="mergesort")]
        taken = 0
        for i in order:
            add = sizes[i // 3] * step_bits[t, i % 3]
            if at + add > limit:
                if abs(at + add - target[row]) < abs(at - target[row]):
                    at += add
                    taken += 1
                break
            at += add
            taken += 1
        for i in order[:taken]:
            levels[row, i // 3] += 1
        spent[row] = at


__all__ = ["rd_levels"]
