"""`chord serve` as a real process: prints its port, drains in-flight calls on SIGTERM, exits 0."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from chord.cli import main
from cloud_server.cli import add_arguments, config_from_args
from protos.chord.v1 import strategy_pb2 as pb
from tests.server_fixtures import call, status_of, strategy_request, wait_serving

ROOT = Path(__file__).resolve().parent.parent


def _start(*flags: str) -> tuple[subprocess.Popen[str], int]:
    """Start `python -m chord.cli serve FLAGS` and read the port it prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHORD_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chord.cli", "serve", "--host", "127.0.0.1", "--port", "0", *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("port="):
            return proc, int(line.strip().split("=", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not print its port: {proc.communicate()[1][-2000:]}")


def test_sigterm_lets_the_in_flight_call_finish() -> None:
    # A 1.5 s batch window makes a single call slow enough to be in flight at SIGTERM.
    proc, port = _start("--echo", "--max-batch", "64", "--max-wait-ms", "1500", "--grace-s", "10")
    address = f"127.0.0.1:{port}"
    try:

        async def scenario() -> tuple[object, tuple[grpc.StatusCode, str]]:
            await wait_serving(address)
            spec = await call(address, "GetModelSpec", pb.GetModelSpecRequest(device_id="d"))
            slow = asyncio.ensure_future(
                call(address, "GetStrategy", strategy_request(spec, "slow"))
            )
            await asyncio.sleep(0.5)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            late = await status_of(
                call(address, "GetStrategy", strategy_request(spec, "late"), timeout=3)
            )
            reply = await slow
            assert time.monotonic() - started < 5
            return reply, late

        reply, late = asyncio.run(scenario())
        assert isinstance(reply, pb.GetStrategyReply) and reply.request_id == "slow"
        assert reply.timings.queue_us > 1_000_000  # it really waited in the batcher through SIGTERM
        assert late[0] == grpc.StatusCode.UNAVAILABLE  # no new calls once draining
        assert proc.wait(timeout=20) == 0
        _, err = proc.communicate()
        assert "draining" in err and "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_to_start_without_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0"]) == 2
    assert "pass --run DIR" in capsys.readouterr().err


def test_serve_flags_become_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.setenv("CHORD_TOKEN", "from-env")
    args = parser.parse_args(
        [
            "--run",
            str(tmp_path),
            "--max-batch",
            "1",
            "--max-wait-ms",
            "7",
            "--max-concurrency",
            "9",
            "--max-receive-mib",
            "0.5",
            "--metrics-port",
            "9100",
            "--echo",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.run_dir, cfg.max_batch, cfg.max_wait_ms, cfg.max_concurrency) == (
        tmp_path,
        1,
        7.0,
        9,
    )
    assert cfg.max_receive_bytes == 512 * 1024 and cfg.metrics_port == 9100 and cfg.echo
    assert cfg.token == "from-env"
    assert config_from_args(parser.parse_args(["--echo", "--token", "flag"])).token == "flag"
