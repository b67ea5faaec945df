"""The rate-distortion level rule: measured per-layer loss of each width, and bits where they pay.

A run measures, once on training data, how much the loss grows when one layer alone is
quantized at each width 1..8 (`layer_loss[L, b - 1]`). A channel c of layer L at width b then
costs `exp(importance_c) * layer_loss[L, b - 1] * n_c / N_L` (n_c weights of the layer's N_L),
and the rule picks levels that minimise the summed cost under the bit budget: every move of a
channel from one level to the next is a step with a gain per bit, and steps are taken best
first until the budget is spent. Importance is therefore a log-multiplier on a channel's share
of its layer's measured loss, and one small table (layers x 8 floats) is all a device needs to
derive the same levels from a reference importance.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chord.levels.screen import BUDGET_TOLERANCE, screen_rows
from chord.levels.tiers import N_LEVELS, BudgetError, Tier

MAX_WIDTH = 8
_FLOOR = 1e-12  # relative floor on a step's gain, so steps that buy nothing are taken last


class LevelCostError(ValueError):
    """A layer-loss table that does not fit the layout or holds impossible values."""


@dataclass(frozen=True)
class LevelCost:
    """Per-layer loss increase at each width, and where each layer's channels sit."""

    layer_loss: np.ndarray  # float32 [n_layers, 8]: column b - 1 = loss growth at b bits
    layer_channels: tuple[int, ...]  # channels per layer, in layout order
    layer_weights: tuple[int, ...]  # weights per layer (N_L)

    def __post_init__(self) -> None:
        """Validate the table's shape and values against the layer counts."""
        loss = np.asarray(self.layer_loss, dtype=np.float32)
        n = len(self.layer_channels)
        if loss.shape != (n, MAX_WIDTH) or len(self.layer_weights) != n:
            raise LevelCostError(
                f"layer loss table must be [{n} layers, {MAX_WIDTH} widths] with one weight count "
                f"per layer, got {loss.shape} and {len(self.layer_weights)} counts"
            )
        if not np.isfinite(loss).all() or (loss < 0).any():
            raise LevelCostError("layer loss values must be finite and non-negative")
        if min(self.layer_channels, default=1) <= 0 or min(self.layer_weights, default=1) <= 0:
            raise LevelCostError("every layer needs at least one channel and one weight")
        object.__setattr__(self, "layer_loss", loss)
        object.__setattr__(self, "_gains", {})

    @classmethod
    def from_layout(cls, layer_loss: np.ndarray, layout: object) -> LevelCost:
        """Bind a table to a chord.quant ChannelLayout (or anything with `.layers`)."""
        layers = list(layout.layers)  # type: ignore[attr-defined]
        return cls(
            np.asarray(layer_loss, dtype=np.float32),
            tuple(int(x.n_channels) for x in layers),
            tuple(int(x.n_channels) * int(x.channel_size) for x in layers),
        )

    @classmethod
    def from_bytes(
        cls, raw: bytes, layer_channels: Sequence[int], layer_weights: Sequence[int]
    ) -> LevelCost:
        """Parse the spec's little-endian float32 table (what `to_bytes` wrote)."""
        n = len(layer_channels)
        if len(raw) != n * MAX_WIDTH * 4:
            raise LevelCostError(
                f"level cost has {len(raw)} bytes; {n} layers need {n * MAX_WIDTH * 4} "
                f"(float32, {MAX_WIDTH} widths per layer)"
            )
        table = np.frombuffer(raw, dtype="<f4").reshape(n, MAX_WIDTH)
        return cls(table.copy(), tuple(map(int, layer_channels)), tuple(map(int, layer_weights)))

    def to_bytes(self) -> bytes:
        """The table as little-endian float32 bytes, row-major."""
        return np.ascontiguousarray(self.layer_loss, dtype="<f4").tobytes()

    @property
    def n_channels(self) -> int:
        """Channels over all layers."""
        return sum(self.layer_channels)

    def layer_of(self) -> np.ndarray:
        """Layer index of every channel (int64 [n_channels])."""
        return np.repeat(np.arange(len(self.layer_channels)), self.layer_channels)

    def step_gains(self, tier: Tier) -> np.ndarray:
        """Log gain per bit of each level step, per channel (float64 [n_channels, 3]; cached,
        do not modify)."""
        cache: dict[tuple[int, ...], np.ndarray] = self._gains  # type: ignore[attr-defined]
        if tier.level_bits not in cache:
            per_layer = _layer_steps(
                self.layer_loss.tobytes(), self.layer_weights, tier.level_bits
            )
            cache[tier.level_bits] = per_layer[self.layer_of()]
        return cache[tier.level_bits]


