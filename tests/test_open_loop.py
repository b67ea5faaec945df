"""Open-loop load: schedules send what they promise, latency includes queueing, ghz's report
format, the capacity search finds a known knee, recorded arrivals are replayed."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from benchmarks import cli
from benchmarks.ghz import GHZ_FIELDS, PERCENTAGES, ghz_report
from benchmarks.loadgen import LoadConfig, LoadConfigError, run_load
from benchmarks.schedules import RateSchedule, ScheduleError, parse_seconds, read_arrivals
from benchmarks.slo import find_capacity, replay_verdict, search_capacity
from cloud_server import EmbeddedServer
from cloud_server.config import ServerConfig

SERVICE_S = 0.02  # the slow server's service time: one call at a time, so 50 calls/s at most


class _SerialHealth(health.aio.HealthServicer):
    """Health whose Check serves one call at a time and takes SERVICE_S: a known knee."""

    def __init__(self) -> None:
        super().__init__()
        self._one = asyncio.Semaphore(1)

    async def Check(self, request: Any, context: Any) -> Any:
        """SERVING, after waiting for the single slot and holding it SERVICE_S seconds."""
        async with self._one:
            await asyncio.sleep(SERVICE_S)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    """A real gRPC server on 127.0.0.1:0 in a background thread; yields its address."""
    loop = asyncio.new_event_loop()
    ready: Future[int] = Future()
    stop = threading.Event()

    async def main() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(_SerialHealth(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set_result(port)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop(0)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    port = ready.result(timeout=30)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EmbeddedServer]:
    """The real strategy server in echo mode (fixed replies), in this process."""
    with EmbeddedServer(ServerConfig(echo=True)) as server:
        yield server


def test_schedules_hold_the_integral_of_their_rate() -> None:
    """const R x S calls exactly; step and line: the area under the rate, within a call."""
    assert RateSchedule("const", rps=123.4).send_times(3.0).size == 370
    step = RateSchedule("step", start=50, step=50, end=150, step_duration_s=0.5)
    assert abs(step.send_times(2.0).size - (25 + 50 + 75 + 75)) <= 1
    line = RateSchedule("line", start=10, step=20)  # 10 -> 50 calls/s over 2 s: 60 calls
    times = line.send_times(2.0)
    assert abs(times.size - 60) <= 1
    assert np.all(np.diff(times) > 0) and times[0] == 0.0 and times[-1] < 2.0
    # Later gaps are shorter: the rate rises.
    assert np.diff(times)[-5:].mean() < np.diff(times)[:5].mean()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "ramp"}, "unknown"),
        ({"kind": "const", "rps": 0}, "rps"),
        ({"kind": "step", "start": 10, "step": 5}, "load-step-duration"),
        ({"kind": "line", "start": 0, "step": 5}, "load-start"),
    ],
)
def test_bad_schedules_are_named(kwargs: dict[str, Any], match: str) -> None:
    """Each impossible schedule raises ScheduleError naming the flag."""
    with pytest.raises(ScheduleError, match=match):
        RateSchedule(**kwargs).validate()


def test_go_durations_parse() -> None:
    """ghz's duration strings work; as in ghz, every number needs its unit (a bare "5" was taken
    as seconds), and only ASCII digits count ("1_000s" and Arabic-Indic digits were numbers)."""
    assert parse_seconds("5s") == 5.0 and parse_seconds("250ms") == 0.25
    assert parse_seconds("1m30s") == 90.0 and parse_seconds("1.5h") == 5400.0
    assert parse_seconds(2.5) == 2.5  # a number from code is seconds already
    with pytest.raises(ScheduleError, match=r"duration '5' lacks a unit; send e.g. 5s or 5ms"):
        parse_seconds("5")
    for text in ("1m30", "1_000s", "\u0661s", "5 s", "s", "-5s"):
        with pytest.raises(ScheduleError, match="duration"):
            parse_seconds(text)


def test_const_schedule_sends_r_times_s_calls(echo_server: EmbeddedServer) -> None:
    """200 calls/s for 2 s over two processes: 400 calls scheduled, sent and answered."""
    res = run_load(LoadConfig(target=echo_server.address, rps=200, duration_s=2.0,
                              processes=2, concurrency=64))
    assert res.mode == "open" and res.scheduled == 400
    assert abs(res.total - 400) <= 4 and res.status_codes == {"OK": res.total}
    assert res.offered_rps == pytest.approx(200, rel=0.01)
    assert res.send_lag_p99_ms is not None and res.samples is not None
    np.testing.assert_allclose(np.diff(res.samples.offset_s), 1 / 200, atol=1e-9)


def test_step_schedule_sends_its_area(echo_server: EmbeddedServer) -> None:
    """A ghz step schedule 40 -> 120 calls/s in steps of 40 every 0.5 s, over 2 s."""
    cfg = LoadConfig(target=echo_server.address, load_schedule="step", load_start=40,
                     load_step=40, load_end=120, load_step_duration_s=0.5, duration_s=2.0)
    res = run_load(cfg)
    assert res.scheduled is not None and abs(res.scheduled - (20 + 40 + 60 + 60)) <= 1
    assert abs(res.total - res.scheduled) <= max(1, res.scheduled // 100)


def test_latency_from_the_scheduled_time_includes_queueing(slow_server: str) -> None:
    """Offering 100 calls/s to a server that finishes 50/s: latency grows along the run.

    With one call allowed in flight the wait happens in the generator, so the send lag grows
    too, and latency (from the scheduled time) still counts it: no coordinated omission.
    """
    base = LoadConfig(target=slow_server, method="health", rps=100, duration_s=1.5,
                      timeout_s=30)
    for cap in (200, 1):
        res = run_load(LoadConfig(**{**base.__dict__, "concurrency": cap}))
        assert res.samples is not None and res.ok == res.total == 150
        lat = res.samples.latency_s
        first, last = lat[:30].mean(), lat[-30:].mean()
        assert last > 5 * first and last > 0.5  # a backlog of ~75 calls x 20 ms
        assert res.p99_ms > 500
        if cap == 1:
            assert res.send_lag_p99_ms is not None and res.send_lag_p99_ms > 500
            assert res.p99_ms >= res.send_lag_p99_ms


def _check_types(report: dict[str, Any], count: int) -> None:
    """ghz's fields with ghz's JSON types and units."""
    for key in GHZ_FIELDS:
        assert key in report, key
    assert isinstance(report["count"], int) and report["count"] == count
    for key in ("total", "average", "fastest", "slowest"):
        assert isinstance(report[key], int) and report[key] >= 0, key  # nanoseconds
    assert report["fastest"] <= report["slowest"]
    assert isinstance(report["rps"], float)
    dt.datetime.fromisoformat(report["date"])
    assert isinstance(report["statusCodeDistribution"], dict)
    assert sum(report["statusCodeDistribution"].values()) == count
    assert all(isinstance(v, int) for v in report["errorDistribution"].values())
    dist = report["latencyDistribution"]
    assert [d["percentage"] for d in dist] == list(PERCENTAGES)
    lat = [d["latency"] for d in dist]
    assert all(isinstance(x, int) for x in lat) and lat == sorted(lat)
    hist = report["histogram"]
    assert len(hist) == 11 and all(isinstance(b["mark"], float) for b in hist)
    assert all(isinstance(b["count"], int) and isinstance(b["frequency"], float) for b in hist)
    assert hist[0]["mark"] == pytest.approx(report["fastest"] / 1e9, abs=1e-9)
    assert hist[-1]["mark"] == pytest.approx(report["slowest"] / 1e9, abs=1e-9)
    ok = report["statusCodeDistribution"].get("OK", 0)
    assert sum(b["count"] for b in hist) == ok
    assert sum(b["frequency"] for b in hist) == pytest.approx(1.0 if ok else 0.0)


def test_cli_ghz_report_has_every_field_with_ghz_types(
    echo_server: EmbeddedServer, tmp_path: Path
) -> None:
    """`chord bench load --rps 100 --format ghz --details --output F`: a ghz JSON report."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "ghz.json"
    args = parser.parse_args(["load", "--target", echo_server.address, "--rps", "100",
                              "--duration", "1", "--format", "ghz",
                              "--details", "--output", str(out)])
    assert cli.run(args) == 0
    report = json.loads(out.read_text())
    _check_types(report, 100)
    assert report["statusCodeDistribution"] == {"OK": 100}
    details = report["details"]
    assert len(details) == 100
    for d in details:
        assert isinstance(d["latency"], int) and d["status"] == "OK" and d["error"] == ""
        dt.datetime.fromisoformat(d["timestamp"])
    assert report["options"]["rps"] == 100 and report["options"]["host"] == echo_server.address


