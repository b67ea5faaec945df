"""The strategy server end to end: real servers on port 0, real grpc.aio channels, a real run."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chord.checkpoint import weights_version
from chord.codes import decode_levels
from chord.hyper.runs import load_run
from chord.levels import DEFAULT_TIERS, budget_range
from chord.strategy import StrategyRequest
from cloud_server import EmbeddedServer, ServerConfig, StrategyEngine, create_server, stop_server
from cloud_server.batching import MicroBatcher
from cloud_server.engine import BatchOutcome
from cloud_server.errors import RequestExpiredError
from cloud_server.reports import ReportStore
from cloud_server.service import StrategyService
from protos.chord.v1 import strategy_pb2 as pb
from protos.serde import strategy_result_from_proto
from tests.server_fixtures import arun, call, run_dir, spec_of, status_of, strategy_request

__all__ = ["run_dir"]  # the fixture, imported for pytest

OK = grpc.StatusCode.OK


@pytest.fixture(scope="module")
def engine(run_dir: Path) -> StrategyEngine:
    """The run's engine, shared by this module's servers."""
    return StrategyEngine.from_run_dir(run_dir)


@pytest.fixture(scope="module")
def server(
    run_dir: Path, engine: StrategyEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """A batching server (up to 64 per batch, 20 ms wait) storing reports in a JSONL file."""
    reports = tmp_path_factory.mktemp("reports") / "reports.jsonl"
    cfg = ServerConfig(run_dir=run_dir, max_batch=64, max_wait_ms=20, reports_path=reports)
    srv = EmbeddedServer(cfg, engine=engine).start()
    yield srv
    srv.stop()


def _levels(reply: pb.GetStrategyReply, spec: pb.ModelSpec) -> np.ndarray:
    """The levels a device decodes from a reply."""
    code = strategy_result_from_proto(reply).code
    return decode_levels(code, spec.version, spec.n_channels)


def test_health_reports_serving_for_server_and_service(server: EmbeddedServer) -> None:
    async def check() -> list[int]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            out = []
            for name in ("", "chord.v1.StrategyService"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                out.append(reply.status)
            code, _ = await status_of(stub.Check(health_pb2.HealthCheckRequest(service="nope")))
            assert code == grpc.StatusCode.NOT_FOUND
            return out

    serving = health_pb2.HealthCheckResponse.SERVING
    assert arun(check()) == [serving, serving]


def test_health_not_serving_when_model_cannot_load(tmp_path: Path) -> None:
    cfg = ServerConfig(run_dir=tmp_path / "missing-run")

    async def scenario() -> tuple[int, grpc.StatusCode, str]:
        service = StrategyService(cfg)
        server, port = create_server("127.0.0.1:0", cfg, service)
        await server.start()
        assert service.load_task is not None
        with pytest.raises(Exception, match="does not exist"):
            await service.load_task
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="chord.v1.StrategyService"), timeout=5
            )
        code, details = await status_of(
            call(f"127.0.0.1:{port}", "GetStrategy", pb.GetStrategyRequest(device_id="d"))
        )
        await stop_server(server, service, 0.5)
        return health.status, code, details

    status, code, details = arun(scenario())
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "failed to load" in details


def test_reflection_lists_the_services(server: EmbeddedServer) -> None:
    async def services() -> set[str]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            names: set[str] = set()
            async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
                names |= {s.name for s in reply.list_services_response.service}
            return names

    names = arun(services())
    assert {"chord.v1.StrategyService", "grpc.health.v1.Health"} <= names


def test_model_spec_describes_the_run(server: EmbeddedServer, run_dir: Path) -> None:
    spec = spec_of(server.address)
    run = load_run(run_dir)
    assert spec.version == run.version
    assert spec.mode == pb.BACKBONE_MODE_RANDOM and spec.kind == pb.BACKBONE_KIND_SASREC
    # Random mode ships no weights: the learned shared mask and the reference data.
    assert [a.kind for a in spec.artifacts] == [
        pb.ARTIFACT_KIND_SHARED_MASK, pb.ARTIFACT_KIND_REFERENCE_DATA
    ]
    assert spec.generator and spec.weights_checksum and spec.weights_checksum != spec.version
    assert spec.n_channels == run.layout.n_channels == sum(x.n_channels for x in spec.layers)
    assert spec.profile_dim == run.profile_dim and spec.n_items == run.backbone.n_items
    assert spec.max_recent_items == run.backbone.max_len
    assert {t.name for t in spec.tiers} == set(run.tiers)
    for t in spec.tiers:
        assert (t.min_budget_bits, t.max_budget_bits) == pytest.approx(
            budget_range(run.tiers[t.name])
        )


def test_every_method_from_generated_stubs(server: EmbeddedServer) -> None:
    spec = spec_of(server.address)
    for tier in ("low", "mid", "high"):
        lo, hi = next((t.min_budget_bits, t.max_budget_bits) for t in spec.tiers if t.name == tier)
        budget = (lo + hi) / 2
        req = strategy_request(spec, f"every-{tier}", tier=tier, budget_bits=budget)
        reply = arun(call(server.address, "GetStrategy", req))
        levels = _levels(reply, spec)
        assert reply.request_id == f"every-{tier}" and len(levels) == spec.n_channels
        assert list(np.bincount(levels, minlength=4)) == list(reply.level_counts)
        sizes = np.array([x.channel_size for x in spec.layers for _ in range(x.n_channels)])
        bits = np.array(DEFAULT_TIERS[tier].level_bits)[levels]
        assert float(np.average(bits, weights=sizes)) == pytest.approx(reply.avg_bits)
        assert abs(reply.avg_bits - budget) <= 0.1 + 1e-9
        assert reply.timings.batch_size >= 1 and reply.timings.total_us > 0
    report = pb.ReportMetricsRequest(
        device_id="dev-1", round=3, tier="mid",
        metrics=pb.DeviceMetrics(hr5=0.5, hr10=0.5, ndcg5=0.3, ndcg10=0.3),
    )
    first = arun(call(server.address, "ReportMetrics", report))
    again = arun(call(server.address, "ReportMetrics", report))
    assert (first.accepted, first.duplicate) == (True, False)
    assert (again.accepted, again.duplicate) == (True, True)
    stored = server.service.reports.get("dev-1", 3)
    assert stored is not None and stored.metrics is not None and stored.metrics.hr10 == 0.5
    # The JSONL file keeps the report once; a new store reloads it and still sees a duplicate.
    assert server.cfg.reports_path is not None
    reloaded = ReportStore(server.cfg.reports_path)
    assert len(server.cfg.reports_path.read_text().splitlines()) == len(reloaded) >= 1
    assert reloaded.get("dev-1", 3) == stored


def test_recent_items_give_the_same_strategy_as_their_profile(
    server: EmbeddedServer, run_dir: Path
) -> None:
    spec = spec_of(server.address)
    items = [5, 17, 42, 8, 99, 3]
    profile = load_run(run_dir).profile(torch.tensor([items]))[0].tolist()
    by_items = arun(
        call(
            server.address,
            "GetStrategy",
            strategy_request(spec, "items", profile=None, recent_items=items, budget_bits=3.5),
        )
    )
    by_profile = arun(
        call(
            server.address,
            "GetStrategy",
            strategy_request(spec, "prof", profile=profile, budget_bits=3.5),
        )
    )
    assert by_items.codes == by_profile.codes
    other = arun(
        call(
            server.address,
            "GetStrategy",
            strategy_request(spec, "other", profile=[-3.0] * spec.profile_dim, budget_bits=3.5),
        )
    )
    assert other.codes != by_profile.codes  # strategies are personal


async def _fire(
    address: str, requests: Sequence[pb.GetStrategyRequest], timeout: float = 20
) -> list:
    """Send all requests concurrently on one channel; return replies or (code, details)."""
    async with grpc.aio.insecure_channel(address) as ch:
        method = ch.unary_unary(
            "/chord.v1.StrategyService/GetStrategy",
            request_serializer=pb.GetStrategyRequest.SerializeToString,
            response_deserializer=pb.GetStrategyReply.FromString,
        )

        async def one(r: pb.GetStrategyRequest) -> object:
            try:
                return await method(r, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()

        return await asyncio.gather(*(one(r) for r in requests))


def test_concurrent_calls_share_forward_passes(server: EmbeddedServer) -> None:
    spec = spec_of(server.address)
    rng = np.random.default_rng(0)
    before = server.service.metrics.batch_sizes()
    reqs = [
        strategy_request(spec, f"batch-{i}", profile=rng.normal(size=spec.profile_dim).tolist())
        for i in range(32)
    ]
    replies = arun(_fire(server.address, reqs))
    assert all(isinstance(r, pb.GetStrategyReply) for r in replies), replies[:3]
    assert max(r.timings.batch_size for r in replies) > 1
    n_batches = server.service.metrics.batch_sizes()[0] - before[0]
    assert 1 <= n_batches < 32
    assert server.service.metrics.count("GetStrategy", "OK") >= 32


def test_unbatched_server_runs_one_request_per_pass(run_dir: Path, engine: StrategyEngine) -> None:
    with EmbeddedServer(ServerConfig(run_dir=run_dir, max_batch=1), engine=engine) as srv:
        spec = spec_of(srv.address)
        replies = arun(_fire(srv.address, [strategy_request(spec, f"u{i}") for i in range(8)]))
        assert [r.timings.batch_size for r in replies] == [1] * 8
        assert srv.service.metrics.batch_sizes() == (8.0, 8.0)


def test_overload_is_refused_at_once(run_dir: Path, engine: StrategyEngine) -> None:
    cfg = ServerConfig(run_dir=run_dir, max_batch=64, max_wait_ms=400, max_concurrency=2)
    with EmbeddedServer(cfg, engine=engine) as srv:
        spec = spec_of(srv.address)
        start = time.perf_counter()
        out = arun(_fire(srv.address, [strategy_request(spec, f"o{i}") for i in range(8)]))
        assert time.perf_counter() - start < 5
        ok = [r for r in out if isinstance(r, pb.GetStrategyReply)]
        refused = [r for r in out if not isinstance(r, pb.GetStrategyReply)]
        assert len(ok) == 2 and len(refused) == 6
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in refused)
        assert "retry" in refused[0][1]
        assert srv.service.metrics.count("GetStrategy", "RESOURCE_EXHAUSTED") == 6
        # With the load gone, the server answers again.
        assert isinstance(
            arun(_fire(srv.address, [strategy_request(spec, "after")]))[0], pb.GetStrategyReply
        )


def test_expired_requests_are_dropped_and_the_server_goes_on(
    run_dir: Path, engine: StrategyEngine
) -> None:
    cfg = ServerConfig(run_dir=run_dir, max_batch=64, max_wait_ms=300)
    with EmbeddedServer(cfg, engine=engine) as srv:
        spec = spec_of(srv.address)
        (result,) = arun(_fire(srv.address, [strategy_request(spec, "late")], timeout=0.05))
        assert isinstance(result, tuple) and result[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        metrics = srv.service.metrics
        until = time.monotonic() + 5
        while metrics.batch_sizes()[0] + metrics.dropped_count("cancelled") < 1:
            assert time.monotonic() < until
            time.sleep(0.02)
        # The expired call never reached the model: its batch was dropped, not run.
        assert metrics.batch_sizes()[0] == 0 and metrics.dropped_count("cancelled") == 1
        (fine,) = arun(_fire(srv.address, [strategy_request(spec, "in-time")], timeout=5))
        assert isinstance(fine, pb.GetStrategyReply)


def test_batcher_refuses_requests_whose_deadline_passed(engine: StrategyEngine) -> None:
    async def scenario() -> tuple[float, int]:
        dropped: list[str] = []
        batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=5, on_dropped=dropped.append)
        await batcher.start()
        try:
            req = StrategyRequest(
                "d",
                "r",
                engine.spec.version,
                "mid",
                3.0,
                np.ones(engine.spec.profile_dim, np.float32),
            )
            loop = asyncio.get_running_loop()
            with pytest.raises(RequestExpiredError, match="longer deadline"):
                await batcher.submit(req, deadline=loop.time() - 0.001)
            result = await batcher.submit(req, deadline=loop.time() + 5)
        finally:
            await batcher.stop()
        assert dropped == ["expired"]
        return result.timings["batch_size"], result.code.n_channels

    batch, n_channels = arun(scenario())
    assert batch == 1 and n_channels == engine.spec.n_channels


class FaultyEngine:
    """The real engine, failing every batch that holds a request id starting with 'boom'."""

    inline = False

    def __init__(self, engine: StrategyEngine) -> None:
        self.engine, self.spec = engine, engine.spec

    def compute(self, requests: Sequence[StrategyRequest]) -> BatchOutcome:
        if any(r.request_id.startswith("boom") for r in requests):
            raise RuntimeError("injected fault: hypernetwork weights unreadable")
        return self.engine.compute(requests)


def test_engine_failure_fails_its_batch_with_internal(
    run_dir: Path, engine: StrategyEngine
) -> None:
    cfg = ServerConfig(run_dir=run_dir, max_batch=8, max_wait_ms=50)
    with EmbeddedServer(cfg, engine=FaultyEngine(engine)) as srv:  # type: ignore[arg-type]
        spec = spec_of(srv.address)
        out = arun(
            _fire(srv.address, [strategy_request(spec, "boom-1"), strategy_request(spec, "x-1")])
        )
        assert all(isinstance(r, tuple) and r[0] == grpc.StatusCode.INTERNAL for r in out)
        assert "injected fault" in out[0][1]
        # The batcher survived; the failed ids were not cached, so a clean batch succeeds.
        out = arun(
            _fire(srv.address, [strategy_request(spec, "x-1"), strategy_request(spec, "x-2")])
        )
        assert all(isinstance(r, pb.GetStrategyReply) for r in out)


def test_retried_request_id_gets_the_first_reply(server: EmbeddedServer) -> None:
    spec = spec_of(server.address)
    req = strategy_request(spec, "retry-me", device_id="dev-retry")
    first = arun(call(server.address, "GetStrategy", req))
    hits = server.service.cache.hits
    again = arun(call(server.address, "GetStrategy", req))
    assert again == first and server.service.cache.hits == hits + 1
    other_device = strategy_request(spec, "retry-me", device_id="dev-other", budget_bits=2.5)
    assert arun(status_of(call(server.address, "GetStrategy", other_device)))[0] == OK


def test_concurrent_retries_share_one_computation(server: EmbeddedServer) -> None:
    spec = spec_of(server.address)
    req = strategy_request(spec, "twice-at-once", device_id="dev-twice")
    batches = server.service.metrics.batch_sizes()
    first, second = arun(_fire(server.address, [req, req]))
    assert isinstance(first, pb.GetStrategyReply) and first == second
    n, total = (a - b for a, b in zip(server.service.metrics.batch_sizes(), batches, strict=True))
    assert (n, total) == (1, 1)  # one forward pass for one request


def _free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_metrics_are_exported(run_dir: Path, engine: StrategyEngine) -> None:
    port = _free_port()
    cfg = ServerConfig(run_dir=run_dir, metrics_port=port, metrics_host="127.0.0.1")
    srv = EmbeddedServer(cfg, engine=engine).start()
    try:
        assert srv.metrics_port == port
        spec = spec_of(srv.address)
        arun(call(srv.address, "GetStrategy", strategy_request(spec, "m1")))
        arun(status_of(call(srv.address, "GetStrategy", strategy_request(spec, "m2", tier="nope"))))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        srv.stop()
    assert 'chord_requests_total{code="OK",method="GetStrategy"} 1.0' in text
    assert 'chord_requests_total{code="INVALID_ARGUMENT",method="GetStrategy"} 1.0' in text, text
    assert "chord_batch_size_count 1.0" in text
    assert "chord_in_flight 0.0" in text
    assert 'chord_bytes_out_total{method="GetStrategy"}' in text
    assert 'chord_request_latency_seconds_count{method="GetModelSpec"} 1.0' in text


def test_pretrained_spec_lists_the_weights_artifact(run_dir: Path, tmp_path: Path) -> None:
    # The same weights declared "pretrained": the spec must then offer them for download.
    import json
    import shutil

    from chord.artifacts import BACKBONE_FORMAT, backbone_from_artifact

    copy = Path(shutil.copytree(run_dir, tmp_path / "pretrained-run"))
    meta = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**meta, "mode": "pretrained"}))
    engine = StrategyEngine.from_run_dir(copy)
    spec = engine.spec
    weights = spec.artifact("backbone_weights")
    assert spec.mode == "pretrained" and weights is not None
    assert weights.format == BACKBONE_FORMAT and spec.version == meta["version"]
    data = engine.artifacts.get(weights.digest).data
    assert len(data) == weights.size_bytes and hashlib.sha256(data).hexdigest() in weights.digest
    model = backbone_from_artifact(data, spec.config_json, spec.version)
    assert weights_version(model) == spec.version


def test_health_list_reports_every_service(server: EmbeddedServer) -> None:
    """/grpc.health.v1.Health/List is implemented (it used to log a traceback per call)."""

    async def listed() -> dict[str, int]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            reply = await stub.List(health_pb2.HealthListRequest(), timeout=5)
            return {name: r.status for name, r in reply.statuses.items()}

    serving = health_pb2.HealthCheckResponse.SERVING
    assert arun(listed()) == {"": serving, "chord.v1.StrategyService": serving}


def test_reflection_v1_and_v1alpha_both_answer(server: EmbeddedServer) -> None:
    """A grpc.reflection.v1 client (grpcurl, Postman) gets the same service list as v1alpha."""

    async def services(method: str) -> set[str]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            info = ch.stream_stream(
                method,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            names: set[str] = set()
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in info(iter([request]), timeout=5):
                names |= {s.name for s in reply.list_services_response.service}
            return names

    v1 = arun(services("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"))
    v1alpha = arun(services("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"))
    assert v1 == v1alpha
    assert {"chord.v1.StrategyService", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= v1
