"""Strategy codes: packing round trip, deflate, and rejection of every kind of corruption."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chord.budget import DEFAULT_TIERS
from chord.codes import (
    ENCODING_DEFLATE,
    ENCODING_PACKED,
    CodeError,
    decode_levels,
    encode_levels,
    levels_to_bits,
    pack_levels,
    packed_length,
)

VERSION = "0123456789abcdef"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.booleans())
def test_round_trip_any_channel_count(levels: list[int], deflate: bool) -> None:
    lv = np.array(levels, dtype=np.uint8)
    code = encode_levels(lv, VERSION, allow_deflate=deflate)
    assert code.n_channels == len(levels)
    assert code.crc32 == zlib.crc32(pack_levels(lv))
    np.testing.assert_array_equal(decode_levels(code, VERSION, len(levels)), lv)


def test_four_levels_per_byte_little_endian() -> None:
    assert pack_levels(np.array([1, 2, 3, 0, 3], dtype=np.uint8)) == bytes([0b00111001, 0b11])
    assert packed_length(5) == 2


def test_deflate_only_when_smaller() -> None:
    skewed = np.zeros(4000, dtype=np.uint8)
    skewed[:50] = 3
    code = encode_levels(skewed, VERSION)
    assert code.encoding == ENCODING_DEFLATE and len(code.payload) < packed_length(4000)
    noisy = np.random.default_rng(0).integers(0, 4, 4000).astype(np.uint8)
    code = encode_levels(noisy, VERSION)
    assert code.encoding == ENCODING_PACKED and len(code.payload) == 1000
    assert encode_levels(skewed, VERSION, allow_deflate=False).encoding == ENCODING_PACKED


@pytest.fixture
def code() -> tuple[np.ndarray, object]:
    lv = np.random.default_rng(1).integers(0, 4, 1001).astype(np.uint8)
    return lv, encode_levels(lv, VERSION, allow_deflate=False)


@pytest.mark.parametrize("bit", [0, 7, 100, 8 * 250 + 1])
def test_bit_flip_fails_checksum(code, bit: int) -> None:  # type: ignore[no-untyped-def]
    _, c = code
    payload = bytearray(c.payload)
    payload[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CodeError, match="checksum"):
        decode_levels(dataclasses.replace(c, payload=bytes(payload)), VERSION, 1001)


def test_truncated_and_extended_payloads_rejected(code) -> None:  # type: ignore[no-untyped-def]
    _, c = code
    for payload in (c.payload[:-1], c.payload + b"\x00", b""):
        with pytest.raises(CodeError, match="packed bytes"):
            decode_levels(dataclasses.replace(c, payload=payload), VERSION, 1001)


def test_wrong_version_channels_encoding_rejected(code) -> None:  # type: ignore[no-untyped-def]
    _, c = code
    with pytest.raises(CodeError, match="version"):
        decode_levels(c, "ffffffffffffffff", 1001)
    with pytest.raises(CodeError, match="channels"):
        decode_levels(c, VERSION, 1000)
    # A code relabelled for a bigger backbone no longer has the right length.
    with pytest.raises(CodeError, match="packed bytes"):
        decode_levels(dataclasses.replace(c, n_channels=1005), VERSION, 1005)
    with pytest.raises(CodeError, match="encoding"):
        decode_levels(dataclasses.replace(c, encoding="packed3"), VERSION, 1001)


def test_nonzero_padding_bits_rejected() -> None:
    lv = np.array([1, 2, 3], dtype=np.uint8)
    c = encode_levels(lv, VERSION, allow_deflate=False)
    payload = bytes([c.payload[0] | 0b11000000])
    bad = dataclasses.replace(c, payload=payload, crc32=zlib.crc32(payload))
    with pytest.raises(CodeError, match="padding"):
        decode_levels(bad, VERSION, 3)


def test_deflate_bomb_and_garbage_rejected() -> None:
    n = 400
    # A stream that inflates to 10 MB of zeros: must be refused after n/4 bytes of output.
    comp = zlib.compressobj(level=9, wbits=-15)
    bomb = comp.compress(bytes(10_000_000)) + comp.flush()
    assert len(bomb) < 20_000
    code = dataclasses.replace(
        encode_levels(np.zeros(n, dtype=np.uint8), VERSION), payload=bomb, crc32=0
    )
    assert code.encoding == ENCODING_DEFLATE
    with pytest.raises(CodeError, match="expands past"):
        decode_levels(code, VERSION, n)
    with pytest.raises(CodeError, match="DEFLATE"):
        decode_levels(dataclasses.replace(code, payload=b"\xff\xfe\xfd"), VERSION, n)
    with pytest.raises(CodeError, match="truncated"):
        decode_levels(dataclasses.replace(code, payload=bomb[:5]), VERSION, n)


def test_bad_levels_refused_when_encoding() -> None:
    with pytest.raises(CodeError):
        encode_levels(np.array([0, 4], dtype=np.uint8), VERSION)
    with pytest.raises(CodeError):
        encode_levels(np.zeros(0, dtype=np.uint8), VERSION)
    with pytest.raises(CodeError):
        encode_levels(np.array([0.5]), VERSION)


def test_levels_to_bits_uses_tier() -> None:
    lv = np.array([0, 1, 2, 3, 3], dtype=np.uint8)
    np.testing.assert_array_equal(levels_to_bits(lv, DEFAULT_TIERS["mid"]), [2, 3, 4, 8, 8])
    np.testing.assert_array_equal(levels_to_bits(lv, DEFAULT_TIERS["low"]), [1, 2, 3, 4, 4])
