"""An embedding table kept bit-packed in memory, rows unpacked only when gathered.

Row i with b_i bits is stored as b_i bit-planes of ceil(d / 8) bytes each (plane p holds bit p
of every value's offset-binary code), so any mix of 1..8-bit rows lives in one flat buffer and a
gather unpacks all requested rows with the same few vectorized ops, whatever their widths.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from chord.quant.packing import signed_to_uint
from chord.quant.quantizer import QuantError

# Bits of every byte value, least significant first: [256, 8].
_BYTE_BITS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(torch.float32)


class PackedTable(nn.Module):
    """Mixed-precision embedding rows as packed bit-planes plus a float32 scale per row."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bits: np.ndarray) -> None:
        """Pack int8 codes q [n, d] (row i within its bits[i] grid) with scales [n].

        All-zero rows may carry q = 0 and any scale; they are stored with scale 0.
        """
        super().__init__()
        n, d = int(q.shape[0]), int(q[0].numel())
        bits = np.asarray(bits).reshape(-1).astype(np.int64)
        if bits.shape[0] != n or (bits < 1).any() or (bits > 8).any():
            raise QuantError(f"a packed table needs one bit-width in 1..8 per row ({n} rows)")
        q_np = q.reshape(n, d).numpy().astype(np.int16)
        scale_np = scale.detach().float().numpy().copy()
        zero = ~q_np.any(1)
        q_np[zero & (bits == 1)] = 1  # a 1-bit zero row: +1 times scale 0
        scale_np[zero] = 0.0
        nbytes = (d + 7) // 8
        planes = np.zeros((int(bits.sum()), nbytes), dtype=np.uint8)
        start = np.concatenate([[0], np.cumsum(bits)[:-1]]).astype(np.int64)
        for b in np.unique(bits):
            rows = np.flatnonzero(bits == b)
            u = signed_to_uint(q_np[rows], int(b))  # [k, d]
            for p in range(int(b)):
                planes[start[rows] + p] = np.packbits((u >> p) & 1, axis=1, bitorder="little")
        self.d, self.max_bits = d, int(bits.max())
        self.planes = torch.from_numpy(planes)
        self.start = torch.from_numpy(start.astype(np.int32))
        self.bits = torch.from_numpy(bits.astype(np.uint8))
        self.scale = torch.from_numpy(scale_np)
        # q = u * mult[b] - offset[b]: offset binary for b >= 2, and 2u - 1 for the 1-bit sign.
        widths = torch.arange(9, dtype=torch.float32)
        self.mult_by_bits = torch.where(widths == 1, 2.0, 1.0)
        self.offset_by_bits = torch.where(widths == 1, 1.0, 2.0 ** (widths - 1))
        self.plane_ids = torch.arange(self.max_bits)
        self.plane_weights = 2.0 ** torch.arange(self.max_bits, dtype=torch.float32)

    def held(self) -> list[torch.Tensor]:
        """Packed planes, per-row metadata (start, bits, scale) and the shared bit table."""
        return [self.planes, self.start, self.bits, self.scale, _BYTE_BITS]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Gather and dequantize rows: ids [...] -> [..., d] float32."""
        # index_select throughout: much faster than advanced indexing for row gathers.
        flat = ids.reshape(-1)
        k = flat.shape[0]
        rows_bits = torch.index_select(self.bits, 0, flat).long()
        present = self.plane_ids[None, :] < rows_bits[:, None]  # [k, max_bits]
        start = torch.index_select(self.start, 0, flat).long()
        plane_index = (start[:, None] + self.plane_ids[None, :]) * present
        planes = torch.index_select(self.planes, 0, plane_index.reshape(-1))  # [k*max_bits, nb]
        values = torch.index_select(_BYTE_BITS, 0, planes.reshape(-1).long())  # [k*mb*nb, 8]
        values = values.reshape(k, self.max_bits, -1)[..., : self.d]  # [k, max_bits, d]
        # Integer codes exactly (sign convention folded into the plane weights), then the
        # scale, so rows equal q * scale bit for bit: q = mult * sum_p 2^p bit_p - offset.
        mult = torch.index_select(self.mult_by_bits, 0, rows_bits)
        weights = self.plane_weights[None, :] * present * mult[:, None]  # [k, max_bits]
        u = (values * weights[:, :, None]).sum(1)  # [k, d]; tiny bmm calls are slower
        offset = torch.index_select(self.offset_by_bits, 0, rows_bits)
        scale = torch.index_select(self.scale, 0, flat)
        return ((u - offset[:, None]) * scale[:, None]).reshape(*ids.shape, self.d)

    def full(self) -> torch.Tensor:
        """Every row dequantized: [n, d] (unpacks the whole table)."""
        return self.forward(torch.arange(self.bits.shape[0]))


__all__ = ["PackedTable"]
