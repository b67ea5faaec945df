"""Device tiers and the level quotas that make a strategy meet a bit budget."""
# INTERFACE STUB (owned by the quantization helper): signatures are the contract.
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class BudgetError(ValueError):
    """A budget the tier cannot reach; the message names the reachable range."""


@dataclass(frozen=True)
class Tier:
    """A device class: the bit-width each importance level 0..3 maps to."""

    name: str
    level_bits: tuple[int, int, int, int]
    default_budget_bits: float = 3.0


DEFAULT_TIERS: dict[str, Tier] = {
    "low": Tier("low", (1, 2, 3, 4), 2.5),
    "mid": Tier("mid", (2, 3, 4, 8), 3.0),
    "high": Tier("high", (4, 6, 8, 8), 6.0),
}


def budget_range(tier: Tier) -> tuple[float, float]:
    """The lowest and highest average bits per weight the tier can reach."""
    raise NotImplementedError


def assign_levels(
    importance: np.ndarray, channel_sizes: np.ndarray, tier: Tier, budget_bits: float
) -> np.ndarray:
    """Levels 0..3 per channel: more important channels get higher levels, and the
    size-weighted mean of tier.level_bits[level] is within 0.1 bit of budget_bits."""
    raise NotImplementedError


def average_bits(levels: np.ndarray, channel_sizes: np.ndarray, tier: Tier) -> float:
    """Size-weighted mean bits per weight of a level assignment under a tier."""
    raise NotImplementedError
