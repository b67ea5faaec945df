"""The malformed-request catalogue: each bad call gets the right status and a way to fix it."""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from chord.metrics import rank_metrics
from chord.spec import DeviceMetrics, DeviceReport, TierSpec
from cloud_server import EmbeddedServer, ServerConfig
from cloud_server.validation import validate_report
from protos.chord.v1 import strategy_pb2 as pb
from tests.server_fixtures import arun, call, run_dir, spec_of, status_of, strategy_request

__all__ = ["run_dir"]  # the fixture, imported for pytest

S = grpc.StatusCode
INF = float("inf")
NAN = float("nan")


@dataclass(frozen=True)
class Case:
    """One malformed call: how to build it, what status and which hint it must get."""

    method: str
    build: Callable[[Any], Any]  # spec -> request message, or raw bytes
    code: grpc.StatusCode
    hint: str  # must appear in the status details (what to send instead)
    prime: Callable[[Any], Any] | None = None  # a valid call sent first (duplicate ids)


def _tier(spec: Any, name: str) -> Any:
    return next(t for t in spec.tiers if t.name == name)


def _req(**kw: Any) -> Callable[[Any], Any]:
    """A GetStrategy case: a valid request with some fields overridden."""
    request_id = kw.pop("request_id", "bad-1")
    return lambda spec: strategy_request(spec, request_id, **kw)


def _with(fn: Callable[[Any], dict[str, Any]]) -> Callable[[Any], Any]:
    """A GetStrategy case whose overrides depend on the spec."""
    return lambda spec: strategy_request(spec, "bad-spec", **fn(spec))


def _report(**kw: Any) -> Callable[[Any], Any]:
    """A ReportMetrics case: a valid report with some fields overridden."""
    fields: dict[str, Any] = {
        "device_id": "dev-r",
        "round": 1,
        "tier": "mid",
        # A measured combination (see DeviceMetrics in the .proto).
        "metrics": pb.DeviceMetrics(hr5=0.2, hr10=0.3, ndcg5=0.1, ndcg10=0.13),
    }
    fields.update(kw)
    return lambda spec: pb.ReportMetricsRequest(**fields)


def _fetch(**kw: Any) -> Callable[[Any], Any]:
    """A FetchArtifact case: the spec's first artifact from offset 0, some fields overridden."""

    def build(spec: Any) -> Any:
        fields: dict[str, Any] = {"digest": spec.artifacts[0].digest, "offset": 0}
        fields.update({k: v(spec) if callable(v) else v for k, v in kw.items()})
        return pb.FetchArtifactRequest(**fields)

    return build


UNKNOWN_DIGEST = "sha256:" + "0" * 64

