"""Damaged saved state: `chord simulate --resume` and `chord serve --reports` say so in one line.

Each case runs the real CLI in a subprocess: exit status 2, one stderr line naming the file and
the problem, before any work (no data loaded, no Ray, no server bound).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from chord.spec import DeviceMetrics, DeviceReport
from cloud_server.engine import EchoEngine
from cloud_server.errors import ReportFileError
from cloud_server.reports import ReportStore
from simulator.config import FleetConfig, save_config
from simulator.runstate import read_state
from simulator.store import ReportStore as SimulationStore

REPO = Path(__file__).resolve().parent.parent
FRESH = "start over with a fresh --out DIR"


def cli(*argv: str) -> tuple[int, list[str]]:
    """Run `python -m chord.cli ARGV` as a user would; (exit status, stderr lines)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    env.pop("CHORD_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "chord.cli", *argv], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=180, check=False,
    )
    return done.returncode, done.stderr.strip().splitlines()


@pytest.fixture
def started(tmp_path: Path) -> Path:
    """A run directory as `chord simulate` leaves it: fleet.json, state.json, reports.db."""
    out = tmp_path / "sim"
    out.mkdir()
    save_config(FleetConfig(ray_address="none"), out / "fleet.json")
    (out / "state.json").write_text('{"request_tag": "0badc0de", "created": 1700000000.5}')
    SimulationStore(out / "reports.db").close()  # this version's tables, empty
    return out


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"created": 1}', "lacks request_tag"),
        ("[1, 2]", "expected a JSON object with request_tag and created, got list"),
        ('{"request_tag": "a\\nb", "created": 1}', r"request_tag is 'a\nb', not 8 lowercase hex"),
        ('{"request_tag": 5, "created": 1}', "request_tag is 5, not 8 lowercase hex digits"),
        ('{"request_tag": "0BADC0DE", "created": 1}', "request_tag is '0BADC0DE', not 8 lowercase"),
        ('{"request_tag": "0badc0de", "created": "1"}',
         "created must be a JSON number, got a string '1'"),
        ('{"request_tag": "0badc0de", "created": true}',
         "created must be a JSON number, got the boolean true"),
        ('{"request_tag": "0badc0de", "created": -1}', "created is -1, not Unix seconds"),
        ('{"request_tag": "0badc0de", "created": 1e300}', "created is 1e+300, not Unix seconds"),
        ('{"request_tag": "0badc0de", "created": 1, "x": 2}', "holds unknown keys x"),
    ],
)  # fmt: skip
def test_damaged_state_json_is_refused_by_field(started: Path, text: str, problem: str) -> None:
    path = started / "state.json"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_state(path)
    assert str(info.value).startswith(f"{path}: {problem}"), str(info.value)
    assert str(info.value).endswith(FRESH)


def test_resume_with_damaged_state_exits_2_in_one_line(started: Path) -> None:
    (started / "state.json").write_text('{"created": 1}')
    code, err = cli("simulate", "--quiet", "--resume", str(started))
    assert (code, err) == (2, [
        f"chord simulate: error: {started / 'state.json'}: lacks request_tag; a run's state.json "
        f"holds exactly request_tag and created; {FRESH}"])  # fmt: skip


def test_resume_with_garbage_reports_db_exits_2_in_one_line(started: Path) -> None:
    (started / "reports.db").write_bytes(b"this is not SQLite at all, " * 100)
    code, err = cli("simulate", "--quiet", "--resume", str(started))
    assert (code, err) == (2, [
        f"chord simulate: error: {started / 'reports.db'}: not a readable reports database "
        f"(file is not a database); {FRESH}"])  # fmt: skip


def test_resume_with_a_foreign_database_exits_2(started: Path) -> None:
    (started / "reports.db").unlink()
    with closing(sqlite3.connect(started / "reports.db")) as db:
        db.execute("CREATE TABLE songs (title)")
    code, err = cli("simulate", "--quiet", "--resume", str(started))
    assert code == 2 and len(err) == 1, err
    assert "reports.db: a SQLite file without the tables ['devices', 'events', 'rounds']" in err[0]


