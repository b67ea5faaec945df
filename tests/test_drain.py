"""Drain on SIGTERM with a real `chord serve` process: new calls of every method get UNAVAILABLE
promptly, and downloads already admitted deliver every byte."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.chord.v1 import strategy_pb2 as pb
from protos.chord.v1 import strategy_pb2_grpc as pb_grpc
from tests.server_fixtures import run_dir, status_of, strategy_request, wait_serving

__all__ = ["run_dir"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
REFUSED = "the server is shutting down and admits no new calls"


def _start(run: Path) -> tuple[subprocess.Popen[str], int]:
    """`chord serve --run RUN --grace-s 20` on port 0; the port it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chord.cli", "serve", "--run", str(run), "--host", "127.0.0.1",
         "--port", "0", "--grace-s", "20"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "CHORD_TOKEN"} | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("port="):
            return proc, int(line.split("=", 1)[1])
    proc.kill()
    raise AssertionError(f"no port printed: {proc.communicate()[1][-2000:]}")


async def _read_all(stream: Any) -> tuple[grpc.StatusCode, int]:
    """Read a FetchArtifact stream to its end: (status, bytes received)."""
    got = 0
    try:
        async for chunk in stream:
            got += len(chunk.data)
    except grpc.aio.AioRpcError as err:
        return err.code(), got
    return grpc.StatusCode.OK, got


def test_calls_after_the_drain_starts_get_unavailable_and_admitted_downloads_finish(
    run_dir: Path,
) -> None:
    """The tester's case: of 20 FetchArtifact streams opened during the drain 18 ended
    DEADLINE_EXCEEDED ("Stream removed") and most GetStrategy calls were still admitted."""
    proc, port = _start(run_dir)
    address = f"127.0.0.1:{port}"
    try:

        async def scenario() -> None:
            await wait_serving(address)
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.StrategyServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                spec = await stub.GetModelSpec(pb.GetModelSpecRequest(device_id="d"), timeout=20)
                assert spec.artifacts, "the run lists no artifact to download"
                ref = spec.artifacts[0]
                fetch = pb.FetchArtifactRequest(digest=ref.digest, max_chunk_bytes=1024)
                # Downloads opened before the signal, read only after the drain has begun.
                early = [stub.FetchArtifact(fetch, timeout=60) for _ in range(3)]
                await asyncio.sleep(0)
                proc.send_signal(signal.SIGTERM)
                # Health turns NOT_SERVING at the signal: the drain has begun.
                while True:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=20)
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.01)
                # Admission closes once the calls on the wire are in; wait for the first refusal.
                for i in range(1000):
                    code, details = await status_of(
                        stub.GetStrategy(strategy_request(spec, f"probe-{i}"), timeout=20)
                    )
                    if code == grpc.StatusCode.UNAVAILABLE:
                        assert REFUSED in details
                        break
                    assert code == grpc.StatusCode.OK, details
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("admission never closed")
                # From then on every new call of every method is refused, streams included.
                late_calls = [
                    stub.GetStrategy(strategy_request(spec, "late-1"), timeout=20),
                    stub.GetModelSpec(pb.GetModelSpecRequest(device_id="d"), timeout=20),
                    stub.ReportMetrics(
                        pb.ReportMetricsRequest(device_id="d", round=1, tier="mid",
                                                metrics=pb.DeviceMetrics(hr10=0.5, ndcg10=0.16)),
                        timeout=20,
                    ),
                ]
                for late in late_calls:
                    code, details = await status_of(late)
                    assert code == grpc.StatusCode.UNAVAILABLE and REFUSED in details
                late_streams = [stub.FetchArtifact(fetch, timeout=20) for _ in range(5)]
                for stream in late_streams:
                    assert (await _read_all(stream))[0] == grpc.StatusCode.UNAVAILABLE
                # The downloads admitted before the signal deliver every byte.
                for stream in early:
                    assert await _read_all(stream) == (grpc.StatusCode.OK, ref.size_bytes)

        asyncio.run(scenario())
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
