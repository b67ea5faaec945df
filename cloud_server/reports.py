"""Device reports, stored once per (device_id, round): every key and the recent reports in
memory, every report in an optional JSONL file."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path

from chord.jsonfile import dumps
from chord.spec import DeviceMetrics, DeviceReport, ReportOutcome
from chord.textfile import TextFileError, loads_json, read_text

__all__ = ["RECENT_REPORTS", "ReportStore"]

# Reports kept in memory for `get` (the newest); older ones live on only in the JSONL file.
RECENT_REPORTS = 10_000


class ReportStore:
    """Idempotent report storage: a repeat of (device_id, round) is acknowledged, not stored.

    Memory grows by one key per report (~100 bytes: a device id and a round), not by the
    report (~650 bytes as Python objects), so a server that takes a fleet's reports for days
    stays small; the newest `keep_recent` reports are kept whole for `get`.
    """

    def __init__(self, path: Path | None = None, keep_recent: int = RECENT_REPORTS) -> None:
        """path: JSONL file to append to (earlier reports are reloaded: their keys, and the
        newest keep_recent whole); None = memory only. keep_recent >= 0."""
        if keep_recent < 0:
            raise ValueError(f"keep_recent must be >= 0, got {keep_recent}")
        self.path = path
        self.keep_recent = keep_recent
        self._lock = threading.Lock()
        self._keys: set[tuple[str, int]] = set()
        self._recent: OrderedDict[tuple[str, int], DeviceReport] = OrderedDict()
        if path is not None and path.exists():
            for lineno, line in enumerate(read_text(path).splitlines(), start=1):
                if not line.strip():
                    continue
                row = loads_json(line, str(path), lineno)
                try:
                    self._keep(_from_row(row))
                except (KeyError, TypeError, ValueError) as exc:
                    raise TextFileError(
                        f"{path}:{lineno}: not a device report ({type(exc).__name__}: {exc}); "
                        "send the JSONL file this server wrote, or start with a new --reports"
                    ) from None

    def __len__(self) -> int:
        """Number of distinct reports stored."""
        return len(self._keys)

    def __contains__(self, key: tuple[str, int]) -> bool:
        """Whether the report of (device_id, round) is stored."""
        return key in self._keys

    def get(self, device_id: str, round_: int) -> DeviceReport | None:
        """The stored report of one device and round while it is among the newest keep_recent
        (None for one never stored, or stored longer ago: the JSONL file has those)."""
        return self._recent.get((device_id, round_))

    def _keep(self, report: DeviceReport) -> None:
        """Remember the report's key, and the report among the recent ones."""
        key = (report.device_id, report.round)
        self._keys.add(key)
        if self.keep_recent:
            self._recent[key] = report
            if len(self._recent) > self.keep_recent:
                self._recent.popitem(last=False)

    def record(self, report: DeviceReport) -> ReportOutcome:
        """Store the report unless (device_id, round) is already stored."""
        key = (report.device_id, report.round)
        with self._lock:
            if key in self._keys:
                return ReportOutcome(accepted=True, duplicate=True)
            self._keep(report)
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
