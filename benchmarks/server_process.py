"""A strategy server in its own process on 127.0.0.1, port 0, for benchmarks and load tests."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from cloud_server.config import ServerConfig

_PORT_PREFIX = "SERVER_PORT "
_REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerProcessError(RuntimeError):
    """The server child did not start or report its port; the message carries its stderr."""


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


class ServerProcess:
    """Starts `python -m benchmarks.server_process` and learns its port; a context manager."""

    def __init__(self, cfg: ServerConfig, torch_threads: int = 1, start_timeout_s: float = 300.0):
        """cfg: the server's config; torch_threads: intra-op threads of the child's torch."""
        self.cfg = cfg
        self.torch_threads = torch_threads
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def target(self) -> str:
        """HOST:PORT of the running server."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the server child (for profilers)."""
        if self.proc is None:
            raise ServerProcessError("server process not started; call start() first")
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Spawn the child and block until it prints its port."""
        env = {**os.environ, "PYTHONPATH": str(_REPO_ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.server_process",
                "--config",
                config_to_json(self.cfg),
                "--torch-threads",
                str(self.torch_threads),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            cwd=_REPO_ROOT,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(_PORT_PREFIX):
                self.port = int(line[len(_PORT_PREFIX) :])
                return self
            if not line and self.proc.poll() is not None:
                break
        err = self._drain_stderr()
        self.stop()
        raise ServerProcessError(f"server child did not report its port; stderr:\n{err}")

    def _drain_stderr(self) -> str:
        """Whatever the child wrote to stderr, once it has exited (or been killed)."""
        if self.proc is None or self.proc.stderr is None:
            return ""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.proc.stderr.read()[-4000:]

    def stop(self) -> None:
        """Ask the child to shut down gracefully (close stdin, then SIGTERM, then kill)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None and not stream.closed:
                stream.close()

    def __enter__(self) -> ServerProcess:
        """Start on entry."""
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop on exit."""
        self.stop()


async def _serve(cfg: ServerConfig) -> None:
    """Child side: serve until stdin closes or SIGTERM; print the port once the model is loaded."""
    from cloud_server.server import create_server, stop_server
    from cloud_server.service import StrategyService

    service = StrategyService(cfg)
    server, port = create_server("127.0.0.1:0", cfg, service)
    await server.start()
    assert service.load_task is not None
    await service.load_task  # raises (and the child exits non-zero) if the model cannot load
    print(f"{_PORT_PREFIX}{port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # stdin closing (the parent exiting or calling stop()) also ends the server.
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    stdin_closed.add_done_callback(lambda _: loop.call_soon_threadsafe(stop.set))
    await stop.wait()
    await stop_server(server, service, 0.5)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.server_process --config JSON`: serve and print the bound port."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="ServerConfig as JSON")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    asyncio.run(_serve(config_from_json(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
