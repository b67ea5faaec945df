"""Latency-SLO questions answered with open-loop runs: capacity at a p99, and a fleet's peak.

`find_capacity` searches for the highest constant open-loop rate whose p99 latency (from each
call's scheduled send time) stays within the SLO with no failed call: it doubles the rate from
a start until a probe fails (or halves it until one passes), then bisects (geometric mean)
until the bracket is within `tolerance` (`search_capacity`, the search on its own). Each probe
is a fresh run_load of `probe_s` seconds. Above capacity the queue, and so p99, grows with the
probe's length, so the knee it finds is sharp; below it, p99 is the service time plus batching
wait. On a shared machine one stall of another job can fail a single short probe well below
the knee; with `confirm_failures=k` a rate fails only when k more probes at it fail too.

`replay_verdict` takes a run that replayed recorded arrivals (`--arrivals FILE --speedup X`)
and reports whether the endpoint kept its p99 in the fleet's busiest window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.loadgen import LoadConfig, LoadConfigError, LoadResult, run_load
from benchmarks.schedules import MAX_RATE, ScheduleError, read_arrivals
from chord.startcheck import StartupError, check_in_range

__all__ = ["CapacityResult", "Probe", "find_capacity", "replay_verdict", "search_capacity"]


@dataclass(frozen=True)
class Probe:
    """One constant-rate open-loop run of the search."""

    rps: float  # offered
    achieved_rps: float  # replies per second
    p99_ms: float | None  # None: no call completed
    errors: int
    total: int
    send_lag_p99_ms: float | None  # how late the generator itself sent (its own limit)
    passed: bool


@dataclass(frozen=True)
class CapacityResult:
    """The highest passing rate (0 when none passed) and every probe, in the order run."""

    slo_p99_ms: float
    capacity_rps: float
    bracket: tuple[float, float]  # (highest passing, lowest failing; inf if none failed)
    probes: list[Probe] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (an unbounded bracket end is written as null)."""
        out = dataclasses.asdict(self)
        out["bracket"] = [x if math.isfinite(x) else None for x in self.bracket]
        return out


MAX_SLO_MS = 3_600_000.0  # an SLO of at most an hour
MAX_TOLERANCE = 10.0  # the search stops when hi / lo <= 1 + tolerance


def check_search(slo_p99_ms: float, start_rps: float, tolerance: float) -> None:
    """Raise LoadConfigError naming the first of --slo-p99-ms, --search-start-rps and
    --search-tolerance that is not a finite number in its range."""
    try:
        check_in_range(slo_p99_ms, "--slo-p99-ms", 0, MAX_SLO_MS, unit="milliseconds",
                       lo_open=True)
        check_in_range(start_rps, "--search-start-rps", 0, MAX_RATE, unit="calls per second",
                       lo_open=True)
        check_in_range(tolerance, "--search-tolerance", 0, MAX_TOLERANCE,
                       unit="(the search stops at hi/lo <= 1 + this)", lo_open=True)
    except StartupError as exc:
        raise LoadConfigError(str(exc)) from None


def search_capacity(
    passes: Callable[[float], bool],
    start_rps: float,
    tolerance: float,
    max_probes: int,
    max_rps: float = 1e5,
    min_rps: float | None = None,
    confirm_failures: int = 0,
) -> tuple[float, float]:
    """The search of find_capacity over any probe: passes(rate) -> whether that rate holds.

    Doubles from start_rps until a rate fails (halves until one passes, down to min_rps,
    default start_rps / 16), then bisects (geometric mean) until hi / lo <= 1 + tolerance or
    max_probes rates were tried. A failing rate is probed up to confirm_failures more times
    and fails only if every try fails (the extra tries do not count against max_probes).
    Returns (highest passing rate, lowest failing rate): (0, ...) when none passed, (..., inf)
    when none failed.
    """
    floor = min_rps if min_rps is not None else start_rps / 16
    lo, hi = 0.0, math.inf
    tried = 0

    def holds(rate: float) -> bool:
        nonlocal tried
        tried += 1
        return any(passes(rate) for _ in range(1 + confirm_failures))

    rate = start_rps
    while tried < max_probes:
        if math.isinf(hi):  # no failure yet: double
            if holds(rate):
                lo = rate
                if rate * 2 > max_rps:
                    break
                rate *= 2
            else:
                hi = rate
        elif lo == 0.0:  # nothing passed yet: halve
            rate = hi / 2
            if rate < max(floor, 1e-3):
                break
            if holds(rate):
                lo = rate
            else:
                hi = rate
        else:
            if hi / lo <= 1 + tolerance:
                break
            rate = math.sqrt(lo * hi)
            if holds(rate):
                lo = rate
            else:
                hi = rate
    return lo, hi


