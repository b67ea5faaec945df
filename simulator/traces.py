"""Device traces in FedScale's formats (capacity map, behaviour trace): pickle, JSON or CSV.

FedScale (SymbioticLab/FedScale, docs "Device Trace File Formats") publishes two per-client maps:

- capacity: ``{client_id: {"computation": ms per sample, "communication": kbit/s}}``
- behaviour: ``{client_id: {"active": [s, ...], "inactive": [s, ...], "finish_time": s, ...}}``;
  the client is online from ``active[i]`` until ``inactive[i]``, and the pattern repeats every
  ``finish_time`` seconds (FedScale reduces the clock modulo ``finish_time``). Other keys
  (``duration``, ``model``) are accepted and ignored.

FedScale ships both pickled. A pickle can run code while it loads, so `.pkl` files are read
with an unpickler that constructs nothing but builtin containers, strings and numbers: any
global (a class, a function such as ``os.system``) is refused before it is looked up.
"""

from __future__ import annotations

import csv
import io
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chord.plain_numbers import NumberError, json_float, parse_float
from chord.startcheck import clipped
from chord.textfile import TextFileError, read_json, read_text
from simulator.config import FleetConfigError

PICKLE_SUFFIXES = (".pkl", ".pickle")
MAX_WINDOWS = 1_000_000  # online windows one behaviour client may unroll to over the span
MAX_COMPUTATION_MS = 1e7  # ms per sample (as trace_reference_ms); beyond, modeled times overflow
MAX_COMMUNICATION_KBPS = 1e8  # kbit/s (100 Gbit/s), as a tier's bandwidth_kbps
MIN_COMMUNICATION_KBPS = 1.0  # kbit/s; near 0, modeled transfer times overflow to infinity
CSV_SUFFIXES = (".csv",)


class TraceError(FleetConfigError):
    """A device trace file that cannot be read, or a client entry with a malformed field."""


@dataclass(frozen=True)
class DeviceTrace:
    """One FedScale client's capacity: computation in ms per sample, communication in kbit/s."""

    client: str
    computation_ms: float
    communication_kbps: float


