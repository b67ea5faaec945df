"""A simulated day on the virtual clock: devices/s per core, MiB per thousand devices, accounting.

Each size runs `chord simulate --clock virtual` (the user-facing command) in a child process
whose whole process tree (driver with the embedded server, Ray's daemons, device actors) is
sampled for CPU and memory. Figures:

- devices_per_cpu_s: devices simulated per CPU-second of the tree ("devices/s per core");
- mib_per_1k_devices: growth of the tree's peak PSS per thousand more devices, between the
  smallest and the largest size (flat memory = close to 0);
- accounted_once: every planned device has exactly one stored report (SQL on reports.db).

Goals (issue 15): 100,000 devices over one simulated day in <= 60 min with peak RSS <= 2 GB.
A size that was not run is reported as modeled from the measured per-device CPU, never as met.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.fleet_scale import TreeMemorySampler, prepare_default_run
from benchmarks.harness import (
    BenchProcessError,
    ChildProcess,
    ResultStore,
    Stopwatch,
    add_output_arguments,
    load_average,
    markdown_table,
    python_module,
    repo_env,
)

NAME = "fleet_day"
GOAL_DEVICES = 100_000
GOAL_WALL_S = 3_600.0
GOAL_RSS_MB = 2_048.0
PLOT = f"{NAME}_timeline.png"  # the largest size's timeline.png, copied beside the JSON


class FleetDayError(BenchProcessError):
    """A simulated day failed or timed out; the message carries the child's log tail."""


@dataclass(frozen=True)
class FleetDayConfig:
    """Which fleet sizes to simulate over how long a virtual span."""

    sizes: tuple[int, ...] = (250, 1_000)
    duration_s: float = 86_400.0  # virtual seconds
    run_dir: str | None = None  # None = the embedded default run (prepared before timing)
    ray_address: str = "local"
    timeout_s: float = 3_600.0  # per size
    sample_s: float = 0.5
    write: bool = True


def accounted_once(db: Path, devices: int) -> bool:
    """True when reports.db holds exactly one device row per planned device id."""
    con = sqlite3.connect(db)
    try:
        n, distinct = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT device_id) FROM devices"
        ).fetchone()
    finally:
        con.close()
    return bool(n == distinct == devices)


def run_size(devices: int, run_dir: str, cfg: FleetDayConfig, work: Path) -> dict[str, Any]:
    """One simulated span of `devices` devices in a child process, its tree sampled."""
    out = work / f"day-{devices}"
    cmd = python_module(
        "chord.cli", "simulate", "--clock", "virtual", "--duration-s", str(cfg.duration_s),
        "--devices", str(devices), "--run-dir", run_dir, "--ray-address", cfg.ray_address,
        "--out", str(out), "--quiet",
    )  # fmt: skip
    env = repo_env(RAY_USAGE_STATS_ENABLED="0")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    child = ChildProcess(cmd, env=env, log=work / f"day-{devices}.log", stop_timeout_s=30.0)
    load_before = load_average()
    with Stopwatch() as watch, child, TreeMemorySampler(child.pid, cfg.sample_s) as sampler:
        rc = child.wait(cfg.timeout_s)
    total = watch.seconds
    summary_path = out / "summary.json"
    if rc is None or not summary_path.exists():  # exit 1 = some device failed: still a result
        what = f"timed out after {cfg.timeout_s:g} s" if rc is None else f"exited with {rc}"
        raise FleetDayError(f"{devices} devices {what}; log tail:\n{child.log_tail(3000)}")
    s = json.loads(summary_path.read_text())
    t = s["timeline"]
    cpu = sampler.cpu_by_role()
    cpu_total = sum(cpu.values())
    return {
        "devices": devices,
        "virtual_h": cfg.duration_s / 3600.0,
        "requests": t["requests"],
        "wall_s": float(s["wall_s"]),
        "devices_per_s": devices / float(s["wall_s"]),
        "requests_per_s": t["requests"] / float(s["wall_s"]),
        "cpu_s": round(cpu_total, 1),
        "cores_busy": round(cpu_total / total, 2),
        "devices_per_cpu_s": devices / cpu_total if cpu_total else None,
        "cpu_ms_per_request": 1e3 * cpu_total / t["requests"] if t["requests"] else None,
        "peak_rss_mb": sampler.peak_rss_kb / 1024,
        "peak_pss_mb": sampler.peak_pss_kb / 1024,
        "accounted_once": accounted_once(out / "reports.db", devices)
        and s["missing"] == 0
        and s["duplicates"] == 0,
        "completed": s["completed"],
        "failed": s["failed"],
        "rpm_peak": t["rpm_peak"],
        "rpm_p99": t["rpm_p99"],
        "online_peak": t["online_peak"],
        "requests_by_trigger": t["requests_by_trigger"],
        "cpu_s_by_role": cpu,
        "process_wall_s": total,
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
    }


