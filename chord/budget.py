"""Device tiers and the level quotas that make a strategy meet a bit budget."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

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


def _validate(
    importance: np.ndarray, channel_sizes: np.ndarray, tier: Tier, budget_bits: float
) -> tuple[np.ndarray, np.ndarray]:
    """Flat float importance and int sizes, or BudgetError/ValueError saying what is wrong."""
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    sizes = np.asarray(channel_sizes).reshape(-1)
    if imp.size == 0:
        raise BudgetError("importance must hold at least one channel")
    if imp.shape != sizes.shape:
        raise BudgetError(
            f"importance has {imp.size} channels but channel_sizes has {sizes.size}; "
            "send one entry per channel for both"
        )
    if not np.isfinite(imp).all():
        raise BudgetError("importance must be finite (no NaN or inf)")
    if not np.issubdtype(sizes.dtype, np.integer) or (sizes <= 0).any():
        raise BudgetError("channel_sizes must be positive integers")
    lo, hi = budget_range(tier)
    if not math.isfinite(budget_bits) or not lo <= budget_bits <= hi:
        raise BudgetError(
            f"budget {budget_bits} bits is out of reach for tier {tier.name!r} "
            f"(level bits {tier.level_bits}); choose a budget in [{lo:g}, {hi:g}]"
        )
    return imp, sizes.astype(np.int64)


def assign_levels(
    importance: np.ndarray, channel_sizes: np.ndarray, tier: Tier, budget_bits: float
) -> np.ndarray:
    """Levels 0..3 per channel: more important channels get higher levels, and the
    size-weighted mean of tier.level_bits[level] is within 0.1 bit of budget_bits."""
    budget_bits = float(budget_bits)
    imp, sizes = _validate(importance, channel_sizes, tier, budget_bits)
    bits = np.asarray(tier.level_bits, dtype=np.float64)
    p = max_entropy_distribution(tier.level_bits, budget_bits)
    # Most important first; ties by channel index (stable sort on the negated score).
    order = np.argsort(-imp, kind="stable")
    sorted_sizes = sizes[order].astype(np.float64)
    total = float(sorted_sizes.sum())
    start = (np.cumsum(sorted_sizes) - sorted_sizes) / total  # size fraction before a channel
    mid = start + 0.5 * sorted_sizes / total
    # Level 3 takes the first p3 of the weight mass, then level 2, and so on.
    bounds = np.cumsum(p[::-1])[:-1]
    sorted_levels = (N_LEVELS - 1 - np.searchsorted(bounds, mid, side="right")).astype(np.int64)
    sorted_levels = _fix_residual(sorted_levels, sorted_sizes, bits, budget_bits)
    levels = np.empty(imp.size, dtype=np.uint8)
    levels[order] = sorted_levels
    mean = float((bits[sorted_levels] * sorted_sizes).sum() / total)
    if abs(mean - budget_bits) > BUDGET_TOLERANCE:
        raise BudgetError(
            f"channel sizes are too coarse to land within {BUDGET_TOLERANCE} bit of {budget_bits} "
            f"for tier {tier.name!r} (best {mean:.3f}); reachable range is "
            f"[{bits.min():g}, {bits.max():g}] only for many small channels"
        )
    return levels


def _fix_residual(
    levels: np.ndarray, sizes: np.ndarray, bits: np.ndarray, budget: float
) -> np.ndarray:
    """Move boundary channels one level at a time while that brings the mean closer.

    `levels` is non-increasing along importance order; demoting the last channel of a level
    or promoting the first keeps it so.
    """
    levels = levels.copy()
    total = float(sizes.sum())
    sum_bits = float((bits[levels] * sizes).sum())
    for _ in range(levels.size * N_LEVELS):
        err = sum_bits / total - budget
        if abs(err) <= 1e-3:
            break
        best: tuple[float, int, int] | None = None
        for k in range(N_LEVELS):
            idx = np.flatnonzero(levels == k)
            if idx.size == 0:
                continue
            moves = [(idx[-1], k - 1)] if err > 0 and k > 0 else []
            if err < 0 and k < N_LEVELS - 1:
                moves = [(idx[0], k + 1)]
            for i, new in moves:
                delta = (bits[new] - bits[k]) * sizes[i]
                gain = abs(err) - abs(err + delta / total)
                if gain > 1e-12 and (best is None or gain > best[0]):
                    best = (gain, int(i), new)
        if best is None:
            break
        _, i, new = best
        sum_bits += (bits[new] - bits[levels[i]]) * sizes[i]
        levels[i] = new
    return levels


__all__ = [
    "BUDGET_TOLERANCE",
    "DEFAULT_TIERS",
    "BudgetError",
    "Tier",
    "assign_levels",
    "average_bits",
    "budget_range",
    "max_entropy_distribution",
    "parse_level_bits",
]
