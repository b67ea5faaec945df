"""A strategy server in its own process on 127.0.0.1, port 0, for benchmarks and load tests.

With workers > 1 the child is the `chord serve --workers N` supervisor (cloud_server.workers)
and its workers; with cpus it (and so every worker) is pinned to those cores.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BenchProcessError,
    ChildProcess,
    announce_ready,
    python_module,
    repo_env,
)
from chord.heap import freeze_startup_heap
from cloud_server.config import ServerConfig

_READY = "SERVER_PORT"


class ServerProcessError(BenchProcessError):
    """The server child did not start or report its port; the message carries its log's tail."""


def config_to_json(cfg: ServerConfig) -> str:
    """ServerConfig as JSON (paths as strings) for the child's command line."""
    return json.dumps(
        {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    )


def config_from_json(text: str) -> ServerConfig:
    """Inverse of config_to_json: path-typed fields become Paths again."""
    raw: dict[str, Any] = json.loads(text)
    for f in dataclasses.fields(ServerConfig):
        if raw.get(f.name) is not None and "Path" in str(f.type):
            raw[f.name] = Path(raw[f.name])
    return ServerConfig(**raw)


class ServerProcess(ChildProcess):
    """`python -m benchmarks.server_process` as a ChildProcess that learns its port."""

    def __init__(
        self,
        cfg: ServerConfig,
        torch_threads: int = 1,
        start_timeout_s: float = 300.0,
        workers: int = 1,
        cpus: tuple[int, ...] = (),
    ):
        """cfg: the server's config; torch_threads: intra-op threads of each server process's
        torch; workers: server processes on the port; cpus: cores to pin them to (() = any)."""
        super().__init__(
            python_module(
                "benchmarks.server_process",
                "--config",
                config_to_json(cfg),
                "--torch-threads",
                str(torch_threads),
                "--workers",
                str(workers),
                "--cpus",
                ",".join(map(str, cpus)),
            ),
            ready=_READY,
            start_timeout_s=start_timeout_s,
            env=repo_env(OMP_NUM_THREADS="1"),
        )
        self.cfg = cfg
        self.torch_threads = torch_threads
        self.workers = workers
        self.cpus = cpus

    @property
    def port(self) -> int:
        """The port the child bound (0 before it announced one)."""
        return int(self.ready_value or 0)

    @property
    def target(self) -> str:
        """HOST:PORT of the running server."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Spawn the child and block until it prints its port (ServerProcessError if not)."""
        try:
            super().start()
        except BenchProcessError as exc:
            raise ServerProcessError(str(exc)) from exc
        return self

    def __enter__(self) -> ServerProcess:
        """Start on entry."""
        return self.start()


async def _serve(cfg: ServerConfig) -> None:
    """Child side: serve until stdin closes or SIGTERM; print the port once the model is loaded."""
    from cloud_server.server import create_server, stop_server
    from cloud_server.service import StrategyService

    service = StrategyService(cfg)
    server, port = create_server("127.0.0.1:0", cfg, service)
    await server.start()
    assert service.load_task is not None
    await service.load_task  # raises (and the child exits non-zero) if the model cannot load
    freeze_startup_heap()  # as `chord serve` does once loaded (chord.heap)
    announce_ready(_READY, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # stdin closing (the parent exiting or calling stop()) also ends the server.
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    stdin_closed.add_done_callback(lambda _: loop.call_soon_threadsafe(stop.set))
    await stop.wait()
    await stop_server(server, service, 0.5)


def _serve_workers(cfg: ServerConfig, workers: int, torch_threads: int) -> int:
    """Child side with workers > 1: the worker group; announce the port once all are ready.

    stdin closing (the parent exiting or calling stop()) sends this process SIGTERM, which
    drains the group.
    """
    from cloud_server.workers import serve_workers

    bound: list[int] = []

    def ready() -> None:
        announce_ready(_READY, bound[0])
        threading.Thread(target=_sigterm_on_eof, daemon=True).start()

    return serve_workers(
        cfg, "127.0.0.1", 0, workers, on_bound=bound.append, on_ready=ready,
        torch_threads=torch_threads,
    )


def _sigterm_on_eof() -> None:
    """Block on stdin; at EOF send this process SIGTERM."""
    sys.stdin.read()
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.server_process --config JSON`: serve and print the bound port."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="ServerConfig as JSON")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="server processes on the port")
    parser.add_argument("--cpus", default="", help="comma-separated cores to pin to")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    cfg = config_from_json(args.config)
    if args.workers > 1:
        return _serve_workers(cfg, args.workers, args.torch_threads)
    import torch

    torch.set_num_threads(args.torch_threads)
    asyncio.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
