"""The rate-distortion level rule: budgets, monotonicity, where bits go, torch parity, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chord.levels import (
    DEFAULT_TIERS,
    MAX_WIDTH,
    BudgetError,
    LevelCost,
    LevelCostError,
    Tier,
    assign_levels,
    assign_levels_rd,
    average_bits,
)
from chord.levels.relaxed import TorchLevelCost, relaxed_rd_masks

LAYERS = (40, 25, 60)  # channels per layer
WIDTHS = (16, 32, 8)  # weights per channel


def make_cost(seed: int = 0, scale: tuple[float, ...] = (1.0, 1.0, 1.0)) -> LevelCost:
    """A loss table falling roughly like 4**-b per layer, with noise, scaled per layer."""
    rng = np.random.default_rng(seed)
    b = np.arange(1, MAX_WIDTH + 1)
    table = np.stack([s * 4.0 ** (-b) * rng.uniform(0.5, 2.0, MAX_WIDTH) for s in scale])
    return LevelCost(table.astype(np.float32), LAYERS,
                     tuple(c * w for c, w in zip(LAYERS, WIDTHS, strict=True)))


def sizes() -> np.ndarray:
    """Weights per channel in layout order."""
    return np.repeat(np.array(WIDTHS), LAYERS).astype(np.int64)


def total_cost(levels: np.ndarray, imp: np.ndarray, cost: LevelCost, tier: Tier) -> float:
    """Summed exp(importance) x layer loss x channel share of an assignment."""
    bits = np.asarray(tier.level_bits)[levels]
    loss = cost.layer_loss[cost.layer_of(), bits - 1].astype(np.float64)
    share = sizes() / np.repeat(np.array(cost.layer_weights), LAYERS)
    return float((np.exp(imp) * loss * share).sum())


@pytest.mark.parametrize("seed", range(6))
def test_budgets_are_met_for_every_tier(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cost = make_cost(seed)
    imp = rng.normal(size=sum(LAYERS))
    for tier in DEFAULT_TIERS.values():
        lo, hi = min(tier.level_bits), max(tier.level_bits)
        for budget in np.linspace(lo, hi, 7):
            levels = assign_levels(imp, sizes(), tier, float(budget), cost)
            assert levels.dtype == np.uint8 and levels.max() <= 3
            assert abs(average_bits(levels, sizes(), tier) - budget) <= 0.1


def test_more_importance_never_means_fewer_bits() -> None:
    rng = np.random.default_rng(1)
    cost, tier = make_cost(1), DEFAULT_TIERS["mid"]
    imp = rng.normal(size=sum(LAYERS))
    base = assign_levels(imp, sizes(), tier, 3.0, cost)
    for c in rng.choice(len(imp), 20, replace=False):
        raised = imp.copy()
        raised[c] += 2.0
        assert assign_levels(raised, sizes(), tier, 3.0, cost)[c] >= base[c]


def test_bits_go_to_the_layer_whose_loss_they_remove() -> None:
    tier = DEFAULT_TIERS["mid"]
    imp = np.zeros(sum(LAYERS))
    for loud in range(3):
        scale = tuple(100.0 if i == loud else 1.0 for i in range(3))
        levels = assign_levels(imp, sizes(), tier, 3.0, make_cost(2, scale))
        bits = np.asarray(tier.level_bits)[levels]
        means = [bits[s:e].mean() for s, e in zip(np.cumsum((0, *LAYERS))[:-1],
                                                  np.cumsum(LAYERS), strict=True)]
        assert int(np.argmax(means)) == loud, means


def test_rd_costs_less_than_the_quota_rule_at_the_same_budget() -> None:
    tier = DEFAULT_TIERS["mid"]
    for seed in range(4):
        cost = make_cost(seed, (1.0, 30.0, 0.1))
        imp = np.random.default_rng(seed).normal(scale=0.5, size=sum(LAYERS))
        rd = assign_levels(imp, sizes(), tier, 3.0, cost)
        quota = assign_levels(imp, sizes(), tier, 3.0)
        assert average_bits(rd, sizes(), tier) <= average_bits(quota, sizes(), tier) + 0.05
        assert total_cost(rd, imp, cost, tier) < total_cost(quota, imp, cost, tier)


def test_step_gains_fall_with_the_level_even_for_bumpy_tables() -> None:
    rng = np.random.default_rng(4)
    table = rng.uniform(0, 1, (3, MAX_WIDTH)).astype(np.float32)  # not monotone, not convex
    cost = LevelCost(table, LAYERS, tuple(c * w for c, w in zip(LAYERS, WIDTHS, strict=True)))
    for tier in (*DEFAULT_TIERS.values(), Tier("odd", (1, 5, 5, 7), 4.0)):
        gains = cost.step_gains(tier)
        assert gains.shape == (sum(LAYERS), 3)
        assert (np.diff(gains, axis=1) <= 1e-9).all(), tier


def test_torch_rule_matches_numpy_and_relaxes_around_it() -> None:
    rng = np.random.default_rng(5)
    cost, tier = make_cost(5), DEFAULT_TIERS["low"]
    imp = rng.normal(size=(4, sum(LAYERS))).astype(np.float32)
    tc = TorchLevelCost(cost, torch.from_numpy(sizes()))
    t_imp = torch.from_numpy(imp).requires_grad_(True)
    levels, keys, threshold = tc.assign(t_imp, tier, 2.5)
    exact = assign_levels_rd(imp, sizes(), [tier] * 4, [2.5] * 4, cost)
    for row, want in zip(levels.numpy(), exact, strict=True):
        assert isinstance(want, np.ndarray)
        # Torch skips only the final "one more step if closer" fix-up.
        assert int((row != want).sum()) <= 1
        assert abs(average_bits(row, sizes(), tier) - 2.5) <= 0.1
    masks, probs = relaxed_rd_masks(keys, levels, threshold, tau=0.5)
    assert torch.equal(masks.detach().argmax(-1), levels)
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs[..., 0]), atol=1e-5)
    # Expected bits flow back to importance: more importance, more expected bits.
    bits = torch.tensor(tier.level_bits, dtype=torch.float32)
    (probs @ bits).sum().backward()
    assert t_imp.grad is not None and bool((t_imp.grad >= 0).all()) and float(t_imp.grad.sum()) > 0


def test_bad_tables_and_budgets_say_what_is_wrong() -> None:
    weights = tuple(c * w for c, w in zip(LAYERS, WIDTHS, strict=True))
    with pytest.raises(LevelCostError, match=r"\[3 layers, 8 widths\]"):
        LevelCost(np.zeros((3, 4), np.float32), LAYERS, weights)
    with pytest.raises(LevelCostError, match="finite and non-negative"):
        LevelCost(np.full((3, 8), -1.0, np.float32), LAYERS, weights)
    with pytest.raises(LevelCostError, match="finite and non-negative"):
        LevelCost(np.full((3, 8), np.nan, np.float32), LAYERS, weights)
    good = make_cost()
    with pytest.raises(LevelCostError, match="need 96"):
        LevelCost.from_bytes(good.to_bytes()[:-4], LAYERS, weights)
    again = LevelCost.from_bytes(good.to_bytes(), LAYERS, weights)
    np.testing.assert_array_equal(again.layer_loss, good.layer_loss)
    imp = np.zeros(sum(LAYERS))
    with pytest.raises(BudgetError, match=r"choose a budget in \[2, 8\]"):
        assign_levels(imp, sizes(), DEFAULT_TIERS["mid"], 1.5, good)
    with pytest.raises(BudgetError, match="covers 125 channels"):
        assign_levels(np.zeros(10), np.ones(10, np.int64), DEFAULT_TIERS["mid"], 3.0, good)
    with pytest.raises(BudgetError, match="finite"):
        assign_levels(np.full(sum(LAYERS), np.nan), sizes(), DEFAULT_TIERS["mid"], 3.0, good)


def test_coupled_threshold_makes_bits_a_zero_sum_game() -> None:
    cost, tier = make_cost(6), DEFAULT_TIERS["mid"]
    imp = torch.from_numpy(np.random.default_rng(6).normal(size=(3, sum(LAYERS))).astype(
        np.float32)).requires_grad_(True)
    tc = TorchLevelCost(cost, torch.from_numpy(sizes()))
    levels, keys, threshold = tc.assign(imp, tier, 3.0)
    bits = torch.tensor(tier.level_bits, dtype=torch.float32)
    sz = torch.from_numpy(sizes()).float()
    _, probs = relaxed_rd_masks(keys, levels, threshold, tau=0.5, step_bits=tc.step_bits(tier))
    first = LAYERS[0]
    # Expected bits of the first layer alone: it gains from its own keys, loses to the others'.
    ((probs @ bits) * sz)[:, :first].sum().backward()
    assert imp.grad is not None
    grad = imp.grad.clone()
    assert float(grad[:, :first].sum()) > 0 > float(grad[:, first:].sum())
    # The budget pins the total, so raising every key at once changes nothing.
    torch.testing.assert_close(grad.sum(1), torch.zeros(3), atol=1e-3 * float(grad.abs().sum()),
                               rtol=0)
