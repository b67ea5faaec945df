"""`chord serve` as a real process: prints its port, drains in-flight calls on SIGTERM, exits 0."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chord.cli import main
from chord.startcheck import join_host_port
from cloud_server.cli import add_arguments, config_from_args
from cloud_server.config import ServerConfig
from cloud_server.server import serve
from protos.chord.v1 import strategy_pb2 as pb
from protos.chord.v1 import strategy_pb2_grpc as pb_grpc
from tests.server_fixtures import (
    call,
    run_dir,
    status_of,
    strategy_request,
    wait_serving,
)
from tests.tls_certs import self_signed

__all__ = ["run_dir"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent


def _start(*flags: str, token: str = "") -> tuple[subprocess.Popen[str], int]:
    """Start `python -m chord.cli serve FLAGS` ($CHORD_TOKEN = token, unset when "") and read the
    port it prints."""
    env = {k: v for k, v in os.environ.items() if k != "CHORD_TOKEN"} | {"PYTHONPATH": str(ROOT)}
    if token:
        env["CHORD_TOKEN"] = token
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
        assert "startup objects frozen out of garbage collection" in err  # chord.heap
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


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, wait for exit 0, and return what the server wrote to stderr."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    return proc.communicate()[1]


def test_sigterm_30ms_after_64_calls_finishes_all_64() -> None:
    """The issue's case: 64 GetStrategy calls then SIGTERM 30 ms later gave 22 OK, 42 CANCELLED."""
    proc, port = _start("--echo", "--grace-s", "10")
    address = f"127.0.0.1:{port}"
    try:

        async def scenario() -> list[grpc.StatusCode]:
            await wait_serving(address)
            spec = await call(address, "GetModelSpec", pb.GetModelSpecRequest(device_id="d"))
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.StrategyServiceStub(channel)

                async def one(i: int) -> grpc.StatusCode:
                    request = strategy_request(spec, f"r{i}", device_id=f"dev-{i}")
                    code, _ = await status_of(stub.GetStrategy(request, timeout=20))
                    return code

                calls = [asyncio.ensure_future(one(i)) for i in range(64)]
                await asyncio.sleep(0.03)
                proc.send_signal(signal.SIGTERM)
                return list(await asyncio.gather(*calls))

        codes = asyncio.run(scenario())
        assert codes == [grpc.StatusCode.OK] * 64
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _listening_hosts(port: int) -> set[str]:
    """The local addresses TCP sockets listen on at `port` (IPv4-mapped IPv6 as IPv4)."""
    import psutil

    return {
        c.laddr.ip.removeprefix("::ffff:")
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }


def test_metrics_endpoint_binds_the_host_of_host_flag() -> None:
    """With --host 127.0.0.1 the exporter listened on 0.0.0.0; now on 127.0.0.1 too."""
    metrics_port = _free_port()
    proc, port = _start("--echo", "--metrics-port", str(metrics_port))
    try:
        asyncio.run(wait_serving(f"127.0.0.1:{port}"))
        assert _listening_hosts(metrics_port) == {"127.0.0.1"}
        assert _listening_hosts(port) == {"127.0.0.1"}
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        assert b"chord_requests_total" in text or b"chord_in_flight" in text
    finally:
        if proc.poll() is None:
            _stop(proc)


def _free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_list_200_calls_do_not_grow_the_log() -> None:
    """Health/List is open without a token; 200 calls used to write 200 KB of tracebacks."""
    proc, port = _start("--echo", token="s3cret")
    address = f"127.0.0.1:{port}"
    try:

        async def hammer() -> set[grpc.StatusCode]:
            await wait_serving(address)
            codes = set()
            async with grpc.aio.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                strategy = pb_grpc.StrategyServiceStub(channel)
                for i in range(200):
                    await health.List(health_pb2.HealthListRequest(), timeout=5)
                    codes.add((await status_of(strategy.GetModelSpec(
                        pb.GetModelSpecRequest(device_id=f"d{i}"), timeout=5)))[0])
            return codes

        assert asyncio.run(hammer()) == {grpc.StatusCode.UNAUTHENTICATED}
    finally:
        err = _stop(proc)
    assert "Traceback" not in err
    assert len(err.splitlines()) < 20  # start, serving, drain, stop: not one line per call


