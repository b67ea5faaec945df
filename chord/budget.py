"""Device tiers and the level quotas that make a strategy meet a bit budget."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from chord.level_cost import LevelCost

N_LEVELS = 4
BUDGET_TOLERANCE = 0.1  # bits: how far the size-weighted mean may sit from the budget


class BudgetError(ValueError):
    """A budget the tier cannot reach; the message names the reachable range."""


@dataclass(frozen=True)
class Tier:
    """A device class: the bit-width each importance level 0..3 maps to."""

    name: str
    level_bits: tuple[int, int, int, int]
    default_budget_bits: float = 3.0

    def __post_init__(self) -> None:
        """Validate: four integer widths in 1..8, non-decreasing, default budget in range."""
        bits = tuple(self.level_bits)
        if len(bits) != N_LEVELS or not all(
            isinstance(b, int | np.integer) and not isinstance(b, bool) for b in bits
        ):
            raise BudgetError(f"tier {self.name!r}: level_bits must be 4 integers, got {bits!r}")
        if not all(1 <= b <= 8 for b in bits):
            raise BudgetError(f"tier {self.name!r}: level_bits must lie in 1..8, got {bits!r}")
        if any(a > b for a, b in itertools.pairwise(bits)):
            raise BudgetError(
                f"tier {self.name!r}: level_bits must be non-decreasing, got {bits!r}"
            )
        object.__setattr__(self, "level_bits", tuple(int(b) for b in bits))
        lo, hi = bits[0], bits[-1]
        if not lo <= float(self.default_budget_bits) <= hi:
            raise BudgetError(
                f"tier {self.name!r}: default budget {self.default_budget_bits} is outside "
                f"its reachable range [{lo}, {hi}]"
            )


DEFAULT_TIERS: dict[str, Tier] = {
    "low": Tier("low", (1, 2, 3, 4), 2.5),
    "mid": Tier("mid", (2, 3, 4, 8), 3.0),
    "high": Tier("high", (4, 6, 8, 8), 6.0),
}


def parse_level_bits(spec: str) -> tuple[int, int, int, int]:
    """Parse "2,3,4,8" into level bit-widths (validated like a Tier)."""
    try:
        parts = tuple(int(p) for p in spec.split(","))
    except ValueError as exc:
        raise BudgetError(f"level bits must be 4 comma-separated integers, got {spec!r}") from exc
    tier = Tier("custom", parts, float(parts[0]) if parts else 1.0)  # type: ignore[arg-type]
    return tier.level_bits


def budget_range(tier: Tier) -> tuple[float, float]:
    """The lowest and highest average bits per weight the tier can reach."""
    return float(min(tier.level_bits)), float(max(tier.level_bits))


def average_bits(levels: np.ndarray, channel_sizes: np.ndarray, tier: Tier) -> float:
    """Size-weighted mean bits per weight of a level assignment under a tier."""
    lv = np.asarray(levels).astype(np.int64)
    sizes = np.asarray(channel_sizes, dtype=np.float64)
    if lv.shape != sizes.shape:
        raise BudgetError(f"levels {lv.shape} and channel sizes {sizes.shape} differ in shape")
    bits = np.asarray(tier.level_bits, dtype=np.float64)[lv]
    return float((bits * sizes).sum() / sizes.sum())


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


def check_sizes(channel_sizes: np.ndarray, n_channels: int) -> np.ndarray:
    """Sizes as int64 [n_channels], or BudgetError naming what is wrong."""
    sizes = np.asarray(channel_sizes).reshape(-1)
    if n_channels == 0:
        raise BudgetError("importance must hold at least one channel")
    if sizes.size != n_channels:
        raise BudgetError(
            f"importance has {n_channels} channels but channel_sizes has {sizes.size}; "
            "send one entry per channel for both"
        )
    if not np.issubdtype(sizes.dtype, np.integer) or (sizes <= 0).any():
        raise BudgetError("channel_sizes must be positive integers")
    return sizes.astype(np.int64)


def check_budget(tier: Tier, budget_bits: float) -> None:
    """BudgetError naming the reachable range when the tier cannot reach the budget."""
    lo, hi = budget_range(tier)
    if not math.isfinite(budget_bits) or not lo <= budget_bits <= hi:
        raise BudgetError(
            f"budget {budget_bits} bits is out of reach for tier {tier.name!r} "
            f"(level bits {tier.level_bits}); choose a budget in [{lo:g}, {hi:g}]"
        )


def screen_rows(
    imp: np.ndarray, channel_sizes: np.ndarray, tiers: Sequence[Tier], budgets: Sequence[float]
) -> tuple[np.ndarray, list[np.ndarray | BudgetError], list[int]]:
    """Check a batch before a level rule runs: (sizes, per-row slots, rows to serve).

    Shared-input errors (shapes, sizes) raise BudgetError; a row whose budget its tier cannot
    reach, or whose importance is not finite, gets its BudgetError in its slot; the other slots
    hold placeholders for the rule to fill.
    """
    if imp.ndim != 2 or not len(tiers) == len(budgets) == imp.shape[0]:
        raise BudgetError(
            f"importance must be [batch, channels] with one tier and budget per row, got "
            f"{imp.shape}, {len(tiers)} tiers, {len(budgets)} budgets"
        )
    sizes = check_sizes(channel_sizes, imp.shape[1])
    out: list[np.ndarray | BudgetError] = []
    rows: list[int] = []
    for i, (tier, budget) in enumerate(zip(tiers, budgets, strict=True)):
        try:
            check_budget(tier, float(budget))
            if not np.isfinite(imp[i]).all():
                raise BudgetError("importance must be finite (no NaN or inf)")
        except BudgetError as exc:
            out.append(exc)
            continue
        out.append(np.empty(0, dtype=np.uint8))  # replaced by the rule
        rows.append(i)
    return sizes, out, rows


def assign_levels(
    importance: np.ndarray,
    channel_sizes: np.ndarray,
    tier: Tier,
    budget_bits: float,
    cost: LevelCost | None = None,
) -> np.ndarray:
    """Levels 0..3 per channel: more important channels get higher levels, and the
    size-weighted mean of tier.level_bits[level] is within 0.1 bit of budget_bits.

    With a `cost` (chord.level_cost) the rate-distortion rule places the bits; without one,
    the level quotas of maximum entropy go to channels in importance order.
    """
    imp = np.asarray(importance, dtype=np.float64).reshape(1, -1)
    (out,) = assign_levels_batch(imp, channel_sizes, [tier], [budget_bits], cost)
    if isinstance(out, BudgetError):
        raise out
    return out


def assign_levels_batch(
    importance: np.ndarray,
    channel_sizes: np.ndarray,
    tiers: Sequence[Tier],
    budgets: Sequence[float],
    cost: LevelCost | None = None,
) -> list[np.ndarray | BudgetError]:
    """assign_levels for every row of importance [B, C] (row i under tiers[i], budgets[i]).

    Rows are sorted and quantised together; a row that cannot be served gets its BudgetError in
    place of levels. Shared-input errors (sizes, shapes) raise BudgetError.
    """
    if cost is not None:
        from chord.level_cost import assign_levels_rd

        return assign_levels_rd(np.asarray(importance), channel_sizes, tiers, budgets, cost)
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


def descending_order(imp: np.ndarray) -> np.ndarray:
    """Per row, channel indices most important first, ties by index (a stable sort of -imp).

    float32 rows are sorted as unique 64-bit keys (order-preserving bits of -imp, then the
    index), which an unstable SIMD sort handles about twice as fast as a stable float sort.
    """
    if imp.dtype != np.float32 or imp.shape[1] >= 1 << 32:
        return np.argsort(-imp, axis=1, kind="stable")
    neg = (-imp + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0: they tie
    flipped = np.where(neg >> np.uint32(31) != 0, ~neg, neg | np.uint32(1 << 31))
    keys = flipped.astype(np.uint64) << np.uint64(32)
    keys |= np.arange(imp.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)


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


__all__ = [
    "BUDGET_TOLERANCE",
    "DEFAULT_TIERS",
    "BudgetError",
    "Tier",
    "assign_levels",
    "assign_levels_batch",
    "average_bits",
    "budget_range",
    "check_budget",
    "check_sizes",
    "descending_order",
    "max_entropy_distribution",
    "parse_level_bits",
    "screen_rows",
]
