"""Strategy codes: packing round trip, deflate, and rejection of every kind of corruption."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chord.codes import (
    ENCODING_DEFLATE,
    ENCODING_DELTA,
    ENCODING_PACKED,
    CodeError,
    decode_levels,
    encode_levels,
    encode_levels_batch,
    pack_levels,
    packed_length,
)
from chord.levels import DEFAULT_TIERS, levels_to_bits

VERSION = "0123456789abcdef"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.booleans())
def test_round_trip_any_channel_count(levels: list[int], deflate: bool) -> None:
    lv = np.array(levels, dtype=np.uint8)
    code = encode_levels(lv, VERSION, allow_deflate=deflate)
    assert code.n_channels == len(levels)
    assert code.crc32 == zlib.crc32(pack_levels(lv))
    np.testing.assert_array_equal(decode_levels(code, VERSION, len(levels)), lv)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=300))
def test_delta_round_trip_against_any_reference(pairs: list[tuple[int, int]]) -> None:
    lv = np.array([a for a, _ in pairs], dtype=np.uint8)
    ref = np.array([b for _, b in pairs], dtype=np.uint8)
    code = encode_levels(lv, VERSION, reference=ref)
    assert code.crc32 == zlib.crc32(pack_levels(lv))  # the checksum is over the levels themselves
    np.testing.assert_array_equal(decode_levels(code, VERSION, len(lv), reference=ref), lv)


def _personal(n: int, differ: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reference and levels that differ from it in `differ` channels."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 4, n).astype(np.uint8)
    lv = ref.copy()
    idx = rng.choice(n, differ, replace=False)
    lv[idx] = (lv[idx] + rng.integers(1, 4, differ)) % 4
    return lv, ref


def test_delta_is_sent_when_it_is_smallest() -> None:
    lv, ref = _personal(2501, 30)
    code = encode_levels(lv, VERSION, reference=ref)
    plain = encode_levels(lv, VERSION)
    assert code.encoding == ENCODING_DELTA and plain.encoding == ENCODING_PACKED
    assert len(code.payload) < len(plain.payload) / 4
    # Unrelated levels gain nothing from the reference: the plain form goes out.
    noisy = np.random.default_rng(5).integers(0, 4, 2501).astype(np.uint8)
    assert encode_levels(noisy, VERSION, reference=ref).encoding != ENCODING_DELTA


def test_delta_needs_the_same_reference() -> None:
    lv, ref = _personal(1000, 20)
    code = encode_levels(lv, VERSION, reference=ref)
    with pytest.raises(CodeError, match="needs the reference levels"):
        decode_levels(code, VERSION, 1000)
    other = ref.copy()
    other[7] = (other[7] + 1) % 4
    with pytest.raises(CodeError, match=r"checksum mismatch.*reference"):
        decode_levels(code, VERSION, 1000, reference=other)
    with pytest.raises(CodeError, match="reference levels must be 1000 values"):
        decode_levels(code, VERSION, 1000, reference=ref[:-1])
    with pytest.raises(CodeError, match="reference levels have shape"):
        encode_levels(lv, VERSION, reference=ref[:-1])


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


def test_batch_encoding_equals_row_by_row() -> None:
    """encode_levels_batch gives every row exactly what encode_levels gives it."""
    rng = np.random.default_rng(3)
    for n in (1, 3, 4, 5, 257):
        levels = rng.integers(0, 4, (6, n)).astype(np.uint8)
        levels[1] = 2  # one row that deflates well
        refs = [None, levels[1], rng.integers(0, 4, n).astype(np.uint8), None, levels[4], None]
        got = encode_levels_batch(levels, "v1", refs)
        want = [encode_levels(row, "v1", reference=r) for row, r in zip(levels, refs, strict=True)]
        assert got == want


def test_batch_encoding_refuses_a_reference_of_another_length() -> None:
    levels = np.zeros((2, 9), dtype=np.uint8)
    with pytest.raises(CodeError, match=r"reference levels have shape \(8,\) but the code has 9"):
        encode_levels_batch(levels, "v1", [None, np.zeros(8, dtype=np.uint8)])
