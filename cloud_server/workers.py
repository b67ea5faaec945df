"""`chord serve --workers N`: N server processes on one port, one metrics scrape, one drain.

gRPC Python serves from one core per process, so the way its documentation runs on many cores is
several processes whose servers share the listening port through SO_REUSEPORT (the kernel
spreads new connections over them). This module is that supervisor:

- The parent imports neither grpc nor torch and starts no threads before the workers: each
  worker is a fresh interpreter (multiprocessing "spawn") with its own gRPC server, engine,
  batcher and health service. With port 0 the parent picks the port once (a socket bound with
  SO_REUSEPORT, never listening, held until the workers exit) and hands it to every worker.
- Metrics: prometheus_client's multiprocess mode. Every worker writes its samples to
  PROMETHEUS_MULTIPROC_DIR and the parent alone serves /metrics from them: counters and
  histograms summed over workers, `chord_in_flight` summed over live workers, and
  `chord_worker_up{pid=...}` one series per live worker.
- SIGTERM (or SIGINT) to the parent is forwarded once to every worker, and each drains on its
  own exactly as a single server does (health NOT_SERVING, admitted calls finish within
  cfg.grace_s). A worker that dies while no drain was asked for stops the others, and the
  parent exits 1 so a supervisor restarts the whole group; a worker that loses its parent
  drains itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from chord.startcheck import StartupError, join_host_port
from cloud_server.config import MULTIPROC_ENV, ServerConfig, metrics_dir_setting
from cloud_server.errors import ReportFileError

__all__ = [
    "MULTIPROC_ENV", "UnservableRunError", "WorkerGroupError", "reserve_port", "serve_workers",
]

log = logging.getLogger(__name__)

_KILL_MARGIN_S = 30.0  # after grace_s, a worker still draining is killed


class WorkerGroupError(RuntimeError):
    """The worker group could not start; the message says which worker and why."""


class UnservableRunError(WorkerGroupError):
    """A worker could not load the run (before any worker bound the port); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the run cannot be served: {reason}")
        self.reason = reason


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (never listen on) host:port with SO_REUSEPORT and yield the port; port 0 = any.

    While the socket is held, servers started with SO_REUSEPORT by the same user can bind the
    same port, and a server without it cannot. Raises OSError naming the address when the port
    is taken by a socket without SO_REUSEPORT.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("this platform has no SO_REUSEPORT; run one worker (--workers 1)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve host {host!r} ({exc}); pass an IP address") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise OSError(f"cannot bind {host}:{port} ({exc}); pass a free port or port 0") from exc
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _watch_parent(parent_pid: int) -> None:
    """Daemon thread body: SIGTERM this worker (a graceful drain) once its parent is gone."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    cfg: ServerConfig,
    address: str,
    index: int,
    conn: multiprocessing.connection.Connection,
    torch_threads: int,
    log_level: int,
) -> None:
    """Entry point of worker `index` (a spawned interpreter): serve until SIGTERM, then drain."""
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
    )
    from cloud_server.logbudget import install_log_budget

    budget = install_log_budget()  # a client cannot grow a worker's log without bound either
    threading.Thread(
        target=_watch_parent, args=(os.getppid(),), name="chord-parent-watch", daemon=True
    ).start()
    status = 1
    try:
        if torch_threads > 0 and not cfg.echo:
            import torch

            torch.set_num_threads(torch_threads)
        from cloud_server.server import serve_async
        from cloud_server.service import load_engine, unservable_reason

        engine, reason = None, ""
        # Loaded before binding, as `chord serve` alone does: a run that can never serve stops
        # the group before `port=`, with the parent's one-line error; the stored --reports are
        # checked against the served tiers (echo's too).
        try:
            engine = load_engine(cfg)
        except Exception as exc:  # RunError, CheckpointError, TextFileError, ...
            reason = unservable_reason(exc)
        if reason:
            conn.send(("unservable", reason))
            status = 2
        else:
            status = asyncio.run(
                serve_async(
                    cfg,
                    address,
                    on_bound=lambda port: conn.send(("bound", port)),
                    reuse_port=True,
                    worker=index,
                    on_ready=lambda: conn.send(("ready", index)),
                    engine=engine,
                )
            )
    except ReportFileError as exc:  # before binding: the parent says so in one line, exit 2
        with contextlib.suppress(OSError):
            conn.send(("reports", str(exc)))
        status = 2
    except BaseException as exc:  # reported to the parent, which stops the group
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()
        if budget.suppressed:
            logging.getLogger(__name__).warning(
                "worker %d suppressed %d repeated log records", index, budget.suppressed
            )
    sys.exit(status)


def _metrics_dir() -> tuple[Path, bool]:
    """(directory for multiprocess metrics, whether this call created it).

    An existing $PROMETHEUS_MULTIPROC_DIR is used after removing the *.db files a previous run
    left there (prometheus_client requires a clean directory per run); otherwise a fresh
    temporary directory, removed on exit.
    """
    try:
        path = metrics_dir_setting()
    except StartupError as exc:
        raise WorkerGroupError(str(exc)) from None
    if path is not None:
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    return Path(tempfile.mkdtemp(prefix="chord-metrics-")), True


def _serve_metrics(cfg: ServerConfig, path: Path) -> Any:
    """Start the one /metrics endpoint of the group (a daemon thread); returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    server, _ = start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=registry)
    log.info(
        "metrics of all workers on http://%s/metrics",
        join_host_port(cfg.metrics_host, server.server_port),
    )
    return server


