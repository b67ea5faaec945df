"""Open-loop send times: ghz's const/step/line rate schedules, and recorded arrivals replayed.

A schedule is a sorted float64 array of send times in seconds from the start of the measured
window. The load generator sends call i at times[i] whatever happened to earlier calls, and
measures its latency from that scheduled time, so time spent queueing (in the server, in the
network, or in the generator itself) counts (no coordinated omission).

Rate schedules follow ghz's flags (https://ghz.sh/docs/options): `const` sends --rps calls per
second; `step` starts at --load-start and adds --load-step every --load-step-duration until
--load-end (then holds it); `line` changes the rate continuously by --load-step per second from
--load-start to --load-end. --load-max-duration ends the ramp (the rate then holds) early.
Call i goes out when the integral of the rate reaches i, so a const schedule of R calls/s over S
seconds holds exactly floor(R x S) calls.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chord.plain_numbers import NumberError, parse_float
from chord.startcheck import StartupError, check_in_range, exact
from chord.textfile import TextFileError, read_text

__all__ = [
    "ARRIVALS_HEADER",
    "SCHEDULES",
    "Arrivals",
    "RateSchedule",
    "ScheduleError",
    "parse_seconds",
    "read_arrivals",
]

SCHEDULES = ("const", "step", "line")
ARRIVALS_HEADER = ("t_s", "device_id", "reason")
_GRID_S = 1e-3  # resolution of the integrated rate for step and line schedules
MAX_CALLS = 50_000_000
MAX_RATE = 1e6  # calls per second: far above what one generator can send
MAX_SCHEDULE_S = 3600.0  # step durations and ramp lengths: at most an hour
# Latest t_s an arrivals file may hold: a year of virtual time. A replay must also take at most
# MAX_REPLAY_S of real time at the chosen speedup (t_s / speedup), like a measured window.
MAX_ARRIVAL_T_S = 366 * 86_400.0
MAX_REPLAY_S = 3600.0


class ScheduleError(ValueError):
    """A schedule or arrivals file that cannot be sent; the message names the field or line."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)", re.ASCII)
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+", re.ASCII)
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                   "ns": 1e-9}


