"""What every benchmark shares: where results go, the machine note, timing statistics, children.

Four parts, one home each:

- Results: `ResultStore` writes NAME.json (payload + `machine_info()`) and replaces NAME's
  section of a Markdown file. The committed store is benchmarks/results/ + benchmarks/RESULTS.md;
  `--results-dir DIR` (see `add_output_arguments`) or the environment variable
  `CHORD_BENCH_RESULTS_DIR` sends both to DIR instead (DIR/NAME.json, DIR/RESULTS.md), so a smoke
  run never overwrites committed figures.
- Timing: `Stats` (mean, median, p90, p99 of one run's samples), `time_calls` and
  `time_interleaved` (per-call wall times), `Stopwatch` (elapsed time, progress lines).
- Child processes: `ChildProcess` starts a command with a log file, waits for the line the child
  prints with `announce_ready`, and always stops it (stdin closed, SIGTERM, then SIGKILL of its
  process group). `python_module` and `repo_env` build the command and environment.
- Measuring a process tree: `ProcessTreeSampler` (psutil) keeps the peak summed RSS and PSS, the
  process count, and CPU seconds per process role, on a background thread.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import psutil

from chord.jsonfile import dumps
from chord.startcheck import StartupError, check_out_dir

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"  # committed JSON, plots and profiles
RESULTS_MD = BENCH_DIR / "RESULTS.md"  # committed Markdown: one section per benchmark
RESULTS_DIR_ENV = "CHORD_BENCH_RESULTS_DIR"  # set: every store defaults to this folder


# --------------------------------------------------------------------------------------------
# Results


def machine_info() -> dict[str, Any]:
    """Where a figure was measured: platform, Python, cores, CPU model, memory, torch, commit.

    Keys: platform, python, cpu_count, date (UTC, ISO 8601), cpu (model name, when known),
    mem_gib, torch (version), torch_threads (only when torch is already imported: reading it
    must not load torch into a light process), commit (short hash or "unknown").
    """
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    cpu = _cpu_model()
    if cpu:
        info["cpu"] = cpu
    info["mem_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["torch"] = importlib.metadata.version("torch")
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    info["commit"] = _commit()
    return info


def _commit() -> str:
    """HEAD's short hash, "+changes" when tracked code differs from it, or "unknown".

    The committed results (benchmarks/results/, RESULTS.md) do not count as changes: a run
    rewrites them, and they are not what was measured.
    """
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=BENCH_DIR, capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "unknown"
        changed = git("diff", "--quiet", "HEAD", "--", ":(top)",
                      ":(top,exclude)benchmarks/results", ":(top,exclude)benchmarks/RESULTS.md")
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+changes" if changed.returncode == 1 else "")


def _cpu_model() -> str:
    """The CPU's model name ("" when the platform does not say)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def load_average() -> str:
    """The 1/5/15-minute load averages as "a b c" (two decimals), "" where there are none."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows of dicts as a Markdown table; floats get four significant digits, None is blank."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: Path | str, data: Any) -> Path:
    """Write data as indented JSON (parents created, trailing newline); non-JSON values as str.

    Strict JSON (chord.jsonfile): a NaN or infinite figure is written as null, never as the
    NaN/Infinity tokens JSON readers reject.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(data, indent=2, default=str) + "\n")
    return out


