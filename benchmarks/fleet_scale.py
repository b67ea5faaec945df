"""Fleet scale: 1,000 and 10,000 virtual devices with drift on the embedded default setup."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import markdown_table, write_result

GOAL_DEVICES = 10_000
GOAL_WALL_S = 600.0
_REPO_ROOT = Path(__file__).resolve().parent.parent


class FleetScaleError(RuntimeError):
    """A fleet-scale run failed or timed out; the message carries the child's stderr tail."""


@dataclass(frozen=True)
class FleetScaleConfig:
    """Which fleet sizes to run and how (every other setting is the simulator's default)."""

    sizes: tuple[int, ...] = (1_000, 10_000)
    run_dir: str | None = None  # None = the embedded default run (prepared once, not timed)
    batch_size: int = 0  # virtual devices per actor task; 0 = the simulator's default
    actors: int = 0  # device actors; 0 = the simulator's default (the cluster's CPUs)
    ray_address: str = "local"  # "local" private Ray, or "none" for in-process devices
    timeout_s: float = 1_800.0  # per fleet size
    sample_s: float = 0.5  # memory sampling period
    write: bool = True


def _children(pid: int) -> list[int]:
    """Direct children of pid (from /proc/PID/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def _mem_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; zeros when it has exited."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


class TreeMemorySampler:
    """Samples the summed RSS and PSS of a process tree and keeps the peaks."""

    def __init__(self, pid: int, period_s: float) -> None:
        """pid: root of the tree; period_s: sampling period."""
        self.pid = pid
        self.period_s = period_s
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mem-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            mems = [_mem_kb(p) for p in pids]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(m[0] for m in mems))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(m[1] for m in mems))
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop.wait(self.period_s)

    def __enter__(self) -> TreeMemorySampler:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=10)


def prepare_default_run() -> str:
    """The run the embedded default server serves, trained or reused before any timing."""
    from simulator.config import FleetConfig
    from simulator.runner import prepare_embedded_run

    return str(prepare_embedded_run(FleetConfig()))


def _child_main(args: argparse.Namespace) -> int:
    """Child process: one simulation of --devices devices; writes figures to --result."""
    import dataclasses

    from simulator.config import FleetConfig
    from simulator.runner import run_simulation

    base = FleetConfig()
    cfg = dataclasses.replace(
        base,
        devices=args.devices,
        run_dir=args.run_dir,
        ray_address=args.ray_address,
        batch_size=args.batch_size or base.batch_size,
        actors=args.actors or base.actors,
    )
    t0 = time.perf_counter()
    summary = run_simulation(cfg, Path(args.out), progress=False)
    wall = time.perf_counter() - t0
    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ru_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    keep = {k: v for k, v in summary.items() if isinstance(v, int | float | str | bool)}
    result = {
        "wall_s": float(summary.get("wall_s", wall)),
        "call_wall_s": wall,
        "ru_maxrss_self_mb": ru_self / 1024,
        "ru_maxrss_children_mb": ru_children / 1024,
        "config": {
            "devices": cfg.devices,
            "rounds": cfg.drift.rounds,
            "interactions_per_round": cfg.drift.interactions_per_round,
            "batch_size": cfg.batch_size,
            "actors": cfg.actors,
            "ray_address": cfg.ray_address,
            "dataset": cfg.dataset,
            "backbone": cfg.backbone,
            "mode": cfg.mode,
        },
        "summary": keep,
        "backend": summary.get("backend"),
    }
    Path(args.result).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def run_size(devices: int, run_dir: str, cfg: FleetScaleConfig, work: Path) -> dict[str, Any]:
    """One fleet size in a child process, with the process tree's memory sampled."""
    out = work / f"fleet-{devices}"
    result = work / f"fleet-{devices}.json"
    cmd = [
        sys.executable, "-m", "benchmarks.fleet_scale", "--child",
        "--devices", str(devices), "--run-dir", run_dir, "--out", str(out),
        "--result", str(result), "--ray-address", cfg.ray_address,
        "--batch-size", str(cfg.batch_size), "--actors", str(cfg.actors),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(_REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    log = work / f"fleet-{devices}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=_REPO_ROOT, env=env, stdout=err, stderr=err)
        with TreeMemorySampler(proc.pid, cfg.sample_s) as sampler:
            try:
                rc = proc.wait(timeout=cfg.timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
                rc = None
    total = time.perf_counter() - t0
    if rc != 0 or not result.exists():
        tail = log.read_text()[-3000:]
        what = f"timed out after {cfg.timeout_s:g} s" if rc is None else f"exited with {rc}"
        raise FleetScaleError(f"fleet of {devices} devices {what}; log tail:\n{tail}")
    child = json.loads(result.read_text())
    wall = float(child["wall_s"])
    return {
        "devices": devices,
        "wall_s": wall,
        "devices_per_s": devices / wall,
        "process_wall_s": total,
        "peak_rss_mb": sampler.peak_rss_kb / 1024,
        "peak_pss_mb": sampler.peak_pss_kb / 1024,
        "peak_processes": sampler.peak_procs,
        "driver_maxrss_mb": child["ru_maxrss_self_mb"],
        **{f"sim_{k}": v for k, v in child["summary"].items() if k != "wall_s"},
        "config": child["config"],
        "backend": child["backend"],
    }


def run_benchmark(cfg: FleetScaleConfig) -> dict[str, Any]:
    """Run every fleet size, print the table and write the result."""
    run_dir = cfg.run_dir or prepare_default_run()
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="chord-fleet-scale-") as tmp:
        for n in cfg.sizes:
            print(f"fleet of {n} devices ...", flush=True)
            try:
                rows.append(run_size(n, run_dir, cfg, Path(tmp)))
            except FleetScaleError as exc:
                errors[str(n)] = str(exc)
                print(exc, file=sys.stderr)
                break  # larger fleets would fail the same way
    if not rows:
        raise FleetScaleError("no fleet size finished: " + "; ".join(errors.values()))
    top = rows[-1]
    goal_row = next((r for r in rows if r["devices"] >= GOAL_DEVICES), None)
    payload: dict[str, Any] = {
        "devices": top["devices"],
        "wall_s": top["wall_s"],
        "devices_per_s": top["devices_per_s"],
        "peak_rss_mb": top["peak_rss_mb"],
        "rows": rows,
        "errors": errors,
        "run_dir": run_dir,
        "goal": f"{GOAL_DEVICES} devices in <= {GOAL_WALL_S:g} s",
        "goal_met": bool(goal_row and goal_row["wall_s"] <= GOAL_WALL_S),
        "config": asdict(cfg),
    }
    columns = [
        "devices", "wall_s", "devices_per_s", "peak_rss_mb", "peak_pss_mb", "peak_processes",
        "driver_maxrss_mb", "process_wall_s",
    ]  # fmt: skip
    table = markdown_table(rows, columns)
    print(table)
    c = rows[0]["config"]
    notes = (
        f"The simulator's embedded default (`chord simulate` defaults: {c['dataset']}, "
        f"{c['backbone']}, {c['mode']} backbone, in-process server on port 0, private local Ray "
        f"with the machine's CPUs, {c['rounds']} drift rounds of {c['interactions_per_round']} "
        f"interactions per device, batch {c['batch_size']} devices per actor task); the run "
        f"directory was prepared before timing. `wall_s` = the simulator's own wall time "
        f"(data, server start, Ray start, every device, report); `process_wall_s` adds the "
        f"child's interpreter start. Memory: the whole process tree (driver, server, Ray's "
        f"daemons and workers) sampled every {cfg.sample_s:g} s; `peak_rss_mb` sums RSS "
        f"(counts shared pages once per process), `peak_pss_mb` sums PSS (shared pages split), "
        f"`driver_maxrss_mb` = ru_maxrss of the simulator process. Goal "
        f"{GOAL_DEVICES} devices in <= {GOAL_WALL_S:g} s: "
        f"{'met' if payload['goal_met'] else 'NOT met'}."
        + (f" Failed sizes: {sorted(errors)}." if errors else "")
    )
    if cfg.write:
        write_result("fleet_scale", payload, table, notes)
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the fleet-scale benchmark."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--run-dir", default=None, help="run to serve (default: embedded run)")
    parser.add_argument("--batch-size", type=int, default=0, help="devices per actor task")
    parser.add_argument("--actors", type=int, default=0, help="device actors (0 = default)")
    parser.add_argument("--ray-address", default="local", help="'local' or 'none'")
    parser.add_argument("--timeout", type=float, default=1_800.0, help="seconds per size")
    parser.add_argument("--no-write", action="store_true", help="print only")
    # Internal: the child process that runs one simulation.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> FleetScaleConfig:
    """Turn flags into a FleetScaleConfig."""
    return FleetScaleConfig(
        sizes=tuple(args.sizes),
        run_dir=args.run_dir,
        batch_size=args.batch_size,
        actors=args.actors,
        ray_address=args.ray_address,
        timeout_s=args.timeout,
        write=not args.no_write,
    )


def run(args: argparse.Namespace) -> int:
    """Run with parsed flags (a missed goal is reported, not turned into an exit status)."""
    if args.child:
        return _child_main(args)
    run_benchmark(config_from_args(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.fleet_scale [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_scale", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
