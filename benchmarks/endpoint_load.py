"""Endpoint load: echo ceiling vs micro-batched vs unbatched GetStrategy, via the load generator."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadConfig, LoadResult, format_summary, run_load
from benchmarks.report import RESULTS_DIR, markdown_table, write_result
from benchmarks.server_process import ServerProcess
from cloud_server.config import ServerConfig

GOALS = {"batching_speedup_min": 3.0, "strategy_over_echo_min": 0.5, "p99_ms_max": 50.0}


class EndpointBenchmarkError(RuntimeError):
    """The endpoint benchmark could not run; the message says what is missing."""


@dataclass(frozen=True)
class EndpointConfig:
    """One endpoint benchmark: which run to serve, and how hard and how long to load it."""

    run_dir: str | None = None  # None = prepare (or reuse) the default smoke run
    concurrency: int = 64
    duration_s: float = 12.0
    warmup_s: float = 2.0
    repeats: int = 3
    processes: int = 1  # load-generator processes (the server is one more process)
    max_batch: int = 32  # micro-batching mode; the unbatched mode uses 1
    max_wait_ms: float = 2.0
    server_torch_threads: int = 1
    modes: tuple[str, ...] = ("echo", "strategy", "unbatched")
    profile_s: float = 0.0  # > 0: py-spy the batched server for this long (needs py-spy)
    write: bool = True


def default_run_dir() -> Path:
    """Prepare (or reuse the cached) run the fleet serves by default, with D's prepare_run."""
    from chord.hyper.runs import RunConfig, prepare_run

    # The same run the simulator's embedded default serves (FleetConfig defaults, quick preset).
    return Path(prepare_run(RunConfig.preset("quick")))


def _server_config(mode: str, cfg: EndpointConfig, run_dir: Path | None) -> ServerConfig:
    """The server config of one mode; concurrency limit above the offered load."""
    limit = max(256, 4 * cfg.concurrency)
    if mode == "echo":
        return ServerConfig(run_dir=run_dir, echo=True, max_concurrency=limit)
    batch = cfg.max_batch if mode == "strategy" else 1
    return ServerConfig(
        run_dir=run_dir,
        max_batch=batch,
        max_wait_ms=cfg.max_wait_ms,
        max_concurrency=limit,
    )


# Where a strategy server's time goes: (label, substring of a py-spy frame).
_PROFILE_PARTS = (
    ("engine thread (all model work)", "StrategyEngine.compute"),
    ("hypernetwork forward", "HyperNetwork.forward"),
    ("assign_levels", "assign_levels ("),
    ("of which max_entropy_distribution", "max_entropy_distribution ("),
    ("encode_levels", "encode_levels ("),
    ("event loop (gRPC, servicer, batcher)", "BaseEventLoop._run_once"),
)


def _profile(pid: int, seconds: float, out: Path) -> dict[str, Any]:
    """py-spy the server child; return the hottest functions by own and total samples."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return {"error": "py-spy is not installed; `pip install py-spy` into the venv"}
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--format",
        "raw",
        "--output",
        str(out),
        "--rate",
        "200",
        "--nonblocking",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"}
    own: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total: Counter[str] = Counter()
    n = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        n += c
        frames = stack.split(";")
        own[frames[-1]] += c
        for label, key in _PROFILE_PARTS:
            if key in stack:
                parts[label] += c
        for f in set(frames):
            total[f] += c
    return {
        "samples": n,
        "collapsed_stacks": str(out),
        "parts": {label: round(parts[label] / max(n, 1), 3) for label, _ in _PROFILE_PARTS},
        "top_self": [(f, round(c / max(n, 1), 3)) for f, c in own.most_common(15)],
        "top_total": [(f, round(c / max(n, 1), 3)) for f, c in total.most_common(25)],
    }


def profile_note(modes: dict[str, Any]) -> str:
    """One sentence per profiled mode: the share of server samples in each part."""
    out = []
    for mode, summary in modes.items():
        shares = summary.get("profile", {}).get("parts", {})
        if not shares:
            continue
        parts = [f"{label} {100 * shares.get(label, 0.0):.0f}%" for label, _ in _PROFILE_PARTS]
        out.append(f" py-spy of the {mode} server under load: " + ", ".join(parts) + ".")
    return "".join(out)


def _measure_mode(
    mode: str, cfg: EndpointConfig, run_dir: Path | None
) -> tuple[list[LoadResult], dict[str, Any]]:
    """Start the mode's server in its own process and load it cfg.repeats times."""
    results: list[LoadResult] = []
    extra: dict[str, Any] = {}
    load = LoadConfig(
        target="127.0.0.1:1",
        concurrency=cfg.concurrency,
        duration_s=cfg.duration_s,
        processes=cfg.processes,
        warmup_s=cfg.warmup_s,
        seed=0,
    )
    with ServerProcess(_server_config(mode, cfg, run_dir), cfg.server_torch_threads) as server:
        for rep in range(cfg.repeats):
            res = run_load(replace(load, target=server.target, seed=rep))
            print(f"\n== {mode} repeat {rep + 1}/{cfg.repeats}\n{format_summary(res)}", flush=True)
            results.append(res)
        if cfg.profile_s > 0 and mode != "echo":
            import threading

            out = RESULTS_DIR / f"endpoint_profile_{mode}.txt"
            holder: dict[str, Any] = {}
            t = threading.Thread(
                target=lambda: holder.update(_profile(server.pid, cfg.profile_s, out))
            )
            t.start()
            time.sleep(0.5)
            run_load(replace(load, target=server.target, duration_s=cfg.profile_s, warmup_s=0))
            t.join()
            extra["profile"] = holder
    return results, extra