@functools.lru_cache(maxsize=64)
def _layer_steps(
    table: bytes, layer_weights: tuple[int, ...], level_bits: tuple[int, ...]
) -> np.ndarray:
    """[n_layers, 3] log gain per bit of the steps level k-1 -> k, non-increasing in k.

    The gain of a step is the loss it removes per bit it adds, per weight of the layer. Gains
    are pooled where a later step would pay more than an earlier one (the lower convex hull of
    the layer's loss-vs-bits curve), so a channel is never worth raising two levels but not one.
    """
    loss = np.frombuffer(table, dtype=np.float32).reshape(len(layer_weights), MAX_WIDTH)
    loss = loss.astype(np.float64)
    # A wider grid never does worse: make the measured curve non-increasing in width.
    loss = np.minimum.accumulate(loss, axis=1)
    widths = np.asarray(level_bits, dtype=np.int64)
    at = loss[:, widths - 1]  # [L, 4]
    floor = _FLOOR * max(float(loss.max()), 1e-30)
    out = np.empty((len(layer_weights), N_LEVELS - 1))
    for i, n_weights in enumerate(layer_weights):
        # Pool-adjacent-violators over steps weighted by their bits (zero-bit steps join the
        # previous step: they change nothing).
        blocks: list[list[float]] = []  # [gain_sum, bits, n_steps]
        for k in range(1, N_LEVELS):
            bits = float(widths[k] - widths[k - 1])
            drop = max(float(at[i, k - 1] - at[i, k]), 0.0)
            blocks.append([drop, bits, 1.0])
            while len(blocks) > 1 and _rate(blocks[-1]) > _rate(blocks[-2]):
                last = blocks.pop()
                blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1],
                              blocks[-1][2] + last[2]]
        gains = [g for b in blocks for g in [_rate(b)] * int(b[2])]
        out[i] = np.log(np.maximum(gains, floor) / n_weights)
    return out


def _rate(block: list[float]) -> float:
    """Gain per bit of a pooled block; a block that adds no bits ranks as its gain alone."""
    return block[0] / block[1] if block[1] > 0 else float("inf") if block[0] > 0 else 0.0


def assign_levels_rd(
    importance: np.ndarray,
    channel_sizes: np.ndarray,
    tiers: Sequence[Tier],
    budgets: Sequence[float],
    cost: LevelCost,
    compiled: bool = False,
) -> list[np.ndarray | BudgetError]:
    """Levels [C] per row of importance [B, C] by the rate-distortion rule (see module doc).

    Steps are ranked by importance + log gain per bit (ties by step index); each row takes the
    longest prefix that keeps its size-weighted mean within budget, plus the next step if that
    lands closer. A row that cannot come within 0.1 bit gets a BudgetError in place of levels.
    The prefix is found without sorting all 3C steps: in numpy (`_prefix_within_budget`), or
    with `compiled` in one numba pass per row (chord.levels.rd_kernel, about 5x less CPU; it
    loads numba and compiles or loads the kernel on first use, so the server takes it and a
    device does not). Both give the same levels.
    """
    imp = np.asarray(importance)
    sizes, out, rows = screen_rows(imp, channel_sizes, tiers, budgets)
    if cost.n_channels != imp.shape[1]:
        raise BudgetError(
            f"the level cost covers {cost.n_channels} channels but importance has {imp.shape[1]}"
        )
    if not rows:
        return out
    n_steps = N_LEVELS - 1
    total = float(sizes.sum())
    good = imp[rows].astype(np.float32)
    widths = np.array([tiers[i].level_bits for i in rows], dtype=np.float64)  # [R, 4]
    # Rows share a few tiers: gains (float32) and bits per step once per tier, then one gather.
    kinds = sorted({tiers[i].level_bits for i in rows})
    kind = np.array([kinds.index(tiers[i].level_bits) for i in rows], dtype=np.intp)
    gains = np.stack([cost.step_gains(tiers[next(i for i in rows if tiers[i].level_bits == k)])
                      for k in kinds]).astype(np.float32)  # [T, C, 3]
    step_bits = np.diff(np.array(kinds, dtype=np.float64), axis=1)  # [T, 3]
    target = np.array([float(budgets[i]) for i in rows]) * total
    if compiled:
        from chord.levels.rd_kernel import rd_levels

        levels = np.empty(good.shape, dtype=np.uint8)
        spent = np.empty(len(rows))
        rd_levels(good, gains, kind, sizes.astype(np.float64), step_bits, total * widths[:, 0],
                  target, levels, spent)
    else:
        keys = np.add(good[:, :, None], gains[kind] if len(kinds) > 1 else gains[0])
        keys = keys.reshape(len(rows), -1)  # [R, 3C] float32
        adds_by_kind = (sizes[None, :, None] * step_bits[:, None, :]).reshape(len(kinds), -1)
        adds = adds_by_kind[kind]  # [R, 3C] float64
        taken, spent = _prefix_within_budget(keys, adds, total * widths[:, 0], target)
        steps = taken.view(np.uint8).reshape(len(rows), -1, n_steps)
        levels = steps[:, :, 0] + steps[:, :, 1] + steps[:, :, 2]
    mean = spent / total
    for j, i in enumerate(rows):
        if abs(mean[j] - float(budgets[i])) > BUDGET_TOLERANCE:
            out[i] = BudgetError(
                f"channel sizes are too coarse to land within {BUDGET_TOLERANCE} bit of "
                f"{budgets[i]} for tier {tiers[i].name!r} (best {mean[j]:.3f})"
            )
        else:
            out[i] = levels[j]
    return out


