"""Endpoint load generator: asyncio gRPC workers spread over processes, with a ghz-style summary."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.schedules import RateSchedule, ScheduleError, read_arrivals
from chord.heap import freeze_startup_heap
from chord.spec import ModelSpec
from chord.startcheck import (
    StartupError,
    check_address,
    check_host,
    check_in_range,
    check_int,
    check_pem_ca,
    check_token,
    clipped,
    exact,
    tls_failure,
    wait_for_tcp,
)
from chord.strategy import StrategyRequest
from protos import serde

__all__ = [
    "METHODS",
    "LoadConfig",
    "LoadConfigError",
    "LoadResult",
    "LoadRunError",
    "LoadSamples",
    "format_summary",
    "run_load",
    "send_schedule",
]

METHODS = ("strategy", "spec", "health")
# One Python process saturates near 4,000 requests/s; more than this many would only thrash.
MAX_PROCESSES = 64
# Limits a run can work within; each flag's error states its limit.
MAX_CONCURRENCY = 100_000  # calls in flight over all processes
MAX_CHANNELS = 64  # gRPC channels (TCP connections) per client process
MAX_PROFILES = 100_000
MAX_REQUESTS = 1_000_000_000
MAX_SEED = 2**64 - 1  # numpy's SeedSequence takes non-negative integers; uint64 like the proto
MAX_DURATION_S = 3600.0  # a measured window (and a replay's real length) of at most an hour
MAX_WARMUP_S = 600.0
MAX_TIMEOUT_S = 3600.0  # per-call deadline
MAX_BUDGET_BITS = 32.0  # no tier's level is wider; the served spec's range is checked as well
MAX_RPS = 1e6
MAX_SPEEDUP = 1e9
# Distinct error messages kept per process (the counts of all errors are always exact).
_MAX_ERROR_MESSAGES = 20


class LoadConfigError(ValueError):
    """A load configuration that cannot run; the message says which field and what to send."""


class LoadRunError(RuntimeError):
    """A load run that failed as a whole (target unreachable, spec call refused, worker crash)."""


@dataclass(frozen=True)
class LoadConfig:
    """One load run: where to send, how hard, for how long, and with which credentials."""

    target: str  # HOST:PORT; the only address any request goes to
    concurrency: int = 64  # requests in flight at once, over all processes
    duration_s: float = 10.0  # measured window, after the warmup
    processes: int = 1  # client processes; each runs concurrency/processes workers
    method: str = "strategy"  # "strategy" (GetStrategy), "spec" (GetModelSpec) or "health"
    warmup_s: float = 0.0  # traffic sent before the measured window and not counted
    max_requests: int = 5_000_000  # hard stop on requests sent in the measured window
    timeout_s: float = 10.0  # per-call deadline
    tls_ca: str | None = None  # PEM root certificate file; None = plaintext
    tls_server_name: str | None = None  # TLS name to verify when the target is an IP
    token: str | None = None  # bearer token sent as `authorization: Bearer TOKEN`
    seed: int = 0  # seeds the random profiles
    tier: str = ""  # "" = the first tier of the server's model spec
    budget_bits: float = 0.0  # 0 = the tier's default budget
    n_profiles: int = 64  # distinct random profiles per process
    channels_per_process: int = 1  # gRPC channels (TCP connections) per process
    # Open loop (benchmarks.schedules): calls go out at scheduled times whatever the replies do,
    # and latency runs from each call's scheduled time. `concurrency` then caps calls in flight
    # (a call waiting for a slot is late, and its wait counts in its latency).
    rps: float = 0.0  # > 0: open loop at this constant rate (ghz --rps)
    load_schedule: str = "const"  # const | step | line (ghz --load-schedule)
    load_start: float = 0.0  # step, line: first rate, calls/s
    load_step: float = 0.0  # step: added every load_step_duration_s; line: added per second
    load_end: float = 0.0  # step, line: rate to stop at (0 = no limit)
    load_step_duration_s: float = 0.0
    load_max_duration_s: float = 0.0  # step, line: the ramp holds after this (0 = never)
    arrivals: str | None = None  # CSV `t_s,device_id,reason` replayed open loop
    speedup: float = 1.0  # arrivals: virtual seconds per real second
    cpus: tuple[int, ...] = ()  # cores the client processes are pinned to (() = any)

    @property
    def open_loop(self) -> bool:
        """True when calls follow a schedule (rate or arrivals) rather than free workers."""
        return self.rps > 0 or self.load_schedule != "const" or self.arrivals is not None

    def schedule(self) -> RateSchedule:
        """The rate schedule of an open-loop run without arrivals."""
        return RateSchedule(
            kind=self.load_schedule,
            rps=self.rps,
            start=self.load_start,
            step=self.load_step,
            end=self.load_end,
            step_duration_s=self.load_step_duration_s,
            max_duration_s=self.load_max_duration_s,
        )

    def validate(self) -> None:
        """Raise LoadConfigError naming the first field (and its flag) that is out of range.

        Every number is checked to be finite and within a range that can run (see the MAX_*
        limits), so that a run that can never work is refused before any process starts.
        """
        try:
            check_address(self.target, "target (--target)")
            if self.token is not None:
                check_token(self.token, "token (--token or $CHORD_TOKEN)")
            if self.method not in METHODS:
                raise StartupError(f"method {self.method!r} is unknown; send one of {METHODS}")
            check_int(self.concurrency, "concurrency (--concurrency)", 1, MAX_CONCURRENCY,
                      "calls in flight over all processes")
            check_int(self.processes, "processes (--processes)", 1, MAX_PROCESSES)
            check_int(self.channels_per_process, "channels_per_process (--channels)", 1,
                      MAX_CHANNELS, "gRPC channels per client process")
            check_int(self.n_profiles, "n_profiles", 1, MAX_PROFILES)
            check_int(self.max_requests, "max_requests (--max-requests)", 1, MAX_REQUESTS)
            check_int(self.seed, "seed (--seed)", 0, MAX_SEED)
            check_in_range(self.duration_s, "duration_s (--duration)", 0, MAX_DURATION_S,
                           unit="seconds", lo_open=True)
            check_in_range(self.warmup_s, "warmup_s (--warmup)", 0, MAX_WARMUP_S, unit="seconds")
            check_in_range(self.timeout_s, "timeout_s (--timeout)", 0, MAX_TIMEOUT_S,
                           unit="seconds", lo_open=True)
            check_in_range(self.budget_bits, "budget_bits (--budget-bits)", 0, MAX_BUDGET_BITS,
                           unit="bits per weight (0 = the tier's default)")
            check_in_range(self.rps, "rps (--rps)", 0, MAX_RPS,
                           unit="calls per second (0 = closed loop)")
            check_in_range(self.speedup, "speedup (--speedup)", 0, MAX_SPEEDUP,
                           unit="virtual seconds per real second", lo_open=True)
            if self.tls_ca is not None:
                check_pem_ca(self.tls_ca, "tls_ca (--tls-ca)")
            if self.tls_server_name:
                check_host(self.tls_server_name, "tls_server_name (--tls-server-name)")
        except StartupError as exc:
            raise LoadConfigError(str(exc)) from None
        if self.cpus and not set(self.cpus) <= os.sched_getaffinity(0):
            raise LoadConfigError(
                f"cpus {sorted(self.cpus)} are not all available; this process may use "
                f"{sorted(os.sched_getaffinity(0))}"
            )
        if self.arrivals is not None:
            if self.rps > 0 or self.load_schedule != "const":
                raise LoadConfigError(
                    "--arrivals replaces --rps and --load-schedule; send only one of them"
                )
            if not Path(self.arrivals).is_file():
                raise LoadConfigError(f"--arrivals {self.arrivals!r} is not a file; send the CSV")
        elif self.open_loop:
            try:
                self.schedule().validate()
            except ScheduleError as exc:
                raise LoadConfigError(str(exc)) from exc
        if self.load_schedule == "const" and self.arrivals is None:
            ramp_flags = {
                "--load-start": self.load_start,
                "--load-step": self.load_step,
                "--load-end": self.load_end,
                "--load-step-duration": self.load_step_duration_s,
                "--load-max-duration": self.load_max_duration_s,
            }
            ramp = [flag for flag, value in ramp_flags.items() if value != 0]
            if ramp:
                raise LoadConfigError(
                    f"{', '.join(ramp)} shape a step or line schedule, but the schedule is "
                    "const; add --load-schedule step or line, or send --rps R alone"
                )
            if 0 < self.rps * self.duration_s < 1:
                raise LoadConfigError(
                    f"--rps {exact(self.rps)} for --duration {exact(self.duration_s)} s "
                    "schedules no call; send a rate and duration whose product is at least 1"
                )


@dataclass(frozen=True)
class LoadSamples:
    """Every measured call, for reports that need more than the summary (ghz details, peaks)."""

    start_epoch: float  # wall-clock time of offset 0 (the measured window's start)
    offset_s: np.ndarray  # float64 [n]: scheduled (open loop) or actual (closed) send offset
    latency_s: np.ndarray  # float64 [n]: from that offset to the reply
    code: np.ndarray  # uint8 [n]: index into codes
    message: np.ndarray  # int16 [n]: index into messages, -1 for none kept
    codes: tuple[str, ...]  # gRPC status names
    messages: tuple[str, ...]  # "CODE: details" of failed calls (the first 20 distinct)


@dataclass(frozen=True)
class LoadResult:
    """Aggregated outcome of a load run over every process, latencies in milliseconds."""

    config: LoadConfig
    total: int  # requests that completed (any status) in the measured window
    ok: int
    errors: int
    elapsed_s: float  # measured window, start to the last completion
    rps: float  # total / elapsed_s
    ok_rps: float
    # Latencies of the calls that completed in the window; None when none did (never 0).
    min_ms: float | None
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    status_codes: dict[str, int]  # gRPC status name -> count
    error_distribution: dict[str, int]  # "STATUS: details" -> count (first messages only)
    server_batch_mean: float | None = None  # mean ServerTimings.batch_size of OK strategy replies
    # Means of the other ServerTimings of OK strategy replies: engine, batch wait, server total.
    server_model_ms_mean: float | None = None
    server_queue_ms_mean: float | None = None
    server_total_ms_mean: float | None = None
    processes: int = 1
    per_process_rps: list[float] = field(default_factory=list)
    # CPU seconds the client processes themselves used in the measured window (all threads),
    # and that window as epoch seconds (earliest start, latest end over processes).
    client_cpu_s: float | None = None
    window: tuple[float, float] | None = None
    mode: str = "closed"  # "closed" (workers send back to back) or "open" (scheduled sends)
    offered_rps: float | None = None  # open loop: scheduled calls / scheduled span
    scheduled: int | None = None  # open loop: calls the schedule held in the measured window
    # Open loop: how late calls left the generator (waiting for a slot or for the CPU).
    send_lag_p99_ms: float | None = None
    send_lag_max_ms: float | None = None
    workers_seen: dict[str, int] = field(default_factory=dict)  # ServerTimings.worker -> replies
    samples: LoadSamples | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Plain dict: the summary keys at top level and the config under "config"."""
        out = asdict(dataclasses.replace(self, samples=None))
        out.pop("samples")
        out["config"] = asdict(self.config)
        if self.config.token:  # never write a credential into a result file
            out["config"]["token"] = "<redacted>"
        return out


