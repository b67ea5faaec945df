"""Fleet scale: 1,000 and 10,000 virtual devices with drift on the quick pretrained run."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness import (
    RESULTS_DIR,
    BenchProcessError,
    ChildProcess,
    ProcessTreeSampler,
    ResultStore,
    Stopwatch,
    add_output_arguments,
    load_average,
    machine_info,
    markdown_table,
    python_module,
    read_json,
    repo_env,
    runtime_result_name,
    write_json,
)

NAME = "fleet_scale"
GOAL_DEVICES = 10_000
GOAL_WALL_S = 600.0
GOAL_RATE = 50.0  # devices/s on this 2-core machine (issue 15), with memory flat in devices


def result_name(runtime: str) -> str:
    """The result a run of `runtime` writes (harness.runtime_result_name)."""
    return runtime_result_name(NAME, runtime)


class FleetScaleError(BenchProcessError):
    """A fleet-scale run failed or timed out; the message carries the child's log tail."""


@dataclass(frozen=True)
class FleetScaleConfig:
    """Which fleet sizes to run and how (every other setting is the simulator's default)."""

    sizes: tuple[int, ...] = (1_000, 10_000)
    run_dir: str | None = None  # None = the quick pretrained run (prepared once, not timed)
    batch_size: int = 0  # virtual devices per actor task; 0 = the simulator's default
    lanes: int = 0  # devices an actor runs at once; 0 = the simulator's default
    actors: int = 0  # device actors; 0 = the simulator's default (the cluster's CPUs)
    ray_address: str = "local"  # "local" private Ray, or "none" for in-process devices
    runtime: str = ""  # device scoring runtime; "" = the simulator's default (ort)
    timeout_s: float = 1_800.0  # per fleet size
    sample_s: float = 0.5  # memory sampling period
    write: bool = True


def process_role(pid: int, root: int) -> str:
    """Which part of the simulation a process is: driver, device actor, raylet, gcs, ray-other."""
    if pid == root:
        return "driver"
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "gone"
    if cmd.startswith("ray::"):
        return "device-actor" if "DeviceActor" in cmd else "ray-worker-other"
    for key, role in (("raylet", "raylet"), ("gcs_server", "gcs")):
        if key in cmd:
            return role
    return "ray-other"


class TreeMemorySampler(ProcessTreeSampler):
    """The harness's process-tree sampler with simulation roles (a device actor stays one)."""

    def __init__(self, pid: int, period_s: float, pss_every: int = 10) -> None:
        """pid: root of the tree; period_s: RSS/CPU sampling period; PSS every pss_every-th."""
        super().__init__(pid, period_s, pss_every, process_role, frozenset({"device-actor"}))


def prepare_default_run() -> str:
    """The quick pretrained run of the embedded defaults, trained or reused before any timing.

    The scale benchmarks (fleet_scale, fleet_day, device_stages) measure the pretrained fleet,
    as their earlier results did, although `chord simulate` now defaults to random mode: a
    random-mode device rebuilds a hidden-256 backbone, another workload (accuracy_random
    reports its device memory and latency).
    """
    from simulator.config import FleetConfig
    from simulator.runner import prepare_embedded_run

    return str(prepare_embedded_run(FleetConfig(mode="pretrained")))


def _child_main(args: argparse.Namespace) -> int:
    """Child process: one simulation of --devices devices; writes figures to --result."""
    import dataclasses

    from simulator.config import FleetConfig
    from simulator.runner import run_simulation

    base = FleetConfig(mode="pretrained")  # the run prepare_default_run serves
    cfg = dataclasses.replace(
        base,
        devices=args.devices,
        run_dir=args.run_dir,
        ray_address=args.ray_address,
        batch_size=args.batch_size or base.batch_size,
        lanes=args.lanes or base.lanes,
        actors=args.actors or base.actors,
        runtime=args.device_runtime or base.runtime,
    )
    with Stopwatch() as watch:
        summary = run_simulation(cfg, Path(args.out), progress=False)
    wall = watch.seconds
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
            "lanes": cfg.lanes,
            "actors": cfg.actors,
            "ray_address": cfg.ray_address,
            "dataset": cfg.dataset,
            "backbone": cfg.backbone,
            "mode": cfg.mode,
            "runtime": cfg.runtime,
        },
        "summary": keep,
        "backend": summary.get("backend"),
    }
    write_json(args.result, result)
    return 0