_N_BUCKETS = 4096  # key ranges per row; only the one where the budget runs out is sorted


def _prefix_within_budget(
    keys: np.ndarray, adds: np.ndarray, base: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the steps to take: (taken bool [R, n], bits spent [R] float64).

    keys: float32 [R, n], finite; steps are taken in descending key order, ties by step index.
    adds: bits each step adds (float64 [R, n], integer-valued, >= 0); base: bits before any
    step [R]; target: the budget in bits [R]. The rule: take the longest prefix m whose bits
    stay within target (+1e-9), then step m + 1 too if that lands closer to target.

    Instead of sorting all n keys, each row's key range is cut into 4,096 equal ranges (a
    monotone map, so equal keys share a range and a range holds a contiguous run of the order),
    bits are summed per range with one bincount, and only the steps of the range where the
    budget runs out are sorted. Bits are integer-valued, so every partial sum is exact in
    float64 and equal to the full sort's cumulative sums: the result is identical.
    """
    n_rows = keys.shape[0]
    kmax = keys.max(axis=1)
    span = kmax.astype(np.float64) - keys.min(axis=1)
    # Ranges 0..4094 (the 0.5 margin keeps float rounding inside the row's own ranges).
    scale = np.where(span > 0, (_N_BUCKETS - 1.5) / np.where(span > 0, span, 1.0), 0.0)
    offset = np.arange(n_rows, dtype=np.float64) * _N_BUCKETS
    dtype = np.float32 if np.isfinite(span).all() and n_rows * _N_BUCKETS < 1 << 23 else np.float64
    pos = np.subtract(kmax[:, None], keys, dtype=dtype)
    pos *= scale[:, None].astype(dtype)
    pos += offset[:, None].astype(dtype)
    flat = pos.astype(np.intp)  # row * 4096 + range, non-decreasing along the step order
    per_bucket = np.bincount(
        flat.ravel(), weights=adds.ravel(), minlength=n_rows * _N_BUCKETS
    ).reshape(n_rows, _N_BUCKETS)
    after = np.cumsum(per_bucket, axis=1) + base[:, None]  # bits after each whole range
    limit = target + 1e-9
    cross = (after <= limit[:, None]).sum(1)  # first range that overshoots (4096: none does)
    first_out = cross + np.arange(n_rows, dtype=np.intp) * _N_BUCKETS
    taken = flat < first_out[:, None]
    spent = after[:, -1].copy()
    live = np.flatnonzero(cross < _N_BUCKETS)
    if live.size == 0:
        return taken, spent
    before = np.where(cross > 0, after[np.arange(n_rows), np.maximum(cross - 1, 0)], base)
    sel = np.full(n_rows, -1, dtype=np.intp)
    sel[live] = first_out[live]
    r_idx, c_idx = np.nonzero(flat == sel[:, None])  # the overshooting range's steps
    # Their order: by row, then descending key (-0.0 ties 0.0), then step index.
    order = np.lexsort((c_idx, -keys[r_idx, c_idx] + np.float32(0.0), r_idx))
    r_s, c_s = r_idx[order], c_idx[order]
    add_s = adds[r_s, c_s]
    seg_len = np.bincount(r_s, minlength=n_rows)
    seg_start = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
    csum = np.cumsum(add_s)
    offset = np.zeros(n_rows)  # the running sum where each row's segment begins
    offset[live] = (csum - add_s)[seg_start[live]]
    # Bits spent after taking the range's steps up to and including this one.
    at = before[r_s] + (csum - offset[r_s])
    k = np.bincount(r_s, weights=(at <= limit[r_s]), minlength=n_rows).astype(np.intp)
    # k < seg_len on live rows: the range as a whole overshoots the budget.
    start = seg_start[live]
    at_m = np.where(k[live] > 0, at[start + np.maximum(k[live] - 1, 0)], before[live])
    at_next = at[start + k[live]]
    closer = np.abs(at_next - target[live]) < np.abs(at_m - target[live])
    spent[live] = np.where(closer, at_next, at_m)
    m = np.zeros(n_rows, dtype=np.intp)
    m[live] = k[live] + closer
    rank = np.arange(r_s.size) - seg_start[r_s]
    pick = rank < m[r_s]
    taken[r_s[pick], c_s[pick]] = True
    return taken, spent


__all__ = ["MAX_WIDTH", "LevelCost", "LevelCostError", "assign_levels_rd"]