@dataclass(frozen=True)
class BehaviourTrace:
    """One FedScale client's availability: online in [active[i], inactive[i]), period finish_time.

    Times are seconds from the start of the trace; `windows(0, T)` unrolls the periodic pattern.
    """

    client: str
    active: tuple[float, ...]
    inactive: tuple[float, ...]
    finish_time: float

    def windows(self, start_s: float, end_s: float) -> list[tuple[float, float]]:
        """Online intervals clipped to [start_s, end_s), in time order, the pattern repeated."""
        out: list[tuple[float, float]] = []
        period = self.finish_time
        k = math.floor(start_s / period)
        while k * period < end_s:
            base = k * period
            for a, b in zip(self.active, self.inactive, strict=True):
                lo, hi = max(base + a, start_s), min(base + b, end_s)
                if hi > lo:
                    if out and out[-1][1] >= lo:  # an interval running into the next period
                        out[-1] = (out[-1][0], hi)
                    else:
                        out.append((lo, hi))
            k += 1
        return out


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, so only builtin containers and scalars load."""

    def find_class(self, module: str, name: str) -> Any:
        """Refuse: a trace is dicts, lists, strings and numbers; anything else could run code."""
        raise TraceError(
            f"the trace pickle asks to construct {module}.{name}; only dicts, lists, strings "
            "and numbers are accepted (re-save it from plain Python containers, or send JSON)"
        )


def _load_pickle(data: bytes, path: Path) -> Any:
    """Unpickle with every global refused."""
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except TraceError as exc:
        raise TraceError(f"{path}: {exc}") from None
    except Exception as exc:  # a truncated or foreign file raises many types; name it once
        raise TraceError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


class _Cell(str):
    """A CSV cell: text whose numbers are parsed as plain ASCII decimals (JSON and pickle
    values must be numbers themselves)."""

    __slots__ = ()


def _number(client: str, field: str, value: Any, path: Path) -> float:
    """A finite float, or a TraceError naming the client and field.

    CSV cells (_Cell) are parsed by chord.plain_numbers.parse_float; a JSON or pickle value
    must be a number (int or float, not bool, not a string).
    """
    what = f"client {client!r} field {field!r}"
    try:
        if isinstance(value, _Cell):
            return parse_float(str(value), what)
        return json_float(value, what)
    except NumberError as exc:
        raise TraceError(f"{path}: {exc}") from None


def _times(client: str, field: str, value: Any, path: Path) -> tuple[float, ...]:
    """A list of numbers (seconds), or a TraceError naming the client and field.

    CSV cells hold the list as space- or semicolon-separated seconds; JSON and pickle need a
    list (a string there is refused: it is not what FedScale writes).
    """
    if isinstance(value, _Cell):
        value = [_Cell(part) for part in value.replace(";", " ").split()]
    if not isinstance(value, list | tuple):
        raise TraceError(
            f"{path}: client {client!r} field {field!r} must be a list of seconds, got "
            f"{clipped(value)}; send e.g. [0, 3600]"
        )
    return tuple(_number(client, f"{field}[{i}]", v, path) for i, v in enumerate(value))


def _read_map(path: Path) -> dict[str, dict[str, Any]]:
    """The client map of a pickle, JSON or CSV file (CSV: a `client_id` column, one row each).

    Text files are read as strict UTF-8 with a leading BOM dropped, and JSON refuses NaN,
    Infinity and overflowing numbers (chord.textfile); errors name the file and line. A client
    listed twice is refused in every format (JSON: a key twice; CSV: a row twice).
    """
    suffix = path.suffix.lower()
    try:
        if suffix in PICKLE_SUFFIXES:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise TraceError(
                    f"{path}: cannot read ({exc.strerror}); send a readable file"
                ) from None
            data = _load_pickle(raw, path)
        elif suffix in CSV_SUFFIXES:
            reader = csv.DictReader(io.StringIO(read_text(path)))
            rows = list(reader)
            header = list(reader.fieldnames or [])
            if rows and "client_id" not in header:
                raise TraceError(f"{path}: a CSV trace needs a 'client_id' column")
            data = {}
            for i, row in enumerate(rows):
                extra = row.pop(None, None)  # type: ignore[call-overload]  # cells past the header
                if extra is not None:
                    raise TraceError(
                        f"{path}: row {i + 2} has {len(header) + len(extra)} cells but the header "
                        f"has {len(header)} columns; send one cell per column"
                    )
                client = row.pop("client_id")
                if client in data:
                    raise TraceError(f"{path}: client {client!r} appears twice (row {i + 2})")
                data[client] = {k: _Cell(v) if isinstance(v, str) else v for k, v in row.items()}
        else:
            data = read_json(path)
    except TextFileError as exc:  # its message says what to send, except for a syntax error
        syntax = "invalid JSON" in str(exc)
        advice = "; send a FedScale trace as .pkl, .csv or .json" if syntax else ""
        raise TraceError(f"{exc}{advice}") from None
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{path}: expected a non-empty map of client id -> fields")
    out: dict[str, dict[str, Any]] = {}
    for client, entry in data.items():
        if isinstance(client, bool) or not isinstance(client, str | int):
            raise TraceError(
                f"{path}: client id {client!r} must be a string or an integer"
            )
        if not str(client).strip():
            raise TraceError(f"{path}: a client id is empty; send a non-empty id for each client")
        if not isinstance(entry, dict):
            raise TraceError(f"{path}: client {client!r} must map to a dict of fields")
        if str(client) in out:  # a pickle holding both 1 and "1"
            raise TraceError(f"{path}: client {str(client)!r} appears twice")
        out[str(client)] = entry
    return out


def _field(client: str, entry: dict[str, Any], field: str, path: Path) -> Any:
    """entry[field], or a TraceError naming the client and the missing field."""
    if field not in entry or entry[field] is None:
        raise TraceError(f"{path}: client {client!r} is missing field {field!r}")
    value = entry[field]
    if isinstance(value, str) and not value.strip():
        raise TraceError(
            f"{path}: client {client!r} field {field!r} is empty; send its value"
        )
    return value


_INTEGER_ID = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() is True for "²"


def _sorted_clients(data: dict[str, dict[str, Any]]) -> list[str]:
    """Client ids in numeric order when they are all plain integers ("-?[0-9]+"), else lexical."""
    keys = list(data)
    if all(_INTEGER_ID.fullmatch(k) for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def load_capacities(path: str | Path) -> list[DeviceTrace]:
    """Read a FedScale capacity map; one DeviceTrace per client in client-id order.

    Accepts `.pkl` (restricted unpickler), `.csv` (columns client_id, computation,
    communication) or JSON. Raises TraceError naming the client and field that is wrong.
    """
    path = Path(path)
    data = _read_map(path)
    out = []
    for client in _sorted_clients(data):
        entry = data[client]
        comp = _number(client, "computation", _field(client, entry, "computation", path), path)
        comm = _number(client, "communication", _field(client, entry, "communication", path), path)
        for name, v, least, top, unit in (
            ("computation", comp, 0.0, MAX_COMPUTATION_MS, "ms per sample"),
            ("communication", comm, MIN_COMMUNICATION_KBPS, MAX_COMMUNICATION_KBPS, "kbit/s"),
        ):
            if v <= 0:
                raise TraceError(f"{path}: client {client!r} field {name!r} must be > 0, got {v}")
            if not least <= v <= top:
                low = "(0" if least == 0 else f"[{least:g}"
                raise TraceError(
                    f"{path}: client {client!r} field {name!r} is {v:g}; send a value in "
                    f"{low}, {top:g}] ({unit})"
                )
        out.append(DeviceTrace(client, comp, comm))
    return out


def load_behaviour(path: str | Path, span_s: float | None = None) -> list[BehaviourTrace]:
    """Read a FedScale behaviour (availability) trace; one BehaviourTrace per client, in order.

    Accepts `.pkl` (restricted unpickler), `.csv` (columns client_id, active, inactive,
    finish_time; the lists as space- or semicolon-separated seconds) or JSON. Checks, naming the
    client and field on failure: equal-length lists, 0 <= active[i] < inactive[i] <= active[i+1],
    and every time <= finish_time > 0. With span_s (the virtual clock's duration, seconds), a
    client whose pattern repeats into more than MAX_WINDOWS online windows over span_s is refused
    (a finish_time of a millisecond would plan for hours).
    """
    path = Path(path)
    data = _read_map(path)
    out = []
    for client in _sorted_clients(data):
        entry = data[client]
        active = _times(client, "active", _field(client, entry, "active", path), path)
        inactive = _times(client, "inactive", _field(client, entry, "inactive", path), path)
        finish = _number(client, "finish_time", _field(client, entry, "finish_time", path), path)
        if finish <= 0:
            raise TraceError(f"{path}: client {client!r} field 'finish_time' must be > 0")
        if not active or len(active) != len(inactive):
            raise TraceError(
                f"{path}: client {client!r} fields 'active' and 'inactive' must be non-empty and "
                f"of equal length, got {len(active)} and {len(inactive)}"
            )
        last = 0.0
        for i, (a, b) in enumerate(zip(active, inactive, strict=True)):
            if a < 0:
                raise TraceError(
                    f"{path}: client {client!r} field 'active[{i}]' = {a} is negative; send "
                    "seconds from the start of the trace (>= 0)"
                )
            if a < last:
                raise TraceError(
                    f"{path}: client {client!r} field 'active[{i}]' = {a} starts before the "
                    f"previous period ends ({last}); times must increase"
                )
            if b <= a:
                raise TraceError(
                    f"{path}: client {client!r} field 'inactive[{i}]' = {b} must be after "
                    f"active[{i}] = {a}"
                )
            last = b
        if last > finish:
            raise TraceError(
                f"{path}: client {client!r} field 'finish_time' = {finish} is before the last "
                f"inactive time {last}"
            )
        if span_s is not None and math.ceil(span_s / finish) * len(active) > MAX_WINDOWS:
            raise TraceError(
                f"{path}: client {client!r} repeats every {finish:g} s, so its {len(active)} "
                f"window(s) per period unroll to more than {MAX_WINDOWS:,} over the "
                f"{span_s:g} s simulated; send a finish_time of at least "
                f"{span_s * len(active) / MAX_WINDOWS:.3g} s, or a shorter --duration-s"
            )
        out.append(BehaviourTrace(client, active, inactive, finish))
    return out