# ----------------------------------------------------------------------------- preflight


def _preflight_spec(cfg: LoadConfig, stub: Any) -> ModelSpec:
    """The target's model spec, asked until it answers or cfg.timeout_s passes.

    Nothing listening (connection refused) and a failed TLS handshake are reported at once;
    other UNAVAILABLE answers (a server still starting) are asked again every 0.2 s. Raises
    LoadRunError naming what to check.
    """
    try:  # one TCP connect: "nothing listens there" needs no 10 s wait
        host, port = check_address(cfg.target, "--target")
        wait_for_tcp(host, port, cfg.timeout_s, "the strategy server",
                     "check that `chord serve` listens there")
    except StartupError as exc:
        raise LoadRunError(str(exc)) from None
    deadline = time.monotonic() + cfg.timeout_s
    last = "no answer"
    while (left := deadline - time.monotonic()) > 0:
        try:
            reply = stub.GetModelSpec(
                serde.model_spec_request_to_proto("loadgen-preflight"),
                timeout=left, metadata=_metadata(cfg),
            )
            return serde.model_spec_from_proto(reply)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = (err.details() if isinstance(err, grpc.Call) else str(err)) or ""
            hint = tls_failure(details, "--tls-ca", "--tls-server-name")
            if hint is not None:
                raise LoadRunError(f"{cfg.target}: {hint}") from None
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                name = code.name if code is not None else "an error"
                raise LoadRunError(
                    f"GetModelSpec on {cfg.target} failed with {name}: {details}"
                ) from None
            last = details
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
    raise LoadRunError(
        f"no server answered at {cfg.target} within {cfg.timeout_s:g} s (last: "
        f"{clipped(last, 160)}); check that `chord serve` listens there (and pass --tls-ca for a "
        "TLS server, or a longer --timeout)"
    )


