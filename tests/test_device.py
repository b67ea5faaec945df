"""The virtual device without Ray: a real server on port 0, real backbone, real codes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from chord.codes import CodeError, decode_levels, encode_levels
from chord.strategy import StrategyRequest
from cloud_server.config import ServerConfig
from cloud_server.embedded import EmbeddedServer
from device_client.actor import DeviceHost, HostConfig
from device_client.artifacts import ArtifactCache
from device_client.backbone_cache import clear_cache
from device_client.device import (
    CORRUPTIONS,
    DeviceJob,
    VirtualDevice,
    corrupt_code,
    round_targets,
    uniform_fallback_bits,
)
from device_client.transport import NetworkFaults, RetryPolicy, Transport, TransportError
from simulator.runner import load_users

FAST = RetryPolicy(
    call_timeout_s=5.0,
    overall_timeout_s=3.0,
    max_attempts=6,
    backoff_base_s=0.01,
    backoff_max_s=0.1,
)


@pytest.fixture(scope="module")
def server(smoke_run_dir: Path) -> Iterator[EmbeddedServer]:
    """The strategy service on a free port, serving the smoke run."""
    srv = EmbeddedServer(ServerConfig(run_dir=smoke_run_dir, grace_s=0.5)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def users() -> list[np.ndarray]:
    """ML-100K test users' timelines."""
    return load_users("ml-100k")[0]


def _job(users: list[np.ndarray], i: int, **kw: object) -> DeviceJob:
    """A device job on user i."""
    base: dict[str, object] = dict(
        device_id=f"t-{i}",
        user_index=i,
        sequence=users[i],
        tier="mid",
        budget_bits=3.0,
        rounds=2,
        interactions_per_round=2,
        request_tag="unit",
    )
    base.update(kw)
    return DeviceJob(**base)  # type: ignore[arg-type]


def test_round_targets_end_at_the_last_item() -> None:
    plan = round_targets(20, rounds=3, k=2)
    assert [list(r) for r in plan] == [[14, 15], [16, 17], [18, 19]]
    assert [list(r) for r in round_targets(3, rounds=3, k=2)] == [[1, 2], [], []]


def test_uniform_fallback_fits_the_budget() -> None:
    from chord.levels import DEFAULT_TIERS

    assert uniform_fallback_bits(DEFAULT_TIERS["mid"], 3.0) == 3
    assert uniform_fallback_bits(DEFAULT_TIERS["high"], 2.0) == 4  # nothing fits: narrowest


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_every_corruption_is_rejected(kind: str) -> None:
    levels = np.random.default_rng(0).integers(0, 4, size=999).astype(np.uint8)
    code = encode_levels(levels, "ab" * 8)
    assert (decode_levels(code, "ab" * 8, 999) == levels).all()
    bad = corrupt_code(code, kind, np.random.default_rng(1))
    with pytest.raises(CodeError):
        decode_levels(bad, "ab" * 8, 999)


def test_device_runs_all_rounds_and_measures(
    server: EmbeddedServer, users: list[np.ndarray], tmp_path: Path
) -> None:
    # A device that holds nothing yet: its own artifact cache, and no backbone built in this
    # process (other tests of the session may have fetched the same smoke run's artifacts).
    clear_cache()
    disk = ArtifactCache(tmp_path / "device-cache")
    job = _job(users, 3)
    report = VirtualDevice(job, Transport(server.address, FAST), cache=disk).run()
    assert report.status == "completed", report.detail
    assert [r.round for r in report.rounds] == [0, 1]
    for rec in report.rounds:
        assert rec.status == "ok" and rec.strategy_source == "cloud" and not rec.fault
        assert rec.n_targets == 2
        assert 0.0 <= rec.ndcg10 <= rec.hr10 <= 1.0
        assert 1.0 <= rec.avg_bits <= 8.0
        assert abs(rec.avg_bits - rec.server_avg_bits) < 1e-6  # device and cloud agree on bits
        assert rec.reply_bytes > rec.code_bytes > 0
        assert rec.bytes_up > 0 and rec.bytes_down >= rec.reply_bytes
        assert rec.adapt_ms > 0 and rec.infer_ms > 0 and rec.rpc_ms > 0
        assert rec.modeled_transfer_ms > job.rtt_ms
    assert report.fp32_model_bytes > 100 * report.rounds[0].reply_bytes
    # Pretrained: the weights (and reference) came over FetchArtifact, and were counted.
    assert report.artifact_bytes > report.fp32_model_bytes and report.artifact_cache_hits == 0
    # Same job again: same negatives and strategy, so the same accuracy; backbone from the cache.
    again = VirtualDevice(job, Transport(server.address, FAST), cache=disk).run()
    assert again.backbone_cache_hit
    assert again.artifact_bytes == 0 and again.artifact_cache_hits == 2  # held on disk: no bytes
    assert [r.ndcg10 for r in again.rounds] == [r.ndcg10 for r in report.rounds]


