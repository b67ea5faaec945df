"""Non-personalized baselines: full precision, uniform PTQ and one mixed-precision assignment."""

from __future__ import annotations

from typing import Any

import numpy as np

from chord.levels import LevelCost, Tier, assign_levels


def uniform_bits(layout: Any, bits: int) -> np.ndarray:
    """The same bit-width for every channel."""
    return np.full(int(layout.n_channels), int(bits), dtype=np.int64)


def static_levels(
    importance: np.ndarray,
    layout: Any,
    tier: Tier,
    budget_bits: float,
    cost: LevelCost | None = None,
) -> np.ndarray:
    """One level assignment for every user, through the same assign_levels rule as CHORD."""
    sizes = np.asarray(layout.channel_sizes(), dtype=np.int64)
    return np.asarray(assign_levels(importance, sizes, tier, budget_bits, cost), dtype=np.uint8)


def random_importance(layout: Any, seed: int) -> np.ndarray:
    """Seeded random importance (the mixed-random baseline)."""
    return np.random.default_rng(seed).random(int(layout.n_channels))
