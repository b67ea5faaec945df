"""gRPC client of the strategy service: deadlines, jittered retries, shared channels, faults.

It speaks the domain types of `chord.spec` and `chord.strategy`; messages are mapped by
`protos.serde`, and each call's CallStats carries the serialized sizes of what was sent and
received.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from chord.artifacts import ArtifactChunk, ArtifactRequest
from chord.spec import DeviceReport, ModelSpec, ReportOutcome
from chord.startcheck import check_token, tls_failure
from chord.strategy import StrategyRequest, StrategyResult
from protos import serde

# Every method is safe to repeat (GetStrategy is deduplicated by request id, ReportMetrics by
# device and round, GetModelSpec reads). CANCELLED is retried because this client never cancels
# its own calls: it comes from a server that stopped with the call in flight (a restart).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
# Reconnect quickly after a server restart; the retry loop above does the real backoff.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]

Domain = TypeVar("Domain")


class TransportError(RuntimeError):
    """An RPC that failed for good; `reason` is the lower-case status name, 'overall_deadline',
    'tls_handshake' (the channel's TLS handshake failed: chord.startcheck.tls_failure), or
    'malformed_reply' for a reply that has no domain meaning (an unknown enum, say)."""

    def __init__(self, reason: str, message: str, attempts: int) -> None:
        super().__init__(f"{reason} after {attempts} attempt(s): {message}")
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """Per-attempt deadline, an overall deadline and full-jitter exponential backoff."""

    call_timeout_s: float = 10.0
    overall_timeout_s: float = 60.0
    max_attempts: int = 10
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Pause before retry `attempt` (1-based): uniform in [0, min(max, base * 2^(n-1))]."""
        return rng.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class NetworkFaults:
    """Client-side injected network trouble: a delay before each attempt, dropped attempts, and
    download streams broken after some bytes."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    stream_cut_bytes: int = 0  # cancel a FetchArtifact stream once it delivered this many bytes

    @property
    def active(self) -> bool:
        """True when a per-attempt fault is configured (stream cuts are the downloader's)."""
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss > 0


@dataclass
class CallStats:
    """What one logical call cost: attempts, wall time, and the injected or retried trouble."""

    attempts: int = 0
    elapsed_ms: float = 0.0
    injected_losses: int = 0
    injected_delay_ms: float = 0.0
    retried: dict[str, int] = field(default_factory=dict)
    request_bytes: int = 0  # serialized request (protobuf ByteSize, gRPC framing excluded)
    reply_bytes: int = 0  # serialized reply, likewise


# SO_REUSEPORT (`chord serve --workers N`) hands each TCP connection to one worker, and every
# call on it stays there: one connection per process would put a whole actor's devices on one
# worker. So each process keeps a small pool of connections per target and deals them out to
# its virtual devices in turn, as a fleet of phones, one connection each, would spread.
CONNECTIONS_PER_PROCESS = 16

_channels: dict[tuple[str, str], list[grpc.Channel]] = {}
_dealt: dict[tuple[str, str], int] = {}
_channels_lock = threading.Lock()


def shared_channel(target: str, tls_root_ca: str = "") -> grpc.Channel:
    """A channel to `target` from this process's pool of CONNECTIONS_PER_PROCESS, in turn.

    Each pooled channel is its own TCP connection (a local subchannel pool: gRPC would
    otherwise share one connection among channels with equal arguments). Successive callers
    get successive channels, so the devices of a process spread over a multi-worker server.
    """
    key = (target, tls_root_ca)
    with _channels_lock:
        pool = _channels.setdefault(key, [])
        turn = _dealt.get(key, 0)
        _dealt[key] = turn + 1
        if len(pool) < CONNECTIONS_PER_PROCESS:
            options = [*_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
            if tls_root_ca:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=Path(tls_root_ca).read_bytes()
                )
                pool.append(grpc.secure_channel(target, creds, options=options))
            else:
                pool.append(grpc.insecure_channel(target, options=options))
        return pool[turn % CONNECTIONS_PER_PROCESS]


def close_channels() -> None:
    """Close every pooled channel of this process (tests and actor shutdown)."""
    with _channels_lock:
        for pool in _channels.values():
            for channel in pool:
                channel.close()
        _channels.clear()
        _dealt.clear()


class InjectedLoss(Exception):
    """An attempt dropped by the fault injector; handled like UNAVAILABLE."""


class ArtifactStream:
    """One FetchArtifact stream in domain terms; grpc.RpcError when it breaks."""

    def __init__(self, call: Any) -> None:
        """Wrap the stub's response iterator."""
        self._call = call

    def __iter__(self) -> Iterator[tuple[ArtifactChunk, int]]:
        """Each chunk with its serialized size (protobuf ByteSize, gRPC framing excluded)."""
        for msg in self._call:
            yield serde.artifact_chunk_from_proto(msg), msg.ByteSize()

    def cancel(self) -> None:
        """Stop the stream (the server sees CANCELLED)."""
        self._call.cancel()


class Transport:
    """Calls StrategyService with retries; one per virtual device (own seeded jitter and faults)."""

    def __init__(
        self,
        target: str,
        policy: RetryPolicy | None = None,
        *,
        tls_root_ca: str = "",
        token: str = "",
        faults: NetworkFaults | None = None,
        seed: int = 0,
    ) -> None:
        if token:
            check_token(token, "token")  # StartupError (ValueError): metadata cannot carry it
        self.target = target
        self.policy = policy or RetryPolicy()
        self.faults = faults or NetworkFaults()
        self._stub = serde.ProtoStrategyServiceStub(shared_channel(target, tls_root_ca))
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(seed ^ 0x5EED)

    def get_model_spec(self, device_id: str) -> tuple[ModelSpec, CallStats]:
        """GetModelSpec with retries; TransportError ('malformed_reply') for an unusable spec."""
        msg = serde.model_spec_request_to_proto(device_id)
        reply, stats = self._call(self._stub.GetModelSpec, msg)
        return _mapped(serde.model_spec_from_proto, reply, stats), stats

    def get_strategy(self, req: StrategyRequest) -> tuple[StrategyResult, CallStats]:
        """GetStrategy with retries (the request id stays the same across attempts)."""
        reply, stats = self._call(self._stub.GetStrategy, serde.strategy_request_to_proto(req))
        return _mapped(serde.strategy_result_from_proto, reply, stats), stats

    def report_metrics(self, report: DeviceReport) -> tuple[ReportOutcome, CallStats]:
        """ReportMetrics with retries (idempotent on the server by device and round)."""
        reply, stats = self._call(self._stub.ReportMetrics, serde.device_report_to_proto(report))
        return _mapped(serde.report_outcome_from_proto, reply, stats), stats

    def fetch_artifact(self, req: ArtifactRequest, timeout_s: float) -> ArtifactStream:
        """One FetchArtifact attempt: the server's chunk stream, within timeout_s.

        No retry here: device_client.artifacts resumes a broken stream from the bytes it kept.
        """
        msg = serde.artifact_request_to_proto(req)
        call = self._stub.FetchArtifact(msg, timeout=timeout_s, metadata=self._metadata)
        return ArtifactStream(call)

    def backoff(self, attempt: int) -> float:
        """This device's jittered pause before retry `attempt` (1-based), in seconds."""
        return self.policy.backoff(attempt, self._rng)

    def inject(self, stats: CallStats, remaining: float) -> None:
        """Apply the configured delay (bounded by the time left) and maybe drop the attempt."""
        if not self.faults.active:
            return
        delay = (self.faults.delay_ms + self._fault_rng.uniform(0, self.faults.jitter_ms)) / 1e3
        delay = min(delay, max(remaining, 0.0))
        if delay > 0:
            time.sleep(delay)
            stats.injected_delay_ms += delay * 1e3
        if self._fault_rng.random() < self.faults.loss:
            stats.injected_losses += 1
            raise InjectedLoss

    def _call(self, method: Callable[..., Any], req: Any) -> tuple[Any, CallStats]:
        """Run one logical call: attempts with deadlines until success, a fatal code or time out."""
        stats = CallStats()
        start = time.perf_counter()
        deadline = start + self.policy.overall_timeout_s
        last, last_code = "no attempt made", "overall_deadline"
        while stats.attempts < self.policy.max_attempts:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            stats.attempts += 1
            try:
                self.inject(stats, remaining)
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                reply = method(
                    req, timeout=min(self.policy.call_timeout_s, remaining), metadata=self._metadata
                )
                stats.elapsed_ms = (time.perf_counter() - start) * 1e3
                stats.request_bytes, stats.reply_bytes = req.ByteSize(), reply.ByteSize()
                return reply, stats
            except InjectedLoss:
                code_name, last = "unavailable", "attempt dropped by the fault injector"
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                code_name, last = code.name.lower(), f"{code.name}: {detail}"
                if code == grpc.StatusCode.UNAVAILABLE and tls_failure(detail or ""):
                    code_name = "tls_handshake"  # a certificate mismatch never clears: no retry
                if code not in RETRYABLE or code_name == "tls_handshake":
                    stats.elapsed_ms = (time.perf_counter() - start) * 1e3
                    raise TransportError(code_name, last, stats.attempts) from exc
            stats.retried[code_name] = stats.retried.get(code_name, 0) + 1
            last_code = code_name
            pause = self.policy.backoff(stats.attempts, self._rng)
            if time.perf_counter() + pause >= deadline:
                break
            time.sleep(pause)
        stats.elapsed_ms = (time.perf_counter() - start) * 1e3
        # Out of attempts: the last status says why; out of time: the overall deadline does.
        reason = last_code if stats.attempts >= self.policy.max_attempts else "overall_deadline"
        raise TransportError(reason, last, stats.attempts)


def _mapped(from_proto: Callable[[Any], Domain], reply: Any, stats: CallStats) -> Domain:
    """A reply in domain terms; one the wire mapping refuses is a failed call, not a crash."""
    try:
        return from_proto(reply)
    except serde.SerdeError as exc:
        raise TransportError("malformed_reply", str(exc), stats.attempts) from exc
