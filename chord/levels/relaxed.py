"""The level rules relaxed for training: straight-through level masks with soft probabilities.

The forward pass keeps the hard levels a rule chose (so the budget holds exactly); the backward
pass differentiates soft level probabilities placed around each user's thresholds.
"""

from __future__ import annotations

import torch

from chord.levels.rd import LevelCost
from chord.levels.tiers import N_LEVELS, Tier


def one_hot_levels(levels: torch.Tensor) -> torch.Tensor:
    """Levels [B, C] (0..3) -> float one-hot [B, C, 4]."""
    return torch.nn.functional.one_hot(levels.long(), N_LEVELS).float()


def relaxed_masks(
    importance: torch.Tensor, hard: torch.Tensor, tau: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through level masks and their soft probabilities, both [B, C, 4].

    The hard levels (from assign_levels, which meets the budget) fix three thresholds per user
    between adjacent levels; p(level >= k) = sigmoid((s - t_k) / (tau * std(s))). The forward
    pass uses the hard one-hot, the backward pass the soft probabilities.
    """
    s = importance
    scale = s.detach().std(dim=1, keepdim=True).clamp_min(1e-6) * tau
    big = torch.finfo(s.dtype).max / 4
    ge = [torch.ones_like(s)]
    for k in (1, 2, 3):
        hi = torch.where(hard >= k, s.detach(), torch.full_like(s, big)).amin(1, keepdim=True)
        lo = torch.where(hard < k, s.detach(), torch.full_like(s, -big)).amax(1, keepdim=True)
        # Empty sides put the threshold just beyond the other side's extreme.
        inner = torch.where(lo <= -big, hi - scale * 8, (hi + lo) / 2)
        t = torch.where(hi >= big, lo + scale * 8, inner)
        ge.append(torch.sigmoid((s - t) / scale))
    ge.append(torch.zeros_like(s))
    probs = torch.stack([ge[k] - ge[k + 1] for k in range(4)], dim=-1).clamp_min(0.0)
    hard_1h = one_hot_levels(hard)
    return hard_1h + probs - probs.detach(), probs


def expected_bits(probs: torch.Tensor, sizes: torch.Tensor, tier: Tier) -> torch.Tensor:
    """Size-weighted expected bits per weight of soft level choices [B, C, 4] -> [B]."""
    bits = torch.tensor(tier.level_bits, dtype=probs.dtype, device=probs.device)
    per_channel = probs @ bits
    return (per_channel * sizes).sum(1) / sizes.sum()


class TorchLevelCost:
    """The rule in torch for training: hard levels, and the threshold that relaxes them."""

    def __init__(self, cost: LevelCost, sizes: torch.Tensor) -> None:
        """Keep the channel sizes on their device; step gains are built per tier on demand."""
        self.cost = cost
        self.sizes = sizes.to(torch.float64)
        self._gains: dict[tuple[int, ...], torch.Tensor] = {}

    def gains(self, tier: Tier) -> torch.Tensor:
        """[C, 3] log gain per bit (float32) on the sizes' device."""
        key = tier.level_bits
        if key not in self._gains:
            self._gains[key] = torch.from_numpy(self.cost.step_gains(tier)).to(
                device=self.sizes.device, dtype=torch.float32
            )
        return self._gains[key]

    def step_bits(self, tier: Tier) -> torch.Tensor:
        """[C, 3] bits each level step adds (channel size x width difference), float64."""
        widths = torch.tensor(tier.level_bits, dtype=torch.float64, device=self.sizes.device)
        return self.sizes[:, None] * torch.diff(widths)[None, :]

    def assign(
        self, importance: torch.Tensor, tier: Tier, budget: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(levels [B, C] long, step keys [B, C, 3], threshold [B, 1]) without the fix-ups.

        The threshold lies halfway between the last step taken and the first one left, so
        sigmoid((key - threshold) / T) relaxes "step taken" around the hard choice.
        """
        keys = importance.detach().float()[:, :, None] + self.gains(tier)[None]  # [B, C, 3]
        adds = self.step_bits(tier).reshape(-1)
        flat = keys.reshape(len(keys), -1)
        sorted_keys, order = torch.sort(flat, dim=1, descending=True, stable=True)
        spent = self.sizes.sum() * tier.level_bits[0] + torch.cumsum(adds[order], dim=1)
        target = float(budget) * float(self.sizes.sum())
        m = (spent <= target + 1e-9).sum(1, keepdim=True)  # steps taken per row
        taken_sorted = torch.arange(flat.shape[1], device=keys.device)[None, :] < m
        taken = torch.zeros_like(taken_sorted).scatter(1, order, taken_sorted)
        levels = taken.reshape(keys.shape).sum(2)
        big = torch.finfo(torch.float32).max / 4
        last = torch.where(m > 0, sorted_keys.gather(1, (m - 1).clamp_min(0)),
                           sorted_keys[:, :1] + 1.0)
        first = torch.where(m < flat.shape[1],
                            sorted_keys.gather(1, m.clamp_max(flat.shape[1] - 1)),
                            torch.full_like(last, -big))
        threshold = torch.where(first <= -big, last - 1.0, (last + first) / 2)
        return levels, importance[:, :, None] + self.gains(tier)[None], threshold


def relaxed_rd_masks(
    keys: torch.Tensor,
    levels: torch.Tensor,
    threshold: torch.Tensor,
    tau: float,
    step_bits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through masks and soft probabilities [B, C, 4] for rate-distortion levels.

    p(level >= k) = sigmoid((key_k - threshold) / tau); keys fall with k, so these are ordered.
    The forward pass uses the hard one-hot of `levels`, the backward pass the soft probabilities.
    With `step_bits` [C, 3] (bits each step adds) the threshold moves with the keys as the
    budget makes it (implicit function, first order): raising every key then changes nothing,
    and a channel gains bits only at the expense of others.
    """
    tau = max(tau, 1e-6)
    if step_bits is not None:
        soft = torch.sigmoid((keys - threshold[:, :, None]) / tau)
        bits = step_bits.to(soft.dtype)
        spent = (soft * bits).sum((1, 2))
        slope = (soft * (1 - soft) * bits).sum((1, 2)).detach() / tau
        shift = (spent - spent.detach()) / slope.clamp_min(1e-12)
        threshold = threshold + shift[:, None]
    ge = torch.sigmoid((keys - threshold[:, :, None]) / tau)  # [B, C, 3]
    ones = torch.ones_like(ge[..., :1])
    zeros = torch.zeros_like(ge[..., :1])
    cum = torch.cat([ones, ge, zeros], dim=-1)
    probs = (cum[..., :-1] - cum[..., 1:]).clamp_min(0.0)
    hard = one_hot_levels(levels)
    return hard + probs - probs.detach(), probs


__all__ = [
    "TorchLevelCost",
    "expected_bits",
    "one_hot_levels",
    "relaxed_masks",
    "relaxed_rd_masks",
]
