"""A server running on its own event loop in a background thread (tests, in-process simulator)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading

import grpc

from chord.startcheck import join_host_port
from cloud_server.config import ServerConfig
from cloud_server.engine import Engine
from cloud_server.server import create_server, stop_server
from cloud_server.service import StrategyService

__all__ = ["EmbeddedServer"]


class EmbeddedServer:
    """Starts `create_server` in a daemon thread; `start()` returns once health is SERVING."""

    def __init__(
        self,
        cfg: ServerConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        engine: Engine | None = None,
    ) -> None:
        """cfg: server config; engine: an already built engine to share (skips loading)."""
        self.cfg = cfg
        self.host = host
        self.requested_port = port
        self.service = StrategyService(cfg, engine=engine)
        self.port = 0
        self.metrics_port = 0  # the exporter's port when cfg.metrics_port is set
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._main_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """host:port to dial."""
        return join_host_port(self.host, self.port)

    def start(self, timeout_s: float = 120.0) -> EmbeddedServer:
        """Start the server thread and wait until the model is loaded; raise if it failed."""
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def main() -> None:
            try:
                server, port = create_server(
                    join_host_port(self.host, self.requested_port), self.cfg, self.service
                )
                self._server = server
                await server.start()
                if self.cfg.metrics_port:
                    self.metrics_port = self.service.metrics.serve_http(
                        self.cfg.metrics_port, self.cfg.metrics_host
                    )
                assert self.service.load_task is not None
                await self.service.load_task
                ready.set_result(port)
            except BaseException as exc:
                if self._server is not None:  # bound (maybe serving): release the port
                    with contextlib.suppress(Exception):
                        await stop_server(self._server, self.service, 0)
                    self._server = None
                ready.set_exception(exc)
                loop.stop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._main_task = loop.create_task(main())
            loop.run_forever()
            if ready.done() and ready.exception() is not None:
                loop.close()  # start failed: nobody will call stop()

        self._thread = threading.Thread(target=run, name="chord-embedded-server", daemon=True)
        self._thread.start()
        try:
            self.port = ready.result(timeout=timeout_s)
        except BaseException:
            self._thread.join(timeout=10)
            self._loop = None
            raise
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        """Graceful stop, then end the thread."""
        loop = self._loop
        if loop is None or self._server is None:
            return
        fut = asyncio.run_coroutine_threadsafe(
            stop_server(self._server, self.service, grace_s), loop
        )
        fut.result(timeout=grace_s + 30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = None
        self._server = None

    def __enter__(self) -> EmbeddedServer:
        """Start on entering a with-block."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop on leaving it."""
        self.stop()
