"""Artifacts on the device: a content-addressed disk cache and resumable, verified downloads.

A download asks FetchArtifact for the bytes it lacks, appends each chunk to a partial file
after checking that it continues the bytes kept (offset, total size, no overrun), and after a
broken stream (a cut, a deadline, a restart, a stream that ends early) asks again from the
bytes it kept. Once all bytes are there it checks the size and SHA-256 against the model
spec's digest, and only then moves them into the cache under that digest. Source of the
protocol: protos/chord/v1/strategy.proto (FetchArtifact, ArtifactChunk).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from chord.artifacts import (
    FORMATS,
    ArtifactFormatError,
    ArtifactRef,
    ArtifactRequest,
    ReferenceData,
    reference_from_artifact,
)
from chord.spec import ModelSpec, SpecError
from device_client.transport import (
    RETRYABLE,
    CallStats,
    InjectedLoss,
    Transport,
    TransportError,
)

__all__ = [
    "DEVICE_CHUNK_BYTES",
    "ArtifactCache",
    "ArtifactRefused",
    "DownloadStats",
    "FetchedArtifacts",
    "default_cache_dir",
    "fetch_artifact",
    "fetch_spec_artifacts",
]

_TAG_RE = re.compile(r"[^A-Za-z0-9_.-]")
# Chunk size a device asks for: 256 KiB downloaded the 634 KiB backbone in 0.76x the time of
# the server's 64 KiB default, with 1 MiB no faster (benchmarks/artifact_download); a broken
# stream loses at most the chunk in flight.
DEVICE_CHUNK_BYTES = 256 << 10


class ArtifactRefused(RuntimeError):
    """An artifact the device will not use; `reason` is one word (format, size, digest,
    stream, truncated, content) and the message says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class DownloadStats:
    """What obtaining artifacts cost this device."""

    bytes_received: int = 0  # serialized ArtifactChunk messages (protobuf ByteSize) received
    data_bytes: int = 0  # artifact bytes among them
    attempts: int = 0  # FetchArtifact streams opened
    resumes: int = 0  # streams opened at an offset past 0 (after a broken one)
    cache_hits: int = 0  # artifacts taken from the disk cache without any download
    elapsed_ms: float = 0.0

    def add(self, other: DownloadStats) -> None:
        """Accumulate another download's figures into this one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def default_cache_dir() -> Path:
    """$CHORD_DEVICE_CACHE, else chord-device-cache-<uid> in the system temp folder."""
    env = os.environ.get("CHORD_DEVICE_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"chord-device-cache-{os.getuid()}"


class ArtifactCache:
    """Verified artifacts under root/sha256/<hex>; unfinished downloads under root/partial/.

    Entries are written once, atomically (os.replace), and checked again (size and SHA-256)
    whenever read, so a damaged file is dropped and fetched anew instead of used.
    """

    def __init__(self, root: str | Path) -> None:
        """Use (and create) `root`."""
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "partial").mkdir(parents=True, exist_ok=True)

    def path(self, ref: ArtifactRef) -> Path:
        """Where the verified artifact lives."""
        return self.root / "sha256" / ref.digest.removeprefix("sha256:")

    def partial(self, ref: ArtifactRef, tag: str) -> Path:
        """The partial file of one downloader (`tag`, e.g. a device id) for this artifact."""
        safe = _TAG_RE.sub("_", tag)[:64] or "device"
        return self.root / "partial" / f"{ref.digest.removeprefix('sha256:')}.{safe}.part"

    def read(self, ref: ArtifactRef) -> bytes | None:
        """The cached bytes if present and intact; a damaged entry is deleted (None)."""
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) != ref.size_bytes or _digest(data) != ref.digest:
            path.unlink(missing_ok=True)
            return None
        return data

    def commit(self, ref: ArtifactRef, partial: Path) -> None:
        """Move a verified partial file into place (another downloader may have won: fine)."""
        os.replace(partial, self.path(ref))


def _digest(data: bytes) -> str:
    """sha256:<hex> of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _StreamCut(Exception):
    """The fault injector cancelled a stream after its byte quota."""


