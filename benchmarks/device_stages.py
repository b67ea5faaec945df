"""Where one virtual device's CPU goes: thread CPU per step, per device runtime, in process.

Devices of the simulator's default fleet run one after another on this thread (lanes 1, no Ray)
against the embedded server in the same process. Each step of a device (the GetModelSpec call,
the artifact downloads, profiling and building the request, GetStrategy, decoding, building the
runtime, scoring, ReportMetrics) is timed with `time.thread_time()` by a wrapper installed for
the measurement and removed after it; what no step holds is "other" (the device's setup and
bookkeeping). The server's threads are not this thread: process CPU minus the devices' thread
CPU is the server (gRPC, the hypernetwork, level assignment, encoding) plus any other thread of
the process, reported per device as well. The per-step split complements fleet_scale, whose
CPU figures are per process and include Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ResultStore,
    add_output_arguments,
    load_average,
    markdown_table,
)

NAME = "device_stages"
RUNTIMES: tuple[str, ...] = ("ort", "int8")

# (owner module path, attribute, step): the calls a device makes, each timed as one step.
# Classes are given as "module:Class".
STEPS: tuple[tuple[str, str, str], ...] = (
    ("device_client.transport:Transport", "get_model_spec", "GetModelSpec RPC"),
    ("device_client.device", "fetch_spec_artifacts", "artifacts: download, verify, store"),
    ("device_client.device:VirtualDevice", "_request", "profile encode + request"),
    ("device_client.transport:Transport", "get_strategy", "GetStrategy RPC"),
    ("device_client.device", "decode_levels", "decode strategy"),
    ("device_client.device:VirtualDevice", "_adapt", "build runtime (quantize, graph, session)"),
    ("device_client.device:VirtualDevice", "_score", "score targets (negatives, infer, ranks)"),
    ("device_client.transport:Transport", "report_metrics", "ReportMetrics RPC"),
)


@dataclass(frozen=True)
class StagesConfig:
    """How many devices to run per runtime, and on which run."""

    devices: int = 200
    runtimes: tuple[str, ...] = RUNTIMES
    run_dir: str | None = None  # None = the quick pretrained run (prepare_default_run)
    write: bool = True


def _owner(path: str) -> Any:
    """The module or class named "module" or "module:Class"."""
    import importlib

    module, _, cls = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


@contextmanager
def step_timers(steps: Sequence[tuple[str, str, str]] = STEPS) -> Iterator[dict[str, float]]:
    """Wrap each step's function so its thread CPU (s) adds up in the yielded dict; the
    original functions are put back on exit. A step called inside another counts in both."""
    spent: defaultdict[str, float] = defaultdict(float)
    saved: list[tuple[Any, str, Any]] = []

    def timed(fn: Callable[..., Any], step: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[step] += time.thread_time() - start

        return wrapper

    try:
        for path, attr, step in steps:
            owner = _owner(path)
            original = owner.__dict__[attr]
            saved.append((owner, attr, original))
            setattr(owner, attr, timed(original, step))
        yield spent
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def measure(runtime: str, devices: int, run_dir: str) -> dict[str, Any]:
    """Run `devices` default-fleet devices with `runtime` in this thread; CPU ms per device."""
    import torch

    from chord.protocol import Protocol
    from device_client.actor import DeviceHost
    from simulator.cloud import Cloud
    from simulator.config import FleetConfig
    from simulator.fleet import iter_jobs
    from simulator.runner import _host_config, load_users

    torch.set_num_threads(1)  # as in a device actor
    cfg = dataclasses.replace(
        FleetConfig(mode="pretrained"), devices=devices + 1, ray_address="none",
        runtime=runtime, lanes=1,
        run_dir=run_dir,
    )  # fmt: skip
    sequences, _ = load_users(cfg.dataset, Protocol(cfg.ranking, cfg.negatives))
    cloud = Cloud.start_embedded(Path(run_dir))
    try:
        with tempfile.TemporaryDirectory(prefix="chord-device-stages-") as tmp:
            host = DeviceHost(_host_config(cfg, cloud.target, Path(tmp)))
            jobs = iter_jobs(cfg, sequences, "stages", None)
            warm = host.run_one(next(jobs))  # imports, the backbone, first channel: not counted
            if warm.status != "completed":
                raise RuntimeError(f"the warm-up device failed: {warm.reason} {warm.detail}")
            load_before = load_average()
            with step_timers() as spent:
                thread0, process0 = time.thread_time(), time.process_time()
                failed = sum(host.run_one(job).status != "completed" for job in jobs)
                thread = time.thread_time() - thread0
                process = time.process_time() - process0
            host.close()
    finally:
        cloud.stop()
    per = {step: 1e3 * s / devices for step, s in spent.items()}
    device_ms = 1e3 * thread / devices
    return {
        "runtime": runtime,
        "devices": devices,
        "failed": failed,
        "device_thread_ms": device_ms,
        "steps_ms": per,
        "other_ms": device_ms - sum(per.values()),
        "server_and_other_threads_ms": 1e3 * (process - thread) / devices,
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
    }


def _rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step, one column per runtime (ms of CPU per device)."""
    steps = [step for _, _, step in STEPS]
    rows = []
    for step in [*steps, "other (setup, bookkeeping)", "device thread, total"]:
        row: dict[str, Any] = {"step": step}
        for r in results:
            if step == "device thread, total":
                value = r["device_thread_ms"]
            elif step.startswith("other"):
                value = r["other_ms"]
            else:
                value = r["steps_ms"].get(step, 0.0)
            row[f"{r['runtime']}_ms"] = round(value, 2)
        rows.append(row)
    rows.append(
        {"step": "server + other threads of the process"}
        | {f"{r['runtime']}_ms": round(r["server_and_other_threads_ms"], 2) for r in results}
    )
    return rows