def run_size(devices: int, run_dir: str, cfg: FleetScaleConfig, work: Path) -> dict[str, Any]:
    """One fleet size in a child process, with the process tree's memory sampled."""
    out = work / f"fleet-{devices}"
    result = work / f"fleet-{devices}.json"
    cmd = python_module(
        "benchmarks.fleet_scale", "--child",
        "--devices", str(devices), "--run-dir", run_dir, "--out", str(out),
        "--result", str(result), "--ray-address", cfg.ray_address,
        "--batch-size", str(cfg.batch_size), "--actors", str(cfg.actors),
        "--lanes", str(cfg.lanes), "--device-runtime", cfg.runtime,
    )  # fmt: skip
    child = ChildProcess(
        cmd,
        env=repo_env(RAY_USAGE_STATS_ENABLED="0"),
        log=work / f"fleet-{devices}.log",
        stop_timeout_s=30.0,
    )
    load_before = load_average()
    with Stopwatch() as watch, child, TreeMemorySampler(child.pid, cfg.sample_s) as sampler:
        rc = child.wait(cfg.timeout_s)
    total = watch.seconds
    if rc != 0 or not result.exists():
        what = f"timed out after {cfg.timeout_s:g} s" if rc is None else f"exited with {rc}"
        raise FleetScaleError(
            f"fleet of {devices} devices {what}; log tail:\n{child.log_tail(3000)}"
        )
    figures = json.loads(result.read_text())
    wall = float(figures["wall_s"])
    cpu = sampler.cpu_by_role()
    cpu_total = sum(cpu.values())
    return {
        "devices": devices,
        "wall_s": wall,
        "devices_per_s": devices / wall,
        "process_wall_s": total,
        "cpu_s": round(cpu_total, 1),
        "cores_busy": round(cpu_total / total, 2),  # mean cores used by the tree (2 = all)
        "cpu_ms_per_device": round(1e3 * cpu_total / devices, 1),
        # Devices per CPU-second of the whole tree: devices/s per fully used core.
        "devices_per_cpu_s": devices / cpu_total if cpu_total else None,
        "cpu_s_by_role": cpu,
        "sampler_cpu_s": round(sampler.sampler_cpu_s, 2),
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
        "peak_rss_mb": sampler.peak_rss_kb / 1024,
        "peak_pss_mb": sampler.peak_pss_kb / 1024,
        "peak_processes": sampler.peak_procs,
        "driver_maxrss_mb": figures["ru_maxrss_self_mb"],
        **{f"sim_{k}": v for k, v in figures["summary"].items() if k != "wall_s"},
        "config": figures["config"],
        "backend": figures["backend"],
    }


COLUMNS = [
    "devices", "wall_s", "devices_per_s", "devices_per_cpu_s", "cpu_ms_per_device", "cores_busy",
    "peak_rss_mb",
    "peak_pss_mb", "peak_processes", "driver_maxrss_mb", "process_wall_s", "loadavg_before",
]  # fmt: skip


