"""Numbers in users' files are plain ASCII decimals (JSON: JSON numbers), in every reader.

Python's int()/float() read `1_000` as 1000, Arabic-Indic `١` as 1 and " 1 " as 1; each reader
now refuses them with file:line (or client and field), and the CLI cases exit 2 in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.endpoint_load import summarize_profile
from benchmarks.fleet_profile import parse
from benchmarks.schedules import ScheduleError, read_arrivals
from chord.data import load_dataset
from chord.data.errors import DataFormatError
from chord.plain_numbers import NumberError, json_float, json_int, parse_float, parse_int
from chord.startcheck import StartupError, check_address
from simulator.traces import TraceError, load_behaviour, load_capacities

REPO = Path(__file__).resolve().parent.parent
REFUSED_TEXT = ["1_000", "١", "١٠٠", " 1 ", "1 ", "", "nan", "inf", "Infinity", "0x10", "1e", "--1",
                "1,5", "²", "１"]  # fmt: skip


def cli(*argv: str, timeout: float = 120) -> tuple[int, list[str]]:
    """Run `python -m chord.cli ARGV` as a user would; (exit status, stderr lines)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    env.pop("CHORD_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "chord.cli", *argv], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )
    return done.returncode, done.stderr.strip().splitlines()


@pytest.mark.parametrize(
    ("text", "value"), [("12", 12.0), ("-3", -3.0), ("+2", 2.0), ("0.5", 0.5), (".5", 0.5),
                        ("5.", 5.0), ("1e3", 1000.0), ("2.5E-1", 0.25), ("007", 7.0)],
)  # fmt: skip
def test_plain_decimals_parse(text: str, value: float) -> None:
    assert parse_float(text, "x") == value


@pytest.mark.parametrize("text", [*REFUSED_TEXT, "1e999"])
def test_anything_else_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(NumberError, match=r"^t_s is '.*', (not a plain|beyond)"):
        parse_float(text, "t_s")


@pytest.mark.parametrize("text", [*REFUSED_TEXT, "1.0", "1e3"])
def test_integers_are_digits_only(text: str) -> None:
    with pytest.raises(NumberError, match="not a plain integer"):
        parse_int(text, "round")
    assert parse_int("-42", "round") == -42


@pytest.mark.parametrize(
    ("value", "found"),
    [("100", "a string '100'"), (True, "the boolean true"), (None, "null"), ([1], "a list")],
)
def test_json_numbers_must_be_numbers(value: object, found: str) -> None:
    with pytest.raises(NumberError, match=rf"^x must be a JSON number, got {found}"):
        json_float(value, "x")
    with pytest.raises(NumberError, match="beyond the range of a double"):
        json_float(10**400, "x")
    with pytest.raises(NumberError, match=r"must be a JSON integer, got the fraction 4\.5"):
        json_int(4.5, "x")


@pytest.mark.parametrize(
    ("name", "fmt", "text", "line", "field", "shown"),
    [
        ("u.data", "grouplens", "1\t10\t4\t100\n1\t11\t4\t1_000\n", 2, "timestamp", "1_000"),
        ("u.data", "grouplens", "1\t10\t4\t١٠٠\n", 1, "timestamp", "١٠٠"),
        ("u.data", "grouplens", "1\t10\t٤\t100\n", 1, "rating", "٤"),
        ("ratings.dat", "movielens-dat", "1::10::4::1_0\n", 1, "timestamp", "1_0"),
        ("a.inter", "inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t1_5\n", 2,
         "timestamp", "1_5"),
        ("b.inter", "inter", "user_id:token\titem_id:token\tv:float_seq\n1\t2\t1 ٣\n", 2, "v",
         "٣"),
        ("c.csv", "csv", "user,item,ts\n1,2,1_000\n", 2, "timestamp", "1_000"),
    ],
)  # fmt: skip
def test_interaction_files_refuse_python_only_numbers(
    tmp_path: Path, name: str, fmt: str, text: str, line: int, field: str, shown: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        load_dataset(str(path), fmt=fmt, min_interactions=1, cache=False)
    assert str(info.value).startswith(f"{path}:{line}: {field} is {shown!r}, not a plain decimal")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.csv", "client_id,computation,communication\n1,1_00,2000\n",
         "client '1' field 'computation' is '1_00', not a plain decimal number"),
        ("d.csv", "client_id,computation,communication\n1,100, 2000\n",
         "client '1' field 'communication' is ' 2000', not a plain decimal number"),
        ("c.json", '{"1": {"computation": "1_0_0", "communication": 2000}}',
         "client '1' field 'computation' must be a JSON number, got a string '1_0_0'"),
        ("s.json", '{"1": {"computation": "100", "communication": 2000}}',
         "client '1' field 'computation' must be a JSON number, got a string '100'"),
        ("b.json", '{"1": {"computation": 100, "communication": true}}',
         "client '1' field 'communication' must be a JSON number, got the boolean true"),
    ],
)  # fmt: skip
def test_capacity_traces_take_plain_numbers(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TraceError) as info:
        load_capacities(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("e.csv", "client_id,active,inactive,finish_time\n1,,,300\n",
         "client '1' field 'active' is empty; send its value"),
        ("m.csv", "client_id,active,inactive,finish_time\n1,0,50\n",
         "client '1' is missing field 'finish_time'"),
        ("u.csv", "client_id,active,inactive,finish_time\n1,0;1_00,50;200,300\n",
         "client '1' field 'active[1]' is '1_00', not a plain decimal number"),
        ("s.json", '{"1": {"active": "0 100", "inactive": [50, 200], "finish_time": 300}}',
         "client '1' field 'active' must be a list of seconds, got '0 100'"),
        ("f.json", '{"1": {"active": [0], "inactive": [50], "finish_time": "300"}}',
         "client '1' field 'finish_time' must be a JSON number, got a string '300'"),
    ],
)  # fmt: skip
def test_behaviour_traces_name_client_and_field(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TraceError) as info:
        load_behaviour(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_plain_traces_still_read(tmp_path: Path) -> None:
    cap = tmp_path / "c.csv"
    cap.write_text("client_id,computation,communication\n1,100,2e3\n2,.5,1000\n")
    assert [(t.computation_ms, t.communication_kbps) for t in load_capacities(cap)] == [
        (100.0, 2000.0), (0.5, 1000.0)]  # fmt: skip
    beh = tmp_path / "b.json"
    beh.write_text(json.dumps({"1": {"active": [0, 100], "inactive": [50, 200],
                                     "finish_time": 300}}))  # fmt: skip
    assert load_behaviour(beh)[0].active == (0.0, 100.0)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1_000,d1,arrive", "t_s is '1_000', not a plain decimal number"),
        ("١,d1,arrive", "t_s is '١', not a plain decimal number"),
        (" 1 ,d1,arrive", "t_s is ' 1 ', not a plain decimal number"),
        ("1,d1,arrive,extra", "4 fields; send exactly 3 (t_s,device_id,reason)"),
        ("1,,arrive", "device_id is empty; send the id of the device that arrived"),
    ],
)
def test_bench_load_refuses_bad_arrivals_in_one_line(
    tmp_path: Path, row: str, message: str
) -> None:
    path = tmp_path / "arrivals.csv"
    path.write_text(f"t_s,device_id,reason\n0.5,d0,arrive\n{row}\n", encoding="utf-8")
    with pytest.raises(ScheduleError, match="^" + str(path)):
        read_arrivals(path)
    code, err = cli("bench", "load", "--target", "127.0.0.1:9", "--arrivals", str(path),
                    "--speedup", "10")  # fmt: skip
    assert (code, len(err)) == (2, 1), err
    assert err[0].startswith(f"chord bench load: error: {path}:3: {message}"), err


