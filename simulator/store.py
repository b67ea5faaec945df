"""Durable device reports: SQLite (WAL), one row per device and per (device, round), idempotent."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Any

from device_client.device import DeviceReport, RoundRecord

_DEVICE_FIELDS = [f for f in dataclasses.fields(DeviceReport) if f.name != "rounds"]
_ROUND_FIELDS = list(dataclasses.fields(RoundRecord))
# The columns this version writes, per table: a --resume of a reports.db with others is
# refused before any work (simulator.runstate.check_reports_db).
COLUMNS = {
    "devices": (*(f.name for f in _DEVICE_FIELDS), "stored_at"),
    "rounds": tuple(f.name for f in _ROUND_FIELDS),
    "events": ("id", "at", "kind", "detail"),
}


def _sql_type(tp: Any) -> str:
    """SQLite column type of a dataclass field annotation (annotations are strings here)."""
    name = str(tp)
    if "float" in name:
        return "REAL"
    if "int" in name or "bool" in name:
        return "INTEGER"
    return "TEXT"


def _columns(fields: list[dataclasses.Field[Any]]) -> str:
    """Column definitions for a list of dataclass fields."""
    return ", ".join(f"{f.name} {_sql_type(f.type)}" for f in fields)


class ReportStore:
    """Reports of one simulation; a device's first write wins, later copies count as duplicates."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS devices ({_columns(_DEVICE_FIELDS)}, "
            "stored_at REAL, PRIMARY KEY (device_id))"
        )
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS rounds ({_columns(_ROUND_FIELDS)}, "
            "PRIMARY KEY (device_id, round))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "at REAL, kind TEXT, detail TEXT)"
        )

    def add(self, report: DeviceReport) -> bool:
        """Store a device and its rounds in one transaction; False when it was already stored."""
        dev = [getattr(report, f.name) for f in _DEVICE_FIELDS]
        names = ", ".join(f.name for f in _DEVICE_FIELDS)
        marks = ", ".join("?" for _ in _DEVICE_FIELDS)
        rnames = ", ".join(f.name for f in _ROUND_FIELDS)
        rmarks = ", ".join("?" for _ in _ROUND_FIELDS)
        with self._transaction():
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO devices ({names}, stored_at) VALUES ({marks}, ?)",
                [*dev, time.time()],
            )
            if cur.rowcount == 0:
                return False
            self._db.executemany(
                f"INSERT OR IGNORE INTO rounds ({rnames}) VALUES ({rmarks})",
                [[getattr(r, f.name) for f in _ROUND_FIELDS] for r in report.rounds],
            )
        return True

    def _transaction(self) -> _Tx:
        """BEGIN ... COMMIT (ROLLBACK on error)."""
        return _Tx(self._db)

    def log_event(self, kind: str, detail: str = "") -> None:
        """Record a simulator event (fault injected, actor replaced, server restarted, resume)."""
        self._db.execute(
            "INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)", (time.time(), kind, detail)
        )

    def done_ids(self) -> set[str]:
        """Ids of devices already stored."""
        return {row[0] for row in self._db.execute("SELECT device_id FROM devices")}

    def devices(self) -> list[dict[str, Any]]:
        """Every device row as a dict."""
        return self._rows("SELECT * FROM devices ORDER BY device_id")

    def rounds(self) -> list[dict[str, Any]]:
        """Every round row as a dict."""
        return self._rows("SELECT * FROM rounds ORDER BY device_id, round")

    def events(self) -> list[dict[str, Any]]:
        """Every event row as a dict."""
        return self._rows("SELECT * FROM events ORDER BY id")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run a read query; iterate the cursor to stream rows (aggregates stay in SQLite)."""
        return self._db.execute(sql, params)

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        """Run a query and return rows as dicts."""
        cur = self._db.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


class _Tx:
    """A BEGIN IMMEDIATE ... COMMIT block on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
