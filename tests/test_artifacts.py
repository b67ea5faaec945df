"""Artifacts over gRPC: resumable downloads, altered bytes refused, a fleet with no shared disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from chord.artifacts import (
    BACKBONE_FORMAT,
    ArtifactFormatError,
    backbone_from_artifact,
    backbone_to_artifact,
    read_metadata,
    sha256_digest,
)
from chord.config import config_from_json
from chord.models import build_backbone
from chord.spec import ModelSpec
from cloud_server import EmbeddedServer, ServerConfig
from cloud_server.artifacts import DEFAULT_CHUNK_BYTES, ArtifactStore
from device_client.artifacts import (
    ArtifactCache,
    ArtifactRefused,
    fetch_artifact,
)
from device_client.device import DeviceJob, VirtualDevice
from device_client.transport import NetworkFaults, RetryPolicy, Transport, TransportError
from protos.chord.v1 import strategy_pb2 as pb
from protos.chord.v1 import strategy_pb2_grpc as pb_grpc
from simulator.config import FaultConfig, FleetConfig, TransportConfig
from simulator.runner import load_users, run_simulation
from tests.server_fixtures import run_dir

__all__ = ["run_dir"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "chord.v1.StrategyService"
FAST = RetryPolicy(
    call_timeout_s=10.0, overall_timeout_s=30.0, max_attempts=3, backoff_base_s=0.01
)


@pytest.fixture(scope="module")
def server(smoke_run_dir: Path) -> Iterator[EmbeddedServer]:
    """The pretrained smoke run on a free port."""
    srv = EmbeddedServer(ServerConfig(run_dir=smoke_run_dir, grace_s=0.2)).start()
    yield srv
    srv.stop()


def _spec(address: str) -> ModelSpec:
    """The served spec as a device receives it (artifacts not fetched)."""
    spec, _ = Transport(address, FAST).get_model_spec("dev-a")
    return spec


def _weights(spec: ModelSpec) -> Any:
    """The spec's weights reference."""
    ref = spec.artifact("backbone_weights")
    assert ref is not None and ref.format == BACKBONE_FORMAT
    return ref


def _served(server: EmbeddedServer, digest: str) -> bytes:
    """The server's own copy of an artifact (what every download must reproduce)."""
    engine = server.service.engine
    assert engine is not None
    return engine.artifacts.get(digest).data


# ------------------------------------------------------------------ resuming a broken stream


def test_stream_from_an_offset_is_the_rest_of_the_artifact(server: EmbeddedServer) -> None:
    ref = _weights(_spec(server.address))
    data = _served(server, ref.digest)
    offset = ref.size_bytes // 3 + 7
    with grpc.insecure_channel(server.address) as ch:
        stream = pb_grpc.StrategyServiceStub(ch).FetchArtifact(
            pb.FetchArtifactRequest(digest=ref.digest, offset=offset, max_chunk_bytes=4096),
            timeout=10,
        )
        chunks = list(stream)
    assert chunks[0].offset == offset
    assert all(0 < len(c.data) <= 4096 and c.total_size == ref.size_bytes for c in chunks)
    assert [c.offset for c in chunks[1:]] == [c.offset + len(c.data) for c in chunks[:-1]]
    assert b"".join(c.data for c in chunks) == data[offset:]


