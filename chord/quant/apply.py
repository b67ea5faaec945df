"""Apply a per-channel bit assignment to a frozen backbone (fake-quantized reference path)."""

from __future__ import annotations

import copy
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from chord.quant.layout import ChannelLayout, LayoutError, channel_layout
from chord.quant.quantizer import quantize_per_channel

M = TypeVar("M", bound=nn.Module)


def _check_bits_array(layout: ChannelLayout, bits_per_channel: np.ndarray) -> np.ndarray:
    """A flat int64 copy of the assignment, or LayoutError if its length is wrong."""
    bits = np.asarray(bits_per_channel).reshape(-1).astype(np.int64)
    if bits.shape[0] != layout.n_channels:
        raise LayoutError(
            f"bit assignment has {bits.shape[0]} entries but the model has "
            f"{layout.n_channels} channels; send one bit-width per channel in layout order"
        )
    return bits


@torch.no_grad()
def quantize_backbone(
    model: M,
    bits_per_channel: np.ndarray,
    clip: str = "maxabs",
    layout: ChannelLayout | None = None,
) -> M:
    """A frozen eval-mode copy of `model` whose quantizable weights are fake-quantized.

    One pass over the layers without autograd; `model` itself is left untouched. Channels
    marked 32 bits stay full precision; biases and norms are always fp32.
    """
    layout = layout or channel_layout(model)
    bits = _check_bits_array(layout, bits_per_channel)
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    for layer, layer_bits in zip(layout.layers, layout.split(bits).values(), strict=True):
        module = modules[layer.name]
        weight = module.weight
        if not isinstance(weight, torch.Tensor):
            raise LayoutError(f"layer {layer.name!r} has no weight tensor")
        weight.copy_(quantize_per_channel(weight, layer_bits, clip))
    clone.eval()
    clone.requires_grad_(False)
    return clone


__all__ = ["quantize_backbone"]
