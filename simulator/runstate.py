"""A simulation's saved state (state.json, reports.db), checked before a --resume does any work.

state.json holds exactly two fields, written by `new_state`: `request_tag` (8 lowercase hex
digits, the tag of every GetStrategy request id of the run, so a resumed run's requests match
the first run's) and `created` (Unix seconds, a JSON number). reports.db is the SQLite store of
simulator.store. A damaged file is refused in one line naming the file and what is wrong, never
repaired: a fresh --out starts the run over.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from chord.plain_numbers import NumberError, json_float
from chord.textfile import TextFileError, read_json
from simulator.store import COLUMNS

__all__ = ["REPORT_TABLES", "RunStateError", "check_reports_db", "new_state", "read_state"]

REQUEST_TAG = re.compile(r"[0-9a-f]{8}")
REPORT_TABLES = frozenset(COLUMNS)  # simulator.store's tables
# Latest `created` accepted: now plus a day of clock difference between machines (a run
# directory copied from another host).
CLOCK_SLACK_S = 86_400.0
_FRESH = "start over with a fresh --out DIR"


class RunStateError(ValueError):
    """Saved run state that cannot be resumed; the message names the file and the problem."""


def new_state() -> dict[str, Any]:
    """The state of a new run: a random 8-hex-digit request_tag and `created` = now (Unix s)."""
    return {"request_tag": uuid.uuid4().hex[:8], "created": time.time()}


def read_state(path: Path) -> dict[str, Any]:
    """state.json as written by new_state, every field checked for type and range.

    Raises RunStateError naming the file: not strict UTF-8 JSON, not an object, a key missing
    or unknown, request_tag not 8 lowercase hex digits, created not a JSON number in
    [0, now + CLOCK_SLACK_S].
    """
    try:
        data = read_json(path)
    except TextFileError as exc:
        raise RunStateError(
            f"{exc}; resume needs the state.json this run wrote, or {_FRESH}"
        ) from None
    if not isinstance(data, dict):
        raise RunStateError(
            f"{path}: expected a JSON object with request_tag and created, got "
            f"{type(data).__name__}; {_FRESH}"
        )
    fields = {"request_tag", "created"}
    missing, unknown = sorted(fields - set(data)), sorted(set(data) - fields)
    if missing or unknown:
        problem = (f"lacks {', '.join(missing)}" if missing
                   else f"holds unknown keys {', '.join(unknown)[:60]}")
        raise RunStateError(
            f"{path}: {problem}; a run's state.json holds exactly request_tag and created; "
            f"{_FRESH}"
        )
    tag = data["request_tag"]
    if not isinstance(tag, str) or not REQUEST_TAG.fullmatch(tag):
        raise RunStateError(
            f"{path}: request_tag is {tag!r:.40}, not 8 lowercase hex digits; {_FRESH}"
        )
    try:
        created = json_float(data["created"], "created")
    except NumberError as exc:
        raise RunStateError(f"{path}: {exc}; or {_FRESH}") from None
    latest = time.time() + CLOCK_SLACK_S
    if not 0 <= created <= latest or not math.isfinite(created):
        raise RunStateError(
            f"{path}: created is {created:g}, not Unix seconds in [0, now + 1 day]; {_FRESH}"
        )
    return {"request_tag": tag, "created": created}


def check_reports_db(path: Path) -> None:
    """Raise RunStateError unless `path` is absent, empty, or a SQLite file holding
    simulator.store's tables (devices, rounds, events) with the columns this version writes
    (simulator.store.COLUMNS). Opened read-only: nothing is written."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )}
            columns = {
                t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")}
                for t in sorted(REPORT_TABLES & tables)
            }
    except sqlite3.Error as exc:
        raise RunStateError(
            f"{path}: not a readable reports database ({exc}); {_FRESH}"
        ) from None
    if tables and not tables >= REPORT_TABLES:
        raise RunStateError(
            f"{path}: a SQLite file without the tables {sorted(REPORT_TABLES)} of a chord "
            f"simulate run (it has {sorted(tables)[:5]}); {_FRESH}"
        )
    for table, have in columns.items():
        want = set(COLUMNS[table])
        if have != want:
            raise RunStateError(
                f"{path}: its {table} table was written by another version of chord (columns "
                f"missing here: {sorted(want - have)}; not written by this version: "
                f"{sorted(have - want)}); finish the run with the version that started it, "
                f"or {_FRESH}"
            )
