"""2-bit per-channel importance codes: packing, checksums and version checks."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from chord.levels import N_LEVELS, LevelCost, Tier, assign_levels

ENCODING_PACKED = "packed2"
ENCODING_DEFLATE = "packed2+deflate"
# (levels - reference levels) mod 4, PACKED2, raw DEFLATE: small when a user's levels differ from
# a reference both sides can compute (see chord.hyper.reference) in few channels.
ENCODING_DELTA = "delta2+deflate"
ENCODINGS = (ENCODING_PACKED, ENCODING_DEFLATE, ENCODING_DELTA)
MAX_CHANNELS = 1 << 28  # refuse absurd channel counts before allocating anything


class CodeError(ValueError):
    """A strategy code that cannot be decoded: wrong length, checksum, version or encoding."""


@dataclass(frozen=True)
class EncodedStrategy:
    """Levels 0..3 per channel as they travel: packed bytes plus what checks them."""

    payload: bytes  # PACKED2 bytes, their raw DEFLATE, or the DEFLATE of the packed delta
    n_channels: int
    crc32: int  # CRC32 of the levels' PACKED2 bytes (before any delta or deflate)
    version: str  # backbone version hash the levels were computed for
    encoding: str  # one of ENCODINGS


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


def _deflate(data: bytes) -> bytes:
    """Raw DEFLATE (no zlib header) at the highest level."""
    return zlib.compress(data, level=9, wbits=-15)


def _delta(levels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(levels - reference) mod 4, with a clear error when the two disagree in length."""
    ref = np.asarray(reference)
    if ref.shape != levels.shape:
        raise CodeError(
            f"reference levels have shape {ref.shape} but the code has {levels.shape[0]} channels"
        )
    return ((levels.astype(np.int16) - ref.astype(np.int16)) % N_LEVELS).astype(np.uint8)


def encode_levels(
    levels: np.ndarray,
    version: str,
    allow_deflate: bool = True,
    reference: np.ndarray | None = None,
) -> EncodedStrategy:
    """Pack levels (0..3, one per channel) four per byte and checksum; send the smallest form.

    With `allow_deflate` the packed bytes are also tried under raw DEFLATE, and with `reference`
    (levels the device computes itself) so is the DEFLATE of the packed delta to it.
    """
    if not isinstance(version, str) or not version:
        raise CodeError("version must be the backbone's non-empty version hash")
    packed = pack_levels(levels)
    crc = zlib.crc32(packed)
    lv = np.asarray(levels)
    n = int(lv.size)
    best = EncodedStrategy(packed, n, crc, version, ENCODING_PACKED)
    if allow_deflate:
        deflated = _deflate(packed)
        if len(deflated) < len(best.payload):
            best = EncodedStrategy(deflated, n, crc, version, ENCODING_DEFLATE)
        if reference is not None:
            delta = _deflate(pack_levels(_delta(lv, reference)))
            if len(delta) < len(best.payload):
                best = EncodedStrategy(delta, n, crc, version, ENCODING_DELTA)
    return best


def pack_levels_batch(levels: np.ndarray) -> np.ndarray:
    """Rows of levels [R, C] (0..3) packed at once: uint8 [R, packed_length(C)].

    Row r's bytes equal pack_levels(levels[r]). Raises CodeError for a wrong shape, dtype or
    range, like pack_levels.
    """
    lv = np.asarray(levels)
    if lv.ndim != 2 or lv.shape[1] == 0:
        raise CodeError(f"levels must be [rows, channels] with channels >= 1, got {lv.shape}")
    if not np.issubdtype(lv.dtype, np.integer):
        raise CodeError(f"levels must be integers 0..3, got dtype {lv.dtype}")
    if lv.size and (lv.min() < 0 or lv.max() >= N_LEVELS):
        raise CodeError(f"levels must lie in 0..3, got range [{lv.min()}, {lv.max()}]")
    rows, n = lv.shape
    padded = np.zeros((rows, packed_length(n) * 4), dtype=np.uint8)
    padded[:, :n] = lv
    quads = padded.reshape(rows, -1, 4)
    return quads[..., 0] | (quads[..., 1] << 2) | (quads[..., 2] << 4) | (quads[..., 3] << 6)