def test_corrupted_code_keeps_the_previous_strategy(
    server: EmbeddedServer, users: list[np.ndarray]
) -> None:
    report = VirtualDevice(
        _job(users, 5, corrupt_rounds=(1,)), Transport(server.address, FAST)
    ).run()
    first, second = report.rounds
    assert report.status == "completed"
    assert first.strategy_source == "cloud"
    assert second.strategy_source == "previous" and second.fault.endswith(":rejected")
    assert second.avg_bits == first.avg_bits


def test_corrupted_first_code_falls_back_to_uniform(
    server: EmbeddedServer, users: list[np.ndarray]
) -> None:
    report = VirtualDevice(
        _job(users, 6, corrupt_rounds=(0,)), Transport(server.address, FAST)
    ).run()
    assert report.rounds[0].strategy_source == "uniform_fallback"
    assert report.rounds[0].avg_bits == 3.0  # mid tier, 3-bit budget: uniform 3 bits
    assert report.rounds[1].strategy_source == "cloud"


def test_offline_round_is_skipped(server: EmbeddedServer, users: list[np.ndarray]) -> None:
    report = VirtualDevice(
        _job(users, 7, offline_rounds=(1,)), Transport(server.address, FAST)
    ).run()
    assert [r.status for r in report.rounds] == ["ok", "offline"]
    assert report.rounds[1].rpc_attempts == 0


def test_injected_loss_is_retried(server: EmbeddedServer, users: list[np.ndarray]) -> None:
    host = DeviceHost(
        HostConfig(server.address, FAST, faults=NetworkFaults(5.0, 5.0, 0.5), fault_seed=3)
    )
    reports = host.run_batch([_job(users, i) for i in range(8, 12)])
    assert all(r.status == "completed" for r in reports)
    assert sum(rec.injected_losses for r in reports for rec in r.rounds) > 0
    assert max(rec.rpc_attempts for r in reports for rec in r.rounds) > 1


def test_unreachable_server_fails_with_a_reason(users: list[np.ndarray]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    report = VirtualDevice(_job(users, 1), Transport(f"127.0.0.1:{port}", FAST)).run()
    assert report.status == "failed"
    assert report.reason in ("spec:unavailable", "spec:overall_deadline")
    assert time.perf_counter() - t0 < FAST.overall_timeout_s + 2


def test_fatal_status_is_not_retried(server: EmbeddedServer) -> None:
    t = Transport(server.address, FAST)
    spec, _ = t.get_model_spec("x")
    bad = StrategyRequest(
        device_id="x",
        request_id="r",
        backbone_version="0" * 16,
        tier="mid",
        budget_bits=3.0,
        profile=np.zeros(spec.profile_dim, dtype=np.float32),
    )
    with pytest.raises(TransportError) as err:
        t.get_strategy(bad)
    assert err.value.attempts == 1
    assert err.value.reason == grpc.StatusCode.FAILED_PRECONDITION.name.lower()


def test_bearer_token_is_sent(smoke_run_dir: Path, users: list[np.ndarray]) -> None:
    srv = EmbeddedServer(ServerConfig(run_dir=smoke_run_dir, token="s3cret", grace_s=0.2)).start()
    try:
        ok = VirtualDevice(_job(users, 2), Transport(srv.address, FAST, token="s3cret")).run()
        denied = VirtualDevice(_job(users, 2), Transport(srv.address, FAST, token="wrong")).run()
    finally:
        srv.stop()
    assert ok.status == "completed"
    assert (denied.status, denied.reason) == ("failed", "spec:unauthenticated")


def test_every_runtime_scores_the_same_strategy_alike(
    server: EmbeddedServer, users: list[np.ndarray]
) -> None:
    """A fleet may pick the device runtime; each adapts to the cloud's strategy and ranks
    like the fake-quantized reference (ranks of two targets, so small score noise may differ)."""
    reports = {
        rt: VirtualDevice(_job(users, 4, runtime=rt), Transport(server.address, FAST)).run()
        for rt in ("fake", "int8", "ort")
    }
    for rt, report in reports.items():
        assert report.status == "completed", (rt, report.detail)
        assert [r.strategy_source for r in report.rounds] == ["cloud", "cloud"], rt
    bits = {rt: [r.avg_bits for r in rep.rounds] for rt, rep in reports.items()}
    assert bits["int8"] == bits["fake"] == bits["ort"]
    hr = {rt: [r.hr10 for r in rep.rounds] for rt, rep in reports.items()}
    assert hr["int8"] == hr["fake"]  # the same weights, widened exactly


def test_fleet_refuses_an_unknown_runtime() -> None:
    from simulator.config import FleetConfig, FleetConfigError

    with pytest.raises(FleetConfigError, match=r"runtime must be one of \('ort', 'int8'"):
        FleetConfig(runtime="tflite")