def _summary(results: list[LoadResult]) -> dict[str, Any]:
    """Medians over repeats, and every repeat's headline figures."""
    return {
        "rps": statistics.median(r.rps for r in results),
        "ok_rps": statistics.median(r.ok_rps for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p90_ms": statistics.median(r.p90_ms for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "max_ms": max(r.max_ms for r in results),
        "errors": sum(r.errors for r in results),
        "total": sum(r.total for r in results),
        "status_codes": dict(sum((Counter(r.status_codes) for r in results), Counter())),
        "server_batch_mean": (
            statistics.median(r.server_batch_mean for r in results if r.server_batch_mean)
            if any(r.server_batch_mean for r in results)
            else None
        ),
        "repeats_rps": [r.rps for r in results],
        "repeats_p99_ms": [r.p99_ms for r in results],
    }


def run_benchmark(cfg: EndpointConfig) -> dict[str, Any]:
    """Measure every mode, compute the headline keys, print and write the result."""
    needs_run = any(m != "echo" for m in cfg.modes)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else (default_run_dir() if needs_run else None)
    load_before = os.getloadavg()
    modes: dict[str, Any] = {}
    for mode in cfg.modes:
        results, extra = _measure_mode(mode, cfg, run_dir)
        modes[mode] = {**_summary(results), **extra}
    echo = modes.get("echo", {}).get("rps")
    strat = modes.get("strategy", {}).get("rps")
    unb = modes.get("unbatched", {}).get("rps")
    payload: dict[str, Any] = {
        "echo_rps": echo,
        "strategy_rps": strat,
        "unbatched_rps": unb,
        "batching_speedup": strat / unb if strat and unb else None,
        "strategy_over_echo": strat / echo if strat and echo else None,
        "p99_ms": modes.get("strategy", {}).get("p99_ms"),
        "goals": GOALS,
        "modes": modes,
        "config": asdict(cfg),
        "run_dir": str(run_dir) if run_dir else None,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    met = {
        "batching_speedup": (payload["batching_speedup"] or 0) >= GOALS["batching_speedup_min"],
        "strategy_over_echo": (payload["strategy_over_echo"] or 0)
        >= GOALS["strategy_over_echo_min"],
        "p99_ms": (payload["p99_ms"] or 1e9) <= GOALS["p99_ms_max"],
    }
    payload["goals_met"] = met
    rows = [
        {"mode": m, **{k: v for k, v in s.items() if not isinstance(v, list | dict)}}
        for m, s in modes.items()
    ]
    table = markdown_table(
        rows, ["mode", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "server_batch_mean"]
    )
    head = markdown_table(
        [payload],
        [
            "echo_rps",
            "strategy_rps",
            "unbatched_rps",
            "batching_speedup",
            "strategy_over_echo",
            "p99_ms",
        ],
    )
    print("\n" + head + "\n\n" + table)
    print("goals met:", met)
    notes = (
        f"Concurrency {cfg.concurrency}, {cfg.processes} load-generator process(es), "
        f"{cfg.duration_s:g} s measured after {cfg.warmup_s:g} s warmup, medians of "
        f"{cfg.repeats} repeats. The server runs as a separate process (torch "
        f"{cfg.server_torch_threads} thread) and shares the machine's cores with the load "
        f"generator, so every figure is a lower bound of what a dedicated server host gives. "
        f"Micro-batching: max_batch {cfg.max_batch}, max_wait {cfg.max_wait_ms:g} ms; unbatched: "
        f"max_batch 1. Echo = the same stack replying a fixed strategy with no model work. "
        f"Load average before/after: {load_before[0]:.2f} / {payload['loadavg_after'][0]:.2f} "
        f"(other work on the machine lowers every figure). Goals: batching_speedup >= 3 "
        f"({'met' if met['batching_speedup'] else 'NOT met'}), strategy >= echo/2 "
        f"({'met' if met['strategy_over_echo'] else 'NOT met'}), p99 <= 50 ms "
        f"({'met' if met['p99_ms'] else 'NOT met'}). Served run: `{payload['run_dir']}`."
        + profile_note(modes)
    )
    if cfg.write:
        write_result("endpoint_load", payload, head + "\n\n" + table, notes)
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the endpoint benchmark."""
    parser.add_argument("--run", default=None, help="run directory (default: the smoke run)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per repeat")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="load-generator processes")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--server-threads", type=int, default=1, help="server torch threads")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["echo", "strategy", "unbatched"],
        choices=["echo", "strategy", "unbatched"],
    )
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds (0 = off)")
    parser.add_argument("--no-write", action="store_true", help="print only")


def config_from_args(args: argparse.Namespace) -> EndpointConfig:
    """Turn flags into an EndpointConfig."""
    return EndpointConfig(
        run_dir=args.run,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        repeats=args.repeats,
        processes=args.processes,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        server_torch_threads=args.server_threads,
        modes=tuple(args.modes),
        profile_s=args.profile,
        write=not args.no_write,
    )


def run(args: argparse.Namespace) -> int:
    """Run with parsed flags; missed goals are reported, not turned into an exit status."""
    run_benchmark(config_from_args(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.endpoint_load [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.endpoint_load", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
