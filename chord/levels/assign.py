"""One entry to the level rules: rate-distortion with a measured cost table, quotas without."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chord.levels.quota import assign_levels_quota
from chord.levels.rd import LevelCost, assign_levels_rd
from chord.levels.tiers import BudgetError, Tier


def assign_levels(
    importance: np.ndarray,
    channel_sizes: np.ndarray,
    tier: Tier,
    budget_bits: float,
    cost: LevelCost | None = None,
) -> np.ndarray:
    """Levels 0..3 per channel: more important channels get higher levels, and the
    size-weighted mean of tier.level_bits[level] is within 0.1 bit of budget_bits.

    With a `cost` (chord.levels.rd) the rate-distortion rule places the bits; without one,
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
    compiled: bool = False,
) -> list[np.ndarray | BudgetError]:
    """assign_levels for every row of importance [B, C] (row i under tiers[i], budgets[i]).

    Rows are sorted and quantised together; a row that cannot be served gets its BudgetError in
    place of levels. Shared-input errors (sizes, shapes) raise BudgetError. `compiled` runs the
    rd rule's search in its numba kernel (same levels; see assign_levels_rd).
    """
    if cost is not None:
        return assign_levels_rd(
            np.asarray(importance), channel_sizes, tiers, budgets, cost, compiled=compiled
        )
    return assign_levels_quota(importance, channel_sizes, tiers, budgets)


__all__ = ["assign_levels", "assign_levels_batch"]