def test_ghz_report_names_errors_as_go_does(slow_server: str) -> None:
    """Calls that time out are DeadlineExceeded with Go's `rpc error: code = ... desc = ...`."""
    res = run_load(LoadConfig(target=slow_server, method="health", rps=150, duration_s=1.0,
                              timeout_s=0.2))
    report = ghz_report(res, details=True)
    _check_types(report, res.total)
    codes = report["statusCodeDistribution"]
    assert codes.get("DeadlineExceeded", 0) > 0
    assert all(k.startswith("rpc error: code = DeadlineExceeded desc = ")
               for k in report["errorDistribution"])
    failed = [d for d in report["details"] if d["status"] != "OK"]
    assert failed and all(d["error"].startswith("rpc error: code = ") for d in failed)


def test_capacity_search_finds_the_knee(slow_server: str) -> None:
    """The serial 20 ms server carries 50 calls/s; the search lands below and near it."""
    base = LoadConfig(target=slow_server, method="health", duration_s=2.0, timeout_s=30,
                      concurrency=256)
    cap = find_capacity(base, slo_p99_ms=150, start_rps=10, tolerance=0.15, min_calls=20)
    assert 25 <= cap.capacity_rps <= 1 / SERVICE_S * 1.1
    lo, hi = cap.bracket
    assert lo == cap.capacity_rps and hi <= 1 / SERVICE_S * 1.6
    passed = [p.rps for p in cap.probes if p.passed]
    failed = [p.rps for p in cap.probes if not p.passed]
    assert max(passed) < min(failed)
    assert all(p.p99_ms > 150 or p.errors for p in cap.probes if not p.passed)