def test_profile_lines_whose_count_is_not_plain_digits_are_not_stacks(tmp_path: Path) -> None:
    """`"²".isdigit()` is True and int("²") raised: such a line is now skipped, not a crash."""
    raw = tmp_path / "raw.txt"
    raw.write_text("main (a.py:1);f (a.py:2) 3\nmain (a.py:1) ²\nmain (a.py:1) 1_0\nnoise\n")
    [(name, stacks)] = parse(raw).items()
    assert name == "process 0" and [count for _, count in stacks] == [3]


@pytest.mark.parametrize("address", ["h:²", "h:١٢٣", "h:1_0", "h:+5", "h: 5"])
def test_addresses_take_ascii_port_digits_only(address: str) -> None:
    """`"²".isdigit()` is True (int() then raised a traceback) and int("١٢٣") is 123."""
    with pytest.raises(StartupError, match=r"is not HOST:PORT; send e\.g\. 127\.0\.0\.1:50051"):
        check_address(address, "server")
    assert check_address("h:50051", "server") == ("h", 50051)


def test_endpoint_profile_skips_lines_whose_count_is_not_plain_digits() -> None:
    shares = summarize_profile("main (a.py:1);f (a.py:2) 3\nmain (a.py:1) ²\nx 1_0\n")
    assert shares["samples"] == 3
