"""The quota level rule: maximum-entropy level quotas handed out in importance order.

For a tier's widths b_k and a budget B, the level shares p_k ~ exp(lam * b_k) of maximum entropy
with sum_k p_k b_k = B are split over the channels in descending importance (level 3 takes the
first p_3 of the weight mass, then level 2, ...); boundary channels then move one level at a time
while that brings the size-weighted mean closer to B. It measures nothing about the backbone
(`allocation="quota"`); the rate-distortion rule in chord.levels.rd is the default.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from chord.levels.screen import BUDGET_TOLERANCE, descending_order, screen_rows
from chord.levels.tiers import N_LEVELS, BudgetError, Tier


def max_entropy_distribution(level_bits: tuple[int, ...], budget_bits: float) -> np.ndarray:
    """Level probabilities p_k ~ exp(lam * b_k) of maximum entropy with mean bits = budget.

    lam is found by bisection; budgets at an end of the range put all mass on the levels
    with the lowest (or highest) width.
    """
    # Devices repeat a few (tier, budget) pairs, and the bisection was 40% of server time.
    return _max_entropy_cached(tuple(int(x) for x in level_bits), float(budget_bits)).copy()


@functools.lru_cache(maxsize=1024)
def _max_entropy_cached(level_bits: tuple[int, ...], budget_bits: float) -> np.ndarray:
    """The uncached bisection behind max_entropy_distribution."""
    b = np.asarray(level_bits, dtype=np.float64)
    lo, hi = b.min(), b.max()
    if hi - lo < 1e-12:
        return np.full(len(b), 1.0 / len(b))

    def probs(lam: float) -> np.ndarray:
        z = lam * (b - b.max() if lam > 0 else b - b.min())
        p = np.exp(z)
        return np.asarray(p / p.sum())

    if budget_bits <= lo + 1e-9:
        return probs(-1e4)
    if budget_bits >= hi - 1e-9:
        return probs(1e4)
    left, right = -50.0, 50.0  # mean(lam) is increasing in lam
    for _ in range(200):
        mid = 0.5 * (left + right)
        if float(probs(mid) @ b) < budget_bits:
            left = mid
        else:
            right = mid
    return probs(0.5 * (left + right))


def assign_levels_quota(
    importance: np.ndarray,
    channel_sizes: np.ndarray,
    tiers: Sequence[Tier],
    budgets: Sequence[float],
) -> list[np.ndarray | BudgetError]:
    """Levels [C] per row of importance [B, C] by the quota rule (see module doc).

    Row i is served under tiers[i] and budgets[i]; rows are sorted and quantised together. A row
    that cannot be served gets its BudgetError in place of levels; shared-input errors (sizes,
    shapes) raise BudgetError.
    """
    imp = np.asarray(importance)
    if imp.dtype != np.float32:
        imp = imp.astype(np.float64)
    sizes, out, rows = screen_rows(imp, channel_sizes, tiers, budgets)
    if not rows:
        return out
    good = imp[rows] if len(rows) < imp.shape[0] else imp
    order = descending_order(good)
    sorted_sizes = sizes[order].astype(np.float64)
    total = float(sizes.sum())
    cum = np.cumsum(sorted_sizes, axis=1)
    start = (cum - sorted_sizes) / total  # size fraction before a channel
    mid = start + 0.5 * sorted_sizes / total  # increasing along each row
    # Level 3 takes the first p3 of the weight mass, then level 2, and so on: ends[j, k] is
    # the number of channels of row j at levels above 2 - k (mid increases along a row).
    bounds = np.stack(
        [
            np.cumsum(max_entropy_distribution(tiers[i].level_bits, float(budgets[i]))[::-1])[:-1]
            for i in rows
        ]
    )
    ends = np.full((len(rows), N_LEVELS), good.shape[1], dtype=np.int64)
    for k in range(N_LEVELS - 1):
        ends[:, k] = np.count_nonzero(mid < bounds[:, k : k + 1], axis=1)
    # Sizes per level from the running sum: integer-valued, so exact in float64.
    cum0 = np.concatenate([np.zeros((len(rows), 1)), cum], axis=1)
    level_sizes = np.diff(np.take_along_axis(cum0, ends, axis=1), axis=1, prepend=0.0)
    rows_bits = np.array([tiers[i].level_bits[::-1] for i in rows], dtype=np.float64)
    sums = (rows_bits * level_sizes).sum(axis=1)
    counts_all = np.diff(ends, axis=1, prepend=0)  # level 3 first
    keep = np.zeros(len(rows), dtype=bool)
    for j, i in enumerate(rows):
        tier, budget = tiers[i], float(budgets[i])
        bits = np.asarray(tier.level_bits, dtype=np.float64)
        counts, sum_bits = _fix_residual(
            counts_all[j], sorted_sizes[j], bits, budget, total, float(sums[j])
        )
        mean = sum_bits / total
        if abs(mean - budget) > BUDGET_TOLERANCE:
            out[i] = BudgetError(
                f"channel sizes are too coarse to land within {BUDGET_TOLERANCE} bit of {budget} "
                f"for tier {tier.name!r} (best {mean:.3f}); reachable range is "
                f"[{bits.min():g}, {bits.max():g}] only for many small channels"
            )
            continue
        ends[j] = np.cumsum(counts)
        keep[j] = True
    position = np.arange(good.shape[1])
    sorted_levels = np.full(good.shape, N_LEVELS - 1, dtype=np.uint8)
    for k in range(N_LEVELS - 1):
        sorted_levels -= position >= ends[:, k : k + 1]
    levels = np.empty(good.shape, dtype=np.uint8)
    np.put_along_axis(levels, order, sorted_levels, axis=1)
    for j, i in enumerate(rows):
        if keep[j]:
            out[i] = levels[j]
    return out


def _fix_residual(
    counts: np.ndarray,
    sizes: np.ndarray,
    bits: np.ndarray,
    budget: float,
    total: float,
    sum_bits: float,
) -> tuple[np.ndarray, float]:
    """Move boundary channels one level at a time while that brings the mean closer.

    Levels are non-increasing along importance order, so level k occupies one run of positions
    (counts[0] channels of level 3 first); demoting the last channel of a level or promoting the
    first keeps it so. Returns the new counts (level 3 first) and the new sum of bits x sizes.
    """
    if abs(sum_bits / total - budget) <= 1e-3:
        return counts, sum_bits
    counts = counts.astype(np.int64)
    n = int(counts.sum())
    for _ in range(n * N_LEVELS):
        err = sum_bits / total - budget
        if abs(err) <= 1e-3:
            break
        best: tuple[float, int, int, int] | None = None
        first = 0  # position of the first channel of the level being looked at
        ends = np.cumsum(counts)
        for k in range(N_LEVELS):
            c = int(counts[N_LEVELS - 1 - k])
            if c == 0:
                continue
            first = int(ends[N_LEVELS - 1 - k]) - c
            moves = [(first + c - 1, k - 1)] if err > 0 and k > 0 else []
            if err < 0 and k < N_LEVELS - 1:
                moves = [(first, k + 1)]
            for i, new in moves:
                delta = (bits[new] - bits[k]) * sizes[i]
                gain = abs(err) - abs(err + delta / total)
                if gain > 1e-12 and (best is None or gain > best[0]):
                    best = (gain, i, k, new)
        if best is None:
            break
        _, i, k, new = best
        sum_bits += (bits[new] - bits[k]) * sizes[i]
        counts[N_LEVELS - 1 - k] -= 1
        counts[N_LEVELS - 1 - new] += 1
    return counts, sum_bits


__all__ = ["assign_levels_quota", "max_entropy_distribution"]
