"""At the default log level `chord simulate` prints the product's own lines and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_simulate_prints_no_grpc_or_ray_lines(tmp_path: Path, smoke_run_dir: Path) -> None:
    """`make run` printed gRPC's fork-handler notice five times and Ray's start line; not now."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
    proc = subprocess.run(
        [sys.executable, "-m", "chord.cli", "simulate", "--devices", "6", "--num-cpus", "2",
         "--run-dir", str(smoke_run_dir), "--quiet", "--out", str(tmp_path / "sim")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    foreign = [line for line in proc.stderr.splitlines()
               if line.strip() and not line.startswith("chord simulate:")]
    assert foreign == []
    assert proc.stdout.strip().splitlines()[-1].startswith("wrote ")


def _interrupted(args: list[str], after_s: float) -> subprocess.CompletedProcess[str]:
    """Run `python -m chord.cli ARGS` in its own process group and send the group SIGINT after
    `after_s` seconds, as a terminal's Ctrl-C does (every process of the group gets it)."""
    env = {k: v for k, v in os.environ.items() if k != "CHORD_TOKEN"} | {"PYTHONPATH": str(ROOT)}
    # A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and a child inherits
    # that: run so, these tests saw no Ctrl-C at all. A handler, unlike an ignore, is reset to
    # the default at exec, so the child starts with Ctrl-C live however pytest was started.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chord.cli", *args], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_stops_bench_load_and_its_client_processes_in_one_line() -> None:
    """Ctrl-C printed 29 lines of traceback (the parent's and each client process's)."""
    from cloud_server.config import ServerConfig
    from tests.server_fixtures import started

    server = started(ServerConfig(echo=True))
    try:
        done = _interrupted(
            ["bench", "load", "--target", server.address, "--duration", "60",
             "--processes", "2"], after_s=6.0,
        )
    finally:
        server.stop()
    assert done.returncode == 130
    assert done.stderr.strip().splitlines() == ["chord bench load: stopped"]


def test_ctrl_c_stops_train_in_one_line_and_leaves_no_empty_out(tmp_path: Path) -> None:
    """Ctrl-C printed 26 lines of traceback and left the new --out directory empty behind."""
    data = tmp_path / "walk.csv"
    data.write_text("".join(f"u{u},{(u + s) % 90 + 1},{s}\n" for u in range(60) for s in range(15)))
    out = tmp_path / "never-written"
    done = _interrupted(
        # No early stop (patience = epochs): training still runs when the signal comes.
        ["train", "--dataset", str(data), "--epochs", "100000", "--patience", "100000",
         "--negatives", "5", "--no-progress", "--out", str(out)], after_s=6.0,
    )
    assert done.returncode == 130
    assert done.stderr.strip().splitlines() == ["chord train: stopped"]
    assert not out.exists()
