"""The server's typed configuration (built from the command line by cloud_server.cli)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    metrics_host: str = "0.0.0.0"  # exporter bind address
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
        """Reject configurations that cannot run, saying what to set instead."""
        if self.run_dir is None and not self.echo:
            raise ValueError("no run_dir; pass --run DIR (or --echo for fixed replies)")
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch}; use 1 (unbatched) or more")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={self.max_wait_ms}; use 0 or more")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency={self.max_concurrency}; use 1 or more")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key (or neither)")
        if self.max_artifact_streams < 1:
            raise ValueError(f"max_artifact_streams={self.max_artifact_streams}; use 1 or more")
        if not self.artifact_stream_s > 0:
            raise ValueError(f"artifact_stream_s={self.artifact_stream_s}; use more than 0")
        if self.token is not None and not self.token:
            raise ValueError("empty token; pass a non-empty --token or none")