def test_download_resumes_after_the_client_cancels_mid_stream(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    ref = _weights(_spec(server.address))
    cache = ArtifactCache(tmp_path)
    # Receive two chunks, then cancel the stream: the device kept those bytes.
    with grpc.insecure_channel(server.address) as ch:
        stream = pb_grpc.StrategyServiceStub(ch).FetchArtifact(
            pb.FetchArtifactRequest(digest=ref.digest, offset=0), timeout=10
        )
        kept = next(stream).data + next(stream).data
        stream.cancel()
    cache.partial(ref, "dev-r").write_bytes(kept)
    data, stats = fetch_artifact(Transport(server.address, FAST), ref, cache, tag="dev-r")
    assert data == _served(server, ref.digest)
    # One stream, opened at the bytes kept, and only the missing bytes came over it.
    assert (stats.attempts, stats.resumes) == (1, 1)
    assert stats.data_bytes == ref.size_bytes - len(kept)
    assert cache.read(ref) == data and not cache.partial(ref, "dev-r").exists()


def test_download_survives_streams_cut_every_100_kb(server: EmbeddedServer, tmp_path: Path) -> None:
    ref = _weights(_spec(server.address))
    cut = 100_000
    transport = Transport(server.address, FAST, faults=NetworkFaults(stream_cut_bytes=cut))
    data, stats = fetch_artifact(transport, ref, ArtifactCache(tmp_path), max_chunk_bytes=16384)
    assert data == _served(server, ref.digest)
    # Each stream delivers whole 16 KiB chunks until it passed 100 KB, then breaks.
    per_stream = -(-cut // 16384) * 16384
    assert stats.attempts == -(-ref.size_bytes // per_stream) > 3
    assert stats.resumes == stats.attempts - 1
    assert stats.data_bytes == ref.size_bytes  # no byte was sent twice
    assert stats.bytes_received > stats.data_bytes  # chunk framing is counted too


# -------------------------------------------------------- a man in the middle alters the bytes


ChunkEdit = Callable[[Iterator[pb.ArtifactChunk]], Iterator[pb.ArtifactChunk]]


class _Proxy:
    """A real gRPC server that forwards StrategyService calls upstream and rewrites replies."""

    def __init__(
        self,
        upstream: str,
        spec_edit: Callable[[pb.ModelSpec], None] | None = None,
        chunk_edit: ChunkEdit | None = None,
    ) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._stub = pb_grpc.StrategyServiceStub(self._channel)
        self._spec_edit, self._chunk_edit = spec_edit, chunk_edit
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        handlers = {
            "GetModelSpec": grpc.unary_unary_rpc_method_handler(
                self._get_spec,
                request_deserializer=pb.GetModelSpecRequest.FromString,
                response_serializer=pb.ModelSpec.SerializeToString,
            ),
            "FetchArtifact": grpc.unary_stream_rpc_method_handler(
                self._fetch,
                request_deserializer=pb.FetchArtifactRequest.FromString,
                response_serializer=pb.ArtifactChunk.SerializeToString,
            ),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def _get_spec(self, request: Any, context: Any) -> pb.ModelSpec:
        spec = self._stub.GetModelSpec(request, timeout=10)
        if self._spec_edit is not None:
            self._spec_edit(spec)
        return spec

    def _fetch(self, request: Any, context: Any) -> Iterator[pb.ArtifactChunk]:
        chunks = iter(self._stub.FetchArtifact(request, timeout=10))
        yield from self._chunk_edit(chunks) if self._chunk_edit is not None else chunks

    def close(self) -> None:
        self._server.stop(0)
        self._channel.close()


def _flip_first_chunk(chunks: Iterator[pb.ArtifactChunk]) -> Iterator[pb.ArtifactChunk]:
    """Flip one bit in the artifact's 100th byte."""
    for c in chunks:
        if c.offset == 0:
            data = bytearray(c.data)
            data[100] ^= 0x04
            c.data = bytes(data)
        yield c


def _drop_last_chunk(chunks: Iterator[pb.ArtifactChunk]) -> Iterator[pb.ArtifactChunk]:
    """End every stream (status OK) before its artifact's last chunk."""
    for c in chunks:
        if c.offset + len(c.data) < c.total_size:
            yield c


def test_tampered_artifact_is_refused(server: EmbeddedServer, tmp_path: Path) -> None:
    proxy = _Proxy(server.address, chunk_edit=_flip_first_chunk)
    try:
        spec = _spec(proxy.address)
        cache = ArtifactCache(tmp_path)
        with pytest.raises(ArtifactRefused, match="hashes to sha256:") as err:
            fetch_artifact(Transport(proxy.address, FAST), _weights(spec), cache, tag="dev-t")
        assert err.value.reason == "digest"
        # Nothing of it is kept: neither in the cache nor as a partial download.
        assert cache.read(_weights(spec)) is None
        assert not cache.partial(_weights(spec), "dev-t").exists()
    finally:
        proxy.close()


def test_truncated_artifact_is_refused(server: EmbeddedServer, tmp_path: Path) -> None:
    proxy = _Proxy(server.address, chunk_edit=_drop_last_chunk)
    try:
        ref = _weights(_spec(proxy.address))
        with pytest.raises(ArtifactRefused, match=r"of \d+ bytes after 3 attempts") as err:
            fetch_artifact(Transport(proxy.address, FAST), ref, ArtifactCache(tmp_path))
        assert err.value.reason == "truncated"
    finally:
        proxy.close()


def test_unreachable_server_is_a_transport_error_not_a_bad_artifact(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    ref = _weights(_spec(server.address))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    policy = RetryPolicy(call_timeout_s=2.0, overall_timeout_s=20.0, max_attempts=2,
                         backoff_base_s=0.01)
    with pytest.raises(TransportError) as err:
        fetch_artifact(Transport(dead, policy), ref, ArtifactCache(tmp_path))
    assert err.value.reason == "unavailable" and "0 of" in str(err.value)


def test_truncated_cache_entry_is_dropped_and_fetched_again(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    ref = _weights(_spec(server.address))
    cache = ArtifactCache(tmp_path)
    transport = Transport(server.address, FAST)
    data, _ = fetch_artifact(transport, ref, cache)
    cache.path(ref).write_bytes(data[:-10])  # the disk lost the tail
    again, stats = fetch_artifact(transport, ref, cache)
    assert again == data and stats.cache_hits == 0 and stats.data_bytes == ref.size_bytes
    assert fetch_artifact(transport, ref, cache)[1].cache_hits == 1


def test_device_refuses_an_unknown_weights_version(server: EmbeddedServer) -> None:
    def bump(spec: pb.ModelSpec) -> None:
        for a in spec.artifacts:
            if a.kind == pb.ARTIFACT_KIND_BACKBONE_WEIGHTS:
                a.format = "chord.backbone.v2+safetensors"

    proxy = _Proxy(server.address, spec_edit=bump)
    try:
        users = load_users("ml-100k")[0]
        job = DeviceJob("dev-v", 3, users[3], "mid", 3.0, request_tag="ver")
        report = VirtualDevice(job, Transport(proxy.address, FAST)).run()
    finally:
        proxy.close()
    assert (report.status, report.reason) == ("failed", "artifact:format")
    assert "chord.backbone.v2+safetensors" in report.detail and BACKBONE_FORMAT in report.detail
    assert report.artifact_bytes == 0  # refused before a byte was fetched


def test_weights_of_another_version_or_altered_tensors_are_refused(
    server: EmbeddedServer,
) -> None:
    spec = _spec(server.address)
    data = _served(server, _weights(spec).digest)
    assert backbone_from_artifact(data, spec.config_json, spec.version) is not None
    # A valid artifact of another backbone (other seed): its metadata names another version.
    other = backbone_to_artifact(build_backbone(config_from_json(spec.config_json), seed=1))
    with pytest.raises(ArtifactFormatError, match="is for backbone"):
        backbone_from_artifact(other.data, spec.config_json, spec.version)
    # Metadata copied, one tensor changed: the weights no longer hash to the version.
    tensors = load_tensors(data)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    forged = save_tensors(tensors, metadata=read_metadata(data))
    with pytest.raises(ArtifactFormatError, match="the artifact is corrupt"):
        backbone_from_artifact(forged, spec.config_json, spec.version)
    # Another layout version in the metadata.
    meta = {**read_metadata(data), "format": "chord.backbone.v2"}
    with pytest.raises(ArtifactFormatError, match=r"layout 'chord\.backbone\.v2'"):
        backbone_from_artifact(save_tensors(tensors, metadata=meta), spec.config_json, spec.version)
    with pytest.raises(ArtifactFormatError, match="safetensors header"):
        backbone_from_artifact(b"\xff" * 64, spec.config_json, spec.version)


def test_the_documented_rules_alone_check_the_served_artifacts(server: EmbeddedServer) -> None:
    """What strategy.proto states, applied with hashlib, zlib and a safetensors parser only."""
    spec = _spec(server.address)
    weights = _served(server, _weights(spec).digest)
    assert "sha256:" + hashlib.sha256(weights).hexdigest() == _weights(spec).digest
    (header_len,) = struct.unpack("<Q", weights[:8])  # the container as the .proto states it
    meta = json.loads(weights[8 : 8 + header_len])["__metadata__"]
    tensors = load_tensors(weights)
    digest = hashlib.sha256()
    for name in json.loads(meta["order"]):
        t = tensors[name]
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    assert digest.hexdigest()[:16] == spec.version == meta["version"]
    ref = spec.artifact("reference_data")
    assert ref is not None
    reference = load_tensors(_served(server, ref.digest))
    raw = reference["importance"].numpy().tobytes() + reference["level_cost"].numpy().tobytes()
    assert f"{zlib.crc32(raw):08x}" == spec.reference_id


def test_store_refuses_bytes_that_do_not_match_their_reference() -> None:
    store = ArtifactStore()
    good = store.register("shared_mask", "test.mask.v0+raw", b"\x01\x02")
    assert store.refs() == (good,) and good.digest == sha256_digest(b"\x01\x02")
    forged = type(store.get(good.digest))(good, b"\x01\x03")
    with pytest.raises(ValueError, match="do not match their reference"):
        store.add(forged)
    # A second mask replaces the first, which is then no longer served.
    newer = store.register("shared_mask", "test.mask.v0+raw", b"\x07")
    assert store.refs() == (newer,)
    assert [a.kind for a in store.refs()] == ["shared_mask"]


def test_random_mode_device_fetches_the_mask_and_reference_and_no_weights(
    run_dir: Path, tmp_path: Path
) -> None:
    with EmbeddedServer(ServerConfig(run_dir=run_dir, grace_s=0.2)) as srv:
        spec = _spec(srv.address)
        kinds = [a.kind for a in spec.artifacts]
        assert spec.mode == "random" and kinds == ["shared_mask", "reference_data"]
        users = load_users("ml-100k")[0]
        job = DeviceJob("dev-rand", 4, users[4], "mid", 3.0, request_tag="rand")
        cache = ArtifactCache(tmp_path)
        report = VirtualDevice(job, Transport(srv.address, FAST), cache).run()
    assert (report.status, report.reason) == ("completed", ""), report.detail
    sizes = sum(a.size_bytes for a in spec.artifacts)
    # The mask and the reference came over FetchArtifact (and were counted); the weights were
    # rebuilt.
    assert sizes < report.artifact_bytes < sizes + 400
    assert (report.artifact_attempts, report.artifact_cache_hits) == (2, 0)
    assert all(cache.read(ref) is not None for ref in spec.artifacts)
    assert all(r.strategy_source == "cloud" for r in report.rounds)


# --------------------------------------------- a fleet against `chord serve` in another process


def _serve(run_dir: Path) -> tuple[subprocess.Popen[str], int]:
    """`python -m chord.cli serve --run RUN --port 0` as its own process, and its port."""
    env = {k: v for k, v in os.environ.items() if k != "CHORD_TOKEN"} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chord.cli", "serve", "--run", str(run_dir), "--host",
         "127.0.0.1", "--port", "0", "--grace-s", "0.5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("port="):
            return proc, int(line.strip().split("=", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"chord serve did not start: {proc.communicate()[1][-2000:]}")


def _wait_serving(address: str) -> None:
    """Until the served spec answers (the run is loaded, its artifacts are in memory)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            _spec(address)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("run_fixture", "cut"),
    [("smoke_run_dir", 200_000), ("run_dir", 0)],
    ids=["pretrained", "random"],
)
def test_fleet_downloads_everything_from_another_process(
    run_fixture: str, cut: int, tmp_path: Path, ray_session: None, request: pytest.FixtureRequest
) -> None:
    # The server's run lives in a folder that is deleted once the server has loaded it: the
    # devices (Ray workers) can only get what they use over gRPC.
    run_dir: Path = request.getfixturevalue(run_fixture)
    run_copy = Path(shutil.copytree(run_dir, tmp_path / "server-disk" / "run"))
    proc, port = _serve(run_copy)
    stderr: list[str] = []  # drained so the child never blocks on a full pipe
    drain = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
    drain.start()
    try:
        address = f"127.0.0.1:{port}"
        _wait_serving(address)
        shutil.rmtree(tmp_path / "server-disk")
        spec = _spec(address)
        sizes = sum(a.size_bytes for a in spec.artifacts)
        if spec.mode == "pretrained":
            assert _weights(spec).size_bytes > 100_000
        else:  # random mode: weights are rebuilt on the device; the mask and reference travel
            assert [a.kind for a in spec.artifacts] == ["shared_mask", "reference_data"]
        cfg = FleetConfig(
            devices=6, server=address, actors=2, batch_size=3, lanes=2,
            device_cache_dir=str(tmp_path / "device-disk"),
            transport=TransportConfig(overall_timeout_s=60.0, backoff_base_s=0.02),
            faults=FaultConfig(net_stream_cut_bytes=cut),
        )
        s = run_simulation(cfg, tmp_path / "sim", progress=False)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (s["completed"], s["failed"]) == (6, 0), s["failures"]
    # Every device is a fresh phone: it received every artifact, through resumed streams.
    assert sizes < s["artifact_bytes_per_device"] < sizes * 1.01  # framing is under 1%
    # A stream breaks after the chunk that passes `cut` bytes; each break is resumed once.
    per_stream = -(-cut // DEFAULT_CHUNK_BYTES) * DEFAULT_CHUNK_BYTES
    breaks = sum(-(-a.size_bytes // per_stream) - 1 for a in spec.artifacts) if cut else 0
    assert breaks >= 2 or not cut  # the pretrained weights' download really is cut
    assert (s["artifact_resumes"], s["artifact_cache_hits"]) == (6 * breaks, 0)
    assert s["bytes_down_per_device"] > s["artifact_bytes_per_device"]
    stored = sorted(p.name for p in (tmp_path / "device-disk" / "sha256").iterdir())
    assert stored == sorted(a.digest.removeprefix("sha256:") for a in spec.artifacts)
    assert not any((tmp_path / "device-disk" / "partial").iterdir())
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert summary["artifact_bytes_max"] >= sizes
