"""At the default log level `chord simulate` prints the product's own lines and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
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
