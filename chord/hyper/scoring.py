"""Score functions of personalized quantized backbones, usable by chord.evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from chord.hyper.personal import LevelBank, batched_call, compact_items, module_device
from chord.levels import (
    BudgetError,
    LevelCost,
    Tier,
    assign_levels_batch,
    average_bits,
    max_entropy_distribution,
)
from chord.levels.relaxed import TorchLevelCost, one_hot_levels
from chord.models import fit_length


def assign_batch(
    importance: torch.Tensor,
    sizes: np.ndarray,
    tier: Tier,
    budget_bits: float,
    cost: LevelCost | None = None,
) -> np.ndarray:
    """Levels [B, C] (uint8) for a batch of importance rows, by chord.levels' exact rule."""
    imp = importance.detach().cpu().numpy()
    rows = assign_levels_batch(imp, sizes, [tier] * len(imp), [budget_bits] * len(imp), cost)
    for row in rows:
        if isinstance(row, BudgetError):
            raise row
    return np.stack(rows).astype(np.uint8)  # type: ignore[arg-type]


def fast_assign(
    importance: torch.Tensor, sizes: torch.Tensor, tier: Tier, budget_bits: float
) -> torch.Tensor:
    """Batched levels [B, C] by chord.levels.quota's rule, without its boundary fix-up.

    Same order and level shares as assign_levels (maximum-entropy level distribution, level 3
    to the most important weight mass); only the final one-channel residual correction is
    skipped, so the mean can differ from the budget by a fraction of one channel. Used in
    training, where one call per user would dominate the step time.
    """
    p = max_entropy_distribution(tier.level_bits, budget_bits)
    dev = importance.device
    bounds = torch.tensor(np.cumsum(p[::-1])[:-1], dtype=torch.float64, device=dev)
    order = torch.argsort(-importance.detach(), dim=1, stable=True)
    s = sizes.to(device=dev, dtype=torch.float64)[order]
    total = s.sum(1, keepdim=True)
    mid = (torch.cumsum(s, 1) - 0.5 * s) / total
    sorted_levels = 3 - torch.searchsorted(bounds, mid.contiguous(), right=True)
    levels = torch.empty_like(sorted_levels)
    levels.scatter_(1, order, sorted_levels)
    return levels


class PersonalScorer:
    """Scores candidates with each user's own level assignment, applied in one batched pass.

    Importance comes from `importance_fn(profiles)`; the profile is the frozen full-precision
    backbone's encoding of the same history the prediction is made from (what the device sends).
    Records the levels it produced so callers can report their average bits.
    """

    def __init__(
        self,
        backbone: nn.Module,
        layout: Any,
        importance_fn: Callable[[torch.Tensor], torch.Tensor],
        tier: Tier,
        budget_bits: float,
        bank: LevelBank | None = None,
        chunk: int = 128,
        exact: bool = True,
        cost: LevelCost | None = None,
    ) -> None:
        """Bind a frozen backbone, an importance source and a (tier, budget)."""
        self.backbone = backbone
        self.importance_fn = importance_fn
        self.tier = tier
        self.budget_bits = float(budget_bits)
        self.bank = bank if bank is not None and bank.tier == tier else LevelBank(
            backbone, layout, tier
        )
        self.sizes = np.asarray(layout.channel_sizes(), dtype=np.int64)
        self.chunk = chunk
        self.max_len = int(backbone.max_len)  # type: ignore[arg-type]
        self.exact = exact  # False: the rules without fix-ups (training-time validation only)
        self.cost = cost  # the rate-distortion rule's table; None: quota rule
        self._torch_cost: TorchLevelCost | None = None
        self.device = module_device(backbone)  # where inputs go (chord.evaluation reads it)
        self.avg_bits: list[float] = []
        self.level_rows: list[np.ndarray] = []

    @torch.no_grad()
    def levels_for(self, seqs: torch.Tensor) -> np.ndarray:
        """Per-user levels [B, C] for histories [B, L]."""
        profiles = self.backbone.encode(seqs.to(self.device))  # type: ignore[operator]
        imp = self.importance_fn(profiles)
        if not self.exact:
            sizes = torch.from_numpy(self.sizes).to(imp.device)
            if self.cost is None:
                levels = fast_assign(imp, sizes, self.tier, self.budget_bits)
            else:
                if self._torch_cost is None:
                    self._torch_cost = TorchLevelCost(self.cost, sizes)
                levels = self._torch_cost.assign(imp, self.tier, self.budget_bits)[0]
            return levels.cpu().numpy().astype(np.uint8)
        return assign_batch(imp, self.sizes, self.tier, self.budget_bits, self.cost)

    @torch.no_grad()
    def __call__(
        self,
        seqs: torch.Tensor,
        candidates: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """seqs [B, L], candidates [B, C] (None: whole catalogue) -> each user's own scores."""
        out = []
        seqs = seqs.to(self.device)
        if candidates is not None:
            candidates = candidates.to(self.device)
        for lo in range(0, seqs.shape[0], self.chunk):
            s = seqs[lo : lo + self.chunk]
            levels = self.levels_for(s)
            self.avg_bits.extend(average_bits(row, self.sizes, self.tier) for row in levels)
            self.level_rows.append(levels)
            masks = one_hot_levels(torch.from_numpy(levels).long().to(self.device))
            if candidates is None:
                params = self.bank.mix(masks)
                out.append(batched_call(self.backbone, params, "score_all", s))
            else:
                c = candidates[lo : lo + self.chunk]
                s = fit_length(s, self.max_len)
                ids, ls, lc = compact_items(s, c)
                params = self.bank.mix(masks, ids)
                out.append(batched_call(self.backbone, params, "score_candidates", ls, lc))
        return torch.cat(out)

    def mean_avg_bits(self) -> float:
        """Mean over the users scored so far of their size-weighted average bits."""
        return float(np.mean(self.avg_bits)) if self.avg_bits else float("nan")
