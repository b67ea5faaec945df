"""`chord serve --workers 2`: both processes answer, one scrape covers both, SIGTERM drains both."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.endpoint_load import EndpointConfig, open_loop_base
from benchmarks.loadgen import run_load
from chord.strategy import StrategyRequest
from device_client.transport import CONNECTIONS_PER_PROCESS, Transport, close_channels
from protos.chord.v1 import strategy_pb2 as pb
from protos.chord.v1 import strategy_pb2_grpc as pb_grpc
from tests.server_fixtures import tiny_run_dir

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nothing listens on right now (for the metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Group:
    """A running `chord serve --workers N` parent and what it printed."""

    proc: subprocess.Popen[str]
    port: int
    metrics_port: int

    @property
    def target(self) -> str:
        """HOST:PORT of the shared port."""
        return f"127.0.0.1:{self.port}"


def start_group(args: list[str], workers: int = 2, timeout_s: float = 240.0) -> Group:
    """Start the parent, read `port=` then `ready` from its stdout."""
    metrics_port = free_port()
    cmd = [sys.executable, "-m", "chord.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--workers", str(workers), "--metrics-port", str(metrics_port), "--grace-s", "10",
           *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("port="):
            port = int(line.split("=", 1)[1])
        if line.strip() == "ready":
            return Group(proc, port, metrics_port)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"worker group did not become ready (exit {proc.returncode})")


def stop_group(group: Group) -> int:
    """SIGTERM the parent and return its exit status."""
    if group.proc.poll() is None:
        group.proc.send_signal(signal.SIGTERM)
    try:
        return group.proc.wait(60)
    finally:
        if group.proc.poll() is None:
            group.proc.kill()
            group.proc.wait(10)
        if group.proc.stdout is not None:
            group.proc.stdout.close()


@pytest.fixture(scope="module")
def echo_group() -> Iterator[Group]:
    """Two echo workers on one port."""
    group = start_group(["--echo"])
    try:
        yield group
    finally:
        stop_group(group)


def request(spec: pb.ModelSpec, i: int) -> pb.GetStrategyRequest:
    """A valid GetStrategy request for the spec's first tier."""
    tier = spec.tiers[0]
    return pb.GetStrategyRequest(
        device_id=f"dev-{i}", request_id=f"req-{i}-{time.monotonic_ns()}",
        backbone_version=spec.version, tier=tier.name, budget_bits=tier.default_budget_bits,
        profile=[0.01 * (i % 7)] * spec.profile_dim,
    )


def _channel(target: str) -> grpc.aio.Channel:
    """A channel with its own TCP connection (the kernel picks a worker per connection)."""
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


async def _workers_seen(target: str, max_channels: int = 40) -> tuple[set[int], int, int]:
    """GetStrategy and Check over fresh connections: (worker indices, OK calls, SERVING)."""
    seen: set[int] = set()
    ok = serving = 0
    spec = None
    for i in range(max_channels):
        async with _channel(target) as ch:
            stub = pb_grpc.StrategyServiceStub(ch)
            if spec is None:
                spec = await stub.GetModelSpec(pb.GetModelSpecRequest(device_id="t"), timeout=10)
            reply = await stub.GetStrategy(request(spec, i), timeout=10)
            ok += 1
            seen.add(reply.timings.worker)
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            serving += health.status == health_pb2.HealthCheckResponse.SERVING
        if len(seen) == 2 and i >= 7:
            break
    return seen, ok, serving


def scrape(port: int) -> str:
    """The text of one /metrics scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text: str, name: str, labels: str) -> float:
    """The value of one sample, e.g. sample(t, "chord_requests_total", 'code="OK"...')."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(p in line for p in labels.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_both_workers_answer_and_report_healthy(echo_group: Group) -> None:
    """Fresh connections reach both processes; each answers GetStrategy and health."""
    seen, ok, serving = asyncio.run(_workers_seen(echo_group.target))
    assert seen == {0, 1}
    assert serving == ok


def test_one_scrape_sums_every_workers_counters(echo_group: Group) -> None:
    """The parent's /metrics holds both workers' calls and one up-series per worker pid."""
    before = sample(scrape(echo_group.metrics_port), "chord_requests_total",
                    'method="GetStrategy",code="OK"')
    seen, ok, _ = asyncio.run(_workers_seen(echo_group.target))
    assert seen == {0, 1}
    text = scrape(echo_group.metrics_port)
    after = sample(text, "chord_requests_total", 'method="GetStrategy",code="OK"')
    assert after - before == ok
    pids = set(re.findall(r'^chord_worker_up\{pid="(\d+)"\} 1\.0$', text, re.M))
    assert len(pids) == 2
    assert str(echo_group.proc.pid) not in pids  # the parent serves metrics, not calls


