"""Endpoint load generator: asyncio gRPC workers spread over processes, with a ghz-style summary."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from chord.startcheck import StartupError, check_address, check_seconds, check_token
from chord.strategy import StrategyRequest
from protos import serde

__all__ = [
    "METHODS",
    "LoadConfig",
    "LoadConfigError",
    "LoadResult",
    "LoadRunError",
    "format_summary",
    "run_load",
]

METHODS = ("strategy", "spec", "health")
# One Python process saturates near 4,000 requests/s; more than this many would only thrash.
MAX_PROCESSES = 64
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

    def validate(self) -> None:
        """Raise LoadConfigError naming the first field that is out of range."""
        try:
            check_address(self.target, "target (--target)")
            if self.token is not None:
                check_token(self.token, "token (--token or $CHORD_TOKEN)")
            check_seconds(self.timeout_s, "timeout_s (--timeout)")
            check_seconds(self.duration_s, "duration_s (--duration)")
            check_seconds(self.warmup_s, "warmup_s (--warmup)", allow_zero=True)
        except StartupError as exc:
            raise LoadConfigError(str(exc)) from None
        if not math.isfinite(self.budget_bits):
            raise LoadConfigError(f"budget_bits {self.budget_bits} must be a finite number")
        if self.method not in METHODS:
            raise LoadConfigError(f"method {self.method!r} is unknown; send one of {METHODS}")
        if self.concurrency < 1:
            raise LoadConfigError(f"concurrency {self.concurrency} must be >= 1")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise LoadConfigError(f"processes {self.processes} must be in 1..{MAX_PROCESSES}")
        if not 0 < self.duration_s <= 3600:
            raise LoadConfigError(f"duration_s {self.duration_s} must be in (0, 3600]")
        if not 0 <= self.warmup_s <= 600:
            raise LoadConfigError(f"warmup_s {self.warmup_s} must be in [0, 600]")
        if self.max_requests < 1:
            raise LoadConfigError(f"max_requests {self.max_requests} must be >= 1")
        if self.timeout_s <= 0:
            raise LoadConfigError(f"timeout_s {self.timeout_s} must be > 0")
        if self.n_profiles < 1 or self.channels_per_process < 1:
            raise LoadConfigError("n_profiles and channels_per_process must be >= 1")
        if self.budget_bits < 0:
            raise LoadConfigError(f"budget_bits {self.budget_bits} must be >= 0 (0 = tier default)")
        if self.tls_ca is not None and not Path(self.tls_ca).is_file():
            raise LoadConfigError(
                f"tls_ca {self.tls_ca!r} is not a file; send a PEM CA certificate"
            )


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
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
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

    def to_json(self) -> dict[str, Any]:
        """Plain dict: the summary keys at top level and the config under "config"."""
        out = asdict(self)
        out["config"] = asdict(self.config)
        if self.config.token:  # never write a credential into a result file
            out["config"]["token"] = "<redacted>"
        return out


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


async def _drive(
    cfg: LoadConfig, index: int, n_workers: int, barrier: Any, run_tag: str
) -> dict[str, Any]:
    """Run one process's workers: warmup, then the measured window; return its raw figures."""
    channels = [_channel(cfg) for _ in range(cfg.channels_per_process)]
    metadata = _metadata(cfg)
    try:
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
        elif cfg.method == "spec":
            pool = [serde.model_spec_request_to_proto(f"loadgen-{index}")]
        else:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            pool = [health_pb2.HealthCheckRequest(service="")]
            stubs = [health_pb2_grpc.HealthStub(ch) for ch in channels]  # type: ignore[misc]
        # Every process starts its clock together, after connecting.
        await asyncio.to_thread(barrier.wait, 120.0)

        limit = max(1, cfg.max_requests // cfg.processes)
        t_start = time.perf_counter()
        t_measure = t_start + cfg.warmup_s
        t_end = t_measure + cfg.duration_s
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        messages: Counter[str] = Counter()
        batch_sizes: list[int] = []
        server_ms = [0.0, 0.0, 0.0]  # sums of model, queue and total ms
        sent = 0
        last_done = t_measure

        async def worker(w: int) -> None:
            nonlocal sent, last_done
            stub = stubs[w % len(stubs)]
            call = {
                "strategy": getattr(stub, "GetStrategy", None),
                "spec": getattr(stub, "GetModelSpec", None),
                "health": getattr(stub, "Check", None),
            }[cfg.method]
            assert call is not None
            # Each worker owns copies of its messages: a request id is rewritten only after the
            # previous call on that message has completed (and so has been serialized).
            n_own = max(1, min(4, len(pool) // n_workers))
            own = []
            for j in range(n_own):
                msg = type(pool[0])()
                msg.CopyFrom(pool[(w + j * n_workers) % len(pool)])
                own.append(msg)
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
                if not measured:
                    continue
                latencies.append(t1 - t0)
                codes[code] += 1
                last_done = max(last_done, t1)
                if code != "OK":
                    key = f"{code}: {detail}"
                    if key in messages or len(messages) < _MAX_ERROR_MESSAGES:
                        messages[key] += 1
                elif cfg.method == "strategy" and reply is not None:
                    t = serde.strategy_result_from_proto(reply).timings
                    if t:
                        batch_sizes.append(int(t["batch_size"]))
                        server_ms[0] += t["model_ms"]
                        server_ms[1] += t["queue_ms"]
                        server_ms[2] += t["total_ms"]

        marks: dict[str, float] = {}

        async def cpu_mark() -> None:
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            marks.update(cpu=time.process_time(), wall=time.time())

        await asyncio.gather(cpu_mark(), *(worker(w) for w in range(n_workers)))
        cpu_s = time.process_time() - marks["cpu"]
        window = (marks["wall"], time.time())
        elapsed = max(last_done, min(t_end, time.perf_counter())) - t_measure
        return {
            "latencies": np.asarray(latencies, dtype=np.float64),
            "codes": dict(codes),
            "messages": dict(messages),
            "elapsed_s": elapsed,
            "batch_sum": float(sum(batch_sizes)),
            "batch_n": len(batch_sizes),
            "server_ms": server_ms,
            "cpu_s": cpu_s,
            "window": window,
        }
    finally:
        for ch in channels:
            await ch.close()


def _process_main(
    cfg_json: str, index: int, n_workers: int, barrier: Any, conn: Connection, run_tag: str
) -> None:
    """Entry point of one client process: drive load, send figures back as JSON + raw float64."""
    cfg = LoadConfig(**json.loads(cfg_json))
    try:
        figures = asyncio.run(_drive(cfg, index, n_workers, barrier, run_tag))
    except BaseException as exc:  # reported to the parent, which raises LoadRunError
        try:
            barrier.abort()
        finally:
            conn.send_bytes(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}).encode())
            conn.close()
        return
    lat = figures.pop("latencies")
    conn.send_bytes(json.dumps(figures).encode())
    conn.send_bytes(lat.tobytes())
    conn.close()


# ----------------------------------------------------------------------------- parent


def _split(total: int, parts: int) -> list[int]:
    """Split total into parts that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(cfg: LoadConfig) -> LoadResult:
    """Run the load described by cfg in client processes and aggregate their figures."""
    cfg.validate()
    processes = min(cfg.processes, cfg.concurrency)
    if processes != cfg.processes:
        cfg = LoadConfig(**{**asdict(cfg), "processes": processes})
    ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
    barrier = ctx.Barrier(processes)
    cfg_json = json.dumps(asdict(cfg))
    # Request ids must never repeat across runs against one server (it deduplicates them).
    run_tag = uuid.uuid4().hex[:8]
    procs = []
    conns: list[Connection] = []
    for i, n in enumerate(_split(cfg.concurrency, processes)):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_process_main,
            args=(cfg_json, i, n, barrier, send, run_tag),
            name=f"loadgen-{i}",
            daemon=True,
        )
        p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    deadline = time.monotonic() + 180.0 + cfg.warmup_s + cfg.duration_s + 2 * cfg.timeout_s
    figures: list[dict[str, Any]] = []
    lat_parts: list[np.ndarray] = []
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
                lat_parts.append(np.frombuffer(conn.recv_bytes(), dtype=np.float64))
                figures.append(head)
            except EOFError:
                fatal.append(f"process {i} exited without sending its figures")
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
    return _aggregate(cfg, figures, lat_parts)


def _aggregate(
    cfg: LoadConfig, figures: list[dict[str, Any]], parts: list[np.ndarray]
) -> LoadResult:
    """Merge per-process figures: sum counts, pool latencies, take the longest window."""
    lat_ms = np.concatenate(parts) * 1e3 if parts else np.zeros(0)
    codes: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for f in figures:
        codes.update(f["codes"])
        messages.update(f["messages"])
    total = int(lat_ms.size)
    ok = int(codes.get("OK", 0))
    elapsed = max((f["elapsed_s"] for f in figures), default=0.0) or cfg.duration_s
    pct = np.percentile(lat_ms, [50, 90, 99]) if total else np.zeros(3)
    batch_n = sum(f["batch_n"] for f in figures)
    server_ms = [
        sum(f["server_ms"][k] for f in figures) / batch_n if batch_n else None
        for k in range(3)
    ]
    return LoadResult(
        config=cfg,
        total=total,
        ok=ok,
        errors=total - ok,
        elapsed_s=float(elapsed),
        rps=total / elapsed,
        ok_rps=ok / elapsed,
        min_ms=float(lat_ms.min()) if total else 0.0,
        mean_ms=float(lat_ms.mean()) if total else 0.0,
        p50_ms=float(pct[0]),
        p90_ms=float(pct[1]),
        p99_ms=float(pct[2]),
        max_ms=float(lat_ms.max()) if total else 0.0,
        status_codes=dict(codes.most_common()),
        error_distribution=dict(messages.most_common()),
        server_batch_mean=(sum(f["batch_sum"] for f in figures) / batch_n) if batch_n else None,
        server_model_ms_mean=server_ms[0],
        server_queue_ms_mean=server_ms[1],
        server_total_ms_mean=server_ms[2],
        processes=cfg.processes,
        per_process_rps=[
            len(p) / max(f["elapsed_s"], 1e-9) for p, f in zip(parts, figures, strict=True)
        ],
        client_cpu_s=sum(f["cpu_s"] for f in figures) if figures else None,
        window=(
            (min(f["window"][0] for f in figures), max(f["window"][1] for f in figures))
            if figures
            else None
        ),
    )


def format_summary(res: LoadResult) -> str:
    """A ghz-like text summary: counts, throughput, latency distribution, statuses, errors."""
    c = res.config
    lines = [
        "Summary:",
        f"  Target:       {c.target} ({c.method}, {'TLS' if c.tls_ca else 'plaintext'})",
        f"  Concurrency:  {c.concurrency} over {res.processes} process(es)",
        f"  Count:        {res.total}",
        f"  Total:        {res.elapsed_s:.2f} s (after {c.warmup_s:g} s warmup)",
        f"  Slowest:      {res.max_ms:.2f} ms",
        f"  Fastest:      {res.min_ms:.2f} ms",
        f"  Average:      {res.mean_ms:.2f} ms",
        f"  Requests/sec: {res.rps:.2f}",
    ]
    if res.client_cpu_s is not None and res.elapsed_s > 0:
        cores = res.client_cpu_s / res.elapsed_s
        lines.append(f"  Client CPU:   {cores:.2f} cores ({res.client_cpu_s:.2f} s in the window)")
    if res.server_batch_mean is not None:
        lines.append(f"  Server batch: {res.server_batch_mean:.2f} requests per forward (mean)")
        lines.append(
            f"  Server time:  model {res.server_model_ms_mean:.2f} ms, batch wait "
            f"{res.server_queue_ms_mean:.2f} ms, total {res.server_total_ms_mean:.2f} ms (means)"
        )
    lines += [
        "",
        "Latency distribution:",
        f"  50 % in {res.p50_ms:.2f} ms",
        f"  90 % in {res.p90_ms:.2f} ms",
        f"  99 % in {res.p99_ms:.2f} ms",
        "",
        "Status code distribution:",
        *(f"  [{code}]   {n} responses" for code, n in res.status_codes.items()),
    ]
    if res.error_distribution:
        lines += ["", "Error distribution:"]
        lines += [f"  [{n}]   {msg}" for msg, n in res.error_distribution.items()]
    return "\n".join(lines)