def run_benchmark(cfg: StagesConfig, store: ResultStore | None = None) -> dict[str, Any]:
    """Measure every runtime, print the table, write the result (JSON + RESULTS.md section)."""
    from benchmarks.fleet_scale import prepare_default_run

    store = store or ResultStore.default()
    run_dir = cfg.run_dir or prepare_default_run()
    results = [measure(rt, cfg.devices, run_dir) for rt in cfg.runtimes]
    rows = _rows(results)
    columns = ["step", *[f"{r['runtime']}_ms" for r in results]]
    table = markdown_table(rows, columns)
    print(table)
    payload = {
        "results": results,
        "rows": rows,
        "run_dir": run_dir,
        "config": dataclasses.asdict(cfg),
    }
    loads = "; ".join(
        f"{r['runtime']}: {r['loadavg_before']} before, {r['loadavg_after']} after" for r in results
    )
    notes = (
        f"CPU milliseconds per device (`time.thread_time`), mean over {cfg.devices} devices of "
        "the simulator's default fleet (ml-100k, SASRec, pretrained, 2 drift rounds of 1 "
        "interaction, sampled ranking against 100 negatives, every device downloading its "
        "artifacts) run one after another on one thread (lanes 1, no Ray) against the embedded "
        "server in the same process, after one unmeasured warm-up device. Each step is one "
        "wrapped call; `other` is the rest of the device's thread time (setup, records, "
        "bookkeeping). `server + other threads` is process CPU minus the devices' thread CPU: "
        "the embedded server (gRPC, hypernetwork, level assignment, encoding) plus gRPC's own "
        "threads, per device. In a fleet_scale run each device actor adds Ray's task plumbing, "
        "its lane threads' GIL hand-offs and gRPC's threads on top of the device thread; "
        f"fleet_scale measures those per process. Load average (other jobs share the 2 cores): "
        f"{loads}."
    )
    if cfg.write:
        store.write(NAME, payload, table, notes)
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the device-stages benchmark."""
    parser.add_argument("--devices", type=int, default=200, help="measured devices per runtime")
    parser.add_argument(
        "--runtimes", nargs="+", default=list(RUNTIMES), help="device runtimes (ort, int8, ...)"
    )
    parser.add_argument("--run-dir", default=None, help="run to serve (default: embedded run)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run with parsed flags."""
    if args.devices < 1:
        raise SystemExit(f"--devices must be >= 1, got {args.devices}")
    cfg = StagesConfig(args.devices, tuple(args.runtimes), args.run_dir, not args.no_write)
    run_benchmark(cfg, ResultStore.default(args.results_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.device_stages [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_stages", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
