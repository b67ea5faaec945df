"""Device reports, stored once per (device_id, round): a JSONL file, and a bounded window of the
most recent ones in memory for duplicate detection."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chord.jsonfile import dumps
from chord.plain_numbers import NumberError, json_float, json_int
from chord.spec import DeviceMetrics, DeviceReport, ReportOutcome, TierSpec
from chord.textfile import TextFileError, iter_lines, loads_json
from cloud_server.errors import InvalidRequestError, ReportFileError
from cloud_server.validation import validate_report

__all__ = ["DEDUP_WINDOW", "MAX_ROUND", "ReportStore"]

# Distinct (device_id, round) keys kept in memory: a retried report arrives seconds after the
# first, so this window catches every retry while a server that runs for months stays bounded
# (about 0.5 KB per report: some 50 MB).
DEDUP_WINDOW = 100_000
MAX_ROUND = 0xFFFFFFFF  # ReportRequest.round is a uint32 on the wire
_METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(DeviceMetrics))
_INT_METRICS = frozenset(
    f.name for f in dataclasses.fields(DeviceMetrics) if f.type in (int, "int")
)


class ReportStore:
    """Idempotent report storage: a repeat of (device_id, round) is acknowledged, not stored.

    Repeats are recognised among the `window` most recent distinct reports (older ones live
    only in the JSONL file), so memory stays bounded however many devices report. With
    `max_age_s`, a report also leaves the window once it is that many seconds old: a server
    whose clients give up retrying after a known time keeps only what a retry can still repeat.
    """

    def __init__(
        self,
        path: Path | None = None,
        window: int = DEDUP_WINDOW,
        tiers: Sequence[TierSpec] | None = None,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """path: JSONL file to append to (its last `window` reports are reloaded, read a line at
        a time); None = memory only. tiers: the served model's tiers, so that every stored row
        passes the same validate_report as a ReportMetrics call; None (engine not loaded yet)
        checks all but the tier name and avg_bits against the tiers. max_age_s: seconds a
        report stays in the window (reloaded ones count from the load); None = no age bound.
        clock: seconds of a monotonic clock (time.monotonic; tests pass their own).

        Raises ValueError for window < 1 or max_age_s <= 0, TextFileError naming the file and
        line of a row that is not UTF-8 JSON, and ReportFileError naming the file, line and
        field of a row that is not a report this server could have stored.
        """
        if window < 1:
            raise ValueError(f"window must be >= 1 reports, got {window}")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0 seconds (or None), got {max_age_s}")
        self.path = path
        self.window = int(window)
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (clock() when stored, report), oldest first
        self._reports: OrderedDict[tuple[str, int], tuple[float, DeviceReport]] = OrderedDict()
        self._stored = 0
        if path is not None and path.exists():
            try:
                for lineno, line in iter_lines(path):
                    if line.strip():
                        self._remember(_load_row(path, lineno, line, tiers))
            except TextFileError as exc:  # a byte that is not UTF-8, a line that is not JSON
                raise ReportFileError(str(exc)) from None

    def __len__(self) -> int:
        """Number of distinct reports stored (in the file; those reloaded at start included)."""
        return self._stored

    def _remember(self, report: DeviceReport) -> bool:
        """Add to the window unless its key is there; False for a duplicate."""
        now = self._clock()
        if self.max_age_s is not None:
            while self._reports and now - next(iter(self._reports.values()))[0] > self.max_age_s:
                self._reports.popitem(last=False)
        key = (report.device_id, report.round)
        if key in self._reports:
            return False
        self._reports[key] = (now, report)
        if len(self._reports) > self.window:
            self._reports.popitem(last=False)
        self._stored += 1
        return True

    def get(self, device_id: str, round_: int) -> DeviceReport | None:
        """The report of one device and round, if it is among the window's recent ones."""
        entry = self._reports.get((device_id, round_))
        return None if entry is None else entry[1]

    def recent(self) -> list[DeviceReport]:
        """The window's reports, oldest first."""
        return [report for _, report in self._reports.values()]

    def record(self, report: DeviceReport) -> ReportOutcome:
        """Store the report unless (device_id, round) is among the window's recent reports."""
        with self._lock:
            if not self._remember(report):
                return ReportOutcome(accepted=True, duplicate=True)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(dumps(dataclasses.asdict(report)) + "\n")
        return ReportOutcome(accepted=True, duplicate=False)


def _load_row(
    path: Path, lineno: int, line: str, tiers: Sequence[TierSpec] | None
) -> DeviceReport:
    """One JSONL line as a checked report (_from_row), or ReportFileError naming file:line."""
    row = loads_json(line, str(path), lineno)
    try:
        return _from_row(row, tiers)
    except (InvalidRequestError, NumberError) as exc:
        raise ReportFileError(
            f"{path}:{lineno}: not a device report: {exc} (a --reports file holds the "
            "reports this server wrote; point --reports at a new file to start afresh)"
        ) from None


def _from_row(row: Any, tiers: Sequence[TierSpec] | None) -> DeviceReport:
    """A report read back from its JSONL row, checked as a ReportMetrics request is.

    The row must be the object `record` writes: exactly device_id (string), round (integer in
    [0, MAX_ROUND]), tier (string) and metrics (an object of DeviceMetrics' fields, JSON
    numbers). Raises InvalidRequestError (from validate_report, or naming the key) or
    NumberError.
    """
    if not isinstance(row, dict):
        raise InvalidRequestError(
            f"the row is {_json_kind(row)}, not an object of device_id, round, tier and metrics"
        )
    _exact_keys(row, ("device_id", "round", "tier", "metrics"), "the row")
    device_id, tier, metrics = row["device_id"], row["tier"], row["metrics"]
    for name, value in (("device_id", device_id), ("tier", tier)):
        if not isinstance(value, str):
            raise InvalidRequestError(f"{name} is {_json_kind(value)}; send a string")
    round_ = json_int(row["round"], "round")
    if not 0 <= round_ <= MAX_ROUND:
        raise InvalidRequestError(f"round is {round_}; send a round in [0, {MAX_ROUND}]")
    if not isinstance(metrics, dict):
        raise InvalidRequestError(
            f"metrics is {_json_kind(metrics)}; send an object of {', '.join(_METRIC_FIELDS)}"
        )
    _exact_keys(metrics, _METRIC_FIELDS, "metrics")
    values = {
        name: json_int(metrics[name], f"metrics.{name}") if name in _INT_METRICS
        else json_float(metrics[name], f"metrics.{name}")
        for name in _METRIC_FIELDS
    }
    report = DeviceReport(device_id, round_, tier, DeviceMetrics(**values))  # type: ignore[arg-type]
    if tiers is None:  # the tier name's length and avg_bits' range are checked once tiers are
        validate_report(dataclasses.replace(report, tier=""), ())
    else:
        validate_report(report, tiers)
    return report


def _exact_keys(obj: dict[str, Any], keys: Sequence[str], what: str) -> None:
    """InvalidRequestError naming the first key of `keys` missing from obj, or one it holds
    beyond them."""
    missing = [k for k in keys if k not in obj]
    extra = [k for k in obj if k not in keys]
    if missing or extra:
        problem = f"lacks {missing[0]!r}" if missing else f"holds unknown key {extra[0]!r:.40}"
        raise InvalidRequestError(f"{what} {problem}; it holds exactly {', '.join(keys)}")


def _json_kind(value: Any) -> str:
    """The JSON type of a parsed value, as a message names it ("a list", "a number")."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    kinds = ((str, "a string"), (list, "a list"), (dict, "an object"), (int | float, "a number"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)
