"""Per-channel mixed-precision quantization of a frozen backbone: quantizer, packing, kernels."""

from chord.quant.adapt import (
    DEVICE_RUNTIME,
    RUNTIMES,
    Scorer,
    adapt_backbone,
    build_runtime,
    strategy_bits,
)
from chord.quant.apply import quantize_backbone
from chord.quant.layout import ChannelLayer, ChannelLayout, LayoutError, channel_layout
from chord.quant.lowbit import KERNELS, LowBitBackbone, to_lowbit
from chord.quant.packing import PackingError, pack_signed, unpack_signed
from chord.quant.quantizer import (
    CLIP_METHODS,
    FULL_PRECISION_BITS,
    QuantError,
    dequantize,
    level_weights,
    quantize_int,
    quantize_per_channel,
)
from chord.quant.storage import (
    PackedWeight,
    fp32_model_bytes,
    other_param_bytes,
    pack_weight,
    packed_model_bytes,
)

__all__ = [
    "CLIP_METHODS",
    "DEVICE_RUNTIME",
    "FULL_PRECISION_BITS",
    "KERNELS",
    "RUNTIMES",
    "ChannelLayer",
    "ChannelLayout",
    "LayoutError",
    "LowBitBackbone",
    "PackedWeight",
    "PackingError",
    "QuantError",
    "Scorer",
    "adapt_backbone",
    "build_runtime",
    "channel_layout",
    "dequantize",
    "fp32_model_bytes",
    "level_weights",
    "other_param_bytes",
    "pack_signed",
    "pack_weight",
    "packed_model_bytes",
    "quantize_backbone",
    "quantize_int",
    "quantize_per_channel",
    "strategy_bits",
    "to_lowbit",
    "unpack_signed",
]
