"""Content-addressed artifact references, the artifact itself, and one chunk of a download."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from chord.startcheck import shown

DIGEST_PREFIX = "sha256:"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# What a device may need (chord.v1 ArtifactKind): frozen weights, the random mode's shared
# element mask, and the reference importance behind delta codes.
KINDS = ("backbone_weights", "shared_mask", "reference_data")
MAX_ARTIFACT_BYTES = 1 << 40  # 1 TiB: the protocol's stated ceiling on ArtifactRef.size_bytes


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    """The content address of `data`: "sha256:" + 64 lowercase hex digits (FIPS 180-4)."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """`digest` when it is "sha256:" + 64 lowercase hex digits; ValueError saying what to send."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        quoted = shown(digest, 80) if isinstance(digest, str) else repr(digest)
        raise ValueError(
            f"digest {quoted} is not 'sha256:' followed by 64 lowercase hex digits; "
            "send an ArtifactRef.digest from the ModelSpec"
        )
    return digest


@dataclass(frozen=True)
class ArtifactRef:
    """What the model spec says about one artifact: its address, kind, size and layout."""

    digest: str  # "sha256:<64 hex>" of the bytes
    kind: str  # one of KINDS
    size_bytes: int  # 1 .. MAX_ARTIFACT_BYTES
    format: str  # "<layout>.v<N>+<container>", e.g. "chord.backbone.v1+safetensors"

    def __post_init__(self) -> None:
        """Reject references no artifact can have."""
        check_digest(self.digest)
        if self.kind not in KINDS:
            raise ValueError(f"artifact kind {self.kind!r} is not one of {KINDS}")
        if not 0 < self.size_bytes <= MAX_ARTIFACT_BYTES:
            raise ValueError(
                f"artifact size {self.size_bytes} is outside 1..{MAX_ARTIFACT_BYTES} bytes"
            )
        if not self.format:
            raise ValueError("an artifact needs a format such as 'chord.backbone.v1+safetensors'")


@dataclass(frozen=True)
class Artifact:
    """An artifact's reference together with its bytes (the server's copy)."""

    ref: ArtifactRef
    data: bytes

    @classmethod
    def of(cls, kind: str, fmt: str, data: bytes) -> Artifact:
        """Address `data` by its SHA-256 and wrap it; ValueError for empty data or a bad kind."""
        data = bytes(data)
        return cls(ArtifactRef(sha256_digest(data), kind, len(data), fmt), data)


@dataclass(frozen=True)
class ArtifactRequest:
    """One FetchArtifact call: which artifact, from which byte, in chunks of at most how many."""

    digest: str
    offset: int = 0
    max_chunk_bytes: int = 0  # 0 = the server's default


@dataclass(frozen=True)
class ArtifactChunk:
    """A piece of an artifact: data starts at `offset` of an artifact of `total_size` bytes."""

    offset: int
    data: bytes
    total_size: int


__all__ = [
    "DIGEST_PREFIX",
    "KINDS",
    "MAX_ARTIFACT_BYTES",
    "Artifact",
    "ArtifactChunk",
    "ArtifactRef",
    "ArtifactRequest",
    "check_digest",
    "sha256_digest",
]
