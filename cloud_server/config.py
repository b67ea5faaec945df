"""The server's typed configuration (built from the command line by cloud_server.cli)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chord.startcheck import (
    StartupError,
    check_host,
    check_port,
    check_seconds,
    check_tls_pair,
    check_token,
)

MIB = 1 << 20


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
    max_artifact_streams: int = 64  # FetchArtifact streams at once before RESOURCE_EXHAUSTED
    artifact_stream_s: float = 120.0  # a FetchArtifact stream ends (DEADLINE_EXCEEDED) after this

    def __post_init__(self) -> None:
        """Reject configurations that cannot run, saying what to set instead.

        Raises StartupError (a ValueError) naming the setting and the range to send.
        """
        if self.run_dir is None and not self.echo:
            raise ValueError("no run_dir; pass --run DIR (or --echo for fixed replies)")
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch}; use 1 (unbatched) or more")
        check_seconds(self.max_wait_ms, "max_wait_ms (--max-wait-ms)", allow_zero=True)
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency={self.max_concurrency}; use 1 or more")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key (or neither)")
        if self.max_artifact_streams < 1:
            raise ValueError(f"max_artifact_streams={self.max_artifact_streams}; use 1 or more")
        if not self.artifact_stream_s > 0:
            raise ValueError(f"artifact_stream_s={self.artifact_stream_s}; use more than 0")
        if self.token is not None and not self.token:
            raise StartupError("empty token; pass a non-empty --token or none")
        if self.token is not None:
            check_token(self.token, "token")
        if not 1024 <= self.max_receive_bytes <= 1 << 30:
            raise StartupError(
                f"max_receive_bytes={self.max_receive_bytes}; send 1 KiB..1 GiB (--max-receive-mib)"
            )
        if not 1024 <= self.max_send_bytes <= 1 << 30:
            raise StartupError(f"max_send_bytes={self.max_send_bytes}; send 1 KiB..1 GiB")
        check_port(self.metrics_port, "metrics_port (--metrics-port)")
        check_host(self.metrics_host, "metrics_host")
        check_seconds(self.grace_s, "grace_s (--grace-s)", allow_zero=True)
        check_seconds(self.dedup_window_s, "dedup_window_s")
        if self.dedup_max_entries < 1:
            raise StartupError(f"dedup_max_entries={self.dedup_max_entries}; use 1 or more")
        if self.tls_cert is not None and self.tls_key is not None:
            check_tls_pair(self.tls_cert, self.tls_key)
        if self.reports_path is not None and self.reports_path.is_dir():
            raise StartupError(f"--reports {str(self.reports_path)!r} is a directory; send a file")
