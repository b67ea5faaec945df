"""The cloud the fleet talks to: an embedded in-process server (restartable) or a given address."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


class CloudError(RuntimeError):
    """The embedded server could not start or restart."""


class Cloud:
    """A strategy-service endpoint; `restart()` only works for the embedded one."""

    def __init__(self, target: str, embedded: object | None = None) -> None:
        self.target = target
        self._embedded = embedded
        self.restarts = 0

    @classmethod
    def external(cls, address: str) -> Cloud:
        """A server someone else runs (`chord serve`, docker compose)."""
        return cls(address)

    @classmethod
    def start_embedded(cls, run_dir: Path, port: int = 0, token: str | None = None) -> Cloud:
        """Start C's server in a background thread with its own event loop, on 127.0.0.1:port."""
        from cloud_server.config import ServerConfig
        from cloud_server.embedded import EmbeddedServer

        cfg = ServerConfig(run_dir=Path(run_dir), token=token or None, grace_s=1.0)
        server = EmbeddedServer(cfg, port=port).start()
        return cls(server.address, server)

    @property
    def embedded(self) -> bool:
        """True when this process runs the server."""
        return self._embedded is not None

    def restart(self) -> float:
        """Stop the embedded server, start one on the same port (model reused); seconds down."""
        from cloud_server.embedded import EmbeddedServer

        old = self._embedded
        if not isinstance(old, EmbeddedServer):
            raise CloudError("only the embedded server can be restarted by the simulator")
        engine = old.service.engine
        start = time.perf_counter()
        old.stop(grace_s=0.2)
        last: Exception | None = None
        for _ in range(50):  # the port can take a moment to be free again
            try:
                new = EmbeddedServer(old.cfg, host=old.host, port=old.port, engine=engine).start()
                break
            except OSError as exc:
                last = exc
                time.sleep(0.1)
        else:
            raise CloudError(f"could not rebind {old.address} after a restart: {last}")
        self._embedded = new
        self.restarts += 1
        down = time.perf_counter() - start
        log.info("embedded server restarted on %s (%.2f s down)", new.address, down)
        return down

    def stop(self) -> None:
        """Stop the embedded server (no-op for an external one)."""
        from cloud_server.embedded import EmbeddedServer

        if isinstance(self._embedded, EmbeddedServer):
            self._embedded.stop(grace_s=1.0)
            self._embedded = None