def test_the_endpoint_benchmarks_open_loop_probes_reach_every_worker(echo_group: Group) -> None:
    """SO_REUSEPORT spreads connections, not calls: the capacity probes of benchmarks.endpoint_load
    hold many connections, so a 2-worker server gets calls on both workers; over one connection
    every call lands on one worker (what the 2-worker figures measured before)."""
    base = replace(open_loop_base(EndpointConfig(), ()), target=echo_group.target, rps=200,
                   load_schedule="const", duration_s=1.0, warmup_s=0.0)
    spread = run_load(base)
    assert spread.status_codes == {"OK": spread.total}
    assert set(spread.workers_seen) == {"0", "1"}
    assert min(spread.workers_seen.values()) >= spread.total // 10
    one = run_load(replace(base, channels_per_process=1))
    assert len(one.workers_seen) == 1 and sum(one.workers_seen.values()) == one.total


def test_a_fleet_process_spreads_its_devices_over_every_worker(echo_group: Group) -> None:
    """The simulator's Transport, one per virtual device, deals out a process's pooled
    connections in turn: sixteen devices of one actor reach both workers of the group (with one
    shared connection per process, as before, every device of an actor hit one worker). The
    kernel hashes each connection to a worker, so all sixteen land on one with chance 2^-15."""
    transports = [Transport(echo_group.target, seed=i) for i in range(CONNECTIONS_PER_PROCESS)]
    try:
        spec, _ = transports[0].get_model_spec("spread")
        tier = spec.tiers[0]
        seen: dict[int, int] = {}
        for i, t in enumerate(transports):
            req = StrategyRequest(
                device_id=f"dev-{i}", request_id=f"spread-{i}-{time.monotonic_ns()}",
                backbone_version=spec.version, tier=tier.name,
                budget_bits=tier.default_budget_bits,
                profile=np.full(spec.profile_dim, 0.01 * i, dtype=np.float32),
            )
            result, _ = t.get_strategy(req)
            worker = int(result.timings["worker"])
            seen[worker] = seen.get(worker, 0) + 1
    finally:
        close_channels()
    assert set(seen) == {0, 1}, seen


async def _burst_then_sigterm(group: Group, n: int) -> tuple[list[str], set[int]]:
    """n concurrent GetStrategy calls over 8 connections; SIGTERM the parent 30 ms in."""
    channels = [_channel(group.target) for _ in range(8)]
    try:
        stubs = [pb_grpc.StrategyServiceStub(ch) for ch in channels]
        spec = await stubs[0].GetModelSpec(pb.GetModelSpecRequest(device_id="t"), timeout=10)
        for ch in channels:
            await ch.channel_ready()
        workers: set[int] = set()

        async def one(i: int) -> str:
            try:
                reply = await stubs[i % len(stubs)].GetStrategy(request(spec, i), timeout=30)
            except grpc.aio.AioRpcError as err:
                return err.code().name
            workers.add(reply.timings.worker)
            return "OK"

        calls = [asyncio.ensure_future(one(i)) for i in range(n)]
        await asyncio.sleep(0.03)
        group.proc.send_signal(signal.SIGTERM)
        return list(await asyncio.gather(*calls)), workers
    finally:
        for ch in channels:
            await ch.close()


def test_sigterm_drains_every_worker_without_losing_admitted_calls() -> None:
    """Calls sent before SIGTERM finish OK (or, if refused, UNAVAILABLE); the parent exits 0."""
    group = start_group(["--run", str(tiny_run_dir()), "--max-batch", "8"])
    try:
        codes, workers = asyncio.run(_burst_then_sigterm(group, 64))
    finally:
        status = stop_group(group)
    assert status == 0
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes.count("OK") > 0
    assert workers == {0, 1}


def test_a_worker_that_dies_stops_the_group() -> None:
    """Killing one worker makes the parent drain the other and exit 1."""
    group = start_group(["--echo"])
    try:
        pids = re.findall(r'^chord_worker_up\{pid="(\d+)"\}', scrape(group.metrics_port), re.M)
        assert len(pids) == 2
        os.kill(int(pids[0]), signal.SIGKILL)
        status = group.proc.wait(60)
    finally:
        stop_group(group)
    assert status == 1


def test_zero_workers_is_refused() -> None:
    """`--workers 0` exits 2 with one line saying what to send."""
    proc = subprocess.run(
        [sys.executable, "-m", "chord.cli", "serve", "--echo", "--workers", "0"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "--workers is 0; send an integer in 1.." in proc.stderr


def _gone(pid: int) -> bool:
    """True once pid no longer runs (or is a zombie waiting for a parent that is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_workers_drain_when_their_parent_is_killed() -> None:
    """SIGKILL of the parent leaves no worker behind: each notices and drains itself."""
    group = start_group(["--echo"])
    pids: list[int] = []
    try:
        pids = [int(p) for p in re.findall(r'^chord_worker_up\{pid="(\d+)"\}',
                                            scrape(group.metrics_port), re.M)]
        assert len(pids) == 2
        group.proc.kill()
        group.proc.wait(10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.2)
        assert all(_gone(p) for p in pids)
    finally:
        stop_group(group)
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