@pytest.mark.parametrize(
    ("env", "flags", "expect"),
    [
        ("s3cret\n", (), "$CHORD_TOKEN has a trailing '\\n', which gRPC metadata cannot carry"),
        # An empty variable used to start the server with no authentication at all.
        ("", (), "$CHORD_TOKEN is empty; send a non-empty token or none at all"),
        (None, ("--token", "tab\there"), "--token contains '\\t'"),
        (None, ("--token", " lead"), "--token has a leading ' ', which gRPC metadata cannot carry "
         "(HTTP/2 peers strip it); send the token without leading or trailing whitespace"),
        (None, ("--host", "no such host"), "--host 'no such host' is not an IP address or host"),
        (None, ("--port", "70000"), "--port is 70000; send a port in 0..65535"),
        (None, ("--metrics-port", "-1"), "metrics_port (--metrics-port) is -1"),
        (None, ("--grace-s", "nan"), "grace_s (--grace-s) is nan; send a finite number"),
        (None, ("--max-wait-ms", "inf"), "max_wait_ms (--max-wait-ms) is inf"),
        (None, ("--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"),
         "--tls-cert '/nonexistent/c.pem' is not an existing file"),
    ],
)
def test_serve_refuses_settings_that_can_never_work(
    env: str | None, flags: tuple[str, ...], expect: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused before binding, in one `chord serve: error:` line, exit 2."""
    if env is None:
        monkeypatch.delenv("CHORD_TOKEN", raising=False)
    else:
        monkeypatch.setenv("CHORD_TOKEN", env)
    assert main(["serve", "--echo", "--host", "127.0.0.1", "--port", "0", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chord serve: error: ")
    assert expect in err[0]


def test_serve_refuses_a_missing_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--run", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "--run" in capsys.readouterr().err


def test_call_still_running_when_grace_ends_gets_unavailable() -> None:
    """A call the server will not finish is answered UNAVAILABLE (retryable), not CANCELLED."""
    # A 20 s batch window keeps the call waiting in the batcher past the 1 s grace period.
    proc, port = _start("--echo", "--max-batch", "64", "--max-wait-ms", "20000", "--grace-s", "1")
    address = f"127.0.0.1:{port}"
    try:

        async def scenario() -> tuple[grpc.StatusCode, str]:
            await wait_serving(address)
            spec = await call(address, "GetModelSpec", pb.GetModelSpecRequest(device_id="d"))
            slow = asyncio.ensure_future(
                status_of(call(address, "GetStrategy", strategy_request(spec, "slow"), timeout=30))
            )
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            return await slow

        code, details = asyncio.run(scenario())
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "retry" in details
        assert proc.wait(timeout=30) == 0
        assert "they get UNAVAILABLE" in proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port held by a listening socket without SO_REUSEPORT for the length of a test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _refusal(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """Run `chord serve --echo FLAGS` in-process; assert exit 2 and one error line; return it."""
    assert main(["serve", "--echo", "--host", "127.0.0.1", "--port", "0", *flags]) == 2
    captured = capsys.readouterr()
    assert "port=" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_serve_refuses_a_taken_metrics_port_in_one_line(
    taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _refusal(capsys, "--metrics-port", str(taken_port)) == (
        f"chord serve: error: --metrics-port {taken_port} is already in use on 127.0.0.1 "
        f"(127.0.0.1:{taken_port}); send a free port, or 0 for any free port"
    )


def test_serve_refuses_a_taken_port_without_grpc_core_lines(taken_port: int) -> None:
    """A real process: stderr is exactly our line (gRPC core never sees the address)."""
    env = {k: v for k, v in os.environ.items() if k != "CHORD_TOKEN"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "chord.cli", "serve", "--echo", "--host", "127.0.0.1",
         "--port", str(taken_port)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "port=" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        f"chord serve: error: --port {taken_port} is already in use on 127.0.0.1 "
        f"(127.0.0.1:{taken_port}); send a free port, or 0 for any free port"
    ]


@pytest.mark.parametrize(
    ("host", "expect"),
    [
        ("256.1.1.1", "--host '256.1.1.1' is not a valid IPv4 or IPv6 address; send e.g. "
         "127.0.0.1, 0.0.0.0 or ::1"),
        ("no-such-host.invalid", "--host 'no-such-host.invalid' does not resolve ("),
    ],
)
def test_serve_refuses_a_host_it_cannot_bind(
    host: str, expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _refusal(capsys, "--host", host).startswith(f"chord serve: error: {expect}")


def test_serve_refuses_tls_files_that_are_not_pem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert _refusal(capsys, "--tls-cert", str(junk), "--tls-key", str(junk)) == (
        f"chord serve: error: --tls-cert {str(junk)!r} is not a PEM certificate (no BEGIN "
        "CERTIFICATE block); send a PEM certificate chain"
    )
    cert, _key = self_signed(tmp_path)
    assert _refusal(capsys, "--tls-cert", str(cert), "--tls-key", str(cert)) == (
        f"chord serve: error: --tls-key {str(cert)!r} is not a PEM private key (no BEGIN ... "
        "PRIVATE KEY block); send the PEM private key of --tls-cert"
    )


def test_join_host_port_brackets_ipv6_literals() -> None:
    assert join_host_port("::1", 50051) == "[::1]:50051"
    assert join_host_port("[::1]", 50051) == "[::1]:50051"
    assert join_host_port("127.0.0.1", 0) == "127.0.0.1:0"
    assert join_host_port("localhost", 1) == "localhost:1"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_serve_binds_an_ipv6_host() -> None:
    """--host ::1 used to form '::1:0', which gRPC cannot bind."""
    proc, port = _start("--echo", "--host", "::1")
    try:
        asyncio.run(wait_serving(f"[::1]:{port}"))
    finally:
        if proc.poll() is None:
            _stop(proc)


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        ("junk hypernet.pt", "/hypernet.pt: not a chord-hypernet/1 file (torch.load with "
         "weights_only=True refused it"),
        ("junk backbone.pt", "/backbone.pt is not a chord backbone checkpoint (torch.load with "
         "weights_only=True refused it"),
        ("no backbone.pt", "lacks backbone.pt; rerun prepare_run to complete it"),
        ("list run.json", "run.json is not a "),
        # The tester's case: seed 2**70 served `ready`, then every GetModelSpec was INTERNAL.
        ("seed 2**70", "run.json: seed is 1180591620717411303424; it must be an integer in "
         "0..18446744073709551615 (ModelSpec.seed is uint64)"),
        ("seed -1", "run.json: seed is -1; it must be an integer in 0..18446744073709551615"),
        ("profile_dim 2**32", "run.json: profile_dim is 4294967296; it must be an integer in "
         "1..4294967295 (ModelSpec.profile_dim is uint32)"),
        ("mode other", "run.json: mode is 'other'; it must be one of pretrained, random"),
        ("long tier name", "must be 1..64 printable characters (GetStrategyRequest.tier)"),
    ],
)
def test_serve_refuses_a_run_that_cannot_load_before_binding(
    damage: str, expect: str, run_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Was a many-line torch message (advising weights_only=False) after `listening on`."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    if damage == "junk hypernet.pt":
        (run / "hypernet.pt").write_bytes(b"junk")
    elif damage == "junk backbone.pt":
        (run / "backbone.pt").write_bytes(b"junk")
    elif damage == "no backbone.pt":
        (run / "backbone.pt").unlink()
    elif damage == "list run.json":
        (run / "run.json").write_text("[]")
    else:
        meta = json.loads((run / "run.json").read_text())
        if damage.startswith("seed"):
            meta["seed"] = 2**70 if damage == "seed 2**70" else -1
        elif damage.startswith("profile_dim"):
            meta["profile_dim"] = 2**32
        elif damage == "mode other":
            meta["mode"] = "other"
        else:
            meta["tiers"]["t" * 100] = meta["tiers"].pop(next(iter(meta["tiers"])))
        (run / "run.json").write_text(json.dumps(meta))
    assert main(["serve", "--run", str(run), "--host", "127.0.0.1", "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert "port=" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"chord serve: error: --run {str(run)!r} cannot be served: ")
    assert expect in err[0] and "weights_only=False" not in err[0]  # torch's unsafe advice


def test_serve_workers_refuse_a_run_that_cannot_load_before_binding(
    run_dir: Path, tmp_path: Path
) -> None:
    """With --workers 2 the run used to load after binding: `port=` printed, then worker
    tracebacks and exit 1. Now each worker loads first; the parent prints the same one line."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "backbone.pt").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "chord.cli", "serve", "--run", str(run), "--workers", "2",
         "--host", "127.0.0.1", "--port", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "port=" not in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert err == [
        f"chord serve: error: --run {str(run)!r} cannot be served: run directory {run} lacks "
        "backbone.pt; rerun prepare_run to complete it"
    ]


def test_serve_stops_cleanly_when_the_metrics_port_is_taken_after_the_check(
    taken_port: int,
) -> None:
    """serve() itself (no CLI check): one OSError naming the flag, the gRPC server stopped."""
    cfg = ServerConfig(echo=True, metrics_port=taken_port, metrics_host="127.0.0.1")
    announced: list[int] = []
    with pytest.raises(OSError) as raised:
        serve(cfg, "127.0.0.1:0", on_bound=announced.append)
    assert str(raised.value) == (
        f"--metrics-port {taken_port} cannot be bound on 127.0.0.1 (Address already in use); "
        "send a free port, or 0 for no exporter"
    )
    assert announced == []


@pytest.mark.parametrize("given", ["/nonexistent/metrics", "/proc/x", __file__])
def test_serve_refuses_a_metrics_dir_that_is_not_a_directory(
    given: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """$PROMETHEUS_MULTIPROC_DIR naming no directory: one line at start, exit 2 (was exit 1 from
    the worker group, after start-up)."""
    monkeypatch.delenv("CHORD_TOKEN", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", given)
    code = main(["serve", "--echo", "--host", "127.0.0.1", "--port", "0", "--workers", "2"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"chord serve: error: $PROMETHEUS_MULTIPROC_DIR {given!r} is not a directory; create it "
        "or unset the variable"
    ]
