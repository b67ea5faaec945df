"""One row of the accuracy table and the helpers that fill it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
COLUMNS = (
    "method", "backbone_mode", "avg_bits", *METRICS, "bytes_down_per_user", "adapt_ms",
)


@dataclass
class MethodRow:
    """A method's test accuracy at a measured average precision, and what it costs per user.

    per_user: its NDCG@10 per test user [n_test] in split order (NaN: not evaluated), kept for
    paired comparisons and left out of the JSON row.
    """

    method: str
    backbone_mode: str
    avg_bits: float
    metrics: dict[str, float]
    bytes_down_per_user: float = 0.0
    adapt_ms: float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    per_user: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of `chord eval`."""
        row: dict[str, Any] = {
            "method": self.method,
            "backbone_mode": self.backbone_mode,
            "avg_bits": round(float(self.avg_bits), 4),
            **{k: round(float(self.metrics[k]), 5) for k in METRICS},
            "bytes_down_per_user": round(float(self.bytes_down_per_user), 1),
            "adapt_ms": round(float(self.adapt_ms), 3),
        }
        if self.notes:
            row["notes"] = self.notes
        row.update(self.extra)
        return row


def size_weighted_bits(bits_per_channel: np.ndarray, channel_sizes: np.ndarray) -> float:
    """Mean bits per quantizable weight of a per-channel assignment."""
    sizes = np.asarray(channel_sizes, dtype=np.float64)
    return float((np.asarray(bits_per_channel, dtype=np.float64) * sizes).sum() / sizes.sum())