class _Group:
    """The started workers, their pipes, and the drain bookkeeping."""

    def __init__(self, grace_s: float, metrics_path: Path) -> None:
        self.procs: list[Any] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.grace_s = grace_s
        self.metrics_path = metrics_path
        self.draining = False
        self.drain_deadline: float | None = None
        self.failed = False
        self.ready = 0
        self.reaped: set[int] = set()
        self.closed: set[int] = set()  # workers whose pipe reached EOF

    def drain(self, why: str, level: int = logging.INFO) -> None:
        """Forward SIGTERM once to every live worker; each drains within grace_s.

        level: of the log record saying why (DEBUG where the caller prints its own error).
        """
        if self.draining:
            log.info("already draining; workers get up to %.1f s", self.grace_s)
            return
        self.draining = True
        self.drain_deadline = time.monotonic() + self.grace_s + _KILL_MARGIN_S
        log.log(level, "%s; draining %d worker(s) for up to %.1f s", why, len(self.procs),
                self.grace_s)
        for p in self.procs:
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def poll_messages(self, on_ready: Callable[[], None] | None) -> list[str]:
        """Read pending worker messages; returns failures as text."""
        failures = []
        for i, conn in enumerate(self.conns):
            if i in self.closed:
                continue
            try:
                while conn.poll():
                    kind, value = conn.recv()
                    if kind == "ready":
                        self.ready += 1
                        if self.ready == len(self.procs):
                            log.info("all %d workers serving", self.ready)
                            if on_ready is not None:
                                on_ready()
                    elif kind == "failed":
                        failures.append(f"worker {i}: {value}")
            except (EOFError, OSError):
                self.closed.add(i)
        return failures

    def open_conns(self) -> list[multiprocessing.connection.Connection]:
        """Pipes that may still carry messages."""
        return [c for i, c in enumerate(self.conns) if i not in self.closed]

    def reap(self) -> None:
        """Handle exited workers: mark their metrics dead; an unasked exit stops the group."""
        from prometheus_client import multiprocess

        for i, p in enumerate(self.procs):
            if p.exitcode is None or i in self.reaped:
                continue
            self.reaped.add(i)
            multiprocess.mark_process_dead(p.pid, str(self.metrics_path))
            if p.exitcode != 0:
                self.failed = True
            if not self.draining:
                self.failed = True
                log.error("worker %d (pid %d) exited with %s", i, p.pid, p.exitcode)
                self.drain(f"worker {i} exited")

    def alive(self) -> list[Any]:
        """Workers still running."""
        return [p for p in self.procs if p.is_alive()]


