"""Packed storage of mixed-precision weights: sub-byte payload per bit-width plus scales."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chord.quant.layout import ChannelLayout, LayoutError
from chord.quant.packing import (
    pack_rows,
    packed_nbytes,
    signed_to_uint,
    uint_to_signed,
    unpack_rows,
)
from chord.quant.quantizer import FULL_PRECISION_BITS, bits_vector, quantize_int

SCALE_BYTES = 4  # one float32 scale per quantized channel
FP32_BYTES = 4


@dataclass(frozen=True)
class PackedGroup:
    """The channels of one layer that share a bit-width, packed row by row."""

    bits: int
    rows: np.ndarray  # int64 channel indices within the layer
    payload: np.ndarray  # uint8 [len(rows), ceil(channel_size * bits / 8)], or float32 rows


@dataclass(frozen=True)
class PackedWeight:
    """One quantized weight as it is held at rest: packed groups plus a float32 scale each."""

    shape: tuple[int, ...]
    bits: np.ndarray  # int64 [out]
    scales: np.ndarray  # float32 [out] (unused for full-precision channels)
    groups: tuple[PackedGroup, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the packed payload plus scales (full-precision channels: 4 bytes a weight)."""
        payload = sum(int(g.payload.nbytes) for g in self.groups)
        n_scaled = int((self.bits != FULL_PRECISION_BITS).sum())
        return payload + SCALE_BYTES * n_scaled

    def unpack_int(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q int8 [out, ...], scale float32 [out]); full-precision channels are not allowed."""
        if (self.bits == FULL_PRECISION_BITS).any():
            raise LayoutError("unpack_int needs every channel quantized; use dequantize()")
        out, size = self.shape[0], int(np.prod(self.shape[1:]))
        q = np.zeros((out, size), dtype=np.int8)
        for g in self.groups:
            q[g.rows] = uint_to_signed(unpack_rows(g.payload, g.bits, size), g.bits)
        return torch.from_numpy(q).reshape(self.shape), torch.from_numpy(self.scales.copy())

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these bytes stand for."""
        out, size = self.shape[0], int(np.prod(self.shape[1:]))
        w = np.zeros((out, size), dtype=np.float32)
        for g in self.groups:
            if g.bits == FULL_PRECISION_BITS:
                w[g.rows] = g.payload
            else:
                q = uint_to_signed(unpack_rows(g.payload, g.bits, size), g.bits)
                w[g.rows] = q.astype(np.float32) * self.scales[g.rows, None]
        return torch.from_numpy(w).reshape(self.shape)


@torch.no_grad()
def pack_weight(
    w: torch.Tensor, bits: int | np.ndarray | torch.Tensor, clip: str = "maxabs"
) -> PackedWeight:
    """Quantize `w` per channel and pack each bit-width group (32 = keep the fp32 rows)."""
    out = int(w.shape[0])
    vec = bits_vector(bits, out, allow_full=True)
    full = vec == FULL_PRECISION_BITS
    q, scale = quantize_int(w, torch.where(full, torch.ones_like(vec), vec), clip)
    q2 = q.reshape(out, -1).numpy()
    flat = w.detach().reshape(out, -1).float().numpy()
    bits_np = vec.numpy().astype(np.int64)
    groups = []
    for b in sorted(set(bits_np.tolist())):
        rows = np.flatnonzero(bits_np == b)
        if b == FULL_PRECISION_BITS:
            payload = flat[rows].copy()
        else:
            payload = pack_rows(signed_to_uint(q2[rows], b), b)
        groups.append(PackedGroup(int(b), rows, payload))
    return PackedWeight(tuple(w.shape), bits_np, scale.numpy().astype(np.float32), tuple(groups))


def packed_model_bytes(layout: ChannelLayout, bits_per_channel: np.ndarray) -> int:
    """Bytes of every quantizable weight held packed: row-aligned payload plus float32 scales.

    Channels at 32 bits count 4 bytes a weight and no scale. Biases, norms and other
    parameters are not in the layout; add them separately (see `other_param_bytes`).
    """
    bits = np.asarray(bits_per_channel).reshape(-1).astype(np.int64)
    if bits.shape[0] != layout.n_channels:
        raise LayoutError(f"expected {layout.n_channels} bit-widths, got {bits.shape[0]}")
    bits_vector(bits, layout.n_channels, allow_full=True)
    total = 0
    for layer, layer_bits in zip(layout.layers, layout.split(bits).values(), strict=True):
        for b, count in zip(*np.unique(layer_bits, return_counts=True), strict=True):
            if int(b) == FULL_PRECISION_BITS:
                total += int(count) * layer.channel_size * FP32_BYTES
            else:
                total += int(count) * (packed_nbytes(layer.channel_size, int(b)) + SCALE_BYTES)
    return total


def other_param_bytes(model: torch.nn.Module, layout: ChannelLayout) -> int:
    """Bytes of parameters outside the layout (biases, norms, plain parameters), kept fp32."""
    skip = {layer.weight_name for layer in layout.layers}
    return sum(
        int(p.numel()) * p.element_size() for n, p in model.named_parameters() if n not in skip
    )


def fp32_model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter of a float model."""
    return sum(int(p.numel()) * p.element_size() for p in model.parameters())


__all__ = [
    "SCALE_BYTES",
    "PackedGroup",
    "PackedWeight",
    "fp32_model_bytes",
    "other_param_bytes",
    "pack_weight",
    "packed_model_bytes",
]
