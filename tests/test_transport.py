"""The device transport against real servers: TLS checked with a CA file, backoff on overload."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from chord.strategy import StrategyResult
from cloud_server.config import ServerConfig
from cloud_server.embedded import EmbeddedServer
from device_client.device import DeviceJob, VirtualDevice
from device_client.transport import RetryPolicy, Transport, TransportError, close_channels
from simulator.config import FleetConfig, TransportConfig
from simulator.runner import load_users, run_simulation
from tests.server_fixtures import domain_request
from tests.tls_certs import self_signed

TOKEN = "device-s3cret"
QUICK = RetryPolicy(
    call_timeout_s=5.0, overall_timeout_s=3.0, max_attempts=6, backoff_base_s=0.01,
    backoff_max_s=0.1,
)


@pytest.fixture(scope="module")
def users() -> list[np.ndarray]:
    """ML-100K test users' timelines."""
    return load_users("ml-100k")[0]


@pytest.fixture(scope="module")
def tls_server(
    smoke_run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedServer, Path]]:
    """The smoke run served over TLS with a bearer token, and the CA file that verifies it."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    cfg = ServerConfig(run_dir=smoke_run_dir, tls_cert=cert, tls_key=key, token=TOKEN, grace_s=0.2)
    srv = EmbeddedServer(cfg, host="localhost").start()
    yield srv, cert
    srv.stop()
    close_channels()


def _job(users: list[np.ndarray], i: int) -> DeviceJob:
    """A two-round mid-tier device on user i."""
    return DeviceJob(
        device_id=f"tls-{i}", user_index=i, sequence=users[i], tier="mid", budget_bits=3.0,
        rounds=2, interactions_per_round=2, request_tag="transport",
    )


def test_device_runs_over_tls_with_a_token(
    tls_server: tuple[EmbeddedServer, Path], users: list[np.ndarray]
) -> None:
    srv, ca = tls_server
    transport = Transport(srv.address, QUICK, tls_root_ca=str(ca), token=TOKEN)
    report = VirtualDevice(_job(users, 3), transport).run()
    assert (report.status, report.reason) == ("completed", ""), report.detail
    assert len(report.rounds) == 2
    assert all(r.code_bytes > 0 and r.rpc_ms > 0 for r in report.rounds)


def test_device_refuses_a_server_its_ca_did_not_sign(
    tls_server: tuple[EmbeddedServer, Path], users: list[np.ndarray], tmp_path: Path
) -> None:
    srv, _ = tls_server
    stranger, _ = self_signed(tmp_path)  # a different self-signed CA
    transport = Transport(srv.address, QUICK, tls_root_ca=str(stranger), token=TOKEN)
    report = VirtualDevice(_job(users, 4), transport).run()
    assert report.status == "failed"
    # A certificate mismatch never clears: the device stops at the first attempt, naming it.
    assert report.reason == "spec:tls_handshake", report.reason
    assert "CERTIFICATE_VERIFY_FAILED" in report.detail
    assert report.rounds == []


def test_tls_device_without_the_token_is_unauthenticated(
    tls_server: tuple[EmbeddedServer, Path], users: list[np.ndarray]
) -> None:
    srv, ca = tls_server
    report = VirtualDevice(_job(users, 5), Transport(srv.address, QUICK, tls_root_ca=str(ca))).run()
    assert (report.status, report.reason) == ("failed", "spec:unauthenticated")


def test_backoff_is_full_jitter_under_a_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.05, backoff_max_s=0.4)
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(0.4, 0.05 * 2 ** (attempt - 1))
        pauses = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(0.0 <= p <= ceiling for p in pauses)
        # Jitter spreads retries: pauses cover most of [0, ceiling], not one value.
        assert max(pauses) - min(pauses) > 0.8 * ceiling


@pytest.fixture(scope="module")
def narrow_server(smoke_run_dir: Path) -> Iterator[EmbeddedServer]:
    """A server that admits one GetStrategy at a time and holds it in its batch window."""
    cfg = ServerConfig(
        run_dir=smoke_run_dir, max_batch=64, max_wait_ms=150, max_concurrency=1, grace_s=0.2
    )
    srv = EmbeddedServer(cfg).start()
    yield srv
    srv.stop()
    close_channels()


def test_overloaded_clients_back_off_and_all_get_served(narrow_server: EmbeddedServer) -> None:
    policy = RetryPolicy(
        call_timeout_s=5.0, overall_timeout_s=30.0, max_attempts=100, backoff_base_s=0.05,
        backoff_max_s=0.4,
    )
    spec, _ = Transport(narrow_server.address, policy).get_model_spec("busy")
    refused_before = narrow_server.service.metrics.count("GetStrategy", "RESOURCE_EXHAUSTED")

    def ask(i: int) -> tuple[StrategyResult, dict[str, int]]:
        t = Transport(narrow_server.address, policy, seed=i)
        reply, stats = t.get_strategy(domain_request(spec, f"busy-{i}", device_id=f"d{i}"))
        return reply, stats.retried

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, range(6)))
    assert sorted(r.request_id for r, _ in results) == sorted(f"busy-{i}" for i in range(6))
    assert all(r.code.n_channels == spec.n_channels for r, _ in results)
    retried = sum(s.get("resource_exhausted", 0) for _, s in results)
    refused = narrow_server.service.metrics.count("GetStrategy", "RESOURCE_EXHAUSTED")
    # Six callers against one slot: some were refused at once, and every refusal was retried.
    assert retried > 0
    assert refused - refused_before == retried


def test_overload_past_the_deadline_gives_up_in_time(smoke_run_dir: Path) -> None:
    cfg = ServerConfig(
        run_dir=smoke_run_dir, max_batch=64, max_wait_ms=1500, max_concurrency=1, grace_s=0.2
    )
    with EmbeddedServer(cfg) as srv:
        spec, _ = Transport(srv.address, QUICK).get_model_spec("hog")
        # One request holds the only slot for its 1.5 s batch window.
        hog = threading.Thread(
            target=Transport(srv.address, QUICK, seed=99).get_strategy,
            args=(domain_request(spec, "hog", device_id="hog"),),
        )
        hog.start()
        time.sleep(0.3)
        patient = RetryPolicy(
            call_timeout_s=5.0, overall_timeout_s=0.05, max_attempts=1000, backoff_base_s=0.5,
            backoff_max_s=0.5,
        )
        try:
            with pytest.raises(TransportError) as err:
                Transport(srv.address, patient, seed=7).get_strategy(
                    domain_request(spec, "late", device_id="late")
                )
        finally:
            hog.join(timeout=10)
        refused = srv.service.metrics.count("GetStrategy", "RESOURCE_EXHAUSTED")
    close_channels()
    # Refused at once; the next pause would overrun the overall deadline, so it stops there.
    assert err.value.reason == "overall_deadline"
    assert err.value.attempts == 1
    assert "RESOURCE_EXHAUSTED" in str(err.value)
    assert refused == 1


def test_ray_fleet_against_a_tls_server_with_a_token(
    tls_server: tuple[EmbeddedServer, Path],
    ray_session: None,
    tmp_path: Path,
) -> None:
    srv, ca = tls_server
    transport = TransportConfig(
        call_timeout_s=5.0, overall_timeout_s=30.0, max_attempts=10, backoff_base_s=0.02,
        backoff_max_s=0.3, tls_root_ca=str(ca), token=TOKEN,
    )
    cfg = FleetConfig(devices=6, server=srv.address, batch_size=3, actors=2, transport=transport)
    s = run_simulation(cfg, tmp_path / "tls-fleet", progress=False)
    assert (s["devices"], s["completed"], s["failed"], s["missing"]) == (6, 6, 0, 0)
    assert s["requests"] >= 6
