"""FedScale trace readers: pickle (restricted), JSON and CSV; malformed fields are named."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from simulator.traces import TraceError, load_behaviour, load_capacities

CAPACITY = {
    7: {"computation": 162.0, "communication": 5648.1},
    2: {"computation": 40.5, "communication": 900.0},
}
BEHAVIOUR = {
    1: {
        "duration": 400,
        "active": [10, 100],
        "inactive": [50, 160],
        "finish_time": 200,
        "model": "Pixel",
    },
    3: {"active": [0], "inactive": [30], "finish_time": 60},
}


def _write(tmp: Path, name: str, data: object) -> Path:
    path = tmp / name
    if name.endswith(".pkl"):
        path.write_bytes(pickle.dumps(data))
    else:
        path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", ["cap.pkl", "cap.json"])
def test_capacity_map_pickle_and_json(tmp_path: Path, name: str) -> None:
    traces = load_capacities(_write(tmp_path, name, CAPACITY))
    assert [(t.client, t.computation_ms, t.communication_kbps) for t in traces] == [
        ("2", 40.5, 900.0),
        ("7", 162.0, 5648.1),
    ]


def test_capacity_map_csv(tmp_path: Path) -> None:
    path = tmp_path / "cap.csv"
    path.write_text("client_id,computation,communication\n7,162.0,5648.1\n2,40.5,900\n")
    assert [t.client for t in load_capacities(path)] == ["2", "7"]
    assert load_capacities(path)[1].communication_kbps == 5648.1


@pytest.mark.parametrize("name", ["beh.pkl", "beh.json"])
def test_behaviour_trace_pickle_and_json(tmp_path: Path, name: str) -> None:
    traces = load_behaviour(_write(tmp_path, name, BEHAVIOUR))
    first = traces[0]
    assert (first.client, first.active, first.inactive, first.finish_time) == (
        "1", (10.0, 100.0), (50.0, 160.0), 200.0
    )
    # The pattern repeats every finish_time seconds; windows are clipped to the span.
    assert first.windows(0, 450) == [(10, 50), (100, 160), (210, 250), (300, 360), (410, 450)]
    # A window ending at finish_time runs into the next period's window starting at 0.
    assert traces[1].windows(0, 150) == [(0, 30), (60, 90), (120, 150)]


def test_behaviour_trace_csv(tmp_path: Path) -> None:
    path = tmp_path / "beh.csv"
    path.write_text("client_id,active,inactive,finish_time\n5,0 100,50 150,200\n6,10;20,15;30,40\n")
    traces = load_behaviour(path)
    assert [t.active for t in traces] == [(0.0, 100.0), (10.0, 20.0)]
    assert traces[1].inactive == (15.0, 30.0)


class _Evil:
    """Unpickling this would run a shell command."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))

    def __init__(self, marker: Path) -> None:
        self.marker = marker


def test_pickle_constructing_a_class_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({1: {"computation": _Evil(marker), "communication": 1.0}}))
    with pytest.raises(TraceError, match=r"construct (posix|os)\.system; only dicts"):
        load_capacities(path)
    assert not marker.exists()
    # A class that is harmless is refused as well: nothing but builtins is constructed.
    path.write_bytes(pickle.dumps({1: {"active": [0], "inactive": [1], "finish_time": Path("x")}}))
    with pytest.raises(TraceError, match="construct pathlib"):
        load_behaviour(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"communication": 1.0}, "client '9' is missing field 'computation'"),
        ({"computation": "fast", "communication": 1.0}, "client '9' field 'computation' must be"),
        ({"computation": 1.0, "communication": -3}, "client '9' field 'communication' must be > 0"),
        ({"computation": 1.0, "communication": [1]}, "client '9' field 'communication' must be"),
    ],
)
def test_malformed_capacity_names_client_and_field(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = _write(tmp_path, "cap.json", {"1": {"computation": 1, "communication": 2}, "9": entry})
    with pytest.raises(TraceError, match=message):
        load_capacities(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"active": [0], "inactive": [5]}, "client '4' is missing field 'finish_time'"),
        ({"active": [0, 9], "inactive": [5], "finish_time": 20}, "equal length, got 2 and 1"),
        ({"active": [0, 3], "inactive": [5, 8], "finish_time": 20}, r"'active\[1\]' = 3.0 starts"),
        ({"active": [6], "inactive": [5], "finish_time": 20}, r"'inactive\[0\]' = 5.0 must be"),
        ({"active": [0], "inactive": [50], "finish_time": 20}, "'finish_time' = 20.0 is before"),
        ({"active": [0, "x"], "inactive": [1, 2], "finish_time": 9}, r"'active\[1\]' must be a"),
        ({"active": 0, "inactive": [1], "finish_time": 9}, "'active' must be a list of seconds"),
    ],
)
def test_malformed_behaviour_names_client_and_field(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = _write(tmp_path, "beh.json", {"4": entry})
    with pytest.raises(TraceError, match=message):
        load_behaviour(path)


def test_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TraceError, match="invalid JSON"):
        load_capacities(bad)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pickle.dumps(CAPACITY)[:10])
    with pytest.raises(TraceError, match="not a readable pickle"):
        load_capacities(cut)
    with pytest.raises(TraceError, match="cannot read"):
        load_capacities(tmp_path / "missing.json")
    with pytest.raises(TraceError, match="cannot read"):
        load_capacities(tmp_path / "missing.pkl")
    headless = tmp_path / "h.csv"
    headless.write_text("id,computation,communication\n1,2,3\n")
    with pytest.raises(TraceError, match="client_id"):
        load_capacities(headless)


