"""The other files users hand the project (fleet TOML, traces JSON, reports JSONL): BOM-blind.

Errors name the file and the line; NaN and Infinity are refused where a number must be finite.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from chord.spec import DeviceReport
from chord.textfile import TextFileError, loads_json, read_json, read_text
from cloud_server.config import ServerConfig
from cloud_server.reports import ReportStore
from simulator.config import FleetConfigError, load_config
from simulator.traces import TraceError, load_capacities

BOM = b"\xef\xbb\xbf"
TOML = 'devices = 7\n[[tiers]]\nname = "mid"\nshare = 1.0\nbudget_bits = 3.0\n'
TRACES = '{"a": {"computation": 10.0, "communication": 500.0}}\n'


def test_bom_reads_like_no_bom(tmp_path: Path) -> None:
    for name, text in (("fleet.toml", TOML), ("traces.json", TRACES)):
        plain, bommed = tmp_path / f"plain-{name}", tmp_path / f"bom-{name}"
        plain.write_text(text)
        bommed.write_bytes(BOM + text.encode())
        assert read_text(bommed) == read_text(plain) == text
    assert load_config(tmp_path / "bom-fleet.toml") == load_config(tmp_path / "plain-fleet.toml")
    bom, plain = tmp_path / "bom-traces.json", tmp_path / "plain-traces.json"
    assert load_capacities(bom) == load_capacities(plain)


def test_files_joined_with_cat_read_like_one_file(tmp_path: Path) -> None:
    """Each part's BOM is dropped where it starts a line, so `cat a.toml b.toml` parses."""
    joined = tmp_path / "fleet.toml"
    joined.write_bytes(BOM + b"devices = 7\n" + BOM + TOML.split("\n", 1)[1].encode())
    assert read_text(joined) == TOML
    plain = tmp_path / "plain.toml"
    plain.write_text(TOML)
    assert load_config(joined) == load_config(plain)


def test_non_utf8_byte_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_bytes(b"devices = 7\n# caf\xe9\n")
    with pytest.raises(FleetConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"fleet config {path}:2: byte 0xe9 at column 6 is not UTF-8; re-encode the file as UTF-8"
    )


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('{"a": {"computation": NaN, "communication": 1.0}}', "NaN is not a JSON number"),
        ('{"a": {"computation": 1.0, "communication": Infinity}}', "Infinity is not a JSON"),
        ('{"a": {"computation": 1e999, "communication": 1.0}}',
         ":1: 1e999 is beyond the range of a double (about 1.8e308); send a finite number"),
        ('{"a": {"computation": 1.0,\n "communication": }}', ":2: invalid JSON at column 19"),
    ],
)
def test_traces_numbers_must_be_finite(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "traces.json"
    path.write_text(text)
    with pytest.raises(TraceError) as info:
        load_capacities(path)
    assert str(info.value).startswith(str(path)) and expect in str(info.value)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        # A literal that overflows a double read as inf (a resumed fleet.json ran with it).
        ('{"clock": {\n "duration_s": 1e400}}',
         ":2: 1e400 is beyond the range of a double (about 1.8e308); send a finite number"),
        ("[1,\n-1e400]", ":2: -1e400 is beyond the range of a double"),
        ("[1.0, 2.5e-400]", None),  # underflow to 0.0 is a finite number: accepted
        ("[" + "9" * 4301 + "]", ":1: an integer of 4301 digits is too long; send at most 4300"),
        # json.loads keeps the last of two equal keys: refused, naming the second one's line.
        ('{"a": 1,\n "b": {"x": 1,\n  "x": 2}}',
         ":3: key 'x' appears twice in one object; send each key once"),
        ('{"\u00b2": 1, "\u00b2": 2}', ":1: key '\u00b2' appears twice in one object"),
    ],
)
def test_loads_json_refuses_what_reads_as_something_else(text: str, expect: str | None) -> None:
    if expect is None:
        assert loads_json(text, "f.json") == [1.0, 0.0]
        return
    with pytest.raises(TextFileError) as info:
        loads_json(text, "f.json")
    assert str(info.value).startswith("f.json" + expect), str(info.value)


def test_reports_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "reports.jsonl"
    good = json.dumps(dataclasses.asdict(DeviceReport(device_id="d", round=1, tier="mid")))
    path.write_text(good + '\n{"x": 1}\n')
    with pytest.raises(TextFileError, match=rf"^{path}:2: not a device report"):
        ReportStore(path)
    path.write_text('{"device_id": "d", "round": NaN}\n')
    with pytest.raises(TextFileError, match=rf"^{path}:1: NaN is not a JSON number"):
        ReportStore(path)


def test_json_errors_report_the_file_line(tmp_path: Path) -> None:
    with pytest.raises(TextFileError, match=r"^rows.jsonl:7: invalid JSON at column 2"):
        loads_json("{x", "rows.jsonl", first_line=7)
    path = tmp_path / "run.json"
    path.write_bytes(BOM + b'{\n  "format": 1,\n  "v": -Infinity\n}')
    with pytest.raises(TextFileError, match=rf"^{path}:3: -Infinity is not a JSON number"):
        read_json(path)


def test_report_store_memory_is_a_bounded_window(tmp_path: Path) -> None:
    """However many devices report, memory holds the last `window` reports; the file holds all,
    and a reload keeps the same window (repeats inside it are still duplicates)."""
    path = tmp_path / "reports.jsonl"
    store = ReportStore(path, window=3)
    for i in range(5):
        outcome = store.record(DeviceReport(device_id=f"d{i}", round=1, tier="mid"))
        assert not outcome.duplicate
    assert store.record(DeviceReport(device_id="d4", round=1, tier="mid")).duplicate
    assert len(store) == 5 and len(path.read_text().splitlines()) == 5
    assert [r.device_id for r in store.recent()] == ["d2", "d3", "d4"]
    assert store.get("d0", 1) is None and store.get("d3", 1) is not None
    reloaded = ReportStore(path, window=3)
    assert len(reloaded) == 5 and reloaded.recent() == store.recent()
    assert reloaded.record(DeviceReport(device_id="d2", round=1, tier="mid")).duplicate
    with pytest.raises(ValueError, match="window must be >= 1"):
        ReportStore(None, window=0)


def test_report_store_forgets_reports_older_than_max_age() -> None:
    """With max_age_s, a report older than that leaves the window (a repeat is stored again),
    one younger stays a duplicate, and the count bound still holds."""
    now = [0.0]
    store = ReportStore(None, window=3, max_age_s=60.0, clock=lambda: now[0])
    store.record(DeviceReport(device_id="old", round=1, tier="mid"))
    now[0] = 30.0
    store.record(DeviceReport(device_id="young", round=1, tier="mid"))
    now[0] = 61.0
    assert store.record(DeviceReport(device_id="young", round=1, tier="mid")).duplicate
    assert store.get("old", 1) is None
    assert not store.record(DeviceReport(device_id="old", round=1, tier="mid")).duplicate
    assert [r.device_id for r in store.recent()] == ["young", "old"]
    for i in range(3):
        store.record(DeviceReport(device_id=f"d{i}", round=1, tier="mid"))
    assert [r.device_id for r in store.recent()] == ["d0", "d1", "d2"]
    with pytest.raises(ValueError, match="max_age_s must be > 0"):
        ReportStore(None, max_age_s=0.0)
    window_error = r"^report_window_s is 0; send a finite number of seconds in \(0, 86400\]"
    with pytest.raises(ValueError, match=window_error):
        ServerConfig(echo=True, report_window_s=0.0)
    assert ServerConfig(echo=True, report_window_s=120.0).report_window_s == 120.0
