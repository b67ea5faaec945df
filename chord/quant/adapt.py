"""A device's adaptation step: decode a strategy code and quantize the frozen backbone."""

from __future__ import annotations

import numpy as np

from chord.codes import EncodedStrategy, decode_levels
from chord.levels import Tier, levels_to_bits
from chord.models.base import Backbone
from chord.quant.apply import quantize_backbone
from chord.quant.layout import ChannelLayout, channel_layout
from chord.quant.lowbit import LowBitBackbone, to_lowbit
from chord.quant.quantizer import QuantError

MODES: tuple[str, ...] = ("int8", "packed", "fake")


def strategy_bits(
    code: EncodedStrategy, tier: Tier, expected_version: str, layout: ChannelLayout
) -> np.ndarray:
    """Bit-width per channel from a code (raises chord.codes.CodeError on a bad code)."""
    levels = decode_levels(code, expected_version, layout.n_channels)
    return levels_to_bits(levels, tier).astype(np.int64)


def adapt_backbone(
    model: Backbone,
    code: EncodedStrategy,
    tier: Tier,
    expected_version: str,
    mode: str = "int8",
    layout: ChannelLayout | None = None,
    clip: str = "maxabs",
) -> Backbone | LowBitBackbone:
    """Decode, map levels to the tier's bits and build the quantized model in one pass.

    mode "int8": int8-kernel runtime (`to_lowbit`); "packed": the same with bit-packed item
    tables; "fake": fake-quantized copy of the backbone (`quantize_backbone`). Every result
    offers encode / score_candidates / score_all; `model` is left untouched.
    """
    if mode not in MODES:
        raise QuantError(f"unknown adaptation mode {mode!r}; use one of {MODES}")
    layout = layout or channel_layout(model)
    bits = strategy_bits(code, tier, expected_version, layout)
    if mode == "fake":
        return quantize_backbone(model, bits, clip=clip, layout=layout)
    table = "packed" if mode == "packed" else "int8"
    return to_lowbit(model, bits, clip=clip, layout=layout, table=table)


__all__ = ["MODES", "adapt_backbone", "strategy_bits"]