def parse_seconds(text: str | float) -> float:
    """Seconds from a number, or from a Go-style duration as ghz takes it ("5s", "250ms", "1m",
    "1m30s"): ASCII digits, every number with its unit. Raises ScheduleError naming the text
    otherwise (a bare "5", "1_000s", "١s")."""
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    if not _DURATION.fullmatch(s):
        number = re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s, re.ASCII)
        if number:
            raise ScheduleError(f"duration {text!r} lacks a unit; send e.g. {s}s or {s}ms")
        raise ScheduleError(f"duration {text!r} is not understood; send e.g. 5s, 250ms or 1m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(s))


@dataclass(frozen=True)
class RateSchedule:
    """An offered rate over time, in calls per second, as ghz's --load-* flags describe it."""

    kind: str = "const"  # const | step | line
    rps: float = 0.0  # const: the rate
    start: float = 0.0  # step, line: the first rate
    step: float = 0.0  # step: added each step_duration_s; line: added per second (may be < 0)
    end: float = 0.0  # step, line: the rate to stop changing at (0 = no limit)
    step_duration_s: float = 0.0  # step: how long each rate holds
    max_duration_s: float = 0.0  # step, line: the ramp stops changing after this (0 = never)

    def validate(self) -> None:
        """Raise ScheduleError naming the first flag that is out of range, with its range."""
        if self.kind not in SCHEDULES:
            raise ScheduleError(
                f"--load-schedule {self.kind!r} is unknown; send one of {', '.join(SCHEDULES)}"
            )
        rate = "calls per second"
        try:
            check_in_range(self.rps, "--rps", 0, MAX_RATE, unit=rate)
            check_in_range(self.start, "--load-start", 0, MAX_RATE, unit=rate)
            check_in_range(self.step, "--load-step", -MAX_RATE, MAX_RATE, unit=rate)
            check_in_range(self.end, "--load-end", 0, MAX_RATE, unit=f"{rate} (0 = no limit)")
            check_in_range(self.step_duration_s, "--load-step-duration", 0, MAX_SCHEDULE_S,
                           unit="seconds")
            check_in_range(self.max_duration_s, "--load-max-duration", 0, MAX_SCHEDULE_S,
                           unit="seconds (0 = never)")
        except StartupError as exc:
            raise ScheduleError(str(exc)) from None
        if self.kind == "const" and self.rps <= 0:
            raise ScheduleError(f"--rps is {exact(self.rps)}; send a rate > 0 for a const schedule")
        if self.kind != "const":
            if self.start <= 0:
                raise ScheduleError(
                    f"--load-start is {exact(self.start)}; send a rate > 0 for a {self.kind} "
                    "schedule"
                )
            if self.step == 0:
                raise ScheduleError(
                    f"--load-step is 0; send a non-zero rate change for a {self.kind} schedule"
                )
            if self.end > 0 and (self.end - self.start) * self.step < 0:
                way = "rises" if self.step > 0 else "falls"
                raise ScheduleError(
                    f"--load-end {exact(self.end)} lies {'below' if self.step > 0 else 'above'} "
                    f"--load-start {exact(self.start)}, but --load-step {exact(self.step)} "
                    f"{way}: the rate would sit at --load-end from the start; send an end the "
                    "step moves towards, or 0 for none"
                )
        if self.kind == "step" and self.step_duration_s <= 0:
            raise ScheduleError(
                f"--load-step-duration is {exact(self.step_duration_s)}; send a duration > 0 "
                "(e.g. 5s) for a step schedule"
            )

    def rate_at(self, t: np.ndarray) -> np.ndarray:
        """Calls per second at times t (seconds from the start), never below 0."""
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "const":
            return np.full(t.shape, self.rps)
        ramp_t = np.minimum(t, self.max_duration_s) if self.max_duration_s > 0 else t
        if self.kind == "step":
            rate = self.start + self.step * np.floor(ramp_t / self.step_duration_s)
        else:
            rate = self.start + self.step * ramp_t
        if self.end > 0:
            rate = np.minimum(rate, self.end) if self.step > 0 else np.maximum(rate, self.end)
        return np.maximum(rate, 0.0)

    def send_times(self, duration_s: float) -> np.ndarray:
        """Send times in [0, duration_s): call i when the integrated rate reaches i."""
        self.validate()
        if self.kind == "const":
            n = math.floor(self.rps * duration_s + 1e-9)
            if n > MAX_CALLS:
                raise ScheduleError(f"{n} calls exceed the cap of {MAX_CALLS}; lower rps")
            return np.arange(n, dtype=np.float64) / self.rps
        grid = np.arange(0.0, duration_s + _GRID_S, _GRID_S)
        rate = self.rate_at(grid[:-1])
        calls = np.concatenate([[0.0], np.cumsum(rate * np.diff(grid))])
        n = math.floor(calls[-1] + 1e-9)
        if n > MAX_CALLS:
            raise ScheduleError(f"{n} calls exceed the cap of {MAX_CALLS}; lower the rates")
        times = np.interp(np.arange(n, dtype=np.float64), calls, grid)
        return times[times < duration_s]

    def describe(self) -> str:
        """One line in ghz's terms."""
        if self.kind == "const":
            return f"const {self.rps:g} rps"
        unit = f"every {self.step_duration_s:g} s" if self.kind == "step" else "per second"
        end = f" up to {self.end:g}" if self.end else ""
        return f"{self.kind} from {self.start:g} rps, {self.step:+g} rps {unit}{end}"


@dataclass(frozen=True)
class Arrivals:
    """Recorded request times (virtual seconds since the simulation start), sorted."""

    t_s: np.ndarray  # float64 [n], non-decreasing
    device_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    path: str

    def send_times(self, speedup: float) -> np.ndarray:
        """Real send times: t_s / speedup after the replay starts (the simulation's start)."""
        if not math.isfinite(speedup) or speedup <= 0:
            raise ScheduleError(
                f"--speedup is {exact(speedup)}; send a finite number of virtual seconds per "
                "real second > 0"
            )
        times = self.t_s / speedup
        if times.size and times[-1] > MAX_REPLAY_S:
            need = float(self.t_s[-1]) / MAX_REPLAY_S
            raise ScheduleError(
                f"{self.path}: the last arrival (t_s {exact(float(self.t_s[-1]))}) is "
                f"{float(times[-1]):.0f} s of real time at --speedup {exact(speedup)}; a replay "
                f"may take at most {MAX_REPLAY_S:.0f} s: send --speedup >= {need:.6g}"
            )
        return times

    def peak_window(self, window_s: float) -> tuple[float, float, int]:
        """(start, end, arrivals) of the window_s virtual-second window with most arrivals.

        Raises ScheduleError unless window_s is a finite number of seconds in (0, a year].
        """
        try:
            check_in_range(window_s, "--peak-window", 0, MAX_ARRIVAL_T_S, unit="virtual seconds",
                           lo_open=True)
        except StartupError as exc:
            raise ScheduleError(str(exc)) from None
        if self.t_s.size == 0:
            return 0.0, window_s, 0
        ends = np.searchsorted(self.t_s, self.t_s + window_s, side="left")
        counts = ends - np.arange(self.t_s.size)
        best = int(np.argmax(counts))
        start = float(self.t_s[best])
        return start, start + window_s, int(counts[best])


def read_arrivals(path: str | Path) -> Arrivals:
    """Read a CSV with header `t_s,device_id,reason`, rows sorted by t_s (fleettime writes it).

    Raises ScheduleError naming the file and line of a missing header, a row of other than 3
    fields, a t_s that is not a plain ASCII decimal (chord.plain_numbers) in
    [0, MAX_ARRIVAL_T_S], an empty device_id, or a row out of order.
    """
    p = Path(path)
    try:
        text = read_text(p)  # BOMs dropped; a byte that is not UTF-8 named by line and column
    except TextFileError as exc:
        raise ScheduleError(str(exc)) from None
    # Blank and whitespace-only lines (a trailing one from an editor or `echo`) are skipped,
    # as the interaction readers skip them; line numbers stay those of the file.
    numbered = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    rows = ((n, row) for (n, _), row in zip(numbered, csv.reader(ln for _, ln in numbered),
                                            strict=True))
    first = next(rows, None)
    header = first[1] if first is not None else None
    if header is None or tuple(h.strip() for h in header) != ARRIVALS_HEADER:
        where = first[0] if first is not None else 1
        raise ScheduleError(
            f"{p}:{where}: header must be {','.join(ARRIVALS_HEADER)}, got "
            f"{','.join(header or [])[:80]!r}"
        )
    times: list[float] = []
    devices: list[str] = []
    reasons: list[str] = []
    for line, row in rows:
        if len(row) != len(ARRIVALS_HEADER):
            raise ScheduleError(
                f"{p}:{line}: {len(row)} fields; send exactly {len(ARRIVALS_HEADER)} "
                f"({','.join(ARRIVALS_HEADER)})"
            )
        try:
            t = parse_float(row[0], "t_s")
        except NumberError as exc:
            raise ScheduleError(f"{p}:{line}: {exc}") from None
        if not 0 <= t <= MAX_ARRIVAL_T_S:
            raise ScheduleError(
                f"{p}:{line}: t_s {row[0][:40]!r} is not a finite number of virtual seconds in "
                f"[0, {MAX_ARRIVAL_T_S:.0f}] (a year); send the simulation's arrival times"
            )
        if not row[1].strip():
            raise ScheduleError(
                f"{p}:{line}: device_id is empty; send the id of the device that arrived"
            )
        if times and t < times[-1]:
            raise ScheduleError(f"{p}:{line}: t_s {t} is before the previous row's {times[-1]}; "
                                "sort the rows by t_s")
        times.append(t)
        devices.append(row[1])
        reasons.append(row[2])
    if not times:
        raise ScheduleError(
            f"{p}: no arrivals after the header; send a file with at least one row "
            "t_s,device_id,reason (`chord simulate` writes one)"
        )
    if len(times) > MAX_CALLS:
        raise ScheduleError(f"{p}: {len(times)} arrivals exceed the cap of {MAX_CALLS}")
    return Arrivals(np.asarray(times, dtype=np.float64), tuple(devices), tuple(reasons), str(p))
