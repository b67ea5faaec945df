"""2-bit per-channel importance codes: packing, checksums and version checks."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from chord.budget import Tier

N_LEVELS = 4
ENCODING_PACKED = "packed2"
ENCODING_DEFLATE = "packed2+deflate"
ENCODINGS = (ENCODING_PACKED, ENCODING_DEFLATE)
MAX_CHANNELS = 1 << 28  # refuse absurd channel counts before allocating anything


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


def packed_length(n_channels: int) -> int:
    """Bytes of `n_channels` 2-bit levels packed four to a byte."""
    return (int(n_channels) + 3) // 4


def pack_levels(levels: np.ndarray) -> bytes:
    """Levels 0..3 four to a byte, little-endian within a byte (level i at bits 2*(i % 4))."""
    lv = np.asarray(levels)
    if lv.ndim != 1:
        raise CodeError(f"levels must be a 1-D array (one per channel), got shape {lv.shape}")
    if lv.size == 0:
        raise CodeError("levels must hold at least one channel")
    if not np.issubdtype(lv.dtype, np.integer):
        raise CodeError(f"levels must be integers 0..3, got dtype {lv.dtype}")
    if lv.min() < 0 or lv.max() >= N_LEVELS:
        raise CodeError(f"levels must lie in 0..3, got range [{lv.min()}, {lv.max()}]")
    padded = np.zeros(packed_length(lv.size) * 4, dtype=np.uint8)
    padded[: lv.size] = lv
    quads = padded.reshape(-1, 4)
    packed = quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)
    return packed.astype(np.uint8).tobytes()


def unpack_levels(packed: bytes, n_channels: int) -> np.ndarray:
    """Inverse of `pack_levels`: uint8 levels [n_channels]."""
    if len(packed) != packed_length(n_channels):
        raise CodeError(
            f"{n_channels} channels need {packed_length(n_channels)} packed bytes, "
            f"got {len(packed)}"
        )
    b = np.frombuffer(packed, dtype=np.uint8)
    quads = np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)
    return quads[:n_channels].astype(np.uint8)


def encode_levels(levels: np.ndarray, version: str, allow_deflate: bool = True) -> EncodedStrategy:
    """Pack levels (uint8 in 0..3, one per channel) four per byte, checksum, maybe deflate."""
    if not isinstance(version, str) or not version:
        raise CodeError("version must be the backbone's non-empty version hash")
    packed = pack_levels(levels)
    crc = zlib.crc32(packed)
    n = int(np.asarray(levels).size)
    if allow_deflate:
        comp = zlib.compressobj(level=9, wbits=-15)
        deflated = comp.compress(packed) + comp.flush()
        if len(deflated) < len(packed):
            return EncodedStrategy(deflated, n, crc, version, ENCODING_DEFLATE)
    return EncodedStrategy(packed, n, crc, version, ENCODING_PACKED)


def _inflate_bounded(payload: bytes, expected: int) -> bytes:
    """Raw-inflate at most `expected` bytes; refuse streams that would produce more."""
    d = zlib.decompressobj(wbits=-15)
    try:
        out = d.decompress(payload, expected)
        if d.unconsumed_tail:
            raise CodeError(
                f"deflated payload expands past the expected {expected} bytes; refusing it"
            )
        out += d.flush(1)  # at most one more byte: anything there is already too much
    except zlib.error as exc:
        raise CodeError(f"payload is not valid raw DEFLATE data: {exc}") from exc
    if len(out) > expected:
        raise CodeError(f"deflated payload expands past the expected {expected} bytes; refusing it")
    if not d.eof:
        raise CodeError("deflated payload is truncated: the DEFLATE stream has no end")
    if d.unused_data:
        raise CodeError(f"{len(d.unused_data)} stray bytes follow the DEFLATE stream")
    return out


def decode_levels(
    code: EncodedStrategy, expected_version: str, expected_channels: int
) -> np.ndarray:
    """Unpack and verify a code; raise CodeError saying exactly what is wrong."""
    if code.encoding not in ENCODINGS:
        raise CodeError(f"unknown encoding {code.encoding!r}; send one of {ENCODINGS}")
    if code.version != expected_version:
        raise CodeError(
            f"code is for backbone version {code.version!r} but this device runs "
            f"{expected_version!r}; request a strategy for {expected_version!r}"
        )
    if code.n_channels != expected_channels:
        raise CodeError(
            f"code has {code.n_channels} channels but the backbone has {expected_channels}"
        )
    if not 0 < expected_channels <= MAX_CHANNELS:
        raise CodeError(f"channel count must be in 1..{MAX_CHANNELS}, got {expected_channels}")
    expected = packed_length(expected_channels)
    payload = bytes(code.payload)
    packed = _inflate_bounded(payload, expected) if code.encoding == ENCODING_DEFLATE else payload
    if len(packed) != expected:
        raise CodeError(
            f"{expected_channels} channels need {expected} packed bytes, got {len(packed)}"
        )
    crc = zlib.crc32(packed)
    if crc != code.crc32:
        raise CodeError(
            f"checksum mismatch: payload CRC32 is {crc:#010x}, code says {code.crc32:#010x}"
        )
    spare = expected * 4 - expected_channels
    if spare and packed[-1] >> (2 * (4 - spare)):
        raise CodeError("padding bits after the last channel must be zero")
    return unpack_levels(packed, expected_channels)


def levels_to_bits(levels: np.ndarray, tier: Tier) -> np.ndarray:
    """Bit-width per channel (uint8): the tier's `level_bits[level]`."""
    level_bits = np.asarray(tier.level_bits, dtype=np.uint8)
    if level_bits.shape != (N_LEVELS,):
        raise CodeError(f"a tier maps 4 levels to bits, got {level_bits.tolist()}")
    lv = np.asarray(levels)
    if lv.size and (lv.min() < 0 or lv.max() >= N_LEVELS):
        raise CodeError(f"levels must lie in 0..3, got range [{lv.min()}, {lv.max()}]")
    return level_bits[lv.astype(np.int64)]


__all__ = [
    "ENCODINGS",
    "ENCODING_DEFLATE",
    "ENCODING_PACKED",
    "N_LEVELS",
    "CodeError",
    "EncodedStrategy",
    "decode_levels",
    "encode_levels",
    "levels_to_bits",
    "pack_levels",
    "packed_length",
    "unpack_levels",
]
