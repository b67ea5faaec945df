"""Prometheus metrics of one server, in a private registry, optionally exported over HTTP."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Requests by method and status code, latency, batch sizes, bytes out, in-flight calls."""

    def __init__(self) -> None:
        """Create the metrics in a registry of their own (several servers may share a process)."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chord_requests",
            "RPCs answered, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chord_request_latency_seconds",
            "Server-side RPC latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "chord_batch_size",
            "Requests per engine forward pass",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.bytes_out = Counter(
            "chord_bytes_out",
            "Serialized reply bytes sent, by method",
            ["method"],
            registry=self.registry,
        )
        # Under `chord serve --workers N` (prometheus_client multiprocess mode) counters and
        # histograms are summed over the workers; in-flight calls too, over live workers.
        self.in_flight = Gauge(
            "chord_in_flight",
            "GetStrategy calls being served",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.up = Gauge(
            "chord_worker_up",
            "1 per live server process (one series per worker pid under --workers N)",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.up.set(1)
        self.dropped = Counter(
            "chord_dropped",
            "Queued requests dropped before the model ran: deadline passed or caller gone",
            ["reason"],
            registry=self.registry,
        )
        self._http: Any = None
        self._thread: threading.Thread | None = None
        # Labelled children: labels() takes a lock and builds a key on every call.
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._bytes_children: dict[str, Any] = {}

    def observe(self, method: str, code: str, seconds: float, bytes_out: int = 0) -> None:
        """Record one answered RPC."""
        children = self._children.get((method, code))
        if children is None:
            children = (
                self.requests.labels(method=method, code=code),
                self.latency.labels(method=method),
            )
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)
        if bytes_out:
            sent = self._bytes_children.get(method)
            if sent is None:
                sent = self._bytes_children[method] = self.bytes_out.labels(method=method)
            sent.inc(bytes_out)

    def count(self, method: str, code: str) -> float:
        """How many RPCs of a method ended with a status code so far."""
        value = self.registry.get_sample_value(
            "chord_requests_total", {"method": method, "code": code}
        )
        return value or 0.0

    def drop(self, reason: str) -> None:
        """Count a queued request dropped for reason ("expired" or "cancelled")."""
        self.dropped.labels(reason=reason).inc()

    def dropped_count(self, reason: str) -> float:
        """How many queued requests were dropped for reason so far."""
        return self.registry.get_sample_value("chord_dropped_total", {"reason": reason}) or 0.0

    def batch_sizes(self) -> tuple[float, float]:
        """(number of batches, sum of their sizes) so far."""
        n = self.registry.get_sample_value("chord_batch_size_count") or 0.0
        total = self.registry.get_sample_value("chord_batch_size_sum") or 0.0
        return n, total

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Export on http://host:port/metrics in a daemon thread; returns the bound port."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop_http(self) -> None:
        """Stop the exporter if it runs."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