def _check_chunk(ref: ArtifactRef, offset: int, chunk_offset: int, n: int, total: int) -> None:
    """ArtifactRefused unless a chunk of n bytes at chunk_offset continues `offset` in ref."""
    if total != ref.size_bytes:
        raise ArtifactRefused(
            "size", f"{ref.digest} streams as {total} bytes but the spec lists {ref.size_bytes}"
        )
    if chunk_offset != offset:
        raise ArtifactRefused(
            "stream", f"{ref.digest}: a chunk starts at {chunk_offset}, the next byte is {offset}"
        )
    if n == 0 or offset + n > ref.size_bytes:
        raise ArtifactRefused(
            "stream",
            f"{ref.digest}: a chunk of {n} bytes at {offset} does not fit {ref.size_bytes} bytes",
        )


def fetch_artifact(
    transport: Transport,
    ref: ArtifactRef,
    cache: ArtifactCache,
    *,
    tag: str = "device",
    reuse: bool = True,
    max_chunk_bytes: int = DEVICE_CHUNK_BYTES,
) -> tuple[bytes, DownloadStats]:
    """The verified bytes of `ref`, from the cache (reuse=True) or downloaded with resume.

    max_chunk_bytes is the largest chunk asked for (0 = the server's default).
    reuse=False downloads even when the cache holds the artifact (a fresh phone in a
    simulated fleet whose devices share one disk). Attempts follow transport.policy: each
    stream has its deadline, the whole download the overall deadline, and max_attempts
    counts attempts in a row that brought no new byte. Raises ArtifactRefused (format
    unknown, stream inconsistent, bytes truncated or hashing to another digest) or
    TransportError (a non-retryable status, or out of time).
    """
    known = FORMATS.get(ref.kind)
    if known != ref.format:
        reads = repr(known) if known else f"no {ref.kind} format yet"
        raise ArtifactRefused(
            "format", f"{ref.kind} artifact in format {ref.format!r}; this device reads {reads}"
        )
    stats = DownloadStats()
    start = time.perf_counter()
    if reuse:
        cached = cache.read(ref)
        if cached is not None:
            stats.cache_hits = 1
            return cached, stats
    part = cache.partial(ref, tag)
    data = _download(transport, ref, part, stats, max_chunk_bytes)
    stats.elapsed_ms = (time.perf_counter() - start) * 1e3
    if len(data) != ref.size_bytes or _digest(data) != ref.digest:
        part.unlink(missing_ok=True)
        raise ArtifactRefused(
            "digest",
            f"{ref.size_bytes}-byte artifact hashes to {_digest(data)}, not {ref.digest}; "
            "it was altered on the way or at the server",
        )
    cache.commit(ref, part)
    return data, stats


