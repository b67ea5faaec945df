"""The server's typed configuration (built from the command line by cloud_server.cli)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from chord.startcheck import (
    StartupError,
    check_host,
    check_in_range,
    check_int,
    check_tls_pair,
    check_token,
)

MIB = 1 << 20
# Limits a server can work within; each setting's error states its limit.
MAX_BATCH = 4096  # requests per forward pass
MAX_WAIT_MS = 60_000.0  # batch wait: a minute at most (tests hold calls in the batcher for 20 s)
MAX_CONCURRENCY = 100_000  # in-flight calls
MAX_GRACE_S = 3600.0  # drain period and artifact stream length: at most an hour

# prometheus_client's multiprocess mode: where each worker writes its metric values.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir_setting() -> Path | None:
    """$PROMETHEUS_MULTIPROC_DIR as a directory, None when unset or empty; StartupError when it
    names no directory (checked by `chord serve` at start and by the worker group itself)."""
    given = os.environ.get(MULTIPROC_ENV)
    if not given:
        return None
    if not Path(given).is_dir():
        raise StartupError(
            f"${MULTIPROC_ENV} {given!r} is not a directory; create it or unset the variable"
        )
    return Path(given)


@dataclass(frozen=True)
class ServerConfig:
    """How one strategy server runs; every field has a safe default for tests."""

    run_dir: Path | None = None  # run directory to serve; None only with echo=True
    max_batch: int = 32  # requests per forward pass (1 = unbatched)
    max_wait_ms: float = 2.0  # longest wait after the first request of a batch
    max_concurrency: int = 256  # in-flight GetStrategy calls before RESOURCE_EXHAUSTED
    max_receive_bytes: int = MIB  # largest accepted request message
    max_send_bytes: int = 4 * MIB  # largest reply message
    metrics_port: int = 0  # Prometheus exporter port; 0 = off
    metrics_host: str = "127.0.0.1"  # exporter bind address (`chord serve` uses --host)
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key enables TLS
    tls_key: Path | None = None  # PEM private key
    token: str | None = None  # bearer token required on every call but health; None = open
    echo: bool = False  # fixed replies and no model work (stack ceiling for load tests)
    grace_s: float = 10.0  # how long in-flight calls may finish after SIGTERM
    dedup_window_s: float = 300.0  # how long a (device_id, request_id) reply is remembered
    dedup_max_entries: int = 100_000  # bound on remembered request ids
    reports_path: Path | None = None  # JSONL file that device reports are appended to
    # Seconds a stored report stays in the in-memory duplicate window (besides its count bound,
    # reports.DEDUP_WINDOW); None = no age bound. A server whose clients stop retrying after a
    # known time (the simulator's embedded one) sets it to keep memory at rate x that time.
    report_window_s: float | None = None
    max_artifact_streams: int = 64  # FetchArtifact streams at once before RESOURCE_EXHAUSTED
    artifact_stream_s: float = 120.0  # a FetchArtifact stream ends (DEADLINE_EXCEEDED) after this

    def __post_init__(self) -> None:
        """Reject configurations that cannot run, saying what to set instead.

        Raises StartupError (a ValueError) naming the setting and the range to send.
        """
        if self.run_dir is None and not self.echo:
            raise ValueError("no run_dir; pass --run DIR (or --echo for fixed replies)")
        check_int(self.max_batch, "max_batch (--max-batch)", 1, MAX_BATCH, "1 = unbatched")
        check_in_range(self.max_wait_ms, "max_wait_ms (--max-wait-ms)", 0, MAX_WAIT_MS,
                       unit="milliseconds")
        check_int(self.max_concurrency, "max_concurrency (--max-concurrency)", 1,
                  MAX_CONCURRENCY, "GetStrategy calls in flight")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key (or neither)")
        check_int(self.max_artifact_streams, "max_artifact_streams", 1, MAX_CONCURRENCY)
        check_in_range(self.artifact_stream_s, "artifact_stream_s", 0, MAX_GRACE_S,
                       unit="seconds", lo_open=True)
        if self.token is not None and not self.token:
            raise StartupError("empty token; pass a non-empty --token or none")
        if self.token is not None:
            check_token(self.token, "token")
        check_int(self.max_receive_bytes, "max_receive_bytes (--max-receive-mib x 2**20)", 1024,
                  1 << 30, "1 KiB..1 GiB")
        check_int(self.max_send_bytes, "max_send_bytes", 1024, 1 << 30, "1 KiB..1 GiB")
        check_int(self.metrics_port, "metrics_port (--metrics-port)", 0, 65535,
                  "a TCP port; 0 = no exporter")
        check_host(self.metrics_host, "metrics_host")
        check_in_range(self.grace_s, "grace_s (--grace-s)", 0, MAX_GRACE_S, unit="seconds")
        check_in_range(self.dedup_window_s, "dedup_window_s", 0, 86_400.0, unit="seconds",
                       lo_open=True)
        check_int(self.dedup_max_entries, "dedup_max_entries", 1, 10_000_000)
        if self.report_window_s is not None:
            check_in_range(self.report_window_s, "report_window_s", 0, 86_400.0,
                           unit="seconds", lo_open=True)
        if self.tls_cert is not None and self.tls_key is not None:
            check_tls_pair(self.tls_cert, self.tls_key)
        if self.reports_path is not None and self.reports_path.is_dir():
            raise StartupError(f"--reports {str(self.reports_path)!r} is a directory; send a file")