def read_json(path: Path | str) -> dict[str, Any] | None:
    """A JSON object from a file, or None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ResultStore:
    """Where benchmark results go: NAME.json files in `folder`, sections in `markdown`.

    `ResultStore.committed()` is benchmarks/results/ with benchmarks/RESULTS.md;
    `ResultStore.at(DIR)` is DIR/NAME.json with DIR/RESULTS.md; `ResultStore.default(dir)` picks
    dir, else $CHORD_BENCH_RESULTS_DIR, else the committed store.
    """

    folder: Path
    markdown: Path

    @classmethod
    def committed(cls) -> ResultStore:
        """The store in the repository (benchmarks/results, benchmarks/RESULTS.md)."""
        return cls(RESULTS_DIR, RESULTS_MD)

    @classmethod
    def at(cls, folder: Path | str) -> ResultStore:
        """A store in its own folder: FOLDER/NAME.json and FOLDER/RESULTS.md."""
        return cls(Path(folder), Path(folder) / "RESULTS.md")

    @classmethod
    def default(cls, results_dir: Path | str | None = None) -> ResultStore:
        """results_dir if given, else $CHORD_BENCH_RESULTS_DIR if set, else the committed store."""
        chosen = results_dir or os.environ.get(RESULTS_DIR_ENV)
        return cls.at(chosen) if chosen else cls.committed()

    def path(self, name: str, suffix: str = ".json") -> Path:
        """FOLDER/NAME+suffix: the result's JSON, or a file beside it (".png", ".txt")."""
        return self.folder / f"{name}{suffix}"

    def read(self, name: str) -> dict[str, Any] | None:
        """The stored NAME.json, or None when there is none or it is not a JSON object."""
        return read_json(self.path(name))

    def write(self, name: str, payload: Mapping[str, Any], table_md: str, notes: str = "") -> Path:
        """Write NAME.json and replace (or append) NAME's section of the Markdown; return the JSON.

        The JSON is {"benchmark": name, "machine": machine_info(), **payload} (a "machine" in
        the payload wins: figures re-rendered keep the machine that measured them). The section
        sits between `<!-- NAME:start -->` and `<!-- NAME:end -->`; its first line names the
        machine that measured the figures (the payload's, when it carries one).
        """
        machine = dict(payload.get("machine") or machine_info())
        out = write_json(self.path(name), {"benchmark": name, **payload, "machine": machine})
        rel = Path(os.path.relpath(out, self.markdown.parent)).as_posix()
        section = (
            f"<!-- {name}:start -->\n## {name}\n\n"
            f"Measured {machine.get('date', '?')} on {machine.get('cpu', 'unknown CPU')}, "
            f"{machine.get('cpu_count', '?')} cores, {machine.get('mem_gib', '?')} GiB, torch "
            f"{machine.get('torch', '?')}, commit {machine.get('commit', '?')}. JSON: `{rel}`.\n\n"
            f"{table_md}\n"
            + (f"\n{notes.strip()}\n" if notes.strip() else "")
            + f"<!-- {name}:end -->"
        )
        text = self.markdown.read_text() if self.markdown.exists() else "# Benchmark results\n"
        tag = re.escape(name)
        pattern = re.compile(rf"<!-- {tag}:start -->.*?<!-- {tag}:end -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: section, text)
        else:
            text = text.rstrip("\n") + "\n\n" + section
        self.markdown.parent.mkdir(parents=True, exist_ok=True)
        self.markdown.write_text(text.rstrip("\n") + "\n")
        return out


def write_result(
    name: str,
    payload: Mapping[str, Any],
    table_md: str,
    notes: str = "",
    store: ResultStore | None = None,
) -> Path:
    """`store.write(...)` on the given store, else on `ResultStore.default()`; returns the JSON."""
    return (store or ResultStore.default()).write(name, payload, table_md, notes)


def _results_dir(text: str) -> str:
    """argparse type of --results-dir and of its default, $CHORD_BENCH_RESULTS_DIR.

    Checked at start (chord.startcheck.check_out_dir), not after the whole benchmark ran.
    """
    env = os.environ.get(RESULTS_DIR_ENV)
    source = f"${RESULTS_DIR_ENV}" if text == env else ""  # argparse names --results-dir
    try:
        check_out_dir(text, source)
    except StartupError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip()) from None
    return text


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `--results-dir DIR`: write DIR/NAME.json and DIR/RESULTS.md, not the committed ones.

    Its default is $CHORD_BENCH_RESULTS_DIR; either is checked when the arguments are parsed
    (one `error:` line, exit 2). Read it back with `ResultStore.default(args.results_dir)`.
    """
    parser.add_argument(
        "--results-dir",
        type=_results_dir,
        default=os.environ.get(RESULTS_DIR_ENV) or None,
        metavar="DIR",
        help=f"write NAME.json and RESULTS.md here, not in benchmarks/ (or set ${RESULTS_DIR_ENV})",
    )


# --------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class Stats:
    """Summary of one run's samples, in the samples' unit.

    Percentiles interpolate linearly between order statistics (numpy's default method, type 7 of
    Hyndman & Fan 1996); all figures come from the same run's samples.
    """

    n: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float] | np.ndarray) -> Stats:
        """Summarize samples; raises ValueError on an empty sequence."""
        a = np.asarray(samples, dtype=np.float64)
        if a.size == 0:
            raise ValueError("Stats.of needs at least one sample; got none")
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(
            n=int(a.size),
            mean=float(a.mean()),
            median=float(p50),
            p90=float(p90),
            p99=float(p99),
            min=float(a.min()),
            max=float(a.max()),
        )


class Stopwatch:
    """Wall seconds (time.perf_counter) since it was made or its `with` block was entered.

    Inside a `with` block `seconds` runs on; after the block it stays at the block's length.
    `log(msg)` prints msg stamped with the seconds so far ("[     12s] msg"), for progress lines.
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        """Start now; `log` writes to out (default: sys.stdout at the time of the call)."""
        self.out = out
        self._start = time.perf_counter()
        self._end: float | None = None

    def __enter__(self) -> Stopwatch:
        """Restart timing."""
        self._start, self._end = time.perf_counter(), None
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop timing."""
        self._end = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds from the start to the block's exit, or to now while running."""
        end = time.perf_counter() if self._end is None else self._end
        return end - self._start

    def log(self, msg: str) -> None:
        """Print msg after the elapsed seconds, flushed."""
        print(f"[{self.seconds:7.0f}s] {msg}", file=self.out or sys.stdout, flush=True)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of fn after `warmup` untimed ones (perf_counter_ns)."""
    if repeats < 1:
        raise ValueError(f"time_calls needs repeats >= 1; got {repeats}")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e9)
    return out


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1, seed: int = 0
) -> dict[str, list[float]]:
    """Wall seconds per call of each function, timed in shuffled rounds.

    Each round visits every function once in a fresh random order, so background load and the
    cache damage one path does to the next fall evenly on all of them; each timed call follows an
    untimed call of the same function (warm latency). Returns `repeats` samples per name.
    """
    if repeats < 1:
        raise ValueError(f"time_interleaved needs repeats >= 1; got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            fn = fns[names[i]]
            fn()
            t0 = time.perf_counter_ns()
            fn()
            times[names[i]].append((time.perf_counter_ns() - t0) / 1e9)
    return times


# --------------------------------------------------------------------------------------------
# Child processes


class BenchProcessError(RuntimeError):
    """A benchmark's child process did not get ready, or failed; the message ends in its log."""