def check_served(cfg: LoadConfig) -> None:
    """Ask the target for its model spec once and check --tier and --budget-bits against it.

    Run before any client process starts (strategy method only), so that a tier the server does
    not serve or a budget outside the tier's reachable range is refused in one line instead of
    failing every call of the run. Raises LoadConfigError for a bad tier or budget,
    LoadRunError when the target does not answer within cfg.timeout_s or refuses the call.
    """
    if cfg.method != "strategy":
        return
    if cfg.tls_ca is None:
        channel = grpc.insecure_channel(cfg.target)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(cfg.tls_ca).read_bytes())
        options = ([("grpc.ssl_target_name_override", cfg.tls_server_name)]
                   if cfg.tls_server_name else [])
        channel = grpc.secure_channel(cfg.target, creds, options=options)
    try:
        spec = _preflight_spec(cfg, serde.ProtoStrategyServiceStub(channel))
    except serde.SerdeError as err:
        raise LoadRunError(f"GetModelSpec on {cfg.target} sent an unusable spec: {err}") from None
    finally:
        channel.close()
    tiers = {t.name: t for t in spec.tiers}
    if not tiers:
        return
    name = cfg.tier or spec.tiers[0].name
    tier = tiers.get(name)
    if tier is None:
        raise LoadConfigError(
            f"--tier {cfg.tier[:64]!r} is not served by {cfg.target}; send one of: "
            f"{', '.join(tiers)} (or none for the first)"
        )
    b = cfg.budget_bits
    if b and not tier.min_budget_bits <= b <= tier.max_budget_bits:
        raise LoadConfigError(
            f"--budget-bits {exact(b)} is outside tier {name!r}'s reachable range on "
            f"{cfg.target}; send a value in [{exact(tier.min_budget_bits)}, "
            f"{exact(tier.max_budget_bits)}] (or 0 for the tier's default, "
            f"{exact(tier.default_budget_bits)})"
        )


