"""A device's adaptation step: decode a strategy code and build the quantized scoring runtime."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from chord.codes import EncodedStrategy, decode_levels
from chord.levels import Tier, levels_to_bits
from chord.models.base import Backbone
from chord.quant.apply import quantize_backbone
from chord.quant.layout import ChannelLayout, channel_layout
from chord.quant.lowbit import to_lowbit
from chord.quant.onnx_runtime import to_ort
from chord.quant.quantizer import QuantError

RUNTIMES: tuple[str, ...] = ("ort", "int8", "packed", "fake")
MODES = RUNTIMES  # the name adapt_backbone's argument had first
# The device default: the fastest supported path that keeps each channel's bits in packed
# storage (benchmarks/RESULTS.md, "inference": ORT with 4/8-bit layers and item tables in 4-bit
# units beat 2/4/8-bit storage, tables split by width, and the PyTorch runtimes at batch 1).
DEVICE_RUNTIME = "ort"
DEVICE_WIDTHS: tuple[int, ...] = (4, 8)
DEVICE_TABLES = "nibbles"
# A device opens one ORT session per strategy and scores a few targets with it. ORT's graph
# rewrites ("all") cost ~3.5 ms of the ~6.3 ms a session takes to open on the default
# SASRec (ml-100k) and save nothing measurable per query (0.168 vs 0.169 ms, scores equal to
# ~1e-5), so the device opens its sessions unoptimized (benchmarks/RESULTS.md, fleet_scale).
DEVICE_GRAPH_OPTIMIZATION = "none"


class Scorer(Protocol):
    """What every runtime offers a device: batch scoring of candidates or of the catalogue."""

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of the given items: seqs [B, L], candidates [B, C] -> [B, C]."""
        ...

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the catalogue: [B, n_items + 1] (column 0 is the padding item)."""
        ...


def strategy_bits(
    code: EncodedStrategy, tier: Tier, expected_version: str, layout: ChannelLayout
) -> np.ndarray:
    """Bit-width per channel from a code (raises chord.codes.CodeError on a bad code)."""
    levels = decode_levels(code, expected_version, layout.n_channels)
    return levels_to_bits(levels, tier).astype(np.int64)


def build_runtime(
    model: nn.Module,
    bits: np.ndarray,
    runtime: str = DEVICE_RUNTIME,
    layout: ChannelLayout | None = None,
    clip: str = "maxabs",
    threads: int = 1,
) -> Scorer:
    """The scoring runtime of `model` quantized to `bits` (int [n_channels], 1..8 each).

    runtime "ort": ONNX Runtime on the CPU provider, each layer stored packed at the smallest of
    DEVICE_WIDTHS bits holding its widest channel and item tables in 4-bit units (MatMulNBits,
    GatherBlockQuantized; `threads` intra-op threads; graph optimization
    DEVICE_GRAPH_OPTIMIZATION); "int8": the eager PyTorch runtime on
    int8 weights (`to_lowbit`); "packed": the same with bit-packed item tables; "fake": a
    fake-quantized copy of the backbone (`quantize_backbone`, the numerical reference).
    `model` is left untouched. Raises QuantError for an unknown runtime or bits outside 1..8.
    """
    if runtime not in RUNTIMES:
        raise QuantError(f"unknown runtime {runtime!r}; use one of {RUNTIMES}")
    layout = layout or channel_layout(model)
    if runtime == "ort":
        return to_ort(
            model,
            bits,
            clip=clip,
            layout=layout,
            widths=DEVICE_WIDTHS,
            tables=DEVICE_TABLES,
            threads=threads,
            optimization=DEVICE_GRAPH_OPTIMIZATION,
        )
    if runtime == "fake":
        if not isinstance(model, Backbone):
            raise QuantError(f"the fake runtime needs a Backbone, got {type(model).__name__}")
        return quantize_backbone(model, bits, clip=clip, layout=layout)
    table = "packed" if runtime == "packed" else "int8"
    return to_lowbit(model, bits, clip=clip, layout=layout, table=table)


def adapt_backbone(
    model: Backbone,
    code: EncodedStrategy,
    tier: Tier,
    expected_version: str,
    mode: str = DEVICE_RUNTIME,
    layout: ChannelLayout | None = None,
    clip: str = "maxabs",
) -> Scorer:
    """Decode, map levels to the tier's bits and build the runtime `mode` (see build_runtime).

    Raises chord.codes.CodeError on a bad code and QuantError on an unknown mode.
    """
    if mode not in RUNTIMES:
        raise QuantError(f"unknown adaptation mode {mode!r}; use one of {RUNTIMES}")
    layout = layout or channel_layout(model)
    bits = strategy_bits(code, tier, expected_version, layout)
    return build_runtime(model, bits, mode, layout, clip)


__all__ = [
    "DEVICE_GRAPH_OPTIMIZATION",
    "DEVICE_RUNTIME",
    "DEVICE_TABLES",
    "DEVICE_WIDTHS",
    "MODES",
    "RUNTIMES",
    "Scorer",
    "adapt_backbone",
    "build_runtime",
    "strategy_bits",
]