def runtime_result_name(name: str, runtime: str) -> str:
    """The result a fleet benchmark writes for a device runtime: `name` for the default (ort),
    else name_<runtime>, so each runtime keeps its own section in RESULTS.md."""
    return name if runtime in ("", "ort") else f"{name}_{runtime}"


def python_module(module: str, *args: str) -> list[str]:
    """The command line `python -P -m module args...` with this interpreter (-P: the current
    directory is not put first on the import path, so a folder holding another copy of the
    package cannot shadow the one this process runs)."""
    return [sys.executable, "-P", "-m", module, *args]


def repo_env(**extra: str) -> dict[str, str]:
    """This process's environment with PYTHONPATH = the repository root, plus `extra`."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra}


def announce_ready(key: str, value: object) -> None:
    """Child side of `ChildProcess(ready=key)`: print "KEY VALUE" on stdout, flushed."""
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"readiness key must be one word; got {key!r}")
    print(f"{key} {value}", flush=True)


class ChildProcess:
    """A child process with a log file, an optional readiness line and guaranteed cleanup.

    stdout and stderr go to the log (a temporary file unless `log` is given). With `ready=KEY`,
    `start()` blocks until the child prints "KEY VALUE" (see `announce_ready`) and keeps VALUE
    in `ready_value`; it raises BenchProcessError, with the log's tail, when the child exits or
    `start_timeout_s` passes first. `stop()` closes the child's stdin, waits `stop_timeout_s`,
    sends SIGTERM, waits again, then kills its whole process group (the child runs in a session
    of its own, so what it started goes too). A context manager: start on entry, stop on exit.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        ready: str | None = None,
        start_timeout_s: float = 300.0,
        stop_timeout_s: float = 15.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | str = REPO_ROOT,
        log: Path | str | None = None,
    ) -> None:
        """cmd: argv; env: the full environment (default `repo_env()`); log: where output goes."""
        self.cmd = list(cmd)
        self.ready = ready
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = dict(env) if env is not None else repo_env()
        self.cwd = Path(cwd)
        self._own_log = log is None
        self.log_path = Path(log) if log is not None else None
        self.ready_value = ""
        self.proc: subprocess.Popen[str] | None = None
        self.returncode: int | None = None
        self._tail = ""
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """Process id of the running child; BenchProcessError before start()."""
        if self.proc is None:
            raise BenchProcessError(f"{self._name()} is not running; call start() first")
        return self.proc.pid

    def _name(self) -> str:
        return " ".join(self.cmd[1:4]) if len(self.cmd) > 1 else " ".join(self.cmd)

    def start(self) -> ChildProcess:
        """Spawn the child; with `ready`, block until it announces itself. Returns self."""
        if self.proc is not None:
            raise BenchProcessError(f"{self._name()} already started")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="chord-bench-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.returncode, self.ready_value = None, ""
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if self.ready else log,
                stderr=log,
                text=True,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise BenchProcessError(f"cannot start {self.cmd[0]}: {exc}") from exc
        if not self.ready:
            log.close()
            return self
        lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(
            target=_copy_lines, args=(self.proc.stdout, log, lines), daemon=True
        )
        self._reader.start()
        try:
            self._await_ready(lines)
        except BaseException:  # Ctrl-C or a timeout while waiting: no child is left behind
            self.stop()
            raise
        return self

    def _await_ready(self, lines: queue.Queue[str]) -> None:
        """Read announced lines until "READY VALUE"; stop and raise on exit or timeout."""
        assert self.proc is not None
        prefix = f"{self.ready} "
        deadline = time.monotonic() + self.start_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and lines.empty():
                    break
                continue
            if line.startswith(prefix):
                self.ready_value = line[len(prefix) :].strip()
                return
        what = (
            f"exited with {self.proc.returncode}"
            if self.proc.poll() is not None
            else f"did not print '{self.ready} ...' within {self.start_timeout_s:g} s"
        )
        self.stop()
        raise BenchProcessError(f"{self._name()} {what}; log tail:\n{self.log_tail()}")

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the child to exit: its exit status, or None (child stopped) on timeout."""
        if self.proc is None:
            return self.returncode
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            return None
        self.stop()
        return rc

    def stop(self) -> None:
        """Stop the child gracefully, then by force; idempotent. Keeps `returncode`."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for sig in (None, signal.SIGTERM):
            if proc.poll() is not None:
                break
            if sig is not None:
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child and anything left in its session
        proc.wait(timeout=self.stop_timeout_s)
        self.returncode = proc.returncode
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None and not stream.closed:
                stream.close()
        self._tail = self.log_tail()
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def log_tail(self, chars: int = 4000) -> str:
        """The last `chars` characters of the child's output (kept after a temporary log goes)."""
        if self.log_path is not None and self.log_path.exists():
            with contextlib.suppress(OSError):
                return self.log_path.read_text(errors="replace")[-chars:]
        return self._tail[-chars:]

    def __enter__(self) -> ChildProcess:
        """Start on entry."""
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop on exit, whatever happened inside."""
        self.stop()


def _copy_lines(src: IO[str] | None, log: IO[str], lines: queue.Queue[str]) -> None:
    """Reader thread: copy the child's stdout into its log and hand each line to the waiter."""
    if src is None:
        return
    with log:
        for line in src:
            log.write(line)
            log.flush()
            lines.put(line)


