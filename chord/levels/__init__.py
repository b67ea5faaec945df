"""Tiers, budgets and the level rules (quota and rate-distortion): the bottom of the core.

Nothing here imports from the rest of `chord`; codes, quantization and the hypernetworks build
on it.
"""

from chord.levels.assign import assign_levels, assign_levels_batch
from chord.levels.quota import assign_levels_quota, max_entropy_distribution
from chord.levels.rd import MAX_WIDTH, LevelCost, LevelCostError, assign_levels_rd
from chord.levels.screen import (
    BUDGET_TOLERANCE,
    check_budget,
    check_sizes,
    descending_order,
    screen_rows,
)
from chord.levels.tiers import (
    DEFAULT_TIERS,
    N_LEVELS,
    BudgetError,
    Tier,
    average_bits,
    budget_range,
    levels_to_bits,
    parse_level_bits,
)

__all__ = [
    "BUDGET_TOLERANCE",
    "DEFAULT_TIERS",
    "MAX_WIDTH",
    "N_LEVELS",
    "BudgetError",
    "LevelCost",
    "LevelCostError",
    "Tier",
    "assign_levels",
    "assign_levels_batch",
    "assign_levels_quota",
    "assign_levels_rd",
    "average_bits",
    "budget_range",
    "check_budget",
    "check_sizes",
    "descending_order",
    "levels_to_bits",
    "max_entropy_distribution",
    "parse_level_bits",
    "screen_rows",
]
