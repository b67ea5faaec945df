"""Beyond one machine: docker-compose.yml's commands as a two-node Ray cluster on this host.

The head and a second node are started with `ray start` (the compose file's own commands, on
free ports, each node with its own resources), the server runs as its own `chord serve`
process, and `chord simulate` joins both by address. Everything started here is torn down by
process group, whatever happens (never `ray stop`: it would stop other clusters on the host).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_compose import _commands, _compose

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 120.0
SIMULATE_TIMEOUT_S = 300.0


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _host_flags(ports: list[int]) -> list[str]:
    """Ports a second raylet on the same host must not share with the first (or other jobs)."""
    names = (
        "--node-manager-port", "--object-manager-port", "--metrics-export-port",
        "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
    )  # fmt: skip
    return [f"{name}={port}" for name, port in zip(names, ports, strict=True)]


class _Procs:
    """Processes started in their own sessions; stopped by process group (TERM, then KILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.cleanup: list[str] = []  # directories removed after the processes stop

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
        """Start argv with stdout and stderr into log."""
        fh = log.open("w")
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """TERM every group (last started first), KILL what is left after 20 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # also workers a raylet left behind
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def procs() -> Iterator[_Procs]:
    """Started processes, always torn down."""
    p = _Procs()
    try:
        yield p
    finally:
        p.stop()


def _wait_for(what: str, check: object, log: Path, timeout_s: float = START_TIMEOUT_S) -> object:
    """Poll check() until it returns a truthy value; fail with the log tail on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after {timeout_s:g} s; log tail:\n{log.read_text()[-3000:]}")


def _nodes_alive(address: str, env: dict[str, str]) -> int:
    """Alive nodes of the cluster at address (asked from a throwaway driver process)."""
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); "
        "print('ALIVE', sum(n['Alive'] for n in ray.nodes()), "
        "sorted(k for k in ray.cluster_resources() if k.startswith('chord_')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    for line in out.stdout.splitlines():
        if line.startswith("ALIVE"):
            n, resources = line.split(" ", 2)[1:]
            return int(n) if resources == "['chord_head', 'chord_worker']" else 0
    return 0


def test_two_node_cluster_runs_actors_on_both_nodes(
    tmp_path: Path, procs: _Procs, smoke_run_dir: Path
) -> None:
    services = _compose()["services"]
    head_cmd = _commands(services["ray-head"])[0]
    worker_cmd = _commands(services["ray-worker"])[0]
    serve_cmd = _commands(services["cloud"])[-1]  # the first step prepares a run; we have one
    sim_cmd = _commands(services["simulator"])[0]
    gcs, client, *ports = _free_ports(15)
    address = f"127.0.0.1:{gcs}"
    # Its own Ray temp dir (short: socket paths are length-limited), so `ray start --head` does
    # not point every later ray.init() on this host at this cluster via /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="chord-ray-", dir="/tmp")
    procs.cleanup.append(temp_dir)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # the nodes' workers import device_client from this checkout
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }

    head = [RAY if a == "ray" else a for a in head_cmd]
    head = [f"--port={gcs}" if a.startswith("--port=") else a for a in head]
    head += [f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}"]
    head += _host_flags(ports[:6])
    procs.start(head, env, tmp_path / "head.log")
    worker = [RAY if a == "ray" else a for a in worker_cmd]
    worker = [f"--address={address}" if a.startswith("--address=") else a for a in worker]
    worker += ["--num-cpus=1", f"--temp-dir={temp_dir}", *_host_flags(ports[6:12])]
    _wait_for("ray head", lambda: (tmp_path / "head.log").read_text().count("Ray runtime started"),
              tmp_path / "head.log")  # fmt: skip
    procs.start(worker, env, tmp_path / "worker.log")
    _wait_for("two nodes", lambda: _nodes_alive(address, env) == 2, tmp_path / "worker.log")

    serve = [sys.executable, "-m", "chord.cli", *serve_cmd[1:]]
    serve[serve.index("--run") + 1] = str(smoke_run_dir)
    serve[serve.index("--host") + 1] = "127.0.0.1"
    serve[serve.index("--port") + 1] = str(ports[12])
    server = procs.start(serve, env, tmp_path / "serve.log")
    _wait_for("chord serve", lambda: "port=" in (tmp_path / "serve.log").read_text(),
              tmp_path / "serve.log")  # fmt: skip
    assert server.poll() is None

    sim = [sys.executable, "-m", "chord.cli", *sim_cmd[1:]]
    sim[sim.index("--server") + 1] = f"127.0.0.1:{ports[12]}"
    sim[sim.index("--ray-address") + 1] = address
    sim[sim.index("--devices") + 1] = "8"
    sim[sim.index("--out") + 1] = str(tmp_path / "sim")
    sim += ["--actors", "2", "--batch-size", "2", "--quiet"]
    done = subprocess.run(
        sim, cwd=REPO, env=env, capture_output=True, text=True, timeout=SIMULATE_TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert (summary["completed"], summary["missing"], summary["duplicates"]) == (8, 0, 0)
    assert summary["server"] == f"127.0.0.1:{ports[12]}"
    # One actor per node: each node has one CPU, each actor reserves one.
    assert summary["backend"]["actors"] == 2 and len(summary["backend"]["nodes"]) == 2