def test_resume_of_a_database_from_another_version_exits_2_before_work(started: Path) -> None:
    # As a run saved before infer_batch_ms replaced infer_ms_max in the rounds table.
    with closing(sqlite3.connect(started / "reports.db")) as db:
        db.execute("ALTER TABLE rounds RENAME COLUMN infer_batch_ms TO infer_ms_max")
    code, err = cli("simulate", "--quiet", "--resume", str(started))
    assert (code, err) == (2, [
        f"chord simulate: error: {started / 'reports.db'}: its rounds table was written by "
        "another version of chord (columns missing here: ['infer_batch_ms']; not written by "
        "this version: ['infer_ms_max']); finish the run with the version that started it, or "
        f"{FRESH}"])  # fmt: skip


GOOD = dataclasses.asdict(DeviceReport("d1", 3, "high", DeviceMetrics(
    hr5=0.5, hr10=0.5, ndcg5=0.4, ndcg10=0.4, adapt_ms=1.0, infer_ms=1.0, rpc_ms=1.0,
    bytes_up=1, bytes_down=1, avg_bits=6.0)))  # fmt: skip


def _with(**changes: object) -> str:
    """GOOD with top-level fields (or metrics.NAME) changed, as one JSON line."""
    row = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("m_"):
            row["metrics"][key[2:]] = value
        else:
            row[key] = value
    return json.dumps(row)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1, 2]", "the row is a list, not an object of device_id, round, tier and metrics"),
        ('"just a string"', "the row is a string, not an object"),
        (_with(device_id="a\nb"), "device_id contains non-printable characters"),
        (_with(device_id=""), "device_id is empty"),
        (_with(device_id=7), "device_id is a number; send a string"),
        (_with(round=-5), "round is -5; send a round in [0, 4294967295]"),
        (_with(round=2**32), "round is 4294967296; send a round in [0, 4294967295]"),
        (_with(round="3"), "round must be a JSON integer, got a string '3'"),
        (_with(round=3.5), "round must be a JSON integer, got the fraction 3.5"),
        (_with(tier="zzz"), "unknown tier 'zzz'; send one of: low, mid, high"),
        (_with(m_hr5=7), "metrics.hr5 is 7; send a rate in [0, 1]"),
        (_with(m_hr5="0.5"), "metrics.hr5 must be a JSON number, got a string '0.5'"),
        (_with(m_bytes_up=1.5), "metrics.bytes_up must be a JSON integer"),
        (_with(m_avg_bits=1e9), "metrics.avg_bits is 1000000000; send 0 (not measured)"),
        (_with(m_extra=1), "metrics holds unknown key 'extra'"),
        (_with(metrics=None), "metrics is null"),
        ('{"device_id": "d1", "round": 1, "tier": "high"}', "the row lacks 'metrics'"),
    ],
)  # fmt: skip
def test_stored_reports_pass_the_report_metrics_validation(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "reports.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(ReportFileError) as info:
        ReportStore(path, tiers=EchoEngine().spec.tiers)
    assert str(info.value).startswith(f"{path}:2: not a device report: {problem}"), info.value
    path.write_text(json.dumps(GOOD) + "\n")
    assert len(ReportStore(path, tiers=EchoEngine().spec.tiers)) == 1  # the good row reloads


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1, 2]", "the row is a list"),
        ('"just a string"', "the row is a string"),
        (_with(device_id="a\nb", round=-5, tier="zzz", m_hr5=7), "round is -5"),
        (_with(tier="zzz"), "unknown tier 'zzz'"),
    ],
)
def test_serve_with_damaged_reports_exits_2_in_one_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "reports.jsonl"
    path.write_text(line + "\n")
    code, err = cli("serve", "--echo", "--port", "0", "--reports", str(path))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"chord serve: error: {path}:1: not a device report: {problem}")


def test_serve_workers_with_damaged_reports_exits_2_in_one_line(tmp_path: Path) -> None:
    """Under --workers N each worker reads --reports; the parent says why in one line."""
    path = tmp_path / "reports.jsonl"
    path.write_text(_with(tier="zzz") + "\n")
    code, err = cli("serve", "--echo", "--workers", "2", "--port", "0", "--reports", str(path))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"chord serve: error: {path}:1: not a device report: unknown tier")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "a fleet config is a table of settings (a JSON object), got list"),
        ('{"devices": "10"}', "devices must be an integer, got '10'"),
    ],
)
def test_resume_with_damaged_fleet_json_exits_2_in_one_line(
    started: Path, text: str, problem: str
) -> None:
    (started / "fleet.json").write_text(text)
    code, err = cli("simulate", "--quiet", "--resume", str(started))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"chord simulate: error: saved fleet config {started / 'fleet.json'}: {problem}"
    ), err
    assert err[0].endswith(FRESH)
