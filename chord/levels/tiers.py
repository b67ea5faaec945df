"""Device tiers: the bit-width each importance level maps to, and the budgets a tier reaches."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

N_LEVELS = 4  # a 2-bit code holds one of four importance levels per channel


class BudgetError(ValueError):
    """A budget the tier cannot reach, or levels it cannot map; the message says what fits."""


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


def levels_to_bits(levels: np.ndarray, tier: Tier) -> np.ndarray:
    """Bit-width per channel (uint8): the tier's `level_bits[level]`."""
    level_bits = np.asarray(tier.level_bits, dtype=np.uint8)
    if level_bits.shape != (N_LEVELS,):
        raise BudgetError(f"a tier maps 4 levels to bits, got {level_bits.tolist()}")
    lv = np.asarray(levels)
    if lv.size and (lv.min() < 0 or lv.max() >= N_LEVELS):
        raise BudgetError(f"levels must lie in 0..3, got range [{lv.min()}, {lv.max()}]")
    return level_bits[lv.astype(np.int64)]


__all__ = [
    "DEFAULT_TIERS",
    "N_LEVELS",
    "BudgetError",
    "Tier",
    "average_bits",
    "budget_range",
    "levels_to_bits",
    "parse_level_bits",
]