CASES: dict[str, Case] = {
    "no_profile_no_items": Case(
        "GetStrategy", _req(profile=None), S.INVALID_ARGUMENT, "send a profile of"
    ),
    "profile_too_short": Case(
        "GetStrategy",
        _with(lambda s: {"profile": [0.1] * (s.profile_dim - 1)}),
        S.INVALID_ARGUMENT,
        "send exactly",
    ),
    "profile_too_long": Case(
        "GetStrategy",
        _with(lambda s: {"profile": [0.1] * (s.profile_dim + 1)}),
        S.INVALID_ARGUMENT,
        "send exactly",
    ),
    "profile_oversized": Case(
        "GetStrategy",
        _req(profile=[0.1] * 100_000),
        S.INVALID_ARGUMENT,
        "send exactly",
    ),
    "profile_nan": Case(
        "GetStrategy",
        _with(lambda s: {"profile": [NAN] + [0.0] * (s.profile_dim - 1)}),
        S.INVALID_ARGUMENT,
        "finite",
    ),
    "profile_pos_inf": Case(
        "GetStrategy",
        _with(lambda s: {"profile": [0.0] * (s.profile_dim - 1) + [INF]}),
        S.INVALID_ARGUMENT,
        "finite",
    ),
    "profile_neg_inf": Case(
        "GetStrategy",
        _with(lambda s: {"profile": [-INF] * s.profile_dim}),
        S.INVALID_ARGUMENT,
        "finite",
    ),
    "unknown_tier": Case("GetStrategy", _req(tier="ultra"), S.INVALID_ARGUMENT, "send one of: "),
    "empty_tier": Case("GetStrategy", _req(tier=""), S.INVALID_ARGUMENT, "send one of: "),
    "budget_nan": Case(
        "GetStrategy", _req(budget_bits=NAN), S.INVALID_ARGUMENT, "send a value in ["
    ),
    "budget_inf": Case(
        "GetStrategy", _req(budget_bits=INF), S.INVALID_ARGUMENT, "send a value in ["
    ),
    "budget_negative": Case(
        "GetStrategy", _req(budget_bits=-3.0), S.INVALID_ARGUMENT, "send a value in ["
    ),
    "budget_zero": Case(
        "GetStrategy", _req(budget_bits=0.0), S.INVALID_ARGUMENT, "send a value in ["
    ),
    "budget_below_tier_range": Case(
        "GetStrategy",
        _with(lambda s: {"budget_bits": _tier(s, "mid").min_budget_bits - 0.5}),
        S.INVALID_ARGUMENT,
        "outside tier 'mid'",
    ),
    "budget_above_tier_range": Case(
        "GetStrategy",
        _with(lambda s: {"budget_bits": _tier(s, "mid").max_budget_bits + 1}),
        S.INVALID_ARGUMENT,
        "outside tier 'mid'",
    ),
    # 1 ulp above the range passed the server's check, then the level rule refused it as
    # "budget 8.000000000000002 bits is out of reach", naming no field.
    "budget_one_ulp_above_tier_range": Case(
        "GetStrategy",
        _with(lambda s: {"budget_bits": math.nextafter(_tier(s, "mid").max_budget_bits, 99.0)}),
        S.INVALID_ARGUMENT,
        "budget_bits 8.000000000000002 is outside tier 'mid''s reachable range",
    ),
    "stale_version": Case(
        "GetStrategy",
        _req(backbone_version="0123456789abcdef"),
        S.FAILED_PRECONDITION,
        "call GetModelSpec",
    ),
    "missing_version": Case(
        "GetStrategy", _req(backbone_version=""), S.FAILED_PRECONDITION, "call GetModelSpec"
    ),
    "missing_device_id": Case("GetStrategy", _req(device_id=""), S.INVALID_ARGUMENT, "device_id"),
    "missing_request_id": Case(
        "GetStrategy", _req(request_id=""), S.INVALID_ARGUMENT, "request_id"
    ),
    "overlong_device_id": Case(
        "GetStrategy", _req(device_id="d" * 129), S.INVALID_ARGUMENT, "send at most 128"
    ),
    "overlong_request_id": Case(
        "GetStrategy", _req(request_id="r" * 10_000), S.INVALID_ARGUMENT, "send at most 128"
    ),
    "control_chars_in_id": Case(
        "GetStrategy", _req(device_id="dev\n\x00x"), S.INVALID_ARGUMENT, "printable"
    ),
    "profile_and_items": Case(
        "GetStrategy", _req(recent_items=[1, 2, 3]), S.INVALID_ARGUMENT, "exactly one of them"
    ),
    "item_zero": Case(
        "GetStrategy",
        _req(profile=None, recent_items=[4, 0, 5]),
        S.INVALID_ARGUMENT,
        "0 is padding",
    ),
    "item_above_catalogue": Case(
        "GetStrategy",
        _with(lambda s: {"profile": None, "recent_items": [s.n_items + 1]}),
        S.INVALID_ARGUMENT,
        "send ids in 1..",
    ),
    "item_huge": Case(
        "GetStrategy",
        _req(profile=None, recent_items=[2**32 - 1]),
        S.INVALID_ARGUMENT,
        "send ids in 1..",
    ),
    "too_many_items": Case(
        "GetStrategy",
        _with(lambda s: {"profile": None, "recent_items": [1] * (s.max_recent_items + 1)}),
        S.INVALID_ARGUMENT,
        "send at most",
    ),
    "request_id_reused_for_other_request": Case(
        "GetStrategy",
        _req(request_id="dup-1", budget_bits=2.5),
        S.ALREADY_EXISTS,
        "send a new request_id",
        prime=lambda spec: strategy_request(spec, "dup-1"),
    ),
    "garbage_bytes": Case(
        "GetStrategy",
        lambda spec: b"\xff\xff\xff\xff\x0f",
        S.INVALID_ARGUMENT,
        "send a serialized chord.v1.GetStrategyRequest",
    ),
    "truncated_message": Case(
        "GetStrategy",
        lambda spec: strategy_request(spec, "cut").SerializeToString()[:-7],
        S.INVALID_ARGUMENT,
        "not a valid",
    ),
    "oversized_message": Case(
        "GetStrategy",
        lambda spec: b"\x0a\x80\x80\x80\x01" + b"x" * (2 << 20),
        S.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    "spec_garbage_bytes": Case(
        "GetModelSpec",
        lambda spec: b"\x08\xff",
        S.INVALID_ARGUMENT,
        "not a valid",
    ),
    "report_missing_device_id": Case(
        "ReportMetrics", _report(device_id=""), S.INVALID_ARGUMENT, "device_id"
    ),
    "report_missing_metrics": Case(
        "ReportMetrics", _report(metrics=None), S.INVALID_ARGUMENT, "send the DeviceMetrics"
    ),
    "report_nan_metric": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(ndcg10=NAN)),
        S.INVALID_ARGUMENT,
        "metrics.ndcg10 is nan; send a rate in [0, 1]",
    ),
    "report_inf_latency": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(infer_ms=INF)),
        S.INVALID_ARGUMENT,
        "metrics.infer_ms is inf; send milliseconds in [0, 3600000]",
    ),
    "report_negative_latency": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(rpc_ms=-1.0)),
        S.INVALID_ARGUMENT,
        "metrics.rpc_ms is -1; send milliseconds in [0, 3600000]",
    ),
    "report_latency_above_an_hour": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(adapt_ms=1e12)),
        S.INVALID_ARGUMENT,
        "metrics.adapt_ms is 1000000000000; send milliseconds in [0, 3600000]",
    ),
    "report_bytes_above_a_tebibyte": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(bytes_down=1 << 50)),
        S.INVALID_ARGUMENT,
        "metrics.bytes_down is 1125899906842624; send a byte count in [0, 1099511627776]",
    ),
    # The case: no tier has a level above 8 bits, so avg_bits = 1e9 cannot be real.
    "report_avg_bits_1e9": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(avg_bits=1e9)),
        S.INVALID_ARGUMENT,
        "metrics.avg_bits is 1000000000; send 0 (not measured) or bits per weight within tier "
        "'mid''s level widths [2, 8]",
    ),
    "report_avg_bits_below_tier": Case(
        "ReportMetrics",
        _report(tier="high", metrics=pb.DeviceMetrics(avg_bits=2.0)),
        S.INVALID_ARGUMENT,
        "metrics.avg_bits is 2; send 0 (not measured) or bits per weight within tier 'high''s "
        "level widths [4, 8]",
    ),
    "report_avg_bits_no_tier": Case(
        "ReportMetrics",
        _report(tier="", metrics=pb.DeviceMetrics(avg_bits=9.0)),
        S.INVALID_ARGUMENT,
        "within the tiers' level widths [1, 8]",
    ),
    # The case: 64 values of 1e30 are finite floats but no profiler output; the error
    # names the profile and its range (it used to advise a budget).
    "profile_1e30": Case(
        "GetStrategy",
        _with(lambda s: {"profile": [1e30] * s.profile_dim}),
        S.INVALID_ARGUMENT,
        "profile[0] is 1e+30 (64 values outside the range); send finite floats in "
        "[-10000, 10000]",
    ),
    "profile_just_above_range": Case(
        "GetStrategy",
        _with(lambda s: {"profile": [0.0] * (s.profile_dim - 1) + [-10001.0]}),
        S.INVALID_ARGUMENT,
        "is -10001 (1 values outside the range)",
    ),
    # Out-of-range values are shown exactly: they used to be rounded into the range.
    "report_rate_just_above_one": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(hr5=1.0000001, hr10=1.0)),
        S.INVALID_ARGUMENT,
        "metrics.hr5 is 1.0000001; send a rate in [0, 1]",
    ),
    "report_latency_just_above_an_hour": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(adapt_ms=3600001)),
        S.INVALID_ARGUMENT,
        "metrics.adapt_ms is 3600001; send milliseconds in [0, 3600000]",
    ),
    "report_bytes_just_above_a_tebibyte": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(bytes_up=2**40 + 1)),
        S.INVALID_ARGUMENT,
        "metrics.bytes_up is 1099511627777; send a byte count in [0, 1099511627776]",
    ),
    # HR@5 <= HR@10 and NDCG@k <= HR@k hold for every target, so for their means too.
    "report_hr5_above_hr10": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(hr5=1.0, hr10=0.0)),
        S.INVALID_ARGUMENT,
        "metrics hr5=1, hr10=0, ndcg5=0, ndcg10=0 break hr5 <= hr10, which every measured "
        "round keeps",
    ),
    "report_ndcg10_above_hr10": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(ndcg10=1.0, hr10=0.0)),
        S.INVALID_ARGUMENT,
        "metrics hr5=0, hr10=0, ndcg5=0, ndcg10=1 break ndcg10 - ndcg5 <= (hr10 - hr5) / "
        "log2(7)",
    ),
    "report_ndcg5_above_hr5": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(ndcg5=0.5, hr5=0.25, hr10=0.3)),
        S.INVALID_ARGUMENT,
        "metrics hr5=0.25, hr10=0.3, ndcg5=0.5, ndcg10=0 break ndcg5 <= hr5",
    ),
    # Every string field is bounded by its documented length and quoted at most 40 characters.
    "tier_overlong": Case(
        "GetStrategy", _req(tier="t" * 3000), S.INVALID_ARGUMENT,
        "tier has 3000 characters; send at most 64 (tier 'tttt",
    ),
    "tier_16k": Case(
        "GetStrategy", _req(tier="t" * 20_000), S.INVALID_ARGUMENT,
        "tier has 20000 characters; send at most 64",
    ),
    "backbone_version_overlong": Case(
        "GetStrategy", _req(backbone_version="v" * 20_000), S.INVALID_ARGUMENT,
        "backbone_version has 20000 characters; send at most 64",
    ),
    "backbone_version_empty": Case(
        "GetStrategy", _req(backbone_version=""), S.FAILED_PRECONDITION,
        "backbone_version is empty; call GetModelSpec and send its version",
    ),
    "report_tier_overlong": Case(
        "ReportMetrics", _report(tier="g" * 20_000), S.INVALID_ARGUMENT,
        "tier has 20000 characters; send at most 64",
    ),
    "reference_id_overlong": Case(
        "GetStrategy", _req(reference_id="z" * 20_000), S.INVALID_ARGUMENT,
        "... (20000 characters) is not 8 lowercase hex digits",
    ),
    "reference_id_not_hex": Case(
        "GetStrategy", _req(reference_id="zz\n"), S.INVALID_ARGUMENT,
        "reference_id 'zz\\n' is not 8 lowercase hex digits",
    ),
    "spec_device_id_control_chars": Case(
        "GetModelSpec", lambda spec: pb.GetModelSpecRequest(device_id="a\x00b"),
        S.INVALID_ARGUMENT, "device_id contains non-printable characters",
    ),
    **{
        f"device_id_{label}": Case(
            "GetStrategy", _req(device_id=f"a{char}b"), S.INVALID_ARGUMENT,
            "device_id contains non-printable characters",
        )
        for label, char in (("nbsp", "\u00a0"), ("zero_width_space", "\u200b"),
                            ("right_to_left_override", "\u202e"), ("bom", "\ufeff"))
    },
    # NDCG@5 above NDCG@10, and top-5 hits with no NDCG: neither can be measured.
    "report_ndcg5_above_ndcg10": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(hr5=0.5, hr10=0.5, ndcg5=0.5, ndcg10=0.4)),
        S.INVALID_ARGUMENT,
        "break ndcg10 - ndcg5 >= (hr10 - hr5) / log2(11)",
    ),
    "report_hits_without_ndcg": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(hr5=1.0, hr10=1.0, ndcg5=0.0, ndcg10=0.0)),
        S.INVALID_ARGUMENT,
        "break ndcg5 >= hr5 / log2(6)",
    ),
    "spec_device_id_overlong": Case(
        "GetModelSpec", lambda spec: pb.GetModelSpecRequest(device_id="d" * 129),
        S.INVALID_ARGUMENT, "device_id has 129 characters; send at most 128",
    ),
    "report_rate_above_one": Case(
        "ReportMetrics",
        _report(metrics=pb.DeviceMetrics(hr5=1.5)),
        S.INVALID_ARGUMENT,
        "[0, 1]",
    ),
    "report_unknown_tier": Case(
        "ReportMetrics", _report(tier="gold"), S.INVALID_ARGUMENT, "send one of"
    ),
    "report_garbage_bytes": Case(
        "ReportMetrics", lambda spec: b"\x12\x05ab", S.INVALID_ARGUMENT, "not a valid"
    ),
    "fetch_empty_digest": Case(
        "FetchArtifact", _fetch(digest=""), S.INVALID_ARGUMENT, "send an ArtifactRef.digest"
    ),
    "fetch_md5_digest": Case(
        "FetchArtifact", _fetch(digest="md5:" + "0" * 32), S.INVALID_ARGUMENT, "64 lowercase hex"
    ),
    "fetch_uppercase_digest": Case(
        "FetchArtifact",
        _fetch(digest=lambda s: s.artifacts[0].digest.upper()),
        S.INVALID_ARGUMENT,
        "64 lowercase hex",
    ),
    "fetch_overlong_digest": Case(
        "FetchArtifact",
        _fetch(digest="sha256:" + "a" * 100_000),
        S.INVALID_ARGUMENT,
        "64 lowercase hex",
    ),
    "fetch_digest_control_chars": Case(
        "FetchArtifact", _fetch(digest="sha256:\x00\n"), S.INVALID_ARGUMENT, "64 lowercase hex"
    ),
    "fetch_unknown_digest": Case(
        "FetchArtifact",
        _fetch(digest=UNKNOWN_DIGEST),
        S.NOT_FOUND,
        "send a digest listed in this server's ModelSpec.artifacts",
    ),
    "fetch_offset_at_end": Case(
        "FetchArtifact",
        _fetch(offset=lambda s: s.artifacts[0].size_bytes),
        S.OUT_OF_RANGE,
        "send an offset in 0..",
    ),
    "fetch_offset_huge": Case(
        "FetchArtifact", _fetch(offset=2**64 - 1), S.OUT_OF_RANGE, "send an offset in 0.."
    ),
    "fetch_chunk_tiny": Case(
        "FetchArtifact", _fetch(max_chunk_bytes=1), S.INVALID_ARGUMENT, "max_chunk_bytes 1 is"
    ),
    "fetch_chunk_huge": Case(
        "FetchArtifact",
        _fetch(max_chunk_bytes=2**32 - 1),
        S.INVALID_ARGUMENT,
        "send 0 for the server's default",
    ),
    "fetch_garbage_bytes": Case(
        "FetchArtifact",
        lambda spec: b"\x0a\xff\xff",
        S.INVALID_ARGUMENT,
        "send a serialized chord.v1.FetchArtifactRequest",
    ),
}
STREAMING = frozenset({"FetchArtifact"})


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[EmbeddedServer]:
    """One server for the whole catalogue."""
    srv = EmbeddedServer(ServerConfig(run_dir=run_dir, max_wait_ms=1)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def spec(server: EmbeddedServer) -> Any:
    """The served model spec."""
    return spec_of(server.address)


async def _send(address: str, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
    """Send a message, or raw bytes through a generic (untyped) channel method; a streaming
    method's status is the one its stream ends with."""
    if method in STREAMING:
        data = request if isinstance(request, bytes) else request.SerializeToString()
        async with grpc.aio.insecure_channel(address) as ch:
            stream = ch.unary_stream(f"/chord.v1.StrategyService/{method}")(data, timeout=10)

            async def drain() -> None:
                async for _ in stream:
                    pass

            return await status_of(drain())
    if not isinstance(request, bytes):
        return await status_of(call(address, method, request))
    async with grpc.aio.insecure_channel(address) as ch:
        raw = ch.unary_unary(f"/chord.v1.StrategyService/{method}")
        return await status_of(raw(request, timeout=10))


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_request(name: str, server: EmbeddedServer, spec: Any) -> None:
    case = CASES[name]
    if case.prime is not None:
        assert arun(_send(server.address, case.method, case.prime(spec)))[0] == S.OK
    code, details = arun(_send(server.address, case.method, case.build(spec)))
    assert code == case.code, details
    assert case.hint in details, details
    if case.code == S.FAILED_PRECONDITION:
        assert spec.version in details  # names the version to use


@pytest.mark.parametrize("name", sorted(CASES))
def test_details_never_grow_with_the_request(name: str, server: EmbeddedServer, spec: Any) -> None:
    """A hostile string is quoted at most ECHO_CHARS (80 for a digest) characters: the details
    stay short (a 16 KB tier used to come back as RESOURCE_EXHAUSTED, metadata over the limit)."""
    case = CASES[name]
    if case.prime is not None:
        arun(_send(server.address, case.method, case.prime(spec)))
    _, details = arun(_send(server.address, case.method, case.build(spec)))
    assert len(details) <= 400, details


def test_profile_error_does_not_blame_the_budget(server: EmbeddedServer, spec: Any) -> None:
    code, details = arun(_send(server.address, "GetStrategy", CASES["profile_1e30"].build(spec)))
    assert code == S.INVALID_ARGUMENT
    assert details.startswith("profile[0]") and "budget" not in details


def test_unknown_method_is_unimplemented(server: EmbeddedServer) -> None:
    async def unknown() -> tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            return await status_of(ch.unary_unary("/chord.v1.StrategyService/Nope")(b"", timeout=5))

    assert arun(unknown())[0] == S.UNIMPLEMENTED


def test_server_is_healthy_after_the_catalogue(server: EmbeddedServer, spec: Any) -> None:
    for name in sorted(CASES):  # run the catalogue again in this test's own order
        case = CASES[name]
        arun(_send(server.address, case.method, case.build(spec)))

    async def health() -> int:
        async with grpc.aio.insecure_channel(server.address) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="chord.v1.StrategyService"), timeout=5
            )
            return int(reply.status)

    assert arun(health()) == health_pb2.HealthCheckResponse.SERVING
    reply = arun(call(server.address, "GetStrategy", strategy_request(spec, "after-catalogue")))
    assert reply.request_id == "after-catalogue" and reply.n_channels == spec.n_channels
    metrics = server.service.metrics
    assert metrics.count("GetStrategy", "INVALID_ARGUMENT") >= 20
    assert metrics.count("GetStrategy", "INTERNAL") == 0 and server.service.in_flight == 0
    assert metrics.count("FetchArtifact", "INTERNAL") == 0 and server.service.artifact_streams == 0


