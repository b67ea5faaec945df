"""The rate-distortion rule's bucketed prefix searches (numpy and compiled) equal a full sort."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from chord.levels import DEFAULT_TIERS, BudgetError, Tier
from chord.levels.rd import MAX_WIDTH, LevelCost, assign_levels_rd
from chord.levels.screen import BUDGET_TOLERANCE, descending_order, screen_rows
from chord.levels.tiers import N_LEVELS


def full_sort_rd(
    importance: np.ndarray,
    channel_sizes: np.ndarray,
    tiers: Sequence[Tier],
    budgets: Sequence[float],
    cost: LevelCost,
) -> list[np.ndarray | BudgetError]:
    """The rule as it ran before the bucketed search: every step sorted, prefix by cumsum."""
    imp = np.asarray(importance)
    sizes, out, rows = screen_rows(imp, channel_sizes, tiers, budgets)
    if not rows:
        return out
    total = float(sizes.sum())
    good = imp[rows].astype(np.float32)
    gains = np.stack([cost.step_gains(tiers[i]) for i in rows]).astype(np.float32)
    widths = np.array([tiers[i].level_bits for i in rows], dtype=np.float64)
    keys = (good[:, :, None] + gains).reshape(len(rows), -1)
    order = descending_order(keys)
    adds = (sizes[None, :, None] * np.diff(widths, axis=1)[:, None, :]).reshape(len(rows), -1)
    spent = np.concatenate(
        [np.zeros((len(rows), 1)), np.cumsum(np.take_along_axis(adds, order, axis=1), axis=1)],
        axis=1,
    ) + total * widths[:, :1]
    target = np.array([float(budgets[i]) for i in rows])[:, None] * total
    m = (spent <= target + 1e-9).sum(1) - 1
    nxt = np.minimum(m + 1, spent.shape[1] - 1)
    at_m = np.take_along_axis(spent, m[:, None], 1)[:, 0]
    at_next = np.take_along_axis(spent, nxt[:, None], 1)[:, 0]
    closer = np.abs(at_next - target[:, 0]) < np.abs(at_m - target[:, 0])
    m = np.where(closer, nxt, m)
    mean = np.where(closer, at_next, at_m) / total
    taken = np.zeros(keys.shape, dtype=np.uint8)
    np.put_along_axis(
        taken, order, (np.arange(keys.shape[1])[None, :] < m[:, None]).astype(np.uint8), axis=1
    )
    levels = taken.reshape(len(rows), -1, N_LEVELS - 1).sum(2, dtype=np.uint8)
    for j, i in enumerate(rows):
        if abs(mean[j] - float(budgets[i])) > BUDGET_TOLERANCE:
            out[i] = BudgetError(f"best {mean[j]:.3f}")
        else:
            out[i] = levels[j]
    return out


def random_case(
    rng: np.random.Generator, batch: int, ties: str
) -> tuple[np.ndarray, np.ndarray, list[Tier], list[float], LevelCost]:
    """Importance [batch, C], sizes, tiers, budgets and a cost table; `ties` shapes the keys."""
    n_layers = int(rng.integers(1, 6))
    layer_channels = tuple(int(x) for x in rng.integers(1, 300, n_layers))
    widths = rng.integers(1, 64, n_layers)
    sizes = np.repeat(widths, layer_channels).astype(np.int64)
    if ties == "varied_sizes":
        sizes = rng.integers(1, 40, sum(layer_channels)).astype(np.int64)
    b = np.arange(1, MAX_WIDTH + 1)
    table = np.stack([rng.uniform(0.1, 10) * 4.0 ** (-b) * rng.uniform(0.5, 2, 8)
                      for _ in range(n_layers)])
    if ties == "flat_table":  # equal gains everywhere: every channel's steps tie across layers
        table = np.tile(4.0 ** (-b), (n_layers, 1))
    cost = LevelCost(table.astype(np.float32), layer_channels,
                     tuple(int(c * w) for c, w in zip(layer_channels, widths, strict=True)))
    n = sum(layer_channels)
    imp = rng.normal(size=(batch, n)).astype(np.float32)
    if ties in ("few_values", "flat_table"):
        imp = rng.integers(-2, 3, (batch, n)).astype(np.float32) * np.float32(0.5)
    elif ties == "constant":
        imp[:] = np.float32(0.25)
    elif ties == "signed_zero":
        imp = np.where(rng.random((batch, n)) < 0.5, np.float32(-0.0), np.float32(0.0))
    tiers = [list(DEFAULT_TIERS.values())[int(rng.integers(0, 3))] for _ in range(batch)]
    tiers[0] = Tier("flat-top", (2, 4, 4, 4), 3.0)  # zero-bit steps
    budgets = []
    for t in tiers:
        lo, hi = min(t.level_bits), max(t.level_bits)
        choices = [lo, hi, rng.uniform(lo, hi), round(rng.uniform(lo, hi), 1)]
        budgets.append(float(rng.choice(choices)))
    return imp, sizes, tiers, budgets, cost


@pytest.mark.parametrize(
    "ties", ["none", "few_values", "constant", "signed_zero", "flat_table", "varied_sizes"]
)
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("compiled", [False, True])
def test_bucketed_prefix_matches_the_full_sort(ties: str, seed: int, compiled: bool) -> None:
    """Same levels (or the same refusal) for every row, on random batches with and without ties."""
    rng = np.random.default_rng([seed, len(ties)])
    imp, sizes, tiers, budgets, cost = random_case(rng, int(rng.integers(1, 40)), ties)
    got = assign_levels_rd(imp, sizes, tiers, budgets, cost, compiled=compiled)
    want = full_sort_rd(imp, sizes, tiers, budgets, cost)
    assert len(got) == len(want)
    for row, (g, w) in enumerate(zip(got, want, strict=True)):
        if isinstance(w, BudgetError):
            assert isinstance(g, BudgetError), f"row {row}: expected a refusal"
        else:
            assert isinstance(g, np.ndarray), f"row {row}: {g}"
            np.testing.assert_array_equal(g, w, err_msg=f"row {row}, {ties}")


@pytest.mark.parametrize("compiled", [False, True])
def test_rows_of_the_real_size_match(compiled: bool) -> None:
    """A batch of 32 at the served run's scale (2,501 channels over many layers)."""
    rng = np.random.default_rng(7)
    layer_channels = tuple([1001, 50] + [64] * 21 + [48])
    n = sum(layer_channels)
    widths = np.array([64] * len(layer_channels))
    b = np.arange(1, MAX_WIDTH + 1)
    table = np.stack([rng.uniform(0.1, 10) * 4.0 ** (-b) for _ in layer_channels])
    cost = LevelCost(table.astype(np.float32), layer_channels,
                     tuple(int(c * 64) for c in layer_channels))
    sizes = np.repeat(widths, layer_channels).astype(np.int64)
    imp = rng.normal(size=(32, n)).astype(np.float32)
    tiers = [DEFAULT_TIERS[name] for name in ("low", "mid", "high") for _ in range(11)][:32]
    budgets = [t.default_budget_bits for t in tiers]
    got = assign_levels_rd(imp, sizes, tiers, budgets, cost, compiled=compiled)
    want = full_sort_rd(imp, sizes, tiers, budgets, cost)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