def _limits(top: dict[str, Any]) -> str:
    """What bounds throughput at the largest size, from its measured CPU split."""
    roles = top.get("cpu_s_by_role", {})
    cpu = sum(roles.values()) or 1.0
    share = {k: 100 * v / cpu for k, v in roles.items()}
    ray = sum(v for k, v in share.items() if k not in ("device-actor", "driver"))
    return (
        f"What limits the rest (measured, {top['devices']} devices): CPU. The tree kept "
        f"{top['cores_busy']:.2f} of the 2 cores busy (the rest went to other jobs: load average "
        f"{top.get('loadavg_before')} before, {top.get('loadavg_after')} after); of its "
        f"{cpu:.0f} CPU-s the device actors used {share.get('device-actor', 0):.0f}%, the driver "
        f"(embedded server + simulator) {share.get('driver', 0):.0f}% and Ray's daemons "
        f"{ray:.0f}%. Inside an actor {_bucket_share('ray-worker', 'build_runtime')} of the "
        f"py-spy samples of the ort runtime's profile (results/fleet_profile_after.txt) build "
        f"the device runtime (quantize_int per row length, the ONNX graph and the ORT "
        f"session); in the driver "
        f"{_bucket_share('driver', 'hypernetwork')} are the server's hypernetwork. "
    )


def _bucket_share(role: str, key: str, name: str = "after") -> str:
    """Summed share of the breakdown buckets naming `key` in a saved profile ("?" if none)."""
    path = RESULTS_DIR / f"fleet_profile_{name}.txt"
    try:
        block = path.read_text().split(f"=== {role}", 1)[1]
        lines = block.split("breakdown (exclusive buckets):\n", 1)[1].splitlines()
    except (OSError, IndexError):
        return "?"
    lines = lines[: next((i for i, ln in enumerate(lines) if not ln.startswith(" ")), len(lines))]
    shares = [float(ln.split("%")[0].split()[-1]) for ln in lines if "%" in ln and key in ln]
    return f"{sum(shares):.0f}%" if shares else "?"


def _before(previous: dict[str, Any] | None) -> str:
    """The replaced result, as one sentence (the comparison a reader needs)."""
    if not previous or not previous.get("rows"):
        return ""
    m = previous.get("machine", {})
    runs = ", ".join(
        f"{r['devices']} devices {r['wall_s']:.1f} s ({r['devices_per_s']:.2f}/s, peak RSS "
        f"{r['peak_rss_mb']:.0f} MB)"
        for r in previous["rows"]
    )
    now = machine_info().get("cpu")
    other_cpu = m.get("cpu") and now and m.get("cpu") != now
    return (
        f"Previous result (measured {m.get('date', '?')} on {m.get('cpu', '?')}, commit "
        f"{m.get('commit', '?')}, batch {previous['rows'][0].get('config', {}).get('batch_size')}, "
        f"lanes {previous['rows'][0].get('config', {}).get('lanes', 1)}): {runs}"
        + (
            f"; another CPU than this run's ({now}), so the two differ by hardware as well as "
            "by code and are not a measure of a code change. "
            if other_cpu
            else ". "
        )
    )