def _download(
    transport: Transport, ref: ArtifactRef, part: Path, stats: DownloadStats, chunk: int
) -> bytes:
    """Fill `part` up to ref.size_bytes, resuming from its length after every broken stream."""
    policy = transport.policy
    deadline = time.perf_counter() + policy.overall_timeout_s
    cut = transport.faults.stream_cut_bytes
    stalled, last, last_code = 0, "no attempt made", ""
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if offset > ref.size_bytes:  # not ours to trust: start over
            part.unlink()
            offset = 0
        if offset == ref.size_bytes:
            return part.read_bytes()
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TransportError(
                "overall_deadline", f"{ref.digest}: {offset} of {ref.size_bytes} bytes; {last}",
                stats.attempts,
            )
        if stalled >= policy.max_attempts:
            message = (
                f"{ref.digest}: {offset} of {ref.size_bytes} bytes after {stalled} attempts "
                f"in a row that brought nothing ({last})"
            )
            if last_code:  # the link failed, not the server's bytes
                raise TransportError(last_code, message, stats.attempts)
            raise ArtifactRefused("truncated", message)
        stats.attempts += 1
        stats.resumes += offset > 0
        before = offset
        try:
            transport.inject(CallStats(), remaining)
            req = ArtifactRequest(ref.digest, offset, chunk)
            stream = transport.fetch_artifact(req, min(policy.call_timeout_s, remaining))
            with part.open("ab") as out:
                for c, wire_bytes in stream:
                    stats.bytes_received += wire_bytes
                    try:
                        _check_chunk(ref, offset, c.offset, len(c.data), c.total_size)
                    except ArtifactRefused:
                        stream.cancel()
                        part.unlink(missing_ok=True)
                        raise
                    out.write(c.data)
                    offset += len(c.data)
                    stats.data_bytes += len(c.data)
                    if cut and offset - before >= cut and offset < ref.size_bytes:
                        stream.cancel()
                        raise _StreamCut
            last, last_code = f"the stream ended (OK) at byte {offset} of {ref.size_bytes}", ""
        except InjectedLoss:
            last, last_code = "attempt dropped by the fault injector", "unavailable"
        except _StreamCut:
            last, last_code = f"stream cut by the fault injector at byte {offset}", "cancelled"
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            last, last_code = f"{code.name}: {detail}", code.name.lower()
            if code not in RETRYABLE:
                raise TransportError(code.name.lower(), last, stats.attempts) from exc
        if offset > before:
            stalled = 0  # the link works: resume at once
            continue
        stalled += 1
        pause = transport.backoff(stalled)
        if time.perf_counter() + pause < deadline:
            time.sleep(pause)


@dataclass(frozen=True)
class FetchedArtifacts:
    """The decoded artifacts of a spec and what fetching them cost."""

    spec: ModelSpec  # with the reference (importance, level cost) held once it is fetched
    weights: bytes | None  # BACKBONE_WEIGHTS bytes (pretrained mode), verified, not yet loaded
    shared_mask: bytes | None  # SHARED_MASK bytes, verified; its decoder lands with random mode
    stats: DownloadStats


def fetch_spec_artifacts(
    transport: Transport,
    spec: ModelSpec,
    cache: ArtifactCache,
    *,
    tag: str = "device",
    reuse: bool = True,
) -> FetchedArtifacts:
    """Fetch every artifact the spec lists and decode the reference data into the spec.

    Raises SpecError when a pretrained spec lists no weights or a reference id comes without
    its artifact, ArtifactRefused / TransportError from the downloads.
    """
    total = DownloadStats()
    blobs: dict[str, bytes] = {}
    for ref in spec.artifacts:
        data, stats = fetch_artifact(transport, ref, cache, tag=tag, reuse=reuse)
        total.add(stats)
        blobs[ref.kind] = data
    if spec.mode == "pretrained" and "backbone_weights" not in blobs:
        raise SpecError("a pretrained ModelSpec must list a backbone_weights artifact; none found")
    if spec.reference_id and "reference_data" not in blobs:
        raise SpecError(
            f"ModelSpec names reference {spec.reference_id!r} but lists no reference_data artifact"
        )
    if "reference_data" in blobs:
        spec = _with_reference(spec, blobs["reference_data"])
    return FetchedArtifacts(
        spec, blobs.get("backbone_weights"), blobs.get("shared_mask"), total
    )


def _with_reference(spec: ModelSpec, data: bytes) -> ModelSpec:
    """The spec holding the decoded reference importance and level-cost table (checked)."""
    try:
        ref: ReferenceData = reference_from_artifact(
            data, spec.reference_id, spec.n_channels, len(spec.layers)
        )
    except ArtifactFormatError as exc:
        raise ArtifactRefused("content", f"reference data: {exc}") from exc
    held = dataclasses.replace(
        spec,
        reference_importance=ref.importance.astype("<f2").tobytes(),
        level_cost=ref.level_cost,
    )
    held.check()  # SpecError when the table does not fit the spec's layers
    return held
