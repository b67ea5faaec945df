"""Endpoint load: capacity at a p99 SLO (open loop) with 1 and 2 server workers, and the
closed-loop echo / micro-batched / unbatched figures, with server CPU per request.

Every server and load generator runs pinned to named cores (os.sched_setaffinity, as taskset
does), and the result says which shared which, with the machine's load around the run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    ProcessTreeSampler,
    ResultStore,
    add_output_arguments,
    markdown_table,
    write_result,
)
from benchmarks.loadgen import MAX_CHANNELS, LoadConfig, LoadResult, format_summary, run_load
from benchmarks.server_process import ServerProcess
from benchmarks.slo import Probe, find_capacity
from chord.plain_numbers import NumberError, parse_int
from chord.startcheck import int_between
from cloud_server.config import ServerConfig

GOALS = {
    "batching_speedup_min": 3.0,
    "strategy_over_echo_min": 0.5,
    "p99_ms_max": 50.0,
    # Issue 14: capacity at the p99 SLO, CPU per request, and what a second worker adds.
    "capacity_strategy_over_echo_min": 0.6,
    "cpu_strategy_over_echo_max": 1.7,
    "workers_2_over_1_min": 1.6,
}


CPU_CLOSED_KEY = "cpu_strategy_over_echo_closed"  # closed-loop CPU ratio, judged like the rest
SCALING_KEY = "workers_2_over_1_strategy"  # the 2-worker goal's figure


class EndpointBenchmarkError(RuntimeError):
    """The endpoint benchmark could not run; the message says what is missing."""


@dataclass(frozen=True)
class EndpointConfig:
    """One endpoint benchmark: which run to serve, and how hard and how long to load it."""

    run_dir: str | None = None  # None = prepare (or reuse) the quick pretrained run
    concurrency: int = 64
    duration_s: float = 8.0
    warmup_s: float = 2.0
    repeats: int = 1
    processes: int = 1  # load-generator processes (the server is one more process)
    max_batch: int = 32  # micro-batching mode; the unbatched mode uses 1
    max_wait_ms: float = 2.0
    server_torch_threads: int = 1
    modes: tuple[str, ...] = ("echo", "strategy", "unbatched")
    profile_s: float = 0.0  # > 0: py-spy the batched server for this long (needs py-spy)
    write: bool = True
    # Capacity at the SLO: open-loop search per (mode, workers); see benchmarks.slo.
    capacity_modes: tuple[str, ...] = ("echo", "strategy")
    capacity_workers: tuple[int, ...] = (1, 2)
    slo_p99_ms: float = 50.0
    probe_s: float = 3.0  # seconds of each constant-rate probe
    max_probes: int = 7
    open_loop_cap: int = 512  # calls in flight at most during a probe
    # TCP connections of the open-loop load generator. SO_REUSEPORT spreads connections, not
    # calls, over a server's workers: one connection puts every call on one worker.
    open_loop_channels: int = 32
    cpu_pairs: int = 3  # alternating strategy / echo probes at one rate (0: skip)
    confirm_failures: int = 1  # more probes a failing rate gets in the capacity search
    results_dir: str | None = None  # None: $CHORD_BENCH_RESULTS_DIR, else benchmarks/


def default_run_dir() -> Path:
    """Prepare (or reuse the cached) quick pretrained run (RunConfig defaults, quick preset).

    The run every earlier endpoint result served; `chord simulate` now embeds the quick random
    run by default, whose hidden-256 layout has more channels per strategy (pass --run for it).
    """
    from chord.hyper.runs import RunConfig, prepare_run

    return Path(prepare_run(RunConfig.preset("quick", mode="pretrained")))


def _server_config(mode: str, cfg: EndpointConfig, run_dir: Path | None) -> ServerConfig:
    """The server config of one mode; concurrency limit above the offered load."""
    limit = max(256, 4 * cfg.concurrency)
    batch = 1 if mode == "unbatched" else cfg.max_batch  # echo batches as the strategy does
    return ServerConfig(
        run_dir=run_dir,
        echo=mode == "echo",
        max_batch=batch,
        max_wait_ms=cfg.max_wait_ms,
        max_concurrency=limit,
    )


# Where a server's time goes: (label, substring of a py-spy frame); shares of all samples.
_PROFILE_PARTS = (
    ("engine thread: StrategyEngine.compute", "StrategyEngine.compute ("),
    ("  hypernetwork forward", "HyperNetwork.forward ("),
    ("  assign_levels_batch", "assign_levels_batch ("),
    ("  reply building (_results_batch)", "_results_batch ("),
    ("    encode_levels_batch (deflate)", "encode_levels_batch ("),
    ("event loop: BaseEventLoop._run_once", "BaseEventLoop._run_once ("),
    ("  epoll wait (idle)", "EpollSelector.select ("),
    ("  servicer GetStrategy", "StrategyServicer.GetStrategy ("),
    ("  batcher loop", "MicroBatcher._loop ("),
    ("  serde (protos/serde.py)", "protos/serde.py"),
    ("  prometheus metrics", "prometheus_client/"),
    ("  dedup (RequestCache.run)", "RequestCache.run ("),
    ("  validation", "cloud_server/validation.py"),
)
_LINE = re.compile(r":\d+\)$")


def _function(frame: str) -> str:
    """A py-spy frame without its line number: `func (file)`."""
    return _LINE.sub(")", frame)


def summarize_profile(raw: str) -> dict[str, Any]:
    """Shares of py-spy raw (collapsed) samples: labelled parts, and per function own/total."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    n = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        try:  # a stack line ends in its sample count; any other line is not a stack
            c = parse_int(count, "count")
        except NumberError:
            continue
        if c < 0 or not stack:
            continue
        n += c
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
        for label, key in _PROFILE_PARTS:
            if key in stack:
                parts[label] += c
        threads["main thread (event loop)" if "runpy" in frames[0] else "other threads"] += c
    share = 1.0 / max(n, 1)
    return {
        "samples": n,
        "parts": {label: round(parts[label] * share, 3) for label, _ in _PROFILE_PARTS},
        "threads": {k: round(v * share, 3) for k, v in threads.most_common()},
        "top_self": [(f, round(c * share, 3)) for f, c in own.most_common(30)],
        "top_total": [(f, round(c * share, 3)) for f, c in total.most_common(40)],
    }


