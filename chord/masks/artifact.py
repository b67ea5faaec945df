"""The shared-mask artifact: rank classes of every element, in one checksummed byte format.

Layout (all integers little-endian):

    offset 0   magic  b"CHMK"
    offset 4   u8     format version: 1 (plain bit planes) or 2 (Rice-coded bit planes)
    offset 5   u8     reserved, 0
    offset 6   u16    reserved, 0
    offset 8   u32    H, length of the header
    offset 12  H      header: UTF-8 JSON object with sorted keys (fields of MaskHeader)
    12 + H     u32    P, length of the payload
    16 + H     P      payload: the class of every element as bit planes
    16 + H + P 32     SHA-256 of every byte before it

Payload: layers in header order (the backbone's channel layout order); inside a layer the
weight's elements in row-major order (channel by channel, as `weight.reshape(n_channels, -1)`),
so element order is model-wide. Classes 0..K (K = len(keep_fractions)) are written as K bit
planes: plane 1 holds one bit per element (1 = class >= 1); plane j > 1 one bit per element
of class >= j - 1 (1 = class >= j), in element order. The planes follow each other in one bit
stream; bits fill each byte from its least significant bit, the last byte padded with zeros.
Version 2 writes the same planes, in the same bit stream, Rice-coded (chord.masks.rice): per
plane 4 bits holding its parameter k (LSB first), then, for each 1 bit of the plane in order,
the gap g since the previous 1 (the first gap counts from the plane's start) as g >> k one
bits, a 0 bit and the k low bits of g, least significant first. Plane j holds exactly the sum
over layers of round-half-up(keep_fractions[j-1] x n) ones, which is how a reader knows where
each plane ends. An encoder writes version 2 only where it is shorter (sparse masks: keep
fractions well below one half), so version 1 readers still read every dense mask.
Exactly round-half-up(keep_fractions[j-1] x n) elements of a layer (n = its weights) have
class >= j; which ones is the cloud's choice, made from learned scores (chord.masks.ranks: the
layer's highest scores, or the same count from every channel), and a device reads the classes
without recomputing them.

A device keeps, in a channel at level l, the elements whose class is at least
level_min_class[l] (K + 1: none, the channel is pruned), scaled by
1 / sqrt(keep_fractions[level_min_class[l] - 1]) (no scaling for class 0 or K + 1), then
quantizes the kept weights of that channel at the tier's bits for level l (symmetric,
per channel, max-abs scale; 1 bit: sign x mean |kept weight|; pruned weights stay 0). The
shared mask (the fp32 model a device profiles its user with) keeps class >= shared_min_class.
The artifact's content address is the SHA-256 of the whole file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass

import numpy as np

from chord.artifacts.mask import MASK_FORMAT
from chord.masks.ranks import MaskError, check_fractions, keep_count
from chord.masks.rice import best_k, code_bits, decode_plane, encode_plane

MAGIC = b"CHMK"
FORMAT_VERSION = 1  # plain bit planes
RICE_VERSION = 2  # Rice-coded bit planes
VERSIONS = (FORMAT_VERSION, RICE_VERSION)
_K_BITS = 4
_PREFIX = struct.Struct("<4sBBHI")
_DIGEST = 32


@dataclass(frozen=True)
class MaskHeader:
    """What a device needs to rebuild and check the masked backbone (the artifact's JSON)."""

    generator: str  # named weight generator (chord.masks.generator.GENERATORS)
    seed: int  # the generator's seed
    backbone_config: str  # the backbone config as canonical JSON (chord.config)
    weights_checksum: str  # weights_version of the rebuilt, unmasked backbone
    layers: tuple[tuple[str, int, int], ...]  # (name, n_channels, channel_size), layout order
    keep_fractions: tuple[float, ...]  # keep fraction of class >= 1, >= 2, ... (decreasing)
    level_min_class: tuple[int, int, int, int]  # level 0..3 -> lowest class kept
    shared_min_class: int  # the shared (profiling) mask keeps class >= this

    def __post_init__(self) -> None:
        """Reject headers whose classes, levels or layers do not fit together."""
        check_fractions(self.keep_fractions)
        k = len(self.keep_fractions)
        if (
            len(self.level_min_class) != 4
            or any(not 0 <= int(c) <= k + 1 for c in self.level_min_class)
            or not 0 <= int(self.shared_min_class) <= k
        ):
            raise MaskError(
                f"level_min_class must be 4 classes in 0..{k + 1} ({k + 1} = channel pruned) "
                f"and shared_min_class one in 0..{k}, got {self.level_min_class!r} and "
                f"{self.shared_min_class!r}"
            )
        if not self.layers or any(n < 1 or s < 1 for _, n, s in self.layers):
            raise MaskError("the mask header must list every layer with positive shapes")

    @property
    def n_weights(self) -> int:
        """Elements over all layers."""
        return sum(n * s for _, n, s in self.layers)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> MaskHeader:
        """Parse `to_json` output; MaskError names a missing or malformed field."""
        try:
            d = json.loads(text)
            return cls(
                generator=str(d["generator"]), seed=int(d["seed"]),
                backbone_config=str(d["backbone_config"]),
                weights_checksum=str(d["weights_checksum"]),
                layers=tuple((str(n), int(c), int(s)) for n, c, s in d["layers"]),
                keep_fractions=tuple(float(f) for f in d["keep_fractions"]),
                level_min_class=tuple(int(c) for c in d["level_min_class"]),  # type: ignore[arg-type]
                shared_min_class=int(d["shared_min_class"]),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, MaskError):
                raise
            raise MaskError(f"mask header is not a valid MaskHeader JSON object: {exc}") from exc


@dataclass(frozen=True)
class MaskArtifact:
    """A decoded mask: its header and the class of every element (uint8, layers concatenated)."""

    header: MaskHeader
    classes: np.ndarray  # uint8 [n_weights], layers in header order, row-major

    def layer_classes(self) -> dict[str, np.ndarray]:
        """Classes per layer, shaped [n_channels, channel_size] (views, do not modify)."""
        out, at = {}, 0
        for name, n, s in self.header.layers:
            out[name] = self.classes[at : at + n * s].reshape(n, s)
            at += n * s
        return out


def encode_classes(classes: np.ndarray, max_class: int) -> bytes:
    """Bit planes of classes in 0..max_class: plane j marks class >= j among class >= j - 1.

    Plane 1 has one bit per element; plane j > 1 one bit per element of class >= j - 1, in
    element order. Planes follow each other in one stream, LSB-first within each byte.
    """
    return np.packbits(np.concatenate(_planes(classes, max_class)), bitorder="little").tobytes()


def _planes(classes: np.ndarray, max_class: int) -> list[np.ndarray]:
    """The K bit planes of classes (uint8 0/1; plane j covers the elements of class >= j-1)."""
    c = np.asarray(classes, dtype=np.uint8).reshape(-1)
    if c.size and int(c.max()) > max_class:
        raise MaskError(f"classes must lie in 0..{max_class}, got {int(c.max())}")
    return [(c[c >= j - 1] >= j).astype(np.uint8) for j in range(1, max_class + 1)]


def encode_rice(classes: np.ndarray, max_class: int) -> bytes:
    """Version 2 payload: every plane as its 4-bit Rice parameter and Rice codes."""
    parts = []
    for plane in _planes(classes, max_class):
        k = best_k(plane)
        parts.append(((k >> np.arange(_K_BITS)) & 1).astype(np.uint8))
        parts.append(encode_plane(plane, k))
    return np.packbits(np.concatenate(parts), bitorder="little").tobytes()


def rice_bits(classes: np.ndarray, max_class: int) -> int:
    """Bits of the version 2 payload before padding."""
    return sum(_K_BITS + code_bits(p, best_k(p)) for p in _planes(classes, max_class))


def plane_ones(header: MaskHeader) -> list[int]:
    """1 bits of each plane: elements of class >= j over all layers, j = 1..K."""
    return [sum(keep_count(n * s, f) for _, n, s in header.layers) for f in header.keep_fractions]


def decode_rice(payload: bytes, header: MaskHeader) -> np.ndarray:
    """Inverse of encode_rice for the header's layers and fractions; MaskError if the codes
    end early, overrun a plane or leave bits over."""
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    count = header.n_weights
    out = np.zeros(count, dtype=np.uint8)
    covered = np.arange(count)
    at = 0
    for ones in plane_ones(header):
        if at + _K_BITS > bits.size:
            raise MaskError("mask payload ends before every element's class was read")
        k = int((bits[at : at + _K_BITS].astype(np.int64) << np.arange(_K_BITS)).sum())
        plane, at = decode_plane(bits, at + _K_BITS, k, covered.size, ones)
        covered = covered[plane.astype(bool)]
        out[covered] += 1
    if bits.size - at >= 8 or bits[at:].any():
        raise MaskError("mask payload holds bits beyond its last plane")
    return out


def payload_bits(classes: np.ndarray, max_class: int) -> int:
    """Bits of the payload before padding: sum over planes of the elements they cover."""
    c = np.asarray(classes).reshape(-1)
    return int(sum(np.count_nonzero(c >= j - 1) for j in range(1, max_class + 1)))


def decode_classes(payload: bytes, count: int, max_class: int) -> np.ndarray:
    """Inverse of encode_classes; MaskError if the planes end early or bits are left over."""
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    out = np.zeros(count, dtype=np.uint8)
    covered = np.arange(count)
    at = 0
    for _ in range(max_class):
        if at + covered.size > bits.size:
            raise MaskError("mask payload ends before every element's class was read")
        plane = bits[at : at + covered.size].astype(bool)
        at += covered.size
        covered = covered[plane]
        out[covered] += 1
    if bits.size - at >= 8 or bits[at:].any():
        raise MaskError("mask payload holds bits beyond its last plane")
    return out


def encode_mask(artifact: MaskArtifact) -> bytes:
    """The artifact's bytes (see the module docstring for the layout)."""
    h = artifact.header
    if artifact.classes.size != h.n_weights:
        raise MaskError(
            f"{artifact.classes.size} classes for {h.n_weights} weights; give one per weight"
        )
    header = h.to_json().encode()
    k = len(h.keep_fractions)
    version = FORMAT_VERSION
    if rice_bits(artifact.classes, k) < payload_bits(artifact.classes, k):
        version, payload = RICE_VERSION, encode_rice(artifact.classes, k)
    else:
        payload = encode_classes(artifact.classes, k)
    body = (
        _PREFIX.pack(MAGIC, version, 0, 0, len(header)) + header
        + struct.pack("<I", len(payload)) + payload
    )
    return body + hashlib.sha256(body).digest()


def decode_mask(data: bytes) -> MaskArtifact:
    """Parse and verify mask bytes; MaskError says whether it is cut, tampered or foreign."""
    if len(data) < _PREFIX.size + 4 + _DIGEST:
        raise MaskError(f"mask artifact of {len(data)} bytes is truncated (header incomplete)")
    magic, version, _, _, h_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise MaskError(f"not a CHORD mask artifact (magic {magic!r}, expected {MAGIC!r})")
    if version not in VERSIONS:
        raise MaskError(
            f"mask format version {version} is not supported; this device reads versions "
            f"{', '.join(map(str, VERSIONS))}"
        )
    at = _PREFIX.size + h_len
    if len(data) < at + 4 + _DIGEST:
        raise MaskError("mask artifact is truncated inside its header")
    (p_len,) = struct.unpack_from("<I", data, at)
    end = at + 4 + p_len
    if len(data) != end + _DIGEST:
        raise MaskError(
            f"mask artifact is {len(data)} bytes but its lengths say {end + _DIGEST}: "
            "truncated or padded"
        )
    if hashlib.sha256(data[:end]).digest() != data[end:]:
        raise MaskError("mask artifact fails its SHA-256 check: corrupted or tampered")
    header = MaskHeader.from_json(data[_PREFIX.size : at].decode())
    payload = data[at + 4 : end]
    classes = (decode_rice(payload, header) if version == RICE_VERSION
               else decode_classes(payload, header.n_weights, len(header.keep_fractions)))
    return MaskArtifact(header, classes)


def content_id(data: bytes) -> str:
    """The content address of an artifact: hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MASK_FORMAT",
    "RICE_VERSION",
    "VERSIONS",
    "MaskArtifact",
    "MaskHeader",
    "content_id",
    "decode_classes",
    "decode_mask",
    "decode_rice",
    "encode_classes",
    "encode_mask",
    "encode_rice",
    "payload_bits",
    "plane_ones",
    "rice_bits",
]