def test_capacity_search_brackets_a_knee_within_its_tolerance() -> None:
    """Against a system that holds every rate up to 1000/s: doubling from 150 fails at 1200,
    and bisection ends with 1000 inside a bracket no wider than 15%."""
    tried: list[float] = []

    def holds(rate: float) -> bool:
        tried.append(rate)
        return rate <= 1000

    lo, hi = search_capacity(holds, start_rps=150, tolerance=0.15, max_probes=20)
    assert lo <= 1000 < hi and hi / lo <= 1.15
    assert tried[:5] == [150, 300, 600, 1200, math.sqrt(600 * 1200)]


class _Stalled:
    """A system that holds every rate up to 1000/s, except that its first probe at 600/s
    stalls (a transient, as another job's burst on a shared machine); it records each rate."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def __call__(self, rate: float) -> bool:
        self.seen.append(rate)
        return rate <= 1000 and not (rate == 600 and self.seen.count(600) == 1)


def test_capacity_search_confirms_a_failure_before_believing_it() -> None:
    """Without confirmation the stalled probe puts the knee below 600/s; with one more probe
    the failure does not repeat and the search finds the real knee at 1000/s. A rate that
    truly fails is probed 1 + k times, and the extra tries do not use up max_probes."""
    lo, _ = search_capacity(_Stalled(), start_rps=150, tolerance=0.15, max_probes=20)
    assert lo < 600
    probe = _Stalled()
    lo, hi = search_capacity(probe, start_rps=150, tolerance=0.15, max_probes=20,
                             confirm_failures=1)
    assert lo <= 1000 < hi and hi / lo <= 1.15
    assert probe.seen[:4] == [150, 300, 600, 600]  # the stalled rate, probed once more
    assert probe.seen.count(1200) == 2  # a real failure: both tries fail
    lo, hi = search_capacity(lambda r: r <= 1000, 150, 0.15, max_probes=3, confirm_failures=3)
    assert (lo, hi) == (600, math.inf)  # three rates tried (150, 300, 600), none failed


def _arrivals(path: Path, times: list[float]) -> Path:
    """Write an arrivals CSV as fleettime does."""
    lines = ["t_s,device_id,reason"] + [f"{t:.3f},dev-{i},arrive" for i, t in enumerate(times)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_arrivals_are_replayed_at_their_times_and_the_peak_is_judged(
    echo_server: EmbeddedServer, tmp_path: Path
) -> None:
    """A day-like recording at 100x: every arrival sent, on time, and the burst found."""
    rng = np.random.default_rng(0)
    calm = np.sort(rng.uniform(0, 200, 60))
    burst = np.sort(rng.uniform(120, 150, 90))  # the busy half-minute
    times = sorted(np.concatenate([calm, burst]).round(3).tolist())
    path = _arrivals(tmp_path / "arrivals.csv", times)
    res = run_load(LoadConfig(target=echo_server.address, arrivals=str(path), speedup=100,
                              duration_s=1.0))
    assert res.scheduled == res.total == 150 and res.ok == 150
    assert res.samples is not None
    np.testing.assert_allclose(res.samples.offset_s, np.array(times) / 100, atol=1e-9)
    assert res.send_lag_p99_ms is not None and res.send_lag_p99_ms < 250
    verdict = replay_verdict(res, slo_p99_ms=1000.0, window_s=30.0)
    assert 120 - 30 <= verdict["peak_start_s"] <= 150
    assert verdict["peak_arrivals"] >= 90
    assert verdict["peak_calls_measured"] == verdict["peak_arrivals"]
    assert verdict["kept"] is True


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("time,device,reason\n1,a,b\n", ":1: header"),
        ("t_s,device_id,reason\n1,a,b\n0.5,c,d\n", ":3: .*sort"),
        ("t_s,device_id,reason\nsoon,a,b\n", ":2: t_s is 'soon'"),
        ("t_s,device_id,reason\n-1,a,b\n",
         r":2: t_s '-1' is not a finite number of virtual seconds in \[0, 31622400\]"),
        ("t_s,device_id,reason\n1,a\n", r":2: 2 fields; send exactly 3 \(t_s,device_id,reason\)"),
    ],
)
def test_bad_arrivals_files_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    """Each malformed arrivals file is refused with its file and line."""
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ScheduleError, match=match):
        read_arrivals(path)


def test_arrivals_read_bom_blind_and_name_a_bad_byte_by_line(tmp_path: Path) -> None:
    """A BOM (also one starting a joined part) reads as no BOM; a latin-1 byte names its line."""
    bom = b"\xef\xbb\xbf"
    path = tmp_path / "arrivals.csv"
    path.write_bytes(bom + b"t_s,device_id,reason\n1,a,first\n" + bom + b"2,b,drift\n")
    arrivals = read_arrivals(path)
    assert arrivals.device_ids == ("a", "b")
    path.write_bytes(b"t_s,device_id,reason\n1,a,first\n2,caf\xe9,drift\n")
    with pytest.raises(ScheduleError, match=r":3: byte 0xe9 at column 6 is not UTF-8"):
        read_arrivals(path)


def test_arrivals_exclude_a_rate() -> None:
    """A run names either a rate schedule or an arrivals file."""
    with pytest.raises(LoadConfigError, match="arrivals"):
        LoadConfig(target="127.0.0.1:1", rps=10, arrivals=__file__).validate()


def _bench(argv: list[str]) -> int:
    """Run `chord bench ARGV` in this process."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_capacity_search_prints_the_capacity(
    slow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--slo-p99-ms` alone: one line per probe, the capacity line, and the JSON of the search."""
    out = tmp_path / "cap.json"
    status = _bench(["load", "--target", slow_server, "--method", "health", "--slo-p99-ms",
                     "150", "--search-start-rps", "40", "--search-tolerance", "0.5",
                     "--duration", "1.5", "--json", str(out)])
    text = capsys.readouterr().out
    assert status == 0
    assert re.search(r"Capacity at p99 <= 150 ms: \d+\.\d rps", text)
    data = json.loads(out.read_text())
    assert data["slo_p99_ms"] == 150 and 0 < data["capacity_rps"] <= 1 / SERVICE_S
    assert len(data["probes"]) == text.count("rps offered")


def test_cli_replay_judges_the_peak(
    echo_server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--arrivals F --speedup X`: the summary, then the verdict on the busiest window."""
    path = _arrivals(tmp_path / "a.csv", [i * 0.5 for i in range(100)])
    status = _bench(["load", "--target", echo_server.address, "--arrivals", str(path),
                     "--speedup", "50", "--slo-p99-ms", "1000", "--peak-window", "10s"])
    text = capsys.readouterr().out
    assert status == 0
    assert "Fleet peak: 20 requests in 10 virtual s" in text and "KEPT" in text


def test_cli_refuses_a_bad_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    """A step schedule without a step duration exits 2 with one line naming the flag."""
    status = _bench(["load", "--target", "127.0.0.1:9", "--load-schedule", "step",
                     "--load-start", "10", "--load-step", "5"])
    err = capsys.readouterr().err
    assert status == 2 and "load-step-duration" in err and "Traceback" not in err