def serve_workers(
    cfg: ServerConfig,
    host: str,
    port: int,
    workers: int,
    on_bound: Callable[[int], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    torch_threads: int = 0,
    start_timeout_s: float = 300.0,
) -> int:
    """Run `workers` server processes on host:port until SIGTERM/SIGINT; returns the exit status.

    on_bound(port) runs once every worker has bound the port; on_ready() once every worker
    has loaded its model. torch_threads > 0 sets each worker's torch intra-op threads (0 = the
    number of cores divided by the workers, at least 1). Exit status 0 when every worker
    drained cleanly after a signal, 1 otherwise. Raises WorkerGroupError when a worker cannot
    bind or start within start_timeout_s, and OSError when the port cannot be reserved.
    """
    if workers < 1:
        raise WorkerGroupError(f"workers={workers}; use 1 or more")
    threads = torch_threads or max(1, (os.cpu_count() or 1) // workers)
    metrics_path, own_dir = _metrics_dir()
    os.environ[MULTIPROC_ENV] = str(metrics_path)  # inherited by the spawned workers
    group = _Group(cfg.grace_s, metrics_path)
    previous = {
        sig: signal.signal(sig, lambda s, f: _on_signal(group, s, f))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    http = None
    try:
        with reserve_port(host, port) as bound_port:
            worker_cfg = dataclasses.replace(cfg, metrics_port=0)
            ctx = mp.get_context("spawn")
            for i in range(workers):
                parent_end, child_end = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(
                        worker_cfg,
                        join_host_port(host, bound_port),
                        i,
                        child_end,
                        threads,
                        logging.getLogger().getEffectiveLevel(),
                    ),
                    name=f"chord-worker-{i}",
                )
                proc.start()
                child_end.close()
                group.procs.append(proc)
                group.conns.append(parent_end)
            _await_bound(group, bound_port, start_timeout_s)
            if on_bound is not None:
                on_bound(bound_port)
            if cfg.metrics_port:
                http = _serve_metrics(cfg, metrics_path)
            _supervise(group, on_ready)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in group.procs:
            if p.is_alive():
                p.kill()
                p.join(5.0)
        for conn in group.conns:
            conn.close()
        if http is not None:
            http.shutdown()
            http.server_close()
        if own_dir:
            shutil.rmtree(metrics_path, ignore_errors=True)
    log.info("all workers stopped")
    return 1 if group.failed else 0


def _on_signal(group: _Group, signum: int, frame: FrameType | None) -> None:
    """Parent signal handler: start (or acknowledge) the group's drain."""
    group.drain(f"signal {signal.Signals(signum).name} received")


def _await_bound(group: _Group, port: int, timeout_s: float) -> None:
    """Wait until every worker reports the port bound; raise WorkerGroupError otherwise."""
    pending = set(range(len(group.procs)))
    deadline = time.monotonic() + timeout_s
    while pending:
        left = deadline - time.monotonic()
        if left <= 0 or group.draining:
            group.drain("start interrupted")
            raise WorkerGroupError(
                f"workers {sorted(pending)} did not bind port {port} within {timeout_s:g} s"
            )
        ready = multiprocessing.connection.wait(
            [group.conns[i] for i in pending] + [group.procs[i].sentinel for i in pending],
            timeout=min(left, 1.0),
        )
        for i in sorted(pending):
            conn, proc = group.conns[i], group.procs[i]
            if conn in ready:
                try:
                    kind, value = conn.recv()
                except EOFError:
                    kind, value = "failed", f"exited with {proc.exitcode}"
                if kind == "unservable":
                    group.drain(f"worker {i} cannot serve the run", logging.DEBUG)
                    raise UnservableRunError(str(value))
                if kind == "reports":
                    group.drain(f"worker {i} cannot read --reports", logging.DEBUG)
                    raise ReportFileError(str(value))
                if kind == "bound":
                    if value != port:
                        group.drain("port mismatch")
                        raise WorkerGroupError(f"worker {i} bound port {value}, not {port}")
                    pending.discard(i)
                    continue
                group.drain(f"worker {i} failed")
                raise WorkerGroupError(f"worker {i} did not start: {value}")
            if proc.sentinel in ready:
                group.drain(f"worker {i} exited")
                raise WorkerGroupError(f"worker {i} exited with {proc.exitcode} before binding")


def _supervise(group: _Group, on_ready: Callable[[], None] | None) -> None:
    """Until every worker has exited: relay readiness, reap exits, enforce the drain deadline."""
    while group.alive():
        multiprocessing.connection.wait(
            [p.sentinel for p in group.alive()] + group.open_conns(), timeout=0.5
        )
        for failure in group.poll_messages(on_ready):
            log.error("%s", failure)
        group.reap()
        deadline = group.drain_deadline
        if deadline is not None and time.monotonic() > deadline:
            for p in group.alive():
                log.error("worker pid %d still draining after the grace period; killing it", p.pid)
                p.kill()
            group.failed = True
    for p in group.procs:
        p.join(5.0)
    group.poll_messages(on_ready)
    group.reap()
