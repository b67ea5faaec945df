"""The virtual clock: when each device is online and when it asks for a strategy, over a day.

A device's day is planned before it runs, from seeds only, so a re-run (or a resume) plans the
same times. Online windows come from a FedScale behaviour trace or a seeded diurnal model;
while online the device replays the tail of its user's real history as Poisson-timed
interactions. It asks for a strategy

- ``arrival``: when it first comes online,
- ``drift``: after every K new interactions (K = ``clock.drift_every``),
- ``interval``: when the strategy it holds is ``clock.refresh_interval_s`` old,
- ``model_version``: when the served model version changes (``clock.model_releases_s``), at
  once if online, else as soon as it is back online.

An offline device asks for nothing. The plan is a tuple of requests ``(t_s, trigger, first,
stop)``: the strategy fetched at virtual second ``t_s`` (profile of ``sequence[:first]``)
scores the replayed interactions at positions ``first .. stop-1``.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulator.config import ClockConfig
from simulator.traces import BehaviourTrace

DAY_S = 86_400.0
TRIGGERS = ("arrival", "drift", "interval", "model_version")

Request = tuple[float, str, int, int]  # (t_s, trigger, first position, stop position)


@dataclass(frozen=True)
class DevicePlan:
    """One device's virtual day: online windows (s) and its strategy requests."""

    windows: tuple[tuple[float, float], ...]
    requests: tuple[Request, ...]
    interactions: int  # replayed interactions (history items scored over the day)


def device_rng(seed: int, device_id: str, stream: int) -> np.random.Generator:
    """The device's own random stream `stream`, from the fleet seed and its id only."""
    return np.random.default_rng([seed, zlib.crc32(device_id.encode()), stream])


def diurnal_windows(c: ClockConfig, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Online windows in [0, duration_s) from a seeded diurnal session model.

    Session starts are a Poisson process with rate (sessions_per_day / 1 day) x
    (1 + a cos(2 pi (t_h - peak_hour) / 24)), drawn by thinning (Lewis and Shedler, 1979);
    each session lasts an exponential time of mean session_minutes; overlaps merge.
    """
    base = c.sessions_per_day / DAY_S
    top = base * (1.0 + c.diurnal_amplitude)
    out: list[tuple[float, float]] = []
    t = 0.0
    while True:
        t += float(rng.exponential(1.0 / top))
        if t >= c.duration_s:
            break
        hour = (t / 3600.0) % 24.0
        rate = base * (
            1.0 + c.diurnal_amplitude * math.cos(2 * math.pi * (hour - c.peak_hour) / 24)
        )
        if rng.random() * top >= rate:
            continue
        end = min(t + float(rng.exponential(c.session_minutes * 60.0)), c.duration_s)
        if out and out[-1][1] >= t:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((t, end))
    return out


def interaction_times(
    windows: Sequence[tuple[float, float]], per_hour: float, limit: int, rng: np.random.Generator
) -> list[float]:
    """Poisson interaction times (rate per_hour while online), at most `limit` of them."""
    rate = per_hour / 3600.0
    out: list[float] = []
    for lo, hi in windows:
        t = lo
        while len(out) < limit:
            t += float(rng.exponential(1.0 / rate))
            if t >= hi:
                break
            out.append(t)
    return out


def plan_requests(
    c: ClockConfig,
    windows: Sequence[tuple[float, float]],
    times: Sequence[float],
    first_position: int,
) -> list[Request]:
    """Strategy requests from online windows and interaction times (see the module docstring).

    times: sorted interaction times, each inside a window; interaction j is sequence position
    first_position + j. Returns requests in time order with the positions each one scores.
    """
    releases = sorted(c.model_releases_s)
    marks: list[tuple[float, str, int]] = []  # (t_s, trigger, next interaction index)
    j = 0
    held = -1  # releases published when the held strategy was fetched; -1 = none held
    last_t = 0.0
    since = 0
    for lo, hi in windows:
        r = bisect.bisect_right(releases, lo)  # releases published by lo
        if held < 0 or r > held:
            marks.append((lo, "arrival" if held < 0 else "model_version", j))
            held, last_t, since = r, lo, 0
        while True:
            nxt_i = times[j] if j < len(times) and times[j] < hi else math.inf
            nxt_r = releases[r] if r < len(releases) and releases[r] < hi else math.inf
            due = max(last_t + c.refresh_interval_s, lo) if c.refresh_interval_s > 0 else math.inf
            nxt_f = due if due < hi else math.inf
            t = min(nxt_i, nxt_r, nxt_f)
            if t == math.inf:
                break
            if t == nxt_i:  # scored with the held strategy, then maybe drift
                j += 1
                since += 1
                if not (c.drift_every and since >= c.drift_every):
                    continue
                marks.append((t, "drift", j))
            elif t == nxt_r:
                r += 1
                held = r
                marks.append((t, "model_version", j))
            else:
                marks.append((t, "interval", j))
            last_t, since = t, 0
    bounds = [m[2] for m in marks] + [len(times)]
    return [
        (t, trig, first_position + bounds[i], first_position + bounds[i + 1])
        for i, (t, trig, _) in enumerate(marks)
    ]


def plan_device(
    c: ClockConfig,
    seed: int,
    device_id: str,
    history_len: int,
    behaviour: BehaviourTrace | None = None,
) -> DevicePlan:
    """One device's day: windows (trace or diurnal), replayed interactions, requests.

    history_len: the user's timeline length; at most history_len - min_history of its last
    items are replayed, so every request profiles at least min_history real items.
    """
    if behaviour is not None:
        windows = behaviour.windows(0.0, c.duration_s)
    else:
        windows = diurnal_windows(c, device_rng(seed, device_id, 3))
    limit = max(0, history_len - c.min_history)
    times = interaction_times(
        windows, c.interactions_per_hour, limit, device_rng(seed, device_id, 4)
    )
    requests = plan_requests(c, windows, times, history_len - len(times))
    return DevicePlan(tuple(windows), tuple(requests), len(times))


def online_per_minute(windows: Sequence[tuple[float, float]], n_minutes: int) -> np.ndarray:
    """Minutes [n_minutes] in which the device is online at some point (0/1 int32)."""
    out = np.zeros(n_minutes, dtype=np.int32)
    for lo, hi in windows:
        a, b = int(lo // 60), min(n_minutes, math.ceil(hi / 60))
        out[a:b] = 1
    return out


def staleness_share(share: float, max_devices: int, devices: int) -> float:
    """The share of a fleet of `devices` in the staleness sample: `share`, lowered so that the
    sample holds at most `max_devices` devices in expectation (max_devices 0 = no cap)."""
    if max_devices <= 0 or devices <= 0:
        return share
    return min(share, max_devices / devices)


def staleness_probe(seed: int, device_id: str, share: float) -> bool:
    """Whether this device is in the seeded staleness sample (a share of the fleet)."""
    return share > 0 and bool(device_rng(seed, device_id, 5).random() < share)


class OnlineCounter:
    """Devices online per virtual minute, summed over devices as they are planned (flat memory)."""

    def __init__(self, duration_s: float) -> None:
        self.minutes = np.zeros(math.ceil(duration_s / 60.0), dtype=np.int64)
        self.devices = 0
        self.never_online = 0

    def add(self, windows: Sequence[tuple[float, float]]) -> None:
        """Count one device's online windows."""
        self.devices += 1
        if not windows:
            self.never_online += 1
            return
        self.minutes += online_per_minute(windows, len(self.minutes))
