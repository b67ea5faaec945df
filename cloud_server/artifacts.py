"""The server's artifact store: content-addressed bytes served in bounded, resumable chunks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from chord.artifacts import KINDS, Artifact, ArtifactChunk, ArtifactRef, sha256_digest
from cloud_server.errors import NotFoundError, OutOfRangeError

__all__ = ["DEFAULT_CHUNK_BYTES", "MAX_CHUNK_BYTES", "ArtifactStore"]

DEFAULT_CHUNK_BYTES = 64 << 10  # chunk size when the device names none
MAX_CHUNK_BYTES = 1 << 20  # largest chunk sent, whatever the device accepts (< max message size)


class ArtifactStore:
    """Every artifact a device of the served run may fetch, at most one per kind, in memory.

    Artifacts are small next to the server's memory (a 64-wide SASRec is 0.6 MB of weights);
    a stream copies out one chunk at a time, as it is sent. Thread-safe.
    """

    def __init__(self, artifacts: tuple[Artifact, ...] = ()) -> None:
        """Start with these artifacts (each verified like `add`)."""
        self._by_digest: dict[str, Artifact] = {}
        self._by_kind: dict[str, str] = {}
        self._lock = threading.Lock()
        for artifact in artifacts:
            self.add(artifact)

    def add(self, artifact: Artifact) -> ArtifactRef:
        """Serve `artifact`, replacing an earlier one of its kind; ValueError if its bytes do not
        match its reference (size or SHA-256)."""
        ref = artifact.ref
        if len(artifact.data) != ref.size_bytes or sha256_digest(artifact.data) != ref.digest:
            raise ValueError(
                f"artifact bytes do not match their reference {ref.digest} ({ref.size_bytes} "
                "bytes); build it with Artifact.of"
            )
        with self._lock:
            old = self._by_kind.get(ref.kind)
            if old is not None and old != ref.digest:
                del self._by_digest[old]
            self._by_kind[ref.kind] = ref.digest
            self._by_digest[ref.digest] = artifact
        return ref

    def register(self, kind: str, fmt: str, data: bytes) -> ArtifactRef:
        """Serve `data` as the artifact of `kind` in layout `fmt` (one call, e.g. a shared mask:
        `store.register("shared_mask", MASK_FORMAT, mask_bytes)`); returns its reference."""
        return self.add(Artifact.of(kind, fmt, data))

    def refs(self) -> tuple[ArtifactRef, ...]:
        """References of every served artifact, in chord.artifacts.KINDS order."""
        with self._lock:
            return tuple(
                self._by_digest[self._by_kind[k]].ref for k in KINDS if k in self._by_kind
            )

    def get(self, digest: str) -> Artifact:
        """The artifact with this digest; NotFoundError naming the digest otherwise."""
        with self._lock:
            artifact = self._by_digest.get(digest)
        if artifact is None:
            raise NotFoundError(
                f"no artifact with digest {digest!r} here; send a digest listed in this "
                "server's ModelSpec.artifacts (call GetModelSpec again)"
            )
        return artifact

    def chunks(self, digest: str, offset: int, chunk_bytes: int) -> Iterator[ArtifactChunk]:
        """The artifact from `offset` to its end in chunks of at most `chunk_bytes` (capped at
        MAX_CHUNK_BYTES). Checks digest and offset before returning: NotFoundError,
        OutOfRangeError naming the offset and the valid range."""
        artifact = self.get(digest)
        size = artifact.ref.size_bytes
        if not 0 <= offset < size:
            raise OutOfRangeError(
                f"offset {offset} is outside artifact {digest} of {size} bytes; send an offset "
                f"in 0..{size - 1} (the number of bytes already received)"
            )
        step = max(1, min(int(chunk_bytes) or DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES))
        return _slices(artifact.data, offset, step)


def _slices(data: bytes, offset: int, step: int) -> Iterator[ArtifactChunk]:
    """Chunks of data[offset:], each at most `step` bytes."""
    view = memoryview(data)
    for start in range(offset, len(data), step):
        yield ArtifactChunk(start, bytes(view[start : start + step]), len(data))