def find_capacity(
    base: LoadConfig,
    slo_p99_ms: float,
    start_rps: float = 50.0,
    probe_s: float | None = None,
    tolerance: float = 0.1,
    max_probes: int = 12,
    max_rps: float = 1e5,
    on_probe: Callable[[Probe, LoadResult], None] | None = None,
    min_calls: int = 100,
    min_rps: float | None = None,
    confirm_failures: int = 0,
) -> CapacityResult:
    """Highest open-loop rate with p99 <= slo_p99_ms and no errors (see module doc).

    base: target, method, concurrency cap, processes, warmup...; its rate fields are replaced.
    A probe lasts probe_s (default base.duration_s) or long enough for min_calls calls, so its
    p99 is not just its slowest call. Halving stops below min_rps (default start_rps / 16):
    the capacity is then reported as 0 with the bracket's upper end. confirm_failures: more
    probes a failing rate gets before it counts as failed (search_capacity). Raises
    LoadConfigError for a non-positive SLO, start rate or tolerance, max_probes < 1 or
    confirm_failures < 0.
    """
    check_search(slo_p99_ms, start_rps, tolerance)
    if max_probes < 1:
        raise LoadConfigError(f"max_probes is {max_probes!r}; send an integer >= 1")
    if confirm_failures < 0:
        raise LoadConfigError(f"confirm_failures is {confirm_failures!r}; send an integer >= 0")
    duration = probe_s if probe_s is not None else base.duration_s
    probes: list[Probe] = []

    def probe(rate: float) -> bool:
        cfg = dataclasses.replace(
            base, rps=rate, load_schedule="const", arrivals=None,
            duration_s=max(duration, min_calls / rate),
        )
        res = run_load(cfg)
        expected = res.scheduled or 0
        passed = (res.errors == 0 and res.total >= expected and res.p99_ms is not None
                  and res.p99_ms <= slo_p99_ms)
        p = Probe(rate, res.ok_rps, res.p99_ms, res.errors, res.total, res.send_lag_p99_ms,
                  passed)
        probes.append(p)
        if on_probe is not None:
            on_probe(p, res)
        return passed

    lo, hi = search_capacity(probe, start_rps, tolerance, max_probes, max_rps, min_rps,
                             confirm_failures)
    return CapacityResult(slo_p99_ms, lo, (lo, hi), probes)


def replay_verdict(res: LoadResult, slo_p99_ms: float, window_s: float = 60.0) -> dict[str, Any]:
    """Did a replay keep p99 <= slo_p99_ms in the recording's busiest window_s (virtual s)?

    The window is the one with most recorded arrivals; its calls are those scheduled in it
    (virtual time / speedup). Raises LoadConfigError when res did not replay an arrivals file.
    """
    cfg = res.config
    if cfg.arrivals is None or res.samples is None:
        raise LoadConfigError("replay_verdict needs a run with arrivals; pass --arrivals FILE")
    try:
        check_in_range(slo_p99_ms, "--slo-p99-ms", 0, MAX_SLO_MS, unit="milliseconds",
                       lo_open=True)
        arrivals = read_arrivals(cfg.arrivals)
        start, end, n_peak = arrivals.peak_window(window_s)
    except (StartupError, ScheduleError) as exc:
        raise LoadConfigError(str(exc)) from None
    lo, hi = start / cfg.speedup, end / cfg.speedup
    s = res.samples
    # Scheduled offsets are rounded through float arithmetic: widen the window by 1 us.
    inside = (s.offset_s >= lo - 1e-6) & (s.offset_s < hi - 1e-6)
    ok_code = s.codes.index("OK") if "OK" in s.codes else -1
    lat_ms = s.latency_s[inside] * 1e3
    errors = int((s.code[inside] != ok_code).sum())
    p99 = float(np.percentile(lat_ms, 99)) if lat_ms.size else None  # None: no call measured
    return {
        "arrivals": cfg.arrivals,
        "speedup": cfg.speedup,
        "window_s": window_s,
        "peak_start_s": start,
        "peak_end_s": end,
        "peak_arrivals": n_peak,
        "peak_rps_virtual": n_peak / window_s,
        "peak_rps_sent": n_peak / window_s * cfg.speedup,
        "peak_calls_measured": int(lat_ms.size),
        "peak_errors": errors,
        "peak_p99_ms": p99,
        "overall_p99_ms": res.p99_ms,
        "slo_p99_ms": slo_p99_ms,
        "kept": bool(p99 is not None and errors == 0 and p99 <= slo_p99_ms),
    }