def format_profile(summary: dict[str, Any], header: str) -> str:
    """The profile summary as plain-text tables (what endpoint_profile_MODE.txt holds)."""
    lines = [header, "", f"samples: {summary['samples']}", "", "share  part"]
    lines += [f"{100 * v:5.1f}% {k}" for k, v in summary["parts"].items()]
    lines += ["", "share  thread (py-spy sees Python frames only; gRPC C threads are not here)"]
    lines += [f"{100 * v:5.1f}% {k}" for k, v in summary["threads"].items()]
    lines += ["", "own    function (top by own samples)"]
    lines += [f"{100 * v:5.1f}% {k}" for k, v in summary["top_self"]]
    lines += ["", "total  function (top by samples in its subtree)"]
    lines += [f"{100 * v:5.1f}% {k}" for k, v in summary["top_total"]]
    return "\n".join(lines) + "\n"


def _profile(pid: int, seconds: float, out: Path, mode: str) -> dict[str, Any]:
    """py-spy the server child (raw stacks to a temp file); write a summary table to out."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return {"error": "py-spy is not installed; `pip install py-spy` into the venv"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds))]
        cmd += ["--format", "raw", "--output", str(raw), "--rate", "200", "--nonblocking"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not raw.exists():
            return {"error": f"py-spy failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"}
        summary = summarize_profile(raw.read_text())
    header = (
        f"py-spy record --format raw --rate 200 --nonblocking (no --idle) of the {mode} server, "
        f"{int(seconds)} s under the benchmark's load; shares of all samples. "
        f"loadavg {os.getloadavg()[0]:.2f}."
    )
    out.write_text(format_profile(summary, header))
    return {"profile_summary": str(out), **{k: summary[k] for k in ("samples", "parts")}}


def profile_note(modes: dict[str, Any]) -> str:
    """One sentence per profiled mode: the share of server samples in the main parts."""
    out = []
    for mode, summary in modes.items():
        shares = summary.get("profile", {}).get("parts", {})
        if not shares:
            continue
        parts = [f"{k.strip()} {100 * v:.0f}%" for k, v in shares.items() if v >= 0.01]
        out.append(f" py-spy of the {mode} server under load: " + ", ".join(parts) + ".")
    return "".join(out)


def limits_note(modes: dict[str, Any], concurrency: int) -> str:
    """What bounds throughput and latency, from the measured CPU figures and Little's law."""
    cores = os.cpu_count() or 1
    out = []
    for mode in ("echo", "strategy"):
        m = modes.get(mode, {})
        if "server_cpu_ms_per_req" not in m:
            continue
        per_req = m["server_cpu_ms_per_req"] + m["loadgen_cpu_ms_per_req"]
        out.append(
            f" {mode}: the server used {m['server_cores']:.2f} cores (its event-loop thread "
            f"{m['server_main_thread_cores']:.2f}), and its threads waited "
            f"{m['server_runqueue_wait_per_cpu_s']:.2f} s for a CPU (run queue, /proc schedstat) "
            f"per CPU second they got; the load generator used "
            f"{m['loadgen_cores']:.2f}; CPU per request {m['server_cpu_ms_per_req']:.2f} ms "
            f"server + {m['loadgen_cpu_ms_per_req']:.2f} ms load generator, so {cores} fully "
            f"used cores would carry at most {1e3 * cores / per_req:.0f} requests/s."
        )
    echo, strat = modes.get("echo", {}), modes.get("strategy", {})
    if "server_cpu_ms_per_req" in echo and "server_cpu_ms_per_req" in strat:
        extra = strat["server_cpu_ms_per_req"] - echo["server_cpu_ms_per_req"]
        out.append(
            f" Model work adds {extra:.2f} ms of server CPU per request to the stack's "
            f"{echo['server_cpu_ms_per_req']:.2f} ms."
        )
    model_ms, batch = strat.get("server_model_ms_mean"), strat.get("server_batch_mean")
    if model_ms and batch and strat.get("rps"):
        busy = strat["rps"] / batch * model_ms / 1e3
        out.append(
            f" The engine is one thread: {model_ms:.0f} ms per batch of {batch:.0f} (wall, in the "
            f"server) keeps it busy {100 * busy:.0f}% of the time and caps this batch size at "
            f"{1e3 * batch / model_ms:.0f} strategies/s, so it is "
            f"{'the' if busy >= 0.7 else 'not the'} bottleneck of strategy/echo."
        )
    if strat.get("rps"):
        floor = 1e3 * concurrency / strat["rps"]
        need = 1e3 * concurrency / 50.0
        echo_part = ""
        if echo.get("rps"):
            echo_part = (
                f"; echo reaches {echo['rps']:.0f}/s with p50 {echo['p50_ms']:.0f} ms and "
                f"p99 {echo['p99_ms']:.0f} ms"
            )
        out.append(
            f" Latency: with {concurrency} calls always in flight, Little's law makes the mean "
            f"latency concurrency / throughput = {floor:.0f} ms at {strat['rps']:.0f} "
            f"strategies/s, so p99 <= 50 ms needs more than {need:.0f} replies/s{echo_part}."
        )
    return "".join(out)


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads) from /proc, in seconds."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runqueue_wait_seconds(pid: int) -> float:
    """Seconds the process's live threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


class _CpuSampler:
    """Samples the server's CPU (process, main thread) and run-queue wait every 0.1 s."""

    def __init__(self, pid: int) -> None:
        """Start sampling pid."""
        self.pid = pid
        # (epoch, process CPU, main-thread CPU, run-queue wait of all threads), seconds
        self.samples: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                now = time.time()
                cpu, main = _cpu_seconds(self.pid), _cpu_seconds(self.pid, self.pid)
                self.samples.append((now, cpu, main, _runqueue_wait_seconds(self.pid)))
            self._stop.wait(0.1)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    def over(self, window: tuple[float, float]) -> tuple[float, float, float]:
        """Seconds of (process CPU, main-thread CPU, run-queue wait) inside window."""
        if len(self.samples) < 2:
            return float("nan"), float("nan"), float("nan")
        t = [x[0] for x in self.samples]
        out = []
        for col in (1, 2, 3):
            v = [x[col] for x in self.samples]
            out.append(float(np.interp(window[1], t, v) - np.interp(window[0], t, v)))
        return out[0], out[1], out[2]