def test_memory_is_steady_under_the_catalogue(server: EmbeddedServer, spec: Any) -> None:
    """Bad input leaves nothing behind: heap growth over repeated catalogues stays small."""

    async def catalogues(n: int) -> None:
        for _ in range(n):
            for name in sorted(CASES):
                await _send(server.address, CASES[name].method, CASES[name].build(spec))

    # One client event loop for everything: grpc.aio keeps a little state per client loop, which
    # would otherwise show up as growth that is the test's, not the server's.
    async def measure() -> list[int]:
        await catalogues(2)  # warm caches, channels and lazily built state first
        marks = []
        for _ in range(3):
            await catalogues(4)
            gc.collect()
            marks.append(tracemalloc.get_traced_memory()[0])
        return marks

    tracemalloc.start()
    try:
        marks = arun(measure())
    finally:
        tracemalloc.stop()
    # Tracing settles during the first block; after it ~170 rejected calls must not add up:
    # a leak of 1 KB per call would show as 170 KB.
    grown = marks[2] - marks[1]
    assert grown < 100_000, f"heap grew {grown} bytes over 4 catalogues (marks {marks})"


CORRUPT = b"\xff\xff\xff\xff"  # field 31 with an invalid wire type: no message parses it


async def _corrupt_status(
    address: str, method: str, streaming: bool
) -> tuple[grpc.StatusCode, str]:
    """Send CORRUPT to a health or reflection method through an untyped channel method."""
    async with grpc.aio.insecure_channel(address) as ch:
        if not streaming:
            return await status_of(ch.unary_unary(method)(CORRUPT, timeout=10))
        stream = ch.stream_stream(method)(iter([CORRUPT]), timeout=10)

        async def drain() -> None:
            async for _ in stream:
                pass

        return await status_of(drain())


