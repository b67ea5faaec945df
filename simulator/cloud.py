"""The cloud the fleet talks to: an embedded server (in this process and restartable, or a
`chord serve --workers N` child process), or a given address."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


class CloudError(RuntimeError):
    """The embedded server could not start or restart."""


class Cloud:
    """A strategy-service endpoint; `restart()` only works for the embedded one."""

    def __init__(
        self,
        target: str,
        embedded: object | None = None,
        group: subprocess.Popen[str] | None = None,
    ) -> None:
        self.target = target
        self._embedded = embedded
        self._group = group  # a `chord serve --workers N` child
        self.restarts = 0

    @classmethod
    def external(cls, address: str) -> Cloud:
        """A server someone else runs (`chord serve`, docker compose)."""
        return cls(address)

    @classmethod
    def start_embedded(
        cls,
        run_dir: Path,
        port: int = 0,
        token: str | None = None,
        workers: int = 1,
        retry_horizon_s: float | None = None,
    ) -> Cloud:
        """Start C's server on 127.0.0.1:port: with one worker in a background thread of this
        process (its own event loop); with more, as a `chord serve --workers N` child.

        retry_horizon_s: the longest time after a call's first attempt that a device may still
        retry it (the fleet's overall call timeout). The in-process server then remembers
        GetStrategy replies and stored reports for that long, not for `chord serve`'s 300 s
        and 100,000 reports: a retry can only repeat a call younger than that, and at a fleet's
        request rate the longer windows held ~2 KB per reply and ~0.7 KB per report that no
        retry could ask for. They were the whole of the driver's growth with devices (14 MiB
        per thousand devices on a virtual-clock day of 5,000; with these windows the driver
        stays at its size after the first two minutes). None = `chord serve`'s defaults.
        """
        if workers > 1:
            return cls._start_group(Path(run_dir), port, token, workers)
        from cloud_server.config import ServerConfig
        from cloud_server.embedded import EmbeddedServer
        from cloud_server.service import load_engine, unservable_reason

        cfg = ServerConfig(run_dir=Path(run_dir), token=token or None, grace_s=1.0)
        if retry_horizon_s is not None:
            cfg = dataclasses.replace(
                cfg, dedup_window_s=retry_horizon_s, report_window_s=retry_horizon_s
            )
        try:  # loaded here, as `chord serve` does: a run that cannot serve is one line, not a log
            engine = load_engine(cfg)
        except Exception as exc:  # RunError, CheckpointError, TextFileError, a malformed field
            raise CloudError(
                f"the embedded server cannot serve run directory {run_dir} "
                f"({unservable_reason(exc)}); send a directory written by `chord simulate "
                "--prepare-run DIR`, or leave --run-dir out to use the cached run"
            ) from None
        server = EmbeddedServer(cfg, port=port, engine=engine).start()
        return cls(server.address, server)

    @classmethod
    def _start_group(
        cls, run_dir: Path, port: int, token: str | None, workers: int, timeout_s: float = 300.0
    ) -> Cloud:
        """`python -P -m chord.cli serve --workers N` on 127.0.0.1; waits for its `ready` line.

        -P keeps the caller's current directory off the child's import path: run from a folder
        that holds another copy of the package, the server would otherwise run that code.
        """
        cmd = [sys.executable, "-P", "-m", "chord.cli", "serve", "--run", str(run_dir),
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--grace-s", "1", "--log-level", "WARNING"]
        env = {**os.environ}
        env.pop("CHORD_TOKEN", None)
        if token:
            env["CHORD_TOKEN"] = token  # not on the command line, where `ps` shows it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        bound = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("port="):
                bound = int(line.split("=", 1)[1])
            elif line.strip() == "ready" and bound:
                log.info("embedded server: %d workers on 127.0.0.1:%d", workers, bound)
                return cls(f"127.0.0.1:{bound}", group=proc)
        proc.kill()
        proc.wait(10)
        raise CloudError(
            f"`chord serve --workers {workers}` did not become ready (exit {proc.returncode}); "
            "run it by hand to see why"
        )

    @property
    def embedded(self) -> bool:
        """True when the simulator runs the server (in this process or as its child)."""
        return self._embedded is not None or self._group is not None

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

        group, self._group = self._group, None
        if group is not None:
            group.send_signal(signal.SIGTERM)  # every worker drains, then the parent exits
            try:
                group.wait(30)
            except subprocess.TimeoutExpired:
                group.kill()
                group.wait(10)
            if group.stdout is not None:
                group.stdout.close()
        if isinstance(self._embedded, EmbeddedServer):
            self._embedded.stop(grace_s=1.0)
            self._embedded = None
