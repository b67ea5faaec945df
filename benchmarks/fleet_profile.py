"""Summarize a py-spy `--format raw` profile per process: top frames by own and total samples."""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from chord.plain_numbers import NumberError, parse_int
from chord.startcheck import path_arg

_PROC = re.compile(r'^process (\d+):"(.*)"$')
_THREAD = re.compile(r'^thread \((0x[0-9A-Fa-f]+)\)$|^thread \((\d+)\): "(.*)"$|^thread \((.*)\)$')


def process_label(cmdline: str) -> str:
    """A short name for a process from its command line (py-spy's own child shows as "")."""
    if "default_worker.py" in cmdline or "ray::" in cmdline:
        return "ray-worker"
    for key in ("log_monitor", "monitor.py", "dashboard", "raylet", "gcs_server", "runtime_env"):
        if key in cmdline:
            return f"ray-{key.split('.')[0]}"
    if not cmdline or "benchmarks.fleet_scale" in cmdline or "simulate" in cmdline:
        return "driver (simulator + embedded server)"
    return cmdline.split(" ")[0].rsplit("/", 1)[-1]


def _short(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py:123)` keeping the package dir."""
    m = re.match(r"^(.*) \((.*):(\d+)\)$", frame)
    if not m:
        return frame
    func, path, line = m.groups()
    parts = path.split("/")
    return f"{func} ({'/'.join(parts[-2:])}:{line})"


def _nolineno(frame: str) -> str:
    """A frame without its line number, so one function's samples add up."""
    return re.sub(r":\d+\)$", ")", frame)


def parse(path: Path, label: str = "process 0") -> dict[str, list[tuple[list[str], int]]]:
    """Stacks per process key `label pid` (innermost process frame wins), each with its count.

    A profile of one process (`py-spy record --pid`) names no process; its key is `label`."""
    out: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, cell = line.rpartition(" ")
        try:  # a stack line ends in its sample count; any other line is not a stack
            count = parse_int(cell, "count")
        except NumberError:
            continue
        if not stack or count < 0:
            continue
        frames = stack.split(";")
        key, start = label, 0
        for i, f in enumerate(frames):
            m = _PROC.match(f)
            if m:
                key, start = f"{process_label(m.group(2))} {m.group(1)}", i + 1
        rest = frames[start:]
        thread = ""
        if rest and rest[0].startswith("thread ("):
            thread, rest = rest[0], rest[1:]
        out[key].append(([thread, *[_nolineno(_short(f)) for f in rest]], count))
    return {_relabel(k, v): v for k, v in out.items()}


def _relabel(key: str, stacks: list[tuple[list[str], int]]) -> str:
    """Name a process by its main script when py-spy saw a stale (pre-exec) command line."""
    mains: Counter[str] = Counter()
    for frames, c in stacks:
        body = [f for f in frames[1:] if f.startswith("<module> (")]
        if body:
            mains[body[0]] += c
    if not mains:
        return key
    main = mains.most_common(1)[0][0]
    label, pid = key.rsplit(" ", 1)
    if main.startswith("<module> (benchmarks/fleet_scale.py"):
        threads = {f[0] for f, _ in stacks}
        sampler = any("mem-sampler" in t for t in threads)
        label = "benchmark parent (launcher + memory sampler)" if sampler else label
    elif not main.startswith("<module> (workers/default_worker.py"):
        label = "ray-" + main.split("(", 1)[1].split(")")[0].split("/")[-1]
    return f"{label} {pid}"


# Exclusive buckets: a sample goes to the first bucket whose frame substring is in its stack.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("device: build_runtime, quantize weights (_quantized_weights)", "_quantized_weights ("),
    ("device: build_runtime, ONNX graph + ORT session", "build_runtime ("),
    ("device: score candidates (+ negatives, metrics)", "VirtualDevice._score ("),
    ("device: wait GetStrategy RPC", "Transport.get_strategy ("),
    ("device: wait ReportMetrics RPC", "Transport.report_metrics ("),
    ("device: wait GetModelSpec RPC", "Transport.get_model_spec ("),
    ("device: profile encode (fp32 backbone)", "VirtualDevice._round ("),
    ("device: setup, decode, rest of run", "VirtualDevice.run ("),
    ("actor: Ray task plumbing around run_batch", "DeviceActor.run_batch ("),
    ("server: hypernetwork + level assignment", "StrategyEngine.compute ("),
    ("server: gRPC asyncio loop (serde, batching, reports)", "EmbeddedServer.start"),
    ("server: gRPC polling thread", "_poll_wrapper"),
    ("imports (process start)", "_find_and_load ("),
    ("simulator: write outputs (report, plots)", "write_outputs ("),
    ("simulator: SQLite store", "ReportStore."),
    ("simulator: wait for Ray results (ray.wait/get)", "RayBackend.collect ("),
    ("simulator: start Ray / server / data", "run_simulation ("),
    ("benchmark: memory/CPU sampler", "Sampler._loop ("),  # TreeMemory- or ProcessTree-
    ("ray worker: idle loop / other", "Worker.main_loop ("),
)


def buckets(stacks: list[tuple[list[str], int]]) -> Counter[str]:
    """Samples per exclusive bucket (BUCKETS order decides), the rest as "other"."""
    out: Counter[str] = Counter()
    for frames, c in stacks:
        joined = ";".join(frames)
        name = next((n for n, key in BUCKETS if key in joined), "other")
        out[name] += c
    return out


def summarize(
    path: Path, top: int = 25, rate: float = 0.0, title: str = "", label: str = "process 0"
) -> str:
    """The text summary: per process total samples, top own frames, top total frames, threads.

    label: the process key of a single-process profile (e.g. "ray-worker 123", "driver 45").
    """
    procs = parse(path, label)
    totals = {k: sum(c for _, c in v) for k, v in procs.items()}
    grand = sum(totals.values()) or 1
    lines = [title or f"py-spy profile {path.name}"]
    if rate:
        lines.append(f"sampling rate {rate:g} Hz: 1 sample = {1e3 / rate:g} ms of one thread")
    lines.append("")
    lines.append("samples per process (non-idle Python threads only unless --idle was used):")
    for key, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        secs = f"  ~{n / rate:.1f} s" if rate else ""
        lines.append(f"  {n:7d} {100 * n / grand:5.1f}%  {key}{secs}")
    for key, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        if n < 0.01 * grand:
            continue
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        threads: Counter[str] = Counter()
        for frames, c in procs[key]:
            thread, body = frames[0], frames[1:]
            threads[thread or "(no thread info)"] += c
            if body:
                own[body[-1]] += c
            for f in set(body):
                total[f] += c
        lines.append("")
        lines.append(f"=== {key}: {n} samples ===")
        lines.append("breakdown (exclusive buckets):")
        for b, c in buckets(procs[key]).most_common():
            lines.append(f"  {c:7d} {100 * c / n:5.1f}%  {b}")
        if len(threads) > 1:
            lines.append("threads:")
            for t, c in threads.most_common(8):
                lines.append(f"  {c:7d} {100 * c / n:5.1f}%  {t}")
        lines.append(f"top {top} by own samples:")
        for f, c in own.most_common(top):
            lines.append(f"  {c:7d} {100 * c / n:5.1f}%  {f[:160]}")
        lines.append(f"top {top} by total (inclusive) samples:")
        for f, c in total.most_common(top):
            lines.append(f"  {c:7d} {100 * c / n:5.1f}%  {f[:160]}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.fleet_profile RAW [--rate HZ] [--top N] [--out FILE]`."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet_profile", description=__doc__)
    p.add_argument("raw", type=path_arg)
    p.add_argument("--rate", type=float, default=0.0, help="py-spy sampling rate (Hz)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--title", default="")
    p.add_argument(
        "--label", default="process 0", help="key of a single-process profile (py-spy --pid)"
    )
    p.add_argument("--out", type=path_arg, default=None)
    args = p.parse_args(argv)
    text = summarize(args.raw, args.top, args.rate, args.title, args.label)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