def fleet_notes(
    payload: dict[str, Any], sample_s: float, previous: dict[str, Any] | None = None
) -> str:
    """The RESULTS.md note under the fleet-scale table."""
    rows, errors, top = payload["rows"], payload["errors"], payload["rows"][-1]
    c = rows[0]["config"]
    runtime = c.get("runtime", "ort")
    runtime_text = (
        f"device runtime {runtime}" if runtime == "ort"
        else f"device runtime {runtime} (`--device-runtime {runtime}`; the default is ort)"
    )
    return (
        f"The simulator's defaults on the quick {c['mode']} run ({c['dataset']}, "
        f"{c['backbone']}, {c['mode']} backbone, {runtime_text}, "
        f"in-process server on port 0, private local Ray "
        f"with the machine's CPUs, {c['rounds']} drift rounds of {c['interactions_per_round']} "
        f"interactions per device, batch {c['batch_size']} devices per actor task, "
        f"{c.get('lanes', 1)} devices at once per actor, each actor 2 batches deep); the run "
        f"directory was prepared before timing. `wall_s` = the simulator's own wall time "
        f"(data, server start, Ray start, every device, report); `process_wall_s` adds the "
        f"child's interpreter start. CPU: user + system seconds of every process of the tree "
        f"from /proc via psutil (sampled, so a process's last {sample_s:g} s can be missed); "
        f"`cpu_ms_per_device` = all of it / devices (start-up included), `cores_busy` = CPU / "
        f"process_wall_s (2 = both cores); `loadavg_before` = /proc/loadavg at the start "
        f"(other jobs on the machine compete for the same 2 cores). By role: "
        + "; ".join(
            f"{r['devices']} devices: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in r.get("cpu_s_by_role", {}).items())
            + f" (sampler {r.get('sampler_cpu_s', 0):.1f} s; load after {r.get('loadavg_after')})"
            for r in rows
        )
        + f". Memory: RSS of the whole tree (driver, server, Ray's daemons and workers) sampled "
        f"every {sample_s:g} s from statm, PSS every {10 * sample_s:g} s from "
        f"smaps_rollup (costly to read); `peak_rss_mb` sums RSS (shared pages once per process), "
        f"`peak_pss_mb` sums PSS (shared pages split), `driver_maxrss_mb` = ru_maxrss of the "
        f"simulator process. Device compute in the simulator's own figures (adapt_ms, infer_ms) "
        f"is thread CPU time; RPC times are wall time. Modeled (not measured): with both cores "
        f"free, {GOAL_DEVICES} devices at the largest size's cpu_ms_per_device would need "
        f"{GOAL_DEVICES * top['cpu_ms_per_device'] / 2e3:.0f} s of wall time. "
        + _profile_digest()
        + _limits(top)
        + _before(previous)
        + _growth(payload)
        + f"Goal {GOAL_DEVICES} devices in <= {GOAL_WALL_S:g} s: "
        f"{'met' if payload['goal_met'] else 'NOT met'}; goal >= {GOAL_RATE:g} devices/s at "
        f"the largest size: {'met' if payload.get('goal_rate_met') else 'NOT met'} "
        f"({top['devices_per_s']:.1f}/s with {top['cores_busy']:.2f} cores busy)."
        + (f" Failed sizes: {sorted(errors)}." if errors else "")
    )


