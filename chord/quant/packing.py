"""Bit packing of b-bit integers (1..8 bits) into bytes and back, exact and little-endian."""

from __future__ import annotations

import numpy as np


class PackingError(ValueError):
    """Values or bytes that do not fit the requested bit-width or count."""


def _check_bits(bits: int) -> None:
    """Raise PackingError unless 1 <= bits <= 8."""
    if not isinstance(bits, int | np.integer) or not 1 <= int(bits) <= 8:
        raise PackingError(f"bit-width must be an integer in 1..8, got {bits!r}")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that `count` values of `bits` bits occupy when packed."""
    _check_bits(bits)
    return (int(count) * int(bits) + 7) // 8


def pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ints in [0, 2**bits) into uint8 bytes; value i starts at bit i*bits.

    Bits are little-endian within a value and within a byte, so 2-bit values go four to a
    byte with the first value in the lowest two bits. Unused high bits of the last byte are 0.
    """
    _check_bits(bits)
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise PackingError(f"values must lie in [0, {1 << bits}) for {bits}-bit packing")
    u = flat.astype(np.uint8)
    if bits == 8:
        return u.copy()
    # One row of `bits` bit-planes per value, then the bit stream packed little-endian.
    planes = (u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_uint(data: np.ndarray | bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_uint`: the first `count` values (uint8) from packed bytes."""
    _check_bits(bits)
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    need = packed_nbytes(count, bits)
    if buf.size < need:
        raise PackingError(f"{count} values of {bits} bits need {need} bytes, got {buf.size}")
    if bits == 8:
        return buf[:count].copy()
    stream = np.unpackbits(buf[:need], count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (stream.reshape(count, bits).astype(np.uint16) @ weights).astype(np.uint8)


def signed_to_uint(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed quantized ints as unsigned codes: offset binary; 1 bit stores the sign (+1 -> 1)."""
    _check_bits(bits)
    q = np.asarray(q).astype(np.int16)
    if bits == 1:
        if q.size and not np.isin(q, (-1, 1)).all():
            raise PackingError("1-bit values must be -1 or +1")
        return (q > 0).astype(np.uint8)
    lo = -(1 << (bits - 1))
    if q.size and (q.min() < lo or q.max() > -lo - 1):
        raise PackingError(f"{bits}-bit signed values must lie in [{lo}, {-lo - 1}]")
    return (q - lo).astype(np.uint8)


def uint_to_signed(u: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of `signed_to_uint` (int8 output)."""
    _check_bits(bits)
    u = np.asarray(u).astype(np.int16)
    if bits == 1:
        return (2 * u - 1).astype(np.int8)
    return (u - (1 << (bits - 1))).astype(np.int8)


def pack_signed(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack signed b-bit ints (1 bit: -1/+1) into bytes."""
    return pack_uint(signed_to_uint(q, bits), bits)


def unpack_signed(data: np.ndarray | bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_signed`: `count` int8 values."""
    return uint_to_signed(unpack_uint(data, bits, count), bits)


def pack_rows(u: np.ndarray, bits: int) -> np.ndarray:
    """Pack each row of unsigned b-bit codes [k, n] separately: [k, ceil(n*bits/8)] bytes.

    Every row starts on a byte boundary, so one row can be read without the others.
    """
    _check_bits(bits)
    u2 = np.asarray(u)
    if u2.ndim != 2:
        raise PackingError(f"pack_rows expects a 2-D array, got shape {u2.shape}")
    if u2.size and (u2.min() < 0 or u2.max() >= (1 << bits)):
        raise PackingError(f"values must lie in [0, {1 << bits}) for {bits}-bit packing")
    k, n = u2.shape
    u8 = u2.astype(np.uint8)
    if bits == 8:
        return u8.copy()
    planes = ((u8[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(k, n * bits)
    return np.packbits(planes, axis=1, bitorder="little")


def unpack_rows(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack_rows`: [k, nbytes] bytes -> [k, n] uint8 codes."""
    _check_bits(bits)
    buf = np.asarray(data, dtype=np.uint8)
    if buf.ndim != 2 or buf.shape[1] != packed_nbytes(n, bits):
        raise PackingError(
            f"rows of {n} values at {bits} bits need {packed_nbytes(n, bits)} bytes each, "
            f"got shape {buf.shape}"
        )
    if bits == 8:
        return buf.copy()
    stream = np.unpackbits(buf, axis=1, count=n * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (stream.reshape(buf.shape[0], n, bits).astype(np.uint16) @ weights).astype(np.uint8)


__all__ = [
    "PackingError",
    "pack_rows",
    "pack_signed",
    "pack_uint",
    "packed_nbytes",
    "signed_to_uint",
    "uint_to_signed",
    "unpack_rows",
    "unpack_signed",
    "unpack_uint",
]
