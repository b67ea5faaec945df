"""Domain types of a strategy exchange, free of any wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from chord.codes import EncodedStrategy


class ImportanceModel(Protocol):
    """Anything that turns user profiles into one importance score per backbone channel."""

    profile_dim: int
    n_channels: int

    def importance(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] float32 -> [B, n_channels] float32 (higher = keep more bits)."""
        ...


@dataclass(frozen=True)
class StrategyRequest:
    """What a device asks for: its tier, its budget and a profile of the user's interests."""

    device_id: str
    request_id: str
    backbone_version: str
    tier: str
    budget_bits: float
    profile: np.ndarray | None = None  # float32 [profile_dim]
    recent_items: np.ndarray | None = None  # int64 item ids, oldest first
    reference_id: str = ""  # the spec reference the device holds; "" = no delta codes


@dataclass(frozen=True)
class StrategyResult:
    """What the cloud answers: the encoded levels and how they were chosen."""

    request_id: str
    code: EncodedStrategy
    level_counts: tuple[int, int, int, int]
    avg_bits: float
    timings: dict[str, float] = field(default_factory=dict)