@pytest.mark.parametrize(
    ("ids", "order"),
    [
        # Not plain integers: "--1" passed `lstrip("-").isdigit()` and int() then raised;
        # "²" is a digit to str.isdigit() but not to int(). Both sort as text.
        (["--1", "2"], ["--1", "2"]),
        (["\u00b2", "1"], ["1", "\u00b2"]),
        (["10", "-3", "2"], ["-3", "2", "10"]),  # plain integers sort as numbers
        (["10", "9", "x"], ["10", "9", "x"]),
    ],
)
@pytest.mark.parametrize("loader", ["capacity", "behaviour"])
def test_client_ids_that_are_not_plain_integers_sort_as_text(
    tmp_path: Path, ids: list[str], order: list[str], loader: str
) -> None:
    if loader == "capacity":
        entry: dict[str, object] = {"computation": 5, "communication": 100}
        path = _write(tmp_path, "t.json", {i: entry for i in ids})
        assert [t.client for t in load_capacities(path)] == order
    else:
        entry = {"active": [0], "inactive": [5], "finish_time": 10}
        path = _write(tmp_path, "t.json", {i: entry for i in ids})
        assert [t.client for t in load_behaviour(path)] == order


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        # float(10**400) raises OverflowError, which escaped as a traceback.
        ("big.pkl", {"1": {"computation": 10**400, "communication": 1}},
         "client '1' field 'computation' is beyond the range of a double; send a finite number"),
        ("keys.pkl", {1: {"computation": 5, "communication": 1},
                      "1": {"computation": 6, "communication": 1}},
         "client '1' appears twice"),
        ("key.pkl", {(1, 2): {"computation": 5, "communication": 1}},
         "client id (1, 2) must be a string or an integer"),
    ],
)
def test_pickle_values_beyond_a_double_or_ambiguous_ids_are_named(
    tmp_path: Path, name: str, data: object, message: str
) -> None:
    path = _write(tmp_path, name, data)
    with pytest.raises(TraceError) as info:
        load_capacities(path)
    assert str(info.value) == f"{path}: {message}"


def test_a_client_twice_is_refused_in_json_as_in_csv(tmp_path: Path) -> None:
    """JSON kept the last of two equal keys silently, while CSV refused a repeated row."""
    js = tmp_path / "dup.json"
    js.write_text('{"1": {"computation": 5, "communication": 100},\n'
                  ' "1": {"computation": 7, "communication": 1}}')
    with pytest.raises(TraceError) as info:
        load_capacities(js)
    assert str(info.value) == f"{js}:2: key '1' appears twice in one object; send each key once"
    csv_path = tmp_path / "dup.csv"
    csv_path.write_text("client_id,computation,communication\n1,5,100\n1,7,1\n")
    with pytest.raises(TraceError) as info:
        load_capacities(csv_path)
    assert str(info.value) == f"{csv_path}: client '1' appears twice (row 3)"


def test_a_pattern_that_unrolls_without_bound_is_refused(tmp_path: Path) -> None:
    """finish_time 1 ms over a day is 86.4 million periods: planning would never end."""
    path = _write(tmp_path, "beh.json", {"1": {"active": [0], "inactive": [0.0005],
                                               "finish_time": 0.001}})  # fmt: skip
    assert load_behaviour(path)[0].finish_time == 0.001  # without a span, nothing to unroll
    with pytest.raises(TraceError) as info:
        load_behaviour(path, 86_400.0)
    assert str(info.value) == (
        f"{path}: client '1' repeats every 0.001 s, so its 1 window(s) per period unroll to more "
        "than 1,000,000 over the 86400 s simulated; send a finish_time of at least 0.0864 s, or "
        "a shorter --duration-s"
    )
    ok = _write(tmp_path, "ok.json", {"1": {"active": [0], "inactive": [0.05],
                                            "finish_time": 0.0864}})  # fmt: skip
    assert len(load_behaviour(ok, 86_400.0)[0].windows(0.0, 86_400.0)) == 1_000_000


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"computation": 1e300, "communication": 1.0},
         "client '1' field 'computation' is 1e+300; send a value in (0, 1e+07] (ms per sample)"),
        ({"computation": 1.0, "communication": 1e200},
         "client '1' field 'communication' is 1e+200; send a value in [1, 1e+08] (kbit/s)"),
        # Near 0 a modeled transfer (bits / kbit/s) overflows to infinity.
        ({"computation": 1.0, "communication": 1e-300},
         "client '1' field 'communication' is 1e-300; send a value in [1, 1e+08] (kbit/s)"),
    ],
)
def test_capacities_beyond_their_range_are_refused(
    tmp_path: Path, entry: dict[str, float], message: str
) -> None:
    """Finite but huge: modeled times x 1e300 overflow to inf in the summary."""
    path = _write(tmp_path, "cap.json", {"1": entry})
    with pytest.raises(TraceError) as info:
        load_capacities(path)
    assert str(info.value) == f"{path}: {message}"


def test_a_csv_row_with_more_cells_than_the_header_is_refused(tmp_path: Path) -> None:
    """The extra cell was dropped without a word (csv.DictReader files it under None)."""
    path = tmp_path / "cap.csv"
    path.write_text("client_id,computation,communication\n1,5,100\n2,5,100,99\n")
    with pytest.raises(TraceError) as info:
        load_capacities(path)
    assert str(info.value) == (
        f"{path}: row 3 has 4 cells but the header has 3 columns; send one cell per column"
    )


def test_a_negative_active_time_is_named_as_negative(tmp_path: Path) -> None:
    path = _write(tmp_path, "beh.json", {"1": {"active": [-5], "inactive": [1],
                                               "finish_time": 10}})  # fmt: skip
    with pytest.raises(TraceError) as info:
        load_behaviour(path)
    assert str(info.value) == (
        f"{path}: client '1' field 'active[0]' = -5.0 is negative; send seconds from the start "
        "of the trace (>= 0)"
    )