COLUMNS = [
    "devices", "virtual_h", "requests", "wall_s", "devices_per_s", "requests_per_s",
    "devices_per_cpu_s", "cpu_ms_per_request", "cores_busy", "peak_rss_mb", "peak_pss_mb",
    "accounted_once", "loadavg_before",
]  # fmt: skip


def scale_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MiB per thousand devices (PSS and RSS slopes) and the modeled 100,000-device day."""
    first, top = rows[0], rows[-1]
    span_k = (top["devices"] - first["devices"]) / 1000.0
    pss_slope = (top["peak_pss_mb"] - first["peak_pss_mb"]) / span_k if span_k else None
    rss_slope = (top["peak_rss_mb"] - first["peak_rss_mb"]) / span_k if span_k else None
    cpu_per_device = top["cpu_s"] / top["devices"]
    big = [r for r in rows if r["devices"] >= GOAL_DEVICES]
    out: dict[str, Any] = {
        "mib_per_1k_devices_pss": pss_slope,
        "mib_per_1k_devices_rss": rss_slope,
        "cpu_s_per_device": cpu_per_device,
        # Modeled, not measured: the largest size's CPU per device on both cores, fully busy.
        "modeled_goal_wall_s_2_cores": GOAL_DEVICES * cpu_per_device / 2.0,
        "modeled_goal_rss_mb": (
            top["peak_rss_mb"] + rss_slope * (GOAL_DEVICES - top["devices"]) / 1000.0
            if rss_slope is not None
            else None
        ),
    }
    if big:
        b = big[0]
        out["goal_measured"] = True
        out["goal_met"] = bool(
            b["wall_s"] <= GOAL_WALL_S and b["peak_rss_mb"] <= GOAL_RSS_MB and b["accounted_once"]
        )
    else:
        out["goal_measured"] = False
        out["goal_met"] = None
    return out


def notes(payload: dict[str, Any]) -> str:
    """The RESULTS.md note under the table."""
    rows, f = payload["rows"], payload["scale"]
    sample_s = float(payload["config"]["sample_s"])
    top = rows[-1]

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    goal = (
        ("met" if f["goal_met"] else "NOT met")
        if f["goal_measured"]
        else (
            f"not measured (no {GOAL_DEVICES:,}-device run); modeled from the largest size's "
            f"{f['cpu_s_per_device'] * 1e3:.0f} ms CPU per device: "
            f"{f['modeled_goal_wall_s_2_cores'] / 60:.0f} min on both cores, fully busy "
            f"(goal {GOAL_WALL_S / 60:.0f} min), peak RSS about "
            f"{num(f['modeled_goal_rss_mb'], '.0f')} MB by extending the RSS slope linearly "
            f"(goal {GOAL_RSS_MB:.0f})"
        )
    )
    return (
        f"`chord simulate --clock virtual --duration-s {payload['config']['duration_s']:g}` on the "
        "embedded default (ml-100k, sasrec, pretrained, in-process server, private local Ray "
        "with the machine's CPUs; seeded diurnal availability, drift every 5 interactions, a 5% "
        "staleness sample; the run was prepared before timing). `wall_s` is the simulator's own "
        "wall time; CPU is user + system time of every process of the tree from /proc "
        "(`devices_per_cpu_s` = devices per CPU-second, i.e. devices/s per fully used core); "
        "memory is the tree's summed RSS sampled every "
        f"{sample_s:g} s and PSS every {10 * sample_s:g} s "
        "(PSS is the noisier slope). `accounted_once`: reports.db holds exactly one "
        "row per device and the summary counts no missing or duplicate device. Memory growth "
        f"between {rows[0]['devices']:,} and {top['devices']:,} devices: "
        f"{num(f['mib_per_1k_devices_pss'], '.1f')} MiB PSS "
        f"({num(f['mib_per_1k_devices_rss'], '.1f')} MiB RSS) per thousand devices; one known "
        "per-device cost is the embedded server's in-memory ReportMetrics store (every report "
        "kept for idempotency, about 630 B each by tracemalloc, so about 3 KB per device-day). "
        "CPU per device falls with size as start-up (imports, Ray, the server) is amortized. "
        "By role, largest size: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in top["cpu_s_by_role"].items())
        + ". Load average before/after each size (other jobs share the 2 cores): "
        + "; ".join(f"{r['devices']}: {r['loadavg_before']} / {r['loadavg_after']}" for r in rows)
        + f". Plot: `results/{PLOT}`. Where the time goes (py-spy, 300 devices over a day, "
        "`results/fleet_day_profile.txt`): in each device actor, candidate scoring 34-36%, "
        "building the int8 runtime (to_lowbit prepacks) 24-25%, quantizing weights 16-19%, "
        "profile encode 5%, waiting on RPCs 11%; the driver (server + simulator) used about a "
        "quarter of an actor's CPU. Goal {GOAL_DEVICES:,} devices over a "
        f"day in <= {GOAL_WALL_S / 60:.0f} min with "
        f"peak RSS <= {GOAL_RSS_MB:.0f} MB: {goal}."
    )


def rewrite_notes(extra: str = "", store: ResultStore | None = None) -> None:
    """Re-render the Markdown section from the saved JSON (the figures keep their machine)."""
    store = store or ResultStore.default()
    saved = store.read(NAME)
    if saved is None:
        raise FleetDayError(f"no saved {NAME} result in {store.folder}; run the benchmark first")
    m = saved.get("machine", {})
    payload = {k: v for k, v in saved.items() if k != "benchmark"}
    text = (
        f"Figures measured {m.get('date', '?')} at commit {m.get('commit', '?')} (load average "
        "and cores in the table); note re-rendered. "
        + notes(payload)
        + (f" {extra}" if extra else "")
    )
    store.write(NAME, payload, markdown_table(payload["rows"], COLUMNS), text)


def run_benchmark(cfg: FleetDayConfig, store: ResultStore | None = None) -> dict[str, Any]:
    """Run every size, print the table, write JSON, the plot and the Markdown section."""
    store = store or ResultStore.default()
    run_dir = cfg.run_dir or prepare_default_run()
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="chord-fleet-day-") as tmp:
        for n in cfg.sizes:
            print(f"a simulated day of {n} devices ...", flush=True)
            try:
                rows.append(run_size(n, run_dir, cfg, Path(tmp)))
            except FleetDayError as exc:
                errors[str(n)] = str(exc)
                print(exc, file=sys.stderr)
                break
        if rows and cfg.write:  # the largest day's plots, for the README and RESULTS.md
            day = Path(tmp) / f"day-{rows[-1]['devices']}"
            store.folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(day / "timeline.png", store.folder / PLOT)
    if not rows:
        raise FleetDayError("no size finished: " + "; ".join(errors.values()))
    payload: dict[str, Any] = {
        "rows": rows,
        "errors": errors,
        "scale": scale_figures(rows),
        "run_dir": run_dir,
        "config": asdict(cfg),
    }
    table = markdown_table(rows, COLUMNS)
    print(table)
    print(json.dumps(payload["scale"], indent=1))
    if cfg.write:
        store.write(NAME, payload, table, notes(payload))
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the simulated-day benchmark."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1_000])
    parser.add_argument("--duration-s", type=float, default=86_400.0, help="virtual seconds")
    parser.add_argument("--run-dir", default=None, help="run to serve (default: embedded run)")
    parser.add_argument("--ray-address", default="local", help="'local' or 'none'")
    parser.add_argument("--timeout", type=float, default=3_600.0, help="seconds per size")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--rewrite-notes", action="store_true", help="only re-render RESULTS.md from the JSON"
    )
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run with parsed flags (a missed goal is reported, not turned into an exit status)."""
    store = ResultStore.default(args.results_dir)
    if args.rewrite_notes:
        rewrite_notes(store=store)
        return 0
    run_benchmark(
        FleetDayConfig(
            sizes=tuple(args.sizes),
            duration_s=args.duration_s,
            run_dir=args.run_dir,
            ray_address=args.ray_address,
            timeout_s=args.timeout,
            write=not args.no_write,
        ),
        store,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.fleet_day [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_day", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
