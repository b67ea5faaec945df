"""The quantization and budget functions CHORD's training and scoring build on, in one place."""

from __future__ import annotations

from chord.budget import assign_levels, average_bits, budget_range
from chord.quant import channel_layout, level_weights, quantize_per_channel

__all__ = [
    "assign_levels",
    "average_bits",
    "budget_range",
    "channel_layout",
    "level_weights",
    "quantize_per_channel",
]