@pytest.mark.parametrize(
    ("method", "type_name", "streaming"),
    [
        ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest", False),
        ("/grpc.health.v1.Health/List", "grpc.health.v1.HealthListRequest", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
         "grpc.reflection.v1alpha.ServerReflectionRequest", True),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
         "grpc.reflection.v1.ServerReflectionRequest", True),
    ],
)
def test_corrupt_bytes_to_health_and_reflection_are_invalid_argument(
    method: str, type_name: str, streaming: bool, server: EmbeddedServer
) -> None:
    """They answered UNKNOWN ("Unexpected DecodeError") and logged a traceback."""
    code, details = arun(_corrupt_status(server.address, method, streaming))
    assert code == S.INVALID_ARGUMENT, details
    assert details.startswith(f"the request bytes are not a valid {type_name} (")
    assert details.endswith(f"); send a serialized {type_name}")


def test_reflection_v1_describes_its_own_service(server: EmbeddedServer) -> None:
    """It listed grpc.reflection.v1.ServerReflection but answered NOT_FOUND for its file."""
    async def describe() -> list[str]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            info = ch.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            request = reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            )
            async for reply in info(iter([request]), timeout=5):
                assert not reply.HasField("error_response"), reply.error_response
                return [
                    descriptor_pb2.FileDescriptorProto.FromString(raw).package
                    for raw in reply.file_descriptor_response.file_descriptor_proto
                ]
            return []

    assert arun(describe()) == ["grpc.reflection.v1"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=60))
def test_every_measured_round_passes_the_metric_relations(ranks: list[int]) -> None:
    """What a device measures (chord.metrics.rank_metrics of any ranks) is never refused."""

    m = rank_metrics(np.asarray(ranks))
    metrics = DeviceMetrics(hr5=m["HR@5"], hr10=m["HR@10"], ndcg5=m["NDCG@5"],
                            ndcg10=m["NDCG@10"])
    mid = TierSpec("mid", (2, 3, 4, 8), 3.0, 2, 8)
    validate_report(DeviceReport("dev", 1, "", metrics), (mid,))
