"""A load result as ghz's JSON report (`ghz -O json`), so tools built on ghz read it unchanged.

Field names, types and units follow ghz's report (runner/reporter.go in bojand/ghz, and
https://ghz.sh/docs/output): durations (`total`, `average`, `fastest`, `slowest`, a
distribution entry's `latency`, a detail's `latency`) are integer nanoseconds; `date` and a
detail's `timestamp` are RFC 3339 strings; a histogram bucket's `mark` is in seconds (float);
`frequency` is a fraction of the successful calls; `latencyDistribution` holds the 10, 25, 50,
75, 90, 95 and 99th percentiles; status names and error strings read as Go's gRPC spells them
("Unavailable", "rpc error: code = Unavailable desc = ..."). As in ghz, `average` covers every
call and `fastest`, `slowest`, the histogram and the percentiles cover the successful ones.

Latencies are this generator's: in open loop they run from each call's scheduled send time.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

from benchmarks.loadgen import LoadResult

__all__ = ["GHZ_FIELDS", "PERCENTAGES", "ghz_report", "go_status"]

PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)
GHZ_FIELDS = (
    "date", "endReason", "options", "count", "total", "average", "fastest", "slowest", "rps",
    "errorDistribution", "statusCodeDistribution", "latencyDistribution", "histogram", "details",
)
_BUCKETS = 10
MAX_DETAILS = 1_000_000


def go_status(name: str) -> str:
    """A gRPC status as Go spells it (codes.Code.String): DEADLINE_EXCEEDED -> DeadlineExceeded."""
    if name == "OK":
        return "OK"
    if name == "CANCELLED":
        return "Canceled"
    return "".join(part.capitalize() for part in name.split("_"))


def _ns(seconds: float) -> int:
    """Whole nanoseconds."""
    return round(seconds * 1e9)


def _rfc3339(epoch: float) -> str:
    """UTC time as RFC 3339 with nanosecond digits, like Go's time.RFC3339Nano."""
    t = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _nearest_rank(sorted_s: np.ndarray, pct: int) -> float:
    """The pct-th percentile by the nearest-rank rule: the ceil(pct/100 * n)-th smallest."""
    rank = max(1, math.ceil(pct / 100 * sorted_s.size))
    return float(sorted_s[rank - 1])


def _histogram(sorted_s: np.ndarray) -> list[dict[str, Any]]:
    """Eleven buckets from fastest to slowest: each counts latencies above the previous mark."""
    fastest, slowest = float(sorted_s[0]), float(sorted_s[-1])
    width = (slowest - fastest) / _BUCKETS
    marks = [fastest + width * i for i in range(_BUCKETS)] + [slowest]
    upto = np.searchsorted(sorted_s, np.asarray(marks), side="right")
    counts = np.diff(np.concatenate([[0], upto]))
    return [
        {"mark": mark, "count": int(c), "frequency": float(c) / sorted_s.size}
        for mark, c in zip(marks, counts, strict=True)
    ]


def _whole(value: float) -> int | float:
    """A rate as ghz writes it (an integer), unless that would change it: 1e-9 stays 1e-9 rather
    than 0, which ghz reads as "no rate limit"."""
    return int(value) if float(value).is_integer() else float(value)


def ghz_report(res: LoadResult, details: bool = False, name: str = "") -> dict[str, Any]:
    """ghz's JSON report of a load result; `details` adds one entry per call (capped at 1e6)."""
    cfg = res.config
    samples = res.samples
    errors: dict[str, int] = {}
    for key, n in res.error_distribution.items():
        code, _, detail = key.partition(": ")
        errors[f"rpc error: code = {go_status(code)} desc = {detail}"] = n
    report: dict[str, Any] = {
        "name": name or f"chord {cfg.method} load",
        "endReason": "normal",
        "date": _rfc3339(res.window[1] if res.window else 0.0),
        "options": {
            "host": cfg.target,
            "call": {
                "strategy": "chord.v1.StrategyService.GetStrategy",
                "spec": "chord.v1.StrategyService.GetModelSpec",
                "health": "grpc.health.v1.Health.Check",
            }[cfg.method],
            "insecure": cfg.tls_ca is None,
            "concurrency": cfg.concurrency,
            "rps": _whole(cfg.rps),  # ghz's options are integers; a fractional rate stays exact
            "load-schedule": cfg.load_schedule,
            "load-start": _whole(cfg.load_start),
            "load-step": _whole(cfg.load_step),
            "load-end": _whole(cfg.load_end),
            "load-step-duration": _ns(cfg.load_step_duration_s),
            "load-max-duration": _ns(cfg.load_max_duration_s),
            "duration": _ns(cfg.duration_s),
            "timeout": _ns(cfg.timeout_s),
            "connections": cfg.channels_per_process * cfg.processes,
        },
        "count": res.total,
        "total": _ns(res.elapsed_s),
        "average": _ns(res.mean_ms / 1e3) if res.mean_ms is not None else 0,  # ghz: 0 if none
        "fastest": 0,
        "slowest": 0,
        "rps": res.rps,
        "errorDistribution": errors,
        "statusCodeDistribution": {go_status(k): v for k, v in res.status_codes.items()},
        "latencyDistribution": [],
        "histogram": [],
        "details": [],
    }
    if samples is None:
        return report
    ok_code = samples.codes.index("OK") if "OK" in samples.codes else -1
    ok_s = np.sort(samples.latency_s[samples.code == ok_code])
    if ok_s.size:
        report["fastest"] = _ns(float(ok_s[0]))
        report["slowest"] = _ns(float(ok_s[-1]))
        report["latencyDistribution"] = [
            {"percentage": p, "latency": _ns(_nearest_rank(ok_s, p))} for p in PERCENTAGES
        ]
        report["histogram"] = _histogram(ok_s)
    if details:
        out = []
        for k in range(min(samples.latency_s.size, MAX_DETAILS)):
            code = samples.codes[int(samples.code[k])]
            msg = int(samples.message[k])
            error = ""
            if code != "OK":
                detail = samples.messages[msg].partition(": ")[2] if msg >= 0 else ""
                error = f"rpc error: code = {go_status(code)} desc = {detail}"
            out.append(
                {
                    "timestamp": _rfc3339(samples.start_epoch + float(samples.offset_s[k])),
                    "latency": _ns(float(samples.latency_s[k])),
                    "error": error,
                    "status": go_status(code),
                }
            )
        report["details"] = out
    return report