# ----------------------------------------------------------------------------- worker process


def _channel(cfg: LoadConfig) -> grpc.aio.Channel:
    """One asyncio channel to the target, plaintext or TLS, with its own connection."""
    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
    if cfg.tls_ca is None:
        return grpc.aio.insecure_channel(cfg.target, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=Path(cfg.tls_ca).read_bytes())
    if cfg.tls_server_name:
        options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
    return grpc.aio.secure_channel(cfg.target, creds, options=options)


def _metadata(cfg: LoadConfig) -> tuple[tuple[str, str], ...] | None:
    """Call metadata carrying the bearer token, if any."""
    return (("authorization", f"Bearer {cfg.token}"),) if cfg.token else None


async def _strategy_requests(stub: Any, cfg: LoadConfig, index: int, metadata: Any) -> list[Any]:
    """Ask the target for its model spec, then build seeded random GetStrategy requests."""
    try:
        spec = serde.model_spec_from_proto(
            await stub.GetModelSpec(
                serde.model_spec_request_to_proto(f"loadgen-{index}"),
                timeout=cfg.timeout_s,
                metadata=metadata,
            )
        )
    except grpc.aio.AioRpcError as err:
        raise LoadRunError(
            f"GetModelSpec on {cfg.target} failed with {err.code().name}: {err.details()}"
        ) from err
    except serde.SerdeError as err:
        raise LoadRunError(f"GetModelSpec on {cfg.target} sent an unusable spec: {err}") from err
    tiers = {t.name: t for t in spec.tiers}
    tier_name = cfg.tier or (spec.tiers[0].name if spec.tiers else "")
    if tiers and tier_name not in tiers:
        raise LoadRunError(
            f"tier {tier_name!r} is not served by {cfg.target}; it has {sorted(tiers)}"
        )
    budget = cfg.budget_bits or (tiers[tier_name].default_budget_bits if tiers else 3.0)
    rng = np.random.default_rng([cfg.seed, index])
    requests = []
    for k in range(cfg.n_profiles):
        profile = items = None
        if spec.profile_dim > 0:
            profile = rng.standard_normal(spec.profile_dim).astype(np.float32)
        else:  # a server that profiles recent items itself
            n = max(1, spec.max_recent_items or 20)
            items = rng.integers(1, max(2, spec.n_items + 1), n)
        req = StrategyRequest(
            device_id=f"loadgen-{index}-{k}",
            request_id="",
            backbone_version=spec.version,
            tier=tier_name,
            budget_bits=budget,
            profile=profile,
            recent_items=items,
        )
        requests.append(serde.strategy_request_to_proto(req))
    return requests


class _Recorder:
    """One process's measured calls, appended as they complete."""

    def __init__(self) -> None:
        self.offset: list[float] = []
        self.latency: list[float] = []
        self.lag: list[float] = []
        self.code: list[int] = []
        self.message: list[int] = []
        self.codes: dict[str, int] = {}
        self.messages: dict[str, int] = {}
        self.batch_sizes: list[int] = []
        self.server_ms = [0.0, 0.0, 0.0]  # sums of model, queue and total ms
        self.workers: Counter[str] = Counter()
        self.last_done = 0.0

    def record(
        self, offset: float, latency: float, lag: float, code: str, detail: str, reply: Any
    ) -> None:
        """Count one call (offset and latency in seconds from the window's start).

        reply: the GetStrategy reply (its server timings are summed), or None.
        """
        self.offset.append(offset)
        self.latency.append(latency)
        self.lag.append(lag)
        self.code.append(self.codes.setdefault(code, len(self.codes)))
        self.last_done = max(self.last_done, offset + latency)
        msg = -1
        if code != "OK":
            key = f"{code}: {detail}"
            if key in self.messages or len(self.messages) < _MAX_ERROR_MESSAGES:
                msg = self.messages.setdefault(key, len(self.messages))
        elif reply is not None:
            t = serde.server_timings_from_reply(reply)
            if t:
                self.batch_sizes.append(int(t["batch_size"]))
                self.server_ms[0] += t["model_ms"]
                self.server_ms[1] += t["queue_ms"]
                self.server_ms[2] += t["total_ms"]
                self.workers[str(int(t["worker"]))] += 1
        self.message.append(msg)