# --------------------------------------------------------------------------------------------
# Measuring a process tree


def _root_role(pid: int, root: int) -> str:
    """Default process role: "root" for the sampled process, "child" for its descendants."""
    return "root" if pid == root else "child"


class ProcessTreeSampler:
    """Samples a process and all its descendants on a thread; keeps peaks and CPU per role.

    Every `period_s`: the summed RSS (psutil memory_info, cheap), every `pss_every`-th sample the
    summed PSS (memory_full_info: smaps_rollup on Linux, walks page tables, costly), the process
    count, and each process's user + system CPU seconds under `role(pid, root_pid)`. A process
    whose role is in `sticky` keeps it (a Ray worker stays a device actor); one that has exited
    keeps its last CPU figure. `cpu_series` holds (time.time(), CPU seconds of the whole tree,
    CPU seconds of the root's main thread) per sample, for `cpu_over` a measured window.
    A context manager: sampling runs inside the `with` block. Figures are KiB and seconds.
    """

    def __init__(
        self,
        pid: int,
        period_s: float,
        pss_every: int = 10,
        role: Callable[[int, int], str] = _root_role,
        sticky: frozenset[str] = frozenset(),
    ) -> None:
        """pid: root of the tree; period_s: seconds between samples."""
        self.pid = pid
        self.period_s = period_s
        self.pss_every = max(1, pss_every)
        self.role = role
        self.sticky = sticky
        self.samples = 0
        self.sampler_cpu_s = 0.0  # CPU the sampling thread itself used (it competes with the run)
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_procs = 0
        self.cpu_s: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds last seen)
        self.cpu_series: list[tuple[float, float, float]] = []
        self._procs: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mem-sampler", daemon=True)

    def _tree(self) -> list[psutil.Process]:
        """The root and its live descendants (psutil objects reused across samples)."""
        try:
            root = self._procs.setdefault(self.pid, psutil.Process(self.pid))
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        return [self._procs.setdefault(p.pid, p) for p in found]

    def sample(self) -> None:
        """Take one sample now (the thread calls this every period)."""
        t0 = time.thread_time()
        procs = self._tree()
        rss = pss = 0
        want_pss = self.samples % self.pss_every == 0
        main_cpu = float("nan")
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                if p.pid == self.pid:
                    main_cpu = _main_thread_cpu(p)
                if want_pss:
                    pss += p.memory_full_info().pss
            except psutil.Error:
                continue
            old_role, old_cpu = self.cpu_s.get(p.pid, ("", 0.0))
            role = old_role if old_role in self.sticky else self.role(p.pid, self.pid)
            role = old_role if role == "gone" else role
            self.cpu_s[p.pid] = (role, max(times.user + times.system, old_cpu))
        self.peak_rss_kb = max(self.peak_rss_kb, rss // 1024)
        if want_pss:
            self.peak_pss_kb = max(self.peak_pss_kb, pss // 1024)
        self.peak_procs = max(self.peak_procs, len(procs))
        tree_cpu = sum(c for _, c in self.cpu_s.values())
        self.cpu_series.append((time.time(), tree_cpu, main_cpu))
        self.samples += 1
        self.sampler_cpu_s += time.thread_time() - t0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def __enter__(self) -> ProcessTreeSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=10)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per role, largest first, as last sampled (up to a period missed each)."""
        out: dict[str, float] = {}
        for role, cpu in self.cpu_s.values():
            out[role] = out.get(role, 0.0) + cpu
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def cpu_over(self, window: tuple[float, float], main_thread: bool = False) -> float:
        """CPU seconds the tree (or, with main_thread, the root's main thread) used inside
        window, (start, end) in time.time() seconds, interpolated between samples; NaN with
        fewer than two samples."""
        if len(self.cpu_series) < 2:
            return float("nan")
        t, tree, main = zip(*self.cpu_series, strict=True)
        cpu = main if main_thread else tree
        return float(np.interp(window[1], t, cpu) - np.interp(window[0], t, cpu))


def _main_thread_cpu(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process's main thread (thread id = pid); NaN if unknown."""
    for th in proc.threads():
        if th.id == proc.pid:
            return float(th.user_time + th.system_time)
    return float("nan")
