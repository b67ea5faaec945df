"""Tiers and level quotas: budgets met within 0.1 bit, importance order kept, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chord.levels import (
    BUDGET_TOLERANCE,
    DEFAULT_TIERS,
    BudgetError,
    Tier,
    assign_levels,
    assign_levels_batch,
    average_bits,
    budget_range,
    max_entropy_distribution,
    parse_level_bits,
)


def test_default_tiers_and_ranges() -> None:
    assert DEFAULT_TIERS["mid"].level_bits == (2, 3, 4, 8)
    assert budget_range(DEFAULT_TIERS["low"]) == (1.0, 4.0)
    assert budget_range(DEFAULT_TIERS["high"]) == (4.0, 8.0)


@pytest.mark.parametrize(
    "bits", [(1, 2, 3), (0, 2, 3, 4), (1, 2, 3, 9), (4, 3, 2, 1), (1.5, 2, 3, 4)]
)
def test_invalid_tiers_refused(bits: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(BudgetError):
        Tier("bad", bits, 2.0)  # type: ignore[arg-type]


def test_parse_level_bits() -> None:
    assert parse_level_bits("2,3,4,8") == (2, 3, 4, 8)
    with pytest.raises(BudgetError):
        parse_level_bits("2,3,x,8")


@settings(max_examples=80, deadline=None)
@given(
    tier_name=st.sampled_from(sorted(DEFAULT_TIERS)),
    frac=st.floats(0.0, 1.0),
    n=st.integers(200, 2000),
    seed=st.integers(0, 2**31 - 1),
)
def test_budget_met_and_order_kept(tier_name: str, frac: float, n: int, seed: int) -> None:
    tier = DEFAULT_TIERS[tier_name]
    lo, hi = budget_range(tier)
    budget = lo + frac * (hi - lo)
    rng = np.random.default_rng(seed)
    # Mixed layer widths like a real backbone: many rows of a few sizes.
    sizes = rng.choice([16, 50, 64, 128, 250], size=n)
    importance = rng.standard_normal(n)
    levels = assign_levels(importance, sizes, tier, budget)
    assert levels.dtype == np.uint8 and levels.shape == (n,)
    assert abs(average_bits(levels, sizes, tier) - budget) <= BUDGET_TOLERANCE
    # More important never gets a lower level.
    order = np.argsort(-importance, kind="stable")
    assert (np.diff(levels[order].astype(int)) <= 0).all()


def test_deterministic_ties_by_index() -> None:
    tier = DEFAULT_TIERS["mid"]
    sizes = np.full(400, 64)
    levels = assign_levels(np.zeros(400), sizes, tier, 3.0)
    assert (np.diff(levels.astype(int)) <= 0).all()  # earlier channels win ties
    np.testing.assert_array_equal(levels, assign_levels(np.zeros(400), sizes, tier, 3.0))


def test_importance_follows_channels() -> None:
    tier = DEFAULT_TIERS["low"]
    imp = np.arange(1000, dtype=float)
    levels = assign_levels(imp, np.full(1000, 8), tier, 2.5)
    assert levels[-1] == 3 and levels[0] == 0


@pytest.mark.parametrize("budget", [0.5, 4.2, float("nan"), float("inf")])
def test_impossible_budget_names_range(budget: float) -> None:
    with pytest.raises(BudgetError, match=r"\[1, 4\]"):
        assign_levels(np.ones(10), np.full(10, 4), DEFAULT_TIERS["low"], budget)


def test_coarse_channels_refused() -> None:
    # One channel holds 90% of the weights: 2.5 bits is in range but not reachable.
    with pytest.raises(BudgetError, match="too coarse"):
        assign_levels(np.array([1.0, 0.0]), np.array([90, 10]), DEFAULT_TIERS["low"], 2.5)


def test_bad_inputs_refused() -> None:
    tier = DEFAULT_TIERS["mid"]
    with pytest.raises(BudgetError, match="one entry per channel"):
        assign_levels(np.ones(3), np.ones(4, dtype=int), tier, 3.0)
    with pytest.raises(BudgetError, match="finite"):
        assign_levels(np.array([1.0, np.nan]), np.ones(2, dtype=int), tier, 3.0)
    with pytest.raises(BudgetError, match="positive"):
        assign_levels(np.ones(2), np.array([1, 0]), tier, 3.0)


def test_max_entropy_distribution_mean() -> None:
    for tier in DEFAULT_TIERS.values():
        lo, hi = budget_range(tier)
        for budget in np.linspace(lo, hi, 9):
            p = max_entropy_distribution(tier.level_bits, float(budget))
            assert abs(p.sum() - 1) < 1e-9
            assert abs(p @ np.array(tier.level_bits) - budget) < 1e-6
    uniform = max_entropy_distribution((1, 2, 3, 4), 2.5)
    np.testing.assert_allclose(uniform, 0.25, atol=1e-6)


def test_batch_equals_rows_with_errors_in_place() -> None:
    rng = np.random.default_rng(5)
    sizes = rng.choice([16, 50, 64, 128], size=300)
    imp = np.round(rng.standard_normal((6, 300)), 1).astype(np.float32)  # many ties
    imp[0, :40] = -0.0  # ties with 0.0 like a stable sort of -imp
    imp[0, 40:80] = 0.0
    imp[3, 7] = np.nan
    names = ["low", "mid", "high", "mid", "low", "high"]
    tiers = [DEFAULT_TIERS[n] for n in names]
    budgets = [2.5, 3.0, 6.0, 3.0, 9.0, 4.0]
    out = assign_levels_batch(imp, sizes, tiers, budgets)
    for i, got in enumerate(out):
        if i in (3, 4):  # NaN row, unreachable budget: that row's error, the others still served
            assert isinstance(got, BudgetError)
            continue
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, assign_levels(imp[i], sizes, tiers[i], budgets[i]))
        # float32 rows are sorted by packed keys; float64 rows by a stable argsort.
        np.testing.assert_array_equal(
            got, assign_levels(imp[i].astype(np.float64), sizes, tiers[i], budgets[i])
        )
    with pytest.raises(BudgetError, match="one tier and budget per row"):
        assign_levels_batch(imp, sizes, tiers[:2], budgets[:2])
