"""2-bit per-channel importance codes: packing, checksums and version checks."""
# INTERFACE STUB (owned by the quantization helper): signatures are the contract.
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_LEVELS = 4


class CodeError(ValueError):
    """A strategy code that cannot be decoded: wrong length, checksum, version or encoding."""


@dataclass(frozen=True)
class EncodedStrategy:
    """Levels 0..3 per channel as they travel: packed bytes plus what checks them."""

    payload: bytes  # PACKED2 bytes, or their raw DEFLATE when encoding == "packed2+deflate"
    n_channels: int
    crc32: int  # CRC32 of the PACKED2 bytes (before any deflate)
    version: str  # backbone version hash the levels were computed for
    encoding: str  # "packed2" or "packed2+deflate"


def encode_levels(levels: np.ndarray, version: str, allow_deflate: bool = True) -> EncodedStrategy:
    """Pack levels (uint8 in 0..3, one per channel) four per byte, checksum, maybe deflate."""
    raise NotImplementedError


def decode_levels(code: EncodedStrategy, expected_version: str, expected_channels: int) -> np.ndarray:
    """Unpack and verify a code; raise CodeError saying exactly what is wrong."""
    raise NotImplementedError