def encode_levels_batch(
    levels: np.ndarray,
    version: str,
    references: list[np.ndarray | None] | None = None,
) -> list[EncodedStrategy]:
    """encode_levels (with deflate) of every row of levels [R, C], packed in one pass.

    references[r], when given and not None, is row r's reference levels (a delta is tried).
    Each result equals encode_levels(levels[r], version, reference=references[r]).
    """
    if not isinstance(version, str) or not version:
        raise CodeError("version must be the backbone's non-empty version hash")
    packed = pack_levels_batch(levels)
    lv = np.asarray(levels)
    n = int(lv.shape[1])
    refs = references if references is not None else [None] * packed.shape[0]
    if len(refs) != packed.shape[0]:
        raise CodeError(f"{len(refs)} references for {packed.shape[0]} rows; send one per row")
    # Every delta at once: (levels - reference) mod 4 and its packing, one pass for the batch.
    given = {i: np.asarray(ref) for i, ref in enumerate(refs) if ref is not None}
    packed_delta: dict[int, bytes] = {}
    if given:
        for ref in given.values():
            if ref.shape != (n,):
                raise CodeError(
                    f"reference levels have shape {ref.shape} but the code has {n} channels"
                )
        rows = list(given)
        ref_rows = np.stack(list(given.values())).astype(np.int16)
        deltas = ((lv[rows].astype(np.int16) - ref_rows) % N_LEVELS).astype(np.uint8)
        packed_delta = dict(zip(rows, map(bytes, pack_levels_batch(deltas)), strict=True))
    out = []
    for i, raw in enumerate(packed):
        # The smallest payload first, then one (frozen, so costly to build) EncodedStrategy.
        payload = raw.tobytes()
        crc, encoding = zlib.crc32(payload), ENCODING_PACKED
        deflated = _deflate(payload)
        if len(deflated) < len(payload):
            payload, encoding = deflated, ENCODING_DEFLATE
        if i in packed_delta:
            delta = _deflate(packed_delta[i])
            if len(delta) < len(payload):
                payload, encoding = delta, ENCODING_DELTA
        out.append(EncodedStrategy(payload, n, crc, version, encoding))
    return out


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
    code: EncodedStrategy,
    expected_version: str,
    expected_channels: int,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Unpack and verify a code (delta codes against `reference`); raise CodeError saying why."""
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
    if code.encoding == ENCODING_DELTA and reference is None:
        raise CodeError(
            "delta code needs the reference levels of the model spec, and none were given; "
            "request a strategy without a reference_id"
        )
    expected = packed_length(expected_channels)
    payload = bytes(code.payload)
    packed = payload if code.encoding == ENCODING_PACKED else _inflate_bounded(payload, expected)
    if len(packed) != expected:
        raise CodeError(
            f"{expected_channels} channels need {expected} packed bytes, got {len(packed)}"
        )
    spare = expected * 4 - expected_channels
    if spare and packed[-1] >> (2 * (4 - spare)):
        raise CodeError("padding bits after the last channel must be zero")
    levels = unpack_levels(packed, expected_channels)
    delta = code.encoding == ENCODING_DELTA
    if delta and reference is not None:
        ref = np.asarray(reference)
        if ref.shape != levels.shape or (ref.size and (ref.min() < 0 or ref.max() >= N_LEVELS)):
            raise CodeError(
                f"reference levels must be {expected_channels} values in 0..3, got shape "
                f"{ref.shape}"
            )
        levels = ((levels + ref.astype(np.uint8)) % N_LEVELS).astype(np.uint8)
        packed = pack_levels(levels)
    crc = zlib.crc32(packed)
    if crc != code.crc32:
        hint = " (does the device hold the server's reference?)" if delta else ""
        raise CodeError(
            f"checksum mismatch: payload CRC32 is {crc:#010x}, code says {code.crc32:#010x}{hint}"
        )
    return levels


def reference_levels(
    reference: np.ndarray,
    sizes: np.ndarray,
    tier: Tier,
    budget_bits: float,
    cost: LevelCost | None = None,
) -> np.ndarray:
    """The levels a reference importance (float16, from the model spec) gets for tier and budget.

    Server and device both call this (with the spec's level cost, if any), so a delta code
    decodes to the levels the server chose.
    """
    ref = np.asarray(reference, dtype=np.float16).astype(np.float32)
    return np.asarray(assign_levels(ref, sizes, tier, budget_bits, cost)).astype(np.uint8)


__all__ = [
    "ENCODINGS",
    "ENCODING_DEFLATE",
    "ENCODING_DELTA",
    "ENCODING_PACKED",
    "CodeError",
    "EncodedStrategy",
    "decode_levels",
    "encode_levels",
    "encode_levels_batch",
    "pack_levels",
    "pack_levels_batch",
    "packed_length",
    "reference_levels",
    "unpack_levels",
]