async def _setup(
    cfg: LoadConfig, index: int, channels: list[grpc.aio.Channel]
) -> tuple[list[Any], Any]:
    """(one bound call per channel, the request pool) for cfg.method."""
    metadata = _metadata(cfg)
    for ch in channels:
        try:
            await asyncio.wait_for(ch.channel_ready(), timeout=cfg.timeout_s)
        except TimeoutError:
            raise ConnectionError(
                f"no server answered at {cfg.target} within {cfg.timeout_s:g} s; check that "
                "`chord serve` listens there (and pass --tls-ca for a TLS server)"
            ) from None
    stubs = [serde.ProtoStrategyServiceStub(ch) for ch in channels]
    if cfg.method == "strategy":
        pool = await _strategy_requests(stubs[0], cfg, index, metadata)
        calls = [s.GetStrategy for s in stubs]
    elif cfg.method == "spec":
        pool = [serde.model_spec_request_to_proto(f"loadgen-{index}")]
        calls = [s.GetModelSpec for s in stubs]
    else:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        pool = [health_pb2.HealthCheckRequest(service="")]
        calls = [health_pb2_grpc.HealthStub(ch).Check for ch in channels]
    return calls, pool


def _message_copy(pool: list[Any], k: int) -> Any:
    """A private copy of pool message k (its request id is rewritten per call)."""
    msg = type(pool[0])()
    msg.CopyFrom(pool[k % len(pool)])
    return msg