def memory_growth(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Peak memory growth per thousand more devices, smallest to largest size (MiB; 0 = flat)."""
    first, top = rows[0], rows[-1]
    span_k = (top["devices"] - first["devices"]) / 1000.0
    if span_k <= 0:
        return {"mib_per_1k_devices_rss": None, "mib_per_1k_devices_pss": None}
    return {
        f"mib_per_1k_devices_{kind}": (top[f"peak_{kind}_mb"] - first[f"peak_{kind}_mb"]) / span_k
        for kind in ("rss", "pss")
    }


def _growth(payload: dict[str, Any]) -> str:
    """The memory-growth and per-core sentence of the note."""
    rss, pss = payload.get("mib_per_1k_devices_rss"), payload.get("mib_per_1k_devices_pss")
    if rss is None or pss is None:
        return ""
    top = payload["rows"][-1]
    per_core = top.get("devices_per_cpu_s")
    return (
        f"Memory growth from {payload['rows'][0]['devices']} to {top['devices']} devices: "
        f"{rss:.2f} MiB RSS, {pss:.2f} MiB PSS per thousand devices (the driver plans device "
        "jobs as the actors need them and summarizes the store with SQL aggregates, so neither "
        "the job list nor the stored rows are held in memory). Devices per CPU-second at "
        f"the largest size (devices/s per fully used core): "
        f"{'-' if per_core is None else format(per_core, '.1f')}. "
    )


def run_benchmark(cfg: FleetScaleConfig, store: ResultStore | None = None) -> dict[str, Any]:
    """Run every fleet size, print the table and write the result (to `store`, default
    `ResultStore.default()`), comparing with the result it replaces."""
    store = store or ResultStore.default()
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
        "goal_rate": f">= {GOAL_RATE:g} devices/s",
        "goal_rate_met": bool(top["devices_per_s"] >= GOAL_RATE),
        **memory_growth(rows),
        "config": asdict(cfg),
    }
    table = markdown_table(rows, COLUMNS)
    print(table)
    name = result_name(cfg.runtime)
    notes = fleet_notes(payload, cfg.sample_s, store.read(name))
    if cfg.write:
        store.write(name, payload, table, notes)
    else:
        print(json.dumps(payload, indent=1, default=str))
    return payload


def rewrite_notes(
    previous_path: Path, extra: str = "", store: ResultStore | None = None, name: str = NAME
) -> None:
    """Re-render the Markdown section of the saved result `name`, comparing with a previous
    JSON."""
    store = store or ResultStore.default()
    saved = store.read(name)
    if saved is None:
        raise FleetScaleError(f"no saved result to re-render: {store.path(name)} is missing")
    measured = saved.get("machine", {}).get("date", "?")
    payload = {k: v for k, v in saved.items() if k != "benchmark"}  # keeps the measured machine
    notes = f"Figures measured {measured}; note re-rendered from the JSON. " + fleet_notes(
        payload, float(payload["config"]["sample_s"]), read_json(previous_path)
    )
    notes += f" {extra}" if extra else ""
    store.write(name, payload, markdown_table(payload["rows"], COLUMNS), notes)


PROFILES = ("before", "after")


def _profile_digest() -> str:
    """The device-actor and driver breakdowns of the saved py-spy summaries, as one sentence."""
    parts = []
    for name in PROFILES:
        path = RESULTS_DIR / f"fleet_profile_{name}.txt"
        if not path.exists():
            continue
        text = path.read_text()
        digest = []
        for role in ("ray-worker", "driver"):
            block = text.split(f"=== {role}", 1)
            if len(block) < 2:
                continue
            lines = block[1].split("breakdown (exclusive buckets):\n", 1)[1].splitlines()
            top = [ln.split("%", 1) for ln in lines[:6] if "%" in ln]
            digest.append(
                f"{'one device actor' if role == 'ray-worker' else 'driver'}: "
                + ", ".join(f"{b.strip()} {a.split()[-1]}%" for a, b in top)
            )
        parts.append(f"py-spy {name} (results/{path.name}): " + "; ".join(digest) + ".")
    if not parts:
        return ""
    return (
        "Where the time goes (shares of a process's non-idle py-spy samples; "
        "conditions in each file's first line): " + " ".join(parts) + " "
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the fleet-scale benchmark."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--run-dir", default=None, help="run to serve (default: embedded run)")
    parser.add_argument("--batch-size", type=int, default=0, help="devices per actor task")
    parser.add_argument("--actors", type=int, default=0, help="device actors (0 = default)")
    parser.add_argument("--lanes", type=int, default=0, help="devices an actor runs at once")
    parser.add_argument("--ray-address", default="local", help="'local' or 'none'")
    parser.add_argument(
        "--device-runtime", default="", help="device runtime: ort (default), int8, packed, fake"
    )
    parser.add_argument("--timeout", type=float, default=1_800.0, help="seconds per size")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--rewrite-notes", default="", metavar="PREVIOUS_JSON",
        help="only re-render the RESULTS.md note of the saved result against a previous JSON",
    )  # fmt: skip
    parser.add_argument("--note", default="", help="with --rewrite-notes: a sentence to append")
    add_output_arguments(parser)
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
        lanes=args.lanes,
        ray_address=args.ray_address,
        runtime=args.device_runtime,
        timeout_s=args.timeout,
        write=not args.no_write,
    )


def run(args: argparse.Namespace) -> int:
    """Run with parsed flags (a missed goal is reported, not turned into an exit status)."""
    if args.child:
        return _child_main(args)
    store = ResultStore.default(args.results_dir)
    if args.rewrite_notes:
        rewrite_notes(Path(args.rewrite_notes), args.note, store, result_name(args.device_runtime))
        return 0
    run_benchmark(config_from_args(args), store)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.fleet_scale [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_scale", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