def _cpu_figures(res: LoadResult, sampler: _CpuSampler) -> dict[str, float]:
    """Cores and CPU ms per request of the server (and its main thread) and the load generator."""
    if res.window is None or res.client_cpu_s is None or not res.total:
        return {}
    span = res.window[1] - res.window[0]
    server, main, waited = sampler.over(res.window)
    return {
        "server_cores": server / span,
        "server_main_thread_cores": main / span,
        "server_runqueue_wait_per_cpu_s": waited / server if server > 0 else float("nan"),
        "loadgen_cores": res.client_cpu_s / span,
        "server_cpu_ms_per_req": 1e3 * server / res.total,
        "loadgen_cpu_ms_per_req": 1e3 * res.client_cpu_s / res.total,
    }


def _measure_mode(
    mode: str, cfg: EndpointConfig, run_dir: Path | None
) -> tuple[list[LoadResult], dict[str, Any]]:
    """Start the mode's server in its own process and load it cfg.repeats times."""
    results: list[LoadResult] = []
    extra: dict[str, Any] = {"cpu": []}
    load = LoadConfig(
        target="127.0.0.1:1",
        concurrency=cfg.concurrency,
        duration_s=cfg.duration_s,
        processes=cfg.processes,
        warmup_s=cfg.warmup_s,
        seed=0,
    )
    server_cpus, loadgen_cpus, _ = pinning(1)
    load = replace(load, cpus=loadgen_cpus)
    with ServerProcess(
        _server_config(mode, cfg, run_dir), cfg.server_torch_threads, cpus=server_cpus
    ) as server:
        for rep in range(cfg.repeats):
            sampler = _CpuSampler(server.pid)
            try:
                res = run_load(replace(load, target=server.target, seed=rep))
            finally:
                sampler.stop()
            cpu = _cpu_figures(res, sampler)
            cpu_line = ", ".join(f"{k} {v:.3g}" for k, v in cpu.items())
            print(f"\n== {mode} repeat {rep + 1}/{cfg.repeats}\n{format_summary(res)}", flush=True)
            print(f"  CPU: {cpu_line}; loadavg {os.getloadavg()[0]:.2f}", flush=True)
            results.append(res)
            extra["cpu"].append(cpu)
        if cfg.profile_s > 0:
            # --no-write keeps the committed profile tables as they are: the summary goes to /tmp
            out = (
                ResultStore.default(cfg.results_dir).path(f"endpoint_profile_{mode}", ".txt")
                if cfg.write
                else Path(tempfile.gettempdir()) / f"chord_endpoint_profile_{mode}.txt"
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            holder: dict[str, Any] = {}
            t = threading.Thread(
                target=lambda: holder.update(_profile(server.pid, cfg.profile_s, out, mode))
            )
            t.start()
            time.sleep(0.5)
            run_load(replace(load, target=server.target, duration_s=cfg.profile_s, warmup_s=0))
            t.join()
            extra["profile"] = holder
    cpu_keys = sorted({k for c in extra["cpu"] for k in c})
    extra["cpu"] = {k: statistics.median(c[k] for c in extra["cpu"] if k in c) for k in cpu_keys}
    return results, extra


def pinning(workers: int) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """(server cores, load-generator cores, a sentence saying what shares what).

    The server gets the first `workers` cores this process may use; the load generator the
    rest, or, when none are left, the last core (shared with a server worker).
    """
    cores = sorted(os.sched_getaffinity(0))
    server = tuple(cores[: max(1, min(workers, len(cores)))])
    rest = tuple(c for c in cores if c not in server)
    loadgen = rest if rest else (cores[-1],)
    shared = set(server) & set(loadgen)
    note = (
        f"server ({workers} worker{'s' if workers > 1 else ''}) on cores {list(server)}, load "
        f"generator on {list(loadgen)}"
        + (f": core {sorted(shared)} is shared" if shared else ": no core shared")
    )
    return server, loadgen, note


def open_loop_base(cfg: EndpointConfig, loadgen_cpus: tuple[int, ...]) -> LoadConfig:
    """The load generator's settings of every open-loop probe (target and rate set per probe).

    It holds cfg.open_loop_channels connections and sends call i on connection i mod that, so
    a server of N workers behind SO_REUSEPORT gets its calls spread as its connections are.
    """
    return LoadConfig(
        target="127.0.0.1:1",
        concurrency=cfg.open_loop_cap,
        channels_per_process=cfg.open_loop_channels,
        duration_s=cfg.probe_s,
        warmup_s=0.5,
        timeout_s=5.0,
        cpus=loadgen_cpus,
    )


@contextlib.contextmanager
def _pinned_server(mode: str, workers: int, cfg: EndpointConfig,
                   run_dir: Path | None) -> Iterator[tuple[ServerProcess, ProcessTreeSampler]]:
    """A (mode, workers) server on its pinned cores, with a sampler of its process tree's CPU."""
    with ServerProcess(
        _server_config(mode, cfg, run_dir), cfg.server_torch_threads, workers=workers,
        cpus=pinning(workers)[0],
    ) as server, ProcessTreeSampler(server.pid, 0.1, pss_every=1 << 30) as sampler:
        yield server, sampler


def _server_cpu_s(sampler: ProcessTreeSampler, res: LoadResult) -> float:
    """The server tree's CPU seconds over a run's measured window (nan without one)."""
    return sampler.cpu_over(res.window) if res.window else float("nan")


def _capacity(mode: str, workers: int, cfg: EndpointConfig, run_dir: Path | None,
              start_rps: float) -> dict[str, Any]:
    """The open-loop capacity search against one (mode, workers) server, with server CPU."""
    server_cpus, loadgen_cpus, note = pinning(workers)
    base = open_loop_base(cfg, loadgen_cpus)
    probes: list[dict[str, Any]] = []
    with _pinned_server(mode, workers, cfg, run_dir) as (server, sampler):

        def on_probe(p: Probe, res: LoadResult) -> None:
            cpu = _server_cpu_s(sampler, res)
            span = (res.window[1] - res.window[0]) if res.window else float("nan")
            row = {
                **asdict(p),
                "server_cpu_ms_per_req": 1e3 * cpu / max(res.total, 1),
                "server_cores": cpu / span,
                "loadgen_cores": (res.client_cpu_s or 0.0) / span,
                "workers_seen": res.workers_seen,
            }
            probes.append(row)
            print(
                f"  {mode} x{workers}: {p.rps:8.1f} rps offered, {p.achieved_rps:8.1f} ok/s, "
                f"p99 {p.p99_ms:8.2f} ms, {p.errors} errors, server CPU "
                f"{row['server_cpu_ms_per_req']:.3f} ms/req -> {'pass' if p.passed else 'FAIL'}",
                flush=True,
            )

        cap = find_capacity(
            replace(base, target=server.target), cfg.slo_p99_ms, start_rps=start_rps,
            tolerance=0.15, max_probes=cfg.max_probes, on_probe=on_probe,
            confirm_failures=cfg.confirm_failures,
        )
    best = max((p for p in probes if p["passed"]), key=lambda p: p["rps"], default=None)
    return {
        "workers": workers,
        "capacity_rps": cap.capacity_rps,
        "first_failing_rps": cap.bracket[1] if cap.bracket[1] != float("inf") else None,
        "p99_ms_at_capacity": best["p99_ms"] if best else None,
        "server_cpu_ms_per_req_at_capacity": best["server_cpu_ms_per_req"] if best else None,
        "server_cores_at_capacity": best["server_cores"] if best else None,
        "loadgen_cores_at_capacity": best["loadgen_cores"] if best else None,
        "replies_by_worker_at_capacity": best["workers_seen"] if best else None,
        "server_cpus": ",".join(map(str, server_cpus)),
        "loadgen_cpus": ",".join(map(str, loadgen_cpus)),
        "shared_cpus": sorted(set(server_cpus) & set(loadgen_cpus)),
        "pinning": note,
        "probes": probes,
    }


def _paired_cpu(workers: int, rps: float, cfg: EndpointConfig,
                run_dir: Path | None) -> dict[str, Any]:
    """Server CPU per request of the strategy and the echo server at one open-loop rate.

    Both servers run at once on the same cores (the idle one costs next to nothing), and
    cfg.cpu_pairs rounds alternate a probe of each at `rps` (the strategy's capacity), so
    slow drifts of the machine's load fall on both sides of every pair. Returns each probe's
    figures, each pair's ratio (strategy / echo) and their median, the judged figure.
    """
    base = replace(open_loop_base(cfg, pinning(workers)[1]), rps=rps, load_schedule="const",
                   duration_s=max(cfg.probe_s, 100 / rps))
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {mode: stack.enter_context(_pinned_server(mode, workers, cfg, run_dir))
                   for mode in ("strategy", "echo")}
        for _ in range(cfg.cpu_pairs):
            pair: dict[str, Any] = {}
            for mode, (server, sampler) in servers.items():
                res = run_load(replace(base, target=server.target))
                cpu = _server_cpu_s(sampler, res)
                pair[mode] = {
                    "achieved_rps": res.ok_rps,
                    "p99_ms": res.p99_ms,
                    "errors": res.errors,
                    "server_cpu_ms_per_req": 1e3 * cpu / max(res.total, 1),
                    "workers_seen": res.workers_seen,
                }
            pair["ratio"] = (pair["strategy"]["server_cpu_ms_per_req"]
                             / pair["echo"]["server_cpu_ms_per_req"])
            print(f"  same rate x{workers}: {rps:8.1f} rps offered, server CPU strategy "
                  f"{pair['strategy']['server_cpu_ms_per_req']:.3f} / echo "
                  f"{pair['echo']['server_cpu_ms_per_req']:.3f} ms/req = {pair['ratio']:.3f}",
                  flush=True)
            rounds.append(pair)
    return {
        "rps": rps,
        "pairs": rounds,
        "ratios": [p["ratio"] for p in rounds],
        "median_ratio": statistics.median(p["ratio"] for p in rounds),
    }


def engine_breakdown(run_dir: Path, batches: Sequence[int] = (1, 4, 32),
                     repeats: int = 20) -> list[dict[str, float]]:
    """Process CPU ms per batch of random profiles, one row per batch size in `batches`: the
    engine's whole compute and its parts (hypernetwork forward on the engine's serving snapshot,
    level assignment, reply encoding), one torch thread, this process. compute_ms_per_request
    divides by the batch: a batch has a fixed cost, so small batches cost more per request.
    Each part runs at least `repeats` times and at least 640 requests' worth."""
    import torch

    from chord.codes import encode_levels_batch
    from chord.hyper.frozen import serving_importance
    from chord.levels import assign_levels_batch
    from chord.strategy import StrategyRequest
    from cloud_server.engine import StrategyEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = StrategyEngine.from_run_dir(run_dir)
        run, spec = engine.run, engine.spec
        tier = spec.tiers[0]
        sizes = np.asarray(run.layout.channel_sizes(), dtype=np.int64)
        importance = serving_importance(run.importance_model)  # what the engine calls
        rng = np.random.default_rng(0)
        rows = []
        for batch in batches:
            profiles = rng.standard_normal((batch, spec.profile_dim)).astype(np.float32)
            requests = [
                StrategyRequest(f"d{i}", f"r{i}", spec.version, tier.name,
                                tier.default_budget_bits, profile=profiles[i])
                for i in range(batch)
            ]
            tiers = [run.tiers[tier.name]] * batch
            budgets = [tier.default_budget_bits] * batch

            def forward(profiles: np.ndarray = profiles) -> np.ndarray:
                with torch.inference_mode():
                    return importance(torch.from_numpy(profiles)).numpy()

            imp = forward()
            levels = np.stack([np.asarray(x) for x in assign_levels_batch(
                imp, sizes, tiers, budgets, run.level_cost)])
            parts: dict[str, Callable[[], object]] = {
                "compute": functools.partial(engine.compute, requests),
                "forward": forward,
                "assign": functools.partial(assign_levels_batch, imp, sizes, tiers, budgets,
                                            run.level_cost, compiled=True),
                "encode": functools.partial(encode_levels_batch, levels, spec.version),
            }
            n = max(repeats, 640 // batch)
            row: dict[str, float] = {"batch": float(batch)}
            for name, fn in parts.items():
                fn()
                t0 = time.process_time()
                for _ in range(n):
                    fn()
                row[f"{name}_ms_per_batch"] = 1e3 * (time.process_time() - t0) / n
            row["compute_ms_per_request"] = row["compute_ms_per_batch"] / batch
            rows.append(row)
        return rows
    finally:
        torch.set_num_threads(threads)


def goal_bound(key: str) -> tuple[str, float] | None:
    """How a payload figure is judged: (">=" or "<=", bound from GOALS), or None if it is not."""
    if key == "batching_speedup":
        return ">=", GOALS["batching_speedup_min"]
    if key == "strategy_over_echo":
        return ">=", GOALS["strategy_over_echo_min"]
    if key == "p99_ms":
        return "<=", GOALS["p99_ms_max"]
    if key.startswith("capacity_strategy_over_echo_w"):
        return ">=", GOALS["capacity_strategy_over_echo_min"]
    if key.startswith("cpu_strategy_over_echo_same_rate_w") or key == CPU_CLOSED_KEY:
        return "<=", GOALS["cpu_strategy_over_echo_max"]
    if key == SCALING_KEY:
        return ">=", GOALS["workers_2_over_1_min"]
    return None


def scaling_shared_cores(payload: dict[str, Any]) -> list[int]:
    """The cores the 2-worker strategy server shared with its load generator (recorded by
    _capacity); the scaling goal is judged only where this is empty."""
    return list(payload.get("capacity", {}).get("strategy_w2", {}).get("shared_cpus", []))


def judge_goals(payload: dict[str, Any]) -> dict[str, bool]:
    """Whether each judged figure of the payload meets its goal (goal_bound). Left out rather
    than counted as missed: a figure this run did not measure (None), and the 2-worker scaling
    goal wherever the load generator shared a core with the 2-worker server (the goal applies
    only where it does not)."""
    shared = scaling_shared_cores(payload)
    met = {}
    for key, value in payload.items():
        bound = goal_bound(key)
        if bound is None or value is None or (key == SCALING_KEY and shared):
            continue
        op, limit = bound
        met[key] = value >= limit if op == ">=" else value <= limit
    return met


def goals_note(payload: dict[str, Any], met: dict[str, bool]) -> str:
    """One sentence: every judged figure, its bound and whether this run met it."""
    parts = []
    for key, ok in met.items():
        op, limit = goal_bound(key) or ("", 0.0)
        parts.append(f"{key} {payload[key]:.3g} {op} {limit:g} ({'met' if ok else 'NOT met'})")
    shared = scaling_shared_cores(payload)
    if payload.get(SCALING_KEY) is not None and shared:
        parts.append(
            f"{SCALING_KEY} {payload[SCALING_KEY]:.3g} not judged (the load generator shared "
            f"core {','.join(map(str, shared))} with the 2-worker server; the goal of >= "
            f"{GOALS['workers_2_over_1_min']:g} applies where it does not)"
        )
    return f"Goals, judged on this run: {'; '.join(parts)}. " if parts else ""


def model_room_note(engine: list[dict[str, float]], same_rate: dict[str, Any]) -> str:
    """One sentence: the model work per request the CPU goal leaves room for, against the
    engine's own cost per request.

    Strategy and echo share the whole stack, so strategy CPU per request is echo's plus the
    model's work; the ratio stays <= cpu_strategy_over_echo_max only while that work is at most
    (max - 1) x echo's CPU per request at the same rate (the median over the paired probes).
    The engine's cheapest cost per request (its largest batch) is a floor of that work.
    """
    if not engine or not same_rate:
        return ""
    room = GOALS["cpu_strategy_over_echo_max"] - 1.0
    parts = []
    for key, v in same_rate.items():
        echo = statistics.median(p["echo"]["server_cpu_ms_per_req"] for p in v["pairs"])
        parts.append(f"{key} at {v['rps']:.0f} rps {room * echo:.3f} ms ({room:g} x echo's "
                     f"{echo:.3f})")
    per_batch = ", ".join(f"{r['compute_ms_per_request']:.3f} ms at batch {r['batch']:.0f}"
                          for r in engine)
    return (
        f"Room for model work in the CPU goal: strategy and echo share the whole stack, so the "
        f"ratio stays <= {GOALS['cpu_strategy_over_echo_max']:g} only while the model's work "
        f"per request is at most {'; '.join(parts)} of server CPU; the engine alone spends "
        f"{per_batch} per request (a batch has a fixed cost), so the goal is out of reach "
        f"wherever that room is below the engine's cost at the batches the server forms. "
    )


def starvation_note(by_config: dict[str, Any]) -> str:
    """One sentence: how much of its pinned cores each server got at its capacity probe."""
    parts = []
    for key, c in by_config.items():
        got, pinned = c.get("server_cores_at_capacity"), len(str(c.get("server_cpus")).split(","))
        if got is not None:
            parts.append(f"{key} {got:.2f} of {pinned}")
    if not parts:
        return ""
    return (
        "Server cores used at the capacity probe (CPU clock / wall time, of the cores it was "
        f"pinned to): {', '.join(parts)}; where a server used much less than its cores while "
        "its p99 failed, other jobs held those cores and the figure measures the machine's "
        "load more than the server. "
    )


def worker_spread_note(by_config: dict[str, Any], channels: int) -> str:
    """One sentence: how the calls of each multi-worker server's probes split over its workers.

    SO_REUSEPORT hands each new connection to one worker, so the split follows the
    `channels` connections of the load generator; a probe that reached fewer workers than
    the server runs measured fewer workers, and the sentence names it.
    """
    parts, short = [], []
    for key, c in by_config.items():
        workers = c["workers"]
        if workers < 2:
            continue
        seen = c.get("replies_by_worker_at_capacity") or {}
        if seen:
            total = sum(seen.values())
            split = ", ".join(f"worker {w} {n}" for w, n in sorted(seen.items()))
            parts.append(f"{key} {split} (busiest {max(seen.values()) / total:.0%})")
        missed = [p for p in c.get("probes", []) if len(p.get("workers_seen") or {}) < workers]
        if missed:
            short.append(f"{key} {len(missed)} of {len(c['probes'])}")
    if not parts and not short:
        return ""
    text = (
        f"The open-loop load generator holds {channels} connections, which the kernel spreads "
        f"over a server's workers (SO_REUSEPORT balances connections, not calls); replies by "
        f"worker at the capacity probe: {'; '.join(parts) or 'none'}. "
    )
    if short:
        text += (
            f"Probes that reached fewer workers than the server runs (they measured fewer "
            f"workers): {'; '.join(short)}. "
        )
    return text


def same_rate_text(same_rate: dict[str, Any]) -> str:
    """Each worker count's paired ratios, e.g. 'w1 at 850 rps: 1.52, 1.48, 1.55'."""
    return "; ".join(
        f"{key} at {v['rps']:.0f} rps: " + ", ".join(f"{r:.2f}" for r in v["ratios"])
        for key, v in same_rate.items()
    ) or "not measured"


def _machine_load() -> dict[str, Any]:
    """Load average and the busiest processes right now (what else ran on the machine).

    ps's %CPU is a lifetime average, so a job stopped (SIGSTOP, state T) for the benchmark
    still shows its earlier share: such lines say "(stopped)".
    """
    rows = subprocess.run(
        ["ps", "-eo", "pcpu=,stat=,args=", "--sort=-pcpu"],
        capture_output=True, text=True, check=False,
    ).stdout.splitlines()[:8]
    top = []
    for row in rows:
        pcpu, stat, args = [*row.split(None, 2), "", ""][:3]
        top.append(f"{pcpu} {'(stopped) ' if stat.startswith('T') else ''}{args}"[:90])
    return {"loadavg": os.getloadavg(), "top_cpu": top}


def run_capacity(cfg: EndpointConfig, run_dir: Path | None) -> dict[str, Any]:
    """Capacity at the p99 SLO for every (mode, workers), and the ratios the goals name."""
    out: dict[str, Any] = {}
    for mode in cfg.capacity_modes:
        start = 400.0 if mode == "echo" else 150.0
        for workers in cfg.capacity_workers:
            key = f"{mode}_w{workers}"
            out[key] = _capacity(mode, workers, cfg, run_dir, start)
            start = max(start, out[key]["capacity_rps"])  # more workers: start higher
    ratios: dict[str, Any] = {}
    same_rate: dict[str, Any] = {}
    for workers in cfg.capacity_workers:
        e, g = out.get(f"echo_w{workers}"), out.get(f"strategy_w{workers}")
        if e and g and e["capacity_rps"]:
            ratios[f"capacity_strategy_over_echo_w{workers}"] = (
                g["capacity_rps"] / e["capacity_rps"]
            )
        # The CPU goal compares the two at one rate, the strategy's capacity: server CPU per
        # request falls with the rate for both (fixed costs spread over more calls).
        if e and g and g["capacity_rps"] and cfg.cpu_pairs:
            paired = _paired_cpu(workers, g["capacity_rps"], cfg, run_dir)
            same_rate[f"w{workers}"] = paired
            ratios[f"cpu_strategy_over_echo_same_rate_w{workers}"] = paired["median_ratio"]
        g_cpu = g["server_cpu_ms_per_req_at_capacity"] if g else None
        if e and g_cpu and e["server_cpu_ms_per_req_at_capacity"]:
            ratios[f"cpu_strategy_over_echo_own_capacity_w{workers}"] = (
                g_cpu / e["server_cpu_ms_per_req_at_capacity"]
            )
    for mode in cfg.capacity_modes:
        one, two = out.get(f"{mode}_w1"), out.get(f"{mode}_w2")
        if one and two and one["capacity_rps"]:
            ratios[f"workers_2_over_1_{mode}"] = two["capacity_rps"] / one["capacity_rps"]
    return {"by_config": out, "ratios": ratios, "same_rate": same_rate}


def _median_measured(values: Iterable[float | None]) -> float | None:
    """Median of the measured values (None: a repeat where no call completed); None if none."""
    measured = [v for v in values if v is not None]
    return statistics.median(measured) if measured else None


def _summary(results: list[LoadResult]) -> dict[str, Any]:
    """Medians over repeats, and every repeat's headline figures."""
    return {
        "rps": statistics.median(r.rps for r in results),
        "ok_rps": statistics.median(r.ok_rps for r in results),
        "p50_ms": _median_measured(r.p50_ms for r in results),
        "p90_ms": _median_measured(r.p90_ms for r in results),
        "p99_ms": _median_measured(r.p99_ms for r in results),
        "max_ms": max((r.max_ms for r in results if r.max_ms is not None), default=None),
        "errors": sum(r.errors for r in results),
        "total": sum(r.total for r in results),
        "status_codes": dict(sum((Counter(r.status_codes) for r in results), Counter())),
        "server_batch_mean": (
            statistics.median(r.server_batch_mean for r in results if r.server_batch_mean)
            if any(r.server_batch_mean for r in results)
            else None
        ),
        **{
            key: statistics.median(getattr(r, key) for r in results)
            for key in ("server_model_ms_mean", "server_queue_ms_mean", "server_total_ms_mean")
            if all(getattr(r, key) is not None for r in results)
        },
        "repeats_rps": [r.rps for r in results],
        "repeats_p99_ms": [r.p99_ms for r in results],
    }


def run_benchmark(cfg: EndpointConfig) -> dict[str, Any]:
    """Measure every mode, compute the headline keys, print and write the result."""
    needs_run = any(m != "echo" for m in (*cfg.modes, *cfg.capacity_modes))
    run_dir = Path(cfg.run_dir) if cfg.run_dir else (default_run_dir() if needs_run else None)
    load_before = os.getloadavg()
    machine_before = _machine_load()
    capacity = run_capacity(cfg, run_dir) if cfg.capacity_modes else {
        "by_config": {}, "ratios": {}, "same_rate": {}}
    engine = (engine_breakdown(run_dir, sorted({1, 4, cfg.max_batch}))
              if run_dir is not None else [])
    modes: dict[str, Any] = {}
    for mode in cfg.modes:
        results, extra = _measure_mode(mode, cfg, run_dir)
        modes[mode] = {**_summary(results), **extra.pop("cpu"), **extra}
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
        "machine_before": machine_before,
        "machine_after": _machine_load(),
        "capacity": capacity["by_config"],
        "cpu_same_rate": capacity["same_rate"],
        "engine": engine,
        **capacity["ratios"],
    }
    e_cpu = modes.get("echo", {}).get("server_cpu_ms_per_req")
    s_cpu = modes.get("strategy", {}).get("server_cpu_ms_per_req")
    payload[CPU_CLOSED_KEY] = s_cpu / e_cpu if e_cpu and s_cpu else None
    met = judge_goals(payload)
    payload["goals_met"] = met
    cap_rows = [
        {"config": key, **{k: v for k, v in c.items() if not isinstance(v, list | dict)}}
        for key, c in capacity["by_config"].items()
    ]
    cap_table = markdown_table(
        cap_rows,
        [
            "config",
            "capacity_rps",
            "first_failing_rps",
            "p99_ms_at_capacity",
            "server_cpu_ms_per_req_at_capacity",
            "server_cores_at_capacity",
            "loadgen_cores_at_capacity",
            "server_cpus",
            "loadgen_cpus",
        ],
    )
    ratio_table = markdown_table(
        [payload],
        [k for k in payload if k.startswith(("capacity_strategy", "cpu_strategy", "workers_2"))],
    )
    rows = [
        {"mode": m, **{k: v for k, v in s.items() if not isinstance(v, list | dict)}}
        for m, s in modes.items()
    ]
    table = markdown_table(
        rows,
        [
            "mode",
            "rps",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "errors",
            "server_batch_mean",
            "server_model_ms_mean",
            "server_cores",
            "server_main_thread_cores",
            "loadgen_cores",
            "server_cpu_ms_per_req",
            "loadgen_cpu_ms_per_req",
            "server_runqueue_wait_per_cpu_s",
        ],
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
    engine_table = markdown_table(engine, list(engine[0])) if engine else ""
    print("\n" + "\n\n".join(
        t for t in (cap_table, ratio_table, engine_table, head, table) if t))
    print("goals met:", met)
    pins = "; ".join(
        f"{key}: {c['pinning']}" for key, c in capacity["by_config"].items()
    )
    cap_note = (
        f"Capacity = the highest constant open-loop rate whose p99 (from each call's scheduled "
        f"send time, so queueing counts) stays <= {cfg.slo_p99_ms:g} ms with no failed call: "
        f"benchmarks.slo.find_capacity, probes of {cfg.probe_s:g} s after 0.5 s warmup, "
        f"doubling then bisecting to 15%, at most {cfg.open_loop_cap} calls in flight; a rate "
        f"fails only when {1 + cfg.confirm_failures} probes at it fail (a single short probe "
        f"is failed by one stall of another job on a shared machine). "
        f"Server CPU per request is the server process tree's CPU clock (all workers) over "
        f"the probe at capacity, per reply. The CPU goal compares the two at one rate, since CPU "
        f"per request falls with the rate for both as fixed costs spread over more calls: a "
        f"strategy and an echo server run at once on the same cores, and {cfg.cpu_pairs} "
        f"rounds alternate a probe of each at the strategy's capacity; "
        f"cpu_strategy_over_echo_same_rate is the median of the rounds' ratios "
        f"({same_rate_text(capacity['same_rate'])}). "
        f"cpu_strategy_over_echo_own_capacity divides each at its own capacity (echo's is "
        f"higher) and is reported, not judged. "
        f"Pinned (sched_setaffinity, as taskset): {pins}. "
        f"Closed-loop rows below: server on core {pinning(1)[0]}, load generator on "
        f"{pinning(1)[1]}. Busiest processes before the run: "
        f"{', '.join(machine_before['top_cpu'][:5])}. "
    ) if capacity["by_config"] else ""
    cap_note += starvation_note(capacity["by_config"])
    cap_note += worker_spread_note(capacity["by_config"], cfg.open_loop_channels)
    if engine:
        cap_note += (
            "Engine table: process CPU per batch, one row per batch size, in the benchmark's "
            "own process (one torch thread): the whole StrategyEngine.compute and its parts "
            "(hypernetwork forward, level assignment, reply encoding). "
        )
    cap_note += model_room_note(engine, capacity["same_rate"])
    notes = (
        f"Concurrency {cfg.concurrency}, {cfg.processes} load-generator process(es), "
        f"{cfg.duration_s:g} s measured after {cfg.warmup_s:g} s warmup, medians of "
        f"{cfg.repeats} repeats. The server runs as a separate process (torch "
        f"{cfg.server_torch_threads} thread) and shares the machine's cores with the load "
        f"generator, so every figure is a lower bound of what a dedicated server host gives. "
        f"Micro-batching: max_batch {cfg.max_batch}, max_wait {cfg.max_wait_ms:g} ms; unbatched: "
        f"max_batch 1. Echo = the same stack replying a fixed strategy with no model work. "
        f"Each server and each load-generator process freezes its startup heap out of the "
        f"garbage collector once loaded (chord.heap): before, a full collection over it "
        f"stalled the process 100-250 ms, which failed a 3 s probe's p99 on its own. "
        f"Load average before/after: {load_before[0]:.2f} / {payload['loadavg_after'][0]:.2f} "
        f"(other work on the machine lowers every figure). {goals_note(payload, met)}"
        f"Served run: `{payload['run_dir']}`."
        + limits_note(modes, cfg.concurrency)
        + profile_note(modes)
    )
    if cfg.write:
        tables = "\n\n".join(t for t in (cap_table if cap_rows else "",
                                           ratio_table if cap_rows else "", engine_table, head,
                                           table) if t)
        write_result(
            "endpoint_load", payload, tables, cap_note + notes,
            store=ResultStore.default(cfg.results_dir),
        )
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the endpoint benchmark."""
    parser.add_argument(
        "--run", default=None, help="run directory (default: the quick pretrained run)"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per repeat")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=1)
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
    parser.add_argument(
        "--capacity-modes",
        nargs="*",
        default=["echo", "strategy"],
        choices=["echo", "strategy"],
        help="modes whose capacity at the SLO is searched (none: skip the search)",
    )
    parser.add_argument("--capacity-workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--slo-p99-ms", type=float, default=50.0)
    parser.add_argument("--probe-s", type=float, default=3.0, help="seconds per search probe")
    parser.add_argument("--max-probes", type=int, default=7)
    parser.add_argument(
        "--cpu-pairs", type=int_between(0, 20), default=3,
        help="alternating strategy / echo probes at the strategy's capacity (0: skip)",
    )
    parser.add_argument(
        "--confirm-failures", type=int_between(0, 5), default=1,
        help="capacity search: more probes a failing rate gets before it counts as failed",
    )
    parser.add_argument(
        "--open-loop-channels", type=int_between(1, MAX_CHANNELS), default=32,
        help="gRPC connections of every open-loop probe: SO_REUSEPORT spreads connections, "
        "not calls, over a server's workers (default 32)",
    )
    add_output_arguments(parser)
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
        results_dir=args.results_dir,
        capacity_modes=tuple(args.capacity_modes),
        capacity_workers=tuple(args.capacity_workers),
        slo_p99_ms=args.slo_p99_ms,
        probe_s=args.probe_s,
        max_probes=args.max_probes,
        cpu_pairs=args.cpu_pairs,
        confirm_failures=args.confirm_failures,
        open_loop_channels=args.open_loop_channels,
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