async def _closed_loop(
    cfg: LoadConfig, index: int, n_workers: int, calls: list[Any], pool: list[Any],
    run_tag: str, rec: _Recorder, t_start: float,
) -> None:
    """n_workers workers, each sending its next call when the previous one returns."""
    metadata = _metadata(cfg)
    limit = max(1, cfg.max_requests // cfg.processes)
    t_measure = t_start + cfg.warmup_s
    t_end = t_measure + cfg.duration_s
    sent = 0

    async def worker(w: int) -> None:
        nonlocal sent
        call = calls[w % len(calls)]
        # Each worker owns copies of its messages: a request id is rewritten only after the
        # previous call on that message has completed (and so has been serialized).
        n_own = max(1, min(4, len(pool) // n_workers))
        own = [_message_copy(pool, w + j * n_workers) for j in range(n_own)]
        k = 0
        while True:
            now = time.perf_counter()
            if now >= t_end or sent >= limit:
                return
            measured = now >= t_measure
            req = own[k % n_own]
            k += 1
            if cfg.method == "strategy":
                req.request_id = f"{run_tag}-{index}-{w}-{k}"
            if measured:
                sent += 1
            t0 = time.perf_counter()
            try:
                reply = await call(req, timeout=cfg.timeout_s, metadata=metadata)
                code, detail = "OK", ""
            except grpc.aio.AioRpcError as err:
                reply, code, detail = None, err.code().name, err.details() or ""
            t1 = time.perf_counter()
            if measured:
                strategy = reply if cfg.method == "strategy" else None
                rec.record(t0 - t_measure, t1 - t0, 0.0, code, detail, strategy)

    await asyncio.gather(*(worker(w) for w in range(n_workers)))


async def _open_loop(
    cfg: LoadConfig, index: int, times: np.ndarray, calls: list[Any], pool: list[Any],
    run_tag: str, rec: _Recorder, t_measure: float,
) -> None:
    """Send call i at t_measure + times[i] (negative times: warmup, not recorded).

    At most cfg.concurrency calls of this process are in flight; a call that finds no slot
    waits, and its latency still runs from its scheduled time.
    """
    metadata = _metadata(cfg)
    slots = asyncio.Semaphore(max(1, cfg.concurrency // cfg.processes))
    own = [_message_copy(pool, k) for k in range(min(len(pool), 16))]
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        async with slots:
            msg = own[i % len(own)]
            req = type(msg)()
            req.CopyFrom(msg)
            if cfg.method == "strategy":
                req.request_id = f"{run_tag}-{index}-o{i}"
            t0 = time.perf_counter()
            try:
                reply = await calls[i % len(calls)](req, timeout=cfg.timeout_s, metadata=metadata)
                code, detail = "OK", ""
            except grpc.aio.AioRpcError as err:
                reply, code, detail = None, err.code().name, err.details() or ""
            t1 = time.perf_counter()
        if scheduled >= t_measure:
            strategy = reply if cfg.method == "strategy" else None
            rec.record(
                scheduled - t_measure, t1 - scheduled, t0 - scheduled, code, detail, strategy
            )

    i = 0
    n = len(times)
    while i < n:
        now = time.perf_counter()
        due = t_measure + times[i]
        if due > now:
            await asyncio.sleep(due - now)
            now = time.perf_counter()
        # Launch every call that is due by now (a late wake-up sends them together).
        while i < n and t_measure + times[i] <= now:
            task = asyncio.ensure_future(one(i, t_measure + float(times[i])))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
    if tasks:
        await asyncio.gather(*tasks)


async def _drive(
    cfg: LoadConfig, index: int, n_workers: int, barrier: Any, run_tag: str,
    times: np.ndarray | None,
) -> dict[str, Any]:
    """Run one process's share of the load; return its raw figures."""
    channels = [_channel(cfg) for _ in range(cfg.channels_per_process)]
    try:
        calls, pool = await _setup(cfg, index, channels)
        # A full collection over this process's imports stalls it 100-135 ms: calls due then
        # go late, and their latency from the scheduled time would be charged to the server.
        freeze_startup_heap()
        # Every process starts its clock together, after connecting.
        await asyncio.to_thread(barrier.wait, 120.0)
        t_start = time.perf_counter()
        warm = 0.0 if times is None else max(0.0, -float(times[0])) if len(times) else 0.0
        t_measure = t_start + (cfg.warmup_s if times is None else warm)
        rec = _Recorder()
        marks: dict[str, float] = {}

        async def cpu_mark() -> None:
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            marks.update(cpu=time.process_time(), wall=time.time())

        if times is None:
            work = _closed_loop(cfg, index, n_workers, calls, pool, run_tag, rec, t_start)
        else:
            work = _open_loop(cfg, index, times, calls, pool, run_tag, rec, t_measure)
        await asyncio.gather(cpu_mark(), work)
        cpu_s = time.process_time() - marks["cpu"]
        window = (marks["wall"], time.time())
        if times is None:
            elapsed = max(rec.last_done, min(cfg.duration_s, time.perf_counter() - t_measure))
        else:
            elapsed = max(rec.last_done, float(times[-1]) if len(times) else 0.0)
        return {
            "arrays": {
                "offset": np.asarray(rec.offset, dtype=np.float64),
                "latency": np.asarray(rec.latency, dtype=np.float64),
                "lag": np.asarray(rec.lag, dtype=np.float64),
                "code": np.asarray(rec.code, dtype=np.uint8),
                "message": np.asarray(rec.message, dtype=np.int16),
            },
            "codes": list(rec.codes),
            "messages": list(rec.messages),
            "elapsed_s": elapsed,
            "batch_sum": float(sum(rec.batch_sizes)),
            "batch_n": len(rec.batch_sizes),
            "server_ms": rec.server_ms,
            "workers": dict(rec.workers),
            "cpu_s": cpu_s,
            "window": window,
        }
    finally:
        for ch in channels:
            await ch.close()


_ARRAYS = (("offset", np.float64), ("latency", np.float64), ("lag", np.float64),
           ("code", np.uint8), ("message", np.int16))


def _process_main(
    cfg_json: str, index: int, n_workers: int, barrier: Any, conn: Connection, run_tag: str,
    times: np.ndarray | None,
) -> None:
    """Entry point of one client process: drive load, send figures back as JSON + raw arrays."""
    raw = json.loads(cfg_json)
    cfg = LoadConfig(**{**raw, "cpus": tuple(raw.get("cpus", ()))})
    try:
        if cfg.cpus:
            os.sched_setaffinity(0, set(cfg.cpus))
        figures = asyncio.run(_drive(cfg, index, n_workers, barrier, run_tag, times))
    except BaseException as exc:  # reported to the parent, which raises LoadRunError
        try:
            barrier.abort()
        finally:
            conn.send_bytes(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}).encode())
            conn.close()
        return
    arrays = figures.pop("arrays")
    conn.send_bytes(json.dumps(figures).encode())
    for name, _ in _ARRAYS:
        conn.send_bytes(arrays[name].tobytes())
    conn.close()


# ----------------------------------------------------------------------------- parent


def _split(total: int, parts: int) -> list[int]:
    """Split total into parts that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def send_schedule(cfg: LoadConfig) -> np.ndarray | None:
    """Open loop: every send time (s from the measured window; warmup ones < 0); closed: None.

    Warmup (cfg.warmup_s) sends at the schedule's first rate before the window; arrivals
    have no warmup: call i goes out t_s[i] / cfg.speedup after the start.
    """
    if not cfg.open_loop:
        return None
    if cfg.arrivals is not None:
        try:
            return read_arrivals(cfg.arrivals).send_times(cfg.speedup)
        except ScheduleError as exc:
            raise LoadConfigError(str(exc)) from exc
    sched = cfg.schedule()
    times = sched.send_times(cfg.duration_s)
    first = float(sched.rate_at(np.zeros(1))[0])
    if cfg.warmup_s > 0 and first > 0:
        warm = -cfg.warmup_s + np.arange(math.floor(first * cfg.warmup_s)) / first
        times = np.concatenate([warm, times])
    return times


def run_load(cfg: LoadConfig) -> LoadResult:
    """Run the load described by cfg in client processes and aggregate their figures."""
    cfg.validate()
    processes = min(cfg.processes, cfg.concurrency)
    if processes != cfg.processes:
        cfg = LoadConfig(**{**asdict(cfg), "processes": processes})
    times = send_schedule(cfg)
    ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
    barrier = ctx.Barrier(processes)
    cfg_json = json.dumps(asdict(cfg))
    # Request ids must never repeat across runs against one server (it deduplicates them).
    run_tag = uuid.uuid4().hex[:8]
    procs = []
    conns: list[Connection] = []
    # Client processes start with SIGINT ignored (a disposition that survives exec): Ctrl-C in a
    # terminal reaches the whole process group, and only this process decides how to stop.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        for i, n in enumerate(_split(cfg.concurrency, processes)):
            recv, send = ctx.Pipe(duplex=False)
            share = None if times is None else times[i::processes]
            p = ctx.Process(
                target=_process_main,
                args=(cfg_json, i, n, barrier, send, run_tag, share),
                name=f"loadgen-{i}",
                daemon=True,
            )
            p.start()
            send.close()
            procs.append(p)
            conns.append(recv)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    span = cfg.warmup_s + (cfg.duration_s if times is None else float(times[-1]) if len(times)
                           else 0.0)
    deadline = time.monotonic() + 180.0 + span + 2 * cfg.timeout_s
    figures: list[dict[str, Any]] = []
    parts: list[dict[str, np.ndarray]] = []
    fatal: list[str] = []
    try:
        for i, conn in enumerate(conns):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                fatal.append(f"process {i} sent nothing before the deadline")
                continue
            try:
                head = json.loads(conn.recv_bytes().decode())
                if "fatal" in head:
                    fatal.append(f"process {i}: {head['fatal']}")
                    continue
                parts.append(
                    {name: np.frombuffer(conn.recv_bytes(), dtype=dt) for name, dt in _ARRAYS}
                )
                figures.append(head)
            except EOFError:
                fatal.append(f"process {i} exited without sending its figures")
    except KeyboardInterrupt:  # stopped: the client processes have nothing left to give
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join(timeout=10.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
        for conn in conns:
            conn.close()
    if fatal:
        raise LoadRunError("; ".join(fatal))
    scheduled = None if times is None else int((times >= 0).sum())
    return _aggregate(cfg, figures, parts, times, scheduled)


def _merge_samples(
    figures: list[dict[str, Any]], parts: list[dict[str, np.ndarray]], start_epoch: float
) -> LoadSamples:
    """Pool the processes' per-call arrays under one code and message numbering."""
    codes: list[str] = []
    messages: list[str] = []
    code_parts, msg_parts = [], []
    for f, part in zip(figures, parts, strict=True):
        cmap = np.array([_index(codes, c) for c in f["codes"]] or [0], dtype=np.uint8)
        mmap = np.array([_index(messages, m) for m in f["messages"]] + [-1], dtype=np.int16)
        code_parts.append(cmap[part["code"]] if part["code"].size else part["code"])
        msg_parts.append(mmap[part["message"]] if part["message"].size else part["message"])
    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)

    offset = cat("offset")
    order = np.argsort(offset, kind="stable")
    return LoadSamples(
        start_epoch=start_epoch,
        offset_s=offset[order],
        latency_s=cat("latency")[order],
        code=(np.concatenate(code_parts) if parts else np.zeros(0, np.uint8))[order],
        message=(np.concatenate(msg_parts) if parts else np.zeros(0, np.int16))[order],
        codes=tuple(codes),
        messages=tuple(messages),
    )


def _index(items: list[str], item: str) -> int:
    """Position of item in items, appending it if new."""
    if item not in items:
        items.append(item)
    return items.index(item)


def _aggregate(
    cfg: LoadConfig,
    figures: list[dict[str, Any]],
    parts: list[dict[str, np.ndarray]],
    times: np.ndarray | None,
    scheduled: int | None,
) -> LoadResult:
    """Merge per-process figures: sum counts, pool latencies, take the longest window."""
    start_epoch = min((f["window"][0] for f in figures), default=time.time())
    samples = _merge_samples(figures, parts, start_epoch)
    lat_ms = samples.latency_s * 1e3
    codes: Counter[str] = Counter()
    for i, name in enumerate(samples.codes):
        codes[name] = int((samples.code == i).sum())
    messages: Counter[str] = Counter()
    for i, msg in enumerate(samples.messages):
        messages[msg] = int((samples.message == i).sum())
    workers: Counter[str] = Counter()
    for f in figures:
        workers.update(f["workers"])
    total = int(lat_ms.size)
    ok = int(codes.get("OK", 0))
    elapsed = max((f["elapsed_s"] for f in figures), default=0.0) or cfg.duration_s
    pct = np.percentile(lat_ms, [50, 90, 99]) if total else np.zeros(3)
    batch_n = sum(f["batch_n"] for f in figures)
    server_ms = [
        sum(f["server_ms"][k] for f in figures) / batch_n if batch_n else None
        for k in range(3)
    ]
    lag_ms = np.concatenate([p["lag"] for p in parts]) * 1e3 if parts else np.zeros(0)
    open_loop = times is not None
    measured = times[times >= 0] if open_loop and times is not None else np.zeros(0)
    span = float(measured[-1]) if measured.size else 0.0
    return LoadResult(
        config=cfg,
        total=total,
        ok=ok,
        errors=total - ok,
        elapsed_s=float(elapsed),
        rps=total / elapsed,
        ok_rps=ok / elapsed,
        min_ms=float(lat_ms.min()) if total else None,
        mean_ms=float(lat_ms.mean()) if total else None,
        p50_ms=float(pct[0]) if total else None,
        p90_ms=float(pct[1]) if total else None,
        p99_ms=float(pct[2]) if total else None,
        max_ms=float(lat_ms.max()) if total else None,
        status_codes=dict(codes.most_common()),
        error_distribution=dict(messages.most_common()),
        server_batch_mean=(sum(f["batch_sum"] for f in figures) / batch_n) if batch_n else None,
        server_model_ms_mean=server_ms[0],
        server_queue_ms_mean=server_ms[1],
        server_total_ms_mean=server_ms[2],
        processes=cfg.processes,
        per_process_rps=[
            len(p["latency"]) / max(f["elapsed_s"], 1e-9)
            for p, f in zip(parts, figures, strict=True)
        ],
        client_cpu_s=sum(f["cpu_s"] for f in figures) if figures else None,
        window=(
            (min(f["window"][0] for f in figures), max(f["window"][1] for f in figures))
            if figures
            else None
        ),
        mode="open" if open_loop else "closed",
        offered_rps=(measured.size / span if span > 0 else None) if open_loop else None,
        scheduled=scheduled,
        send_lag_p99_ms=float(np.percentile(lag_ms, 99)) if open_loop and lag_ms.size else None,
        send_lag_max_ms=float(lag_ms.max()) if open_loop and lag_ms.size else None,
        workers_seen=dict(sorted(workers.items())),
        samples=samples,
    )


def format_summary(res: LoadResult) -> str:
    """A ghz-like text summary: counts, throughput, latency distribution, statuses, errors."""
    c = res.config
    if res.mode == "open":
        what = (f"replay of {c.arrivals} at {c.speedup:g}x" if c.arrivals
                else c.schedule().describe())
        load = f"  Load:         open loop, {what}; at most {c.concurrency} in flight"
    else:
        load = f"  Concurrency:  {c.concurrency} over {res.processes} process(es), closed loop"
    lines = [
        "Summary:",
        f"  Target:       {c.target} ({c.method}, {'TLS' if c.tls_ca else 'plaintext'})",
        load,
        f"  Count:        {res.total}"
        + (f" of {res.scheduled} scheduled" if res.scheduled is not None else ""),
        f"  Total:        {res.elapsed_s:.2f} s (after {c.warmup_s:g} s warmup)",
        *(
            [
                f"  Slowest:      {res.max_ms:.2f} ms",
                f"  Fastest:      {res.min_ms:.2f} ms",
                f"  Average:      {res.mean_ms:.2f} ms",
            ]
            if res.total
            else ["  Latency:      none measured (no call completed in the window)"]
        ),
        f"  Requests/sec: {res.rps:.2f}",
    ]
    if res.mode == "open":
        lines.append("  Latency from: each call's scheduled send time (queueing included)")
        if res.offered_rps is not None:
            lines.append(f"  Offered:      {res.offered_rps:.2f} requests/sec")
        if res.send_lag_p99_ms is not None:
            lines.append(
                f"  Send lag:     p99 {res.send_lag_p99_ms:.2f} ms, max "
                f"{res.send_lag_max_ms:.2f} ms (scheduled -> sent)"
            )
    if res.client_cpu_s is not None and res.elapsed_s > 0:
        cores = res.client_cpu_s / res.elapsed_s
        lines.append(f"  Client CPU:   {cores:.2f} cores ({res.client_cpu_s:.2f} s in the window)")
    if res.server_batch_mean is not None:
        lines.append(f"  Server batch: {res.server_batch_mean:.2f} requests per forward (mean)")
        lines.append(
            f"  Server time:  model {res.server_model_ms_mean:.2f} ms, batch wait "
            f"{res.server_queue_ms_mean:.2f} ms, total {res.server_total_ms_mean:.2f} ms (means)"
        )
    if len(res.workers_seen) > 1:
        spread = ", ".join(f"{w}: {n}" for w, n in res.workers_seen.items())
        lines.append(f"  Workers:      replies by server worker {spread}")
    if res.total:
        lines += [
            "",
            "Latency distribution:",
            f"  50 % in {res.p50_ms:.2f} ms",
            f"  90 % in {res.p90_ms:.2f} ms",
            f"  99 % in {res.p99_ms:.2f} ms",
        ]
    lines += [
        "",
        "Status code distribution:",
        *(f"  [{code}]   {n} responses" for code, n in res.status_codes.items()),
    ]
    if res.error_distribution:
        lines += ["", "Error distribution:"]
        lines += [f"  [{n}]   {msg}" for msg, n in res.error_distribution.items()]
    return "\n".join(lines)
