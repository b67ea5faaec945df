"""Device reports, stored once per (device_id, round): a JSONL file, and a bounded window of the
most recent ones in memory for duplicate detection."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path

from chord.jsonfile import dumps
from chord.spec import DeviceMetrics, DeviceReport, ReportOutcome
from chord.textfile import TextFileError, iter_lines, loads_json

__all__ = ["DEDUP_WINDOW", "ReportStore"]

# Distinct (device_id, round) keys kept in memory: a retried report arrives seconds after the
# first, so this window catches every retry while a server that runs for months stays bounded
# (about 0.5 KB per report: some 50 MB).
DEDUP_WINDOW = 100_000


class ReportStore:
    """Idempotent report storage: a repeat of (device_id, round) is acknowledged, not stored.

    Repeats are recognised among the `window` most recent distinct reports (older ones live
    only in the JSONL file), so memory stays bounded however many devices report.
    """

    def __init__(self, path: Path | None = None, window: int = DEDUP_WINDOW) -> None:
        """path: JSONL file to append to (its last `window` reports are reloaded, read a line at
        a time); None = memory only. Raises ValueError for window < 1 and TextFileError naming
        the file and line of a row that is not a report this server wrote."""
        if window < 1:
            raise ValueError(f"window must be >= 1 reports, got {window}")
        self.path = path
        self.window = int(window)
        self._lock = threading.Lock()
        self._reports: OrderedDict[tuple[str, int], DeviceReport] = OrderedDict()
        self._stored = 0
        if path is not None and path.exists():
            for lineno, line in iter_lines(path):
                if not line.strip():
                    continue
                row = loads_json(line, str(path), lineno)
                try:
                    report = _from_row(row)
                except (KeyError, TypeError, ValueError) as exc:
                    raise TextFileError(
                        f"{path}:{lineno}: not a device report ({type(exc).__name__}: {exc}); "
                        "send the JSONL file this server wrote, or start with a new --reports"
                    ) from None
                self._remember(report)

    def __len__(self) -> int:
        """Number of distinct reports stored (in the file; those reloaded at start included)."""
        return self._stored

    def _remember(self, report: DeviceReport) -> bool:
        """Add to the window unless its key is there; False for a duplicate."""
        key = (report.device_id, report.round)
        if key in self._reports:
            return False
        self._reports[key] = report
        if len(self._reports) > self.window:
            self._reports.popitem(last=False)
        self._stored += 1
        return True

    def get(self, device_id: str, round_: int) -> DeviceReport | None:
        """The report of one device and round, if it is among the window's recent ones."""
        return self._reports.get((device_id, round_))

    def recent(self) -> list[DeviceReport]:
        """The window's reports, oldest first."""
        return list(self._reports.values())

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


def _from_row(row: dict) -> DeviceReport:
    """A report read back from its JSONL row."""
    metrics = row.get("metrics")
    return DeviceReport(
        device_id=row["device_id"],
        round=int(row["round"]),
        tier=row.get("tier", ""),
        metrics=DeviceMetrics(**metrics) if metrics is not None else None,
    )
