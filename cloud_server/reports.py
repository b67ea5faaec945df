"""Device reports, stored once per (device_id, round), in memory and optionally in a JSONL file."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from chord.jsonfile import dumps
from chord.spec import DeviceMetrics, DeviceReport, ReportOutcome
from chord.textfile import TextFileError, loads_json, read_text

__all__ = ["ReportStore"]


class ReportStore:
    """Idempotent report storage: a repeat of (device_id, round) is acknowledged, not stored."""

    def __init__(self, path: Path | None = None) -> None:
        """path: JSONL file to append to (earlier reports are reloaded); None = memory only."""
        self.path = path
        self._lock = threading.Lock()
        self._reports: dict[tuple[str, int], DeviceReport] = {}
        if path is not None and path.exists():
            for lineno, line in enumerate(read_text(path).splitlines(), start=1):
                if not line.strip():
                    continue
                row = loads_json(line, str(path), lineno)
                try:
                    self._reports[(row["device_id"], int(row["round"]))] = _from_row(row)
                except (KeyError, TypeError, ValueError) as exc:
                    raise TextFileError(
                        f"{path}:{lineno}: not a device report ({type(exc).__name__}: {exc}); "
                        "send the JSONL file this server wrote, or start with a new --reports"
                    ) from None

    def __len__(self) -> int:
        """Number of distinct reports stored."""
        return len(self._reports)

    def get(self, device_id: str, round_: int) -> DeviceReport | None:
        """The stored report of one device and round."""
        return self._reports.get((device_id, round_))

    def all(self) -> list[DeviceReport]:
        """Every stored report, in arrival order."""
        return list(self._reports.values())

    def record(self, report: DeviceReport) -> ReportOutcome:
        """Store the report unless (device_id, round) is already stored."""
        key = (report.device_id, report.round)
        with self._lock:
            if key in self._reports:
                return ReportOutcome(accepted=True, duplicate=True)
            self._reports[key] = report
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
