"""Parsers of the interaction file formats: GroupLens u.data, ratings.dat, RecBole .inter, CSV."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chord.data.errors import DataFormatError
from chord.plain_numbers import NumberError, parse_float
from chord.textfile import TextFileError, iter_lines

FORMATS = ("auto", "grouplens", "movielens-dat", "inter", "csv")

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class RawInteractions:
    """Interactions as read, in file order: raw user and item labels and timestamps."""

    users: list[str]
    items: list[str]
    timestamps: np.ndarray  # float64; the line order when the file has no timestamp


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for every non-blank line.

    chord.textfile.iter_lines: strict UTF-8 decoded one line at a time (an undecodable byte is
    reported by line and column), a BOM at the start of the file or of any line dropped (a file
    with one, or two such files joined with `cat`, reads exactly like the text without it).
    """
    try:
        for lineno, text in iter_lines(path):
            if text.strip():
                yield lineno, text
    except TextFileError as exc:
        raise DataFormatError(str(exc)) from None


def _bad(path: Path, lineno: int, expected: str, line: str) -> DataFormatError:
    """A DataFormatError naming file, line, what was expected and what was found."""
    return DataFormatError(f"{path}:{lineno}: expected {expected}, got {_clip(line)}")


# C0/C1 control characters (tab aside, a separator) and U+FEFF inside a field: never part of
# an id a person wrote, and invisible in every error message that shows the id.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ufeff]")


def _ids(path: Path, lineno: int, user: str, item: str, line: str, names: str) -> None:
    """Raise a DataFormatError naming file and line unless user and item are non-empty ids
    without control characters; `names` says what the format calls them."""
    if not user or not item:
        raise _bad(path, lineno, f"non-empty {names}", line)
    for label in (user, item):
        bad = _CONTROL.search(label)
        if bad is not None:
            raise DataFormatError(
                f"{path}:{lineno}: id {label!r} holds control character "
                f"U+{ord(bad.group()):04X}; send ids of printable characters"
            )


def _number(path: Path, lineno: int, value: str, what: str, line: str) -> float:
    """A numeric field as a finite float (chord.plain_numbers: ASCII decimals only), or a
    DataFormatError naming file, line and field."""
    try:
        return parse_float(value, what)
    except NumberError as exc:
        raise DataFormatError(f"{path}:{lineno}: {exc} (line {_clip(line)})") from None


def _clip(line: str) -> str:
    """The line as repr, cut to 80 characters."""
    return repr(line if len(line) <= 80 else line[:77] + "...")


def _read_fixed(path: Path, split: Callable[[str], list[str]], layout: str) -> RawInteractions:
    """Four fields per line: user item rating timestamp (rating and timestamp numeric)."""
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    for lineno, line in _lines(path):
        fields = split(line)
        if len(fields) != 4:
            raise _bad(path, lineno, f"4 fields {layout}", line)
        user, item, rating, stamp = (f.strip() for f in fields)
        _ids(path, lineno, user, item, line, f"user and item in {layout}")
        _number(path, lineno, rating, "rating", line)
        users.append(user)
        items.append(item)
        times.append(_number(path, lineno, stamp, "timestamp", line))
    return _finish(path, users, items, times)


def read_grouplens(path: Path) -> RawInteractions:
    """GroupLens u.data: tab-separated `user item rating timestamp`."""
    return _read_fixed(path, lambda s: s.split("\t"), "'user<TAB>item<TAB>rating<TAB>timestamp'")


def read_movielens_dat(path: Path) -> RawInteractions:
    """MovieLens ratings.dat: `user::item::rating::timestamp`."""
    return _read_fixed(path, lambda s: s.split("::"), "'user::item::rating::timestamp'")


def read_inter(path: Path) -> RawInteractions:
    """RecBole atomic .inter file: a typed header (`user_id:token item_id:token ...`) then rows."""
    rows = _lines(path)
    try:
        lineno, header_line = next(rows)
    except StopIteration:
        raise DataFormatError(f"{path}: empty file; expected a RecBole header line") from None
    header = header_line.split("\t")
    names: list[str] = []
    kinds: list[str] = []
    for col in header:
        name, sep, kind = col.strip().partition(":")
        if not sep or kind not in ("token", "float", "token_seq", "float_seq"):
            raise _bad(
                path, lineno, "a tab-separated typed header like 'user_id:token<TAB>item_id:token'",
                header_line,
            )
        names.append(name)
        kinds.append(kind)
    for required in ("user_id", "item_id"):
        if required not in names:
            raise _bad(path, lineno, f"a '{required}:token' column in the header", header_line)
    iu, ii = names.index("user_id"), names.index("item_id")
    it = names.index("timestamp") if "timestamp" in names else None
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    width = len(names)
    for lineno, line in rows:
        fields = line.split("\t")
        if len(fields) != width:
            raise _bad(path, lineno, f"{width} tab-separated fields ({', '.join(names)})", line)
        user, item = fields[iu].strip(), fields[ii].strip()
        _ids(path, lineno, user, item, line, "user_id and item_id")
        for name, kind, value in zip(names, kinds, fields, strict=True):
            if kind == "float" and value.strip():
                _number(path, lineno, value.strip(), name, line)
            elif kind == "float_seq":
                for part in value.split():
                    _number(path, lineno, part, name, line)
        users.append(user)
        items.append(item)
        stamp = None if it is None else fields[it].strip()
        times.append(
            float(len(times)) if stamp is None else _number(path, lineno, stamp, "timestamp", line)
        )
    return _finish(path, users, items, times)


def read_csv(path: Path) -> RawInteractions:
    """Plain `user item [timestamp]`, comma or whitespace separated; no timestamp = line order.

    A first line whose first two fields start with "user" and "item" is taken as a header.
    """
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    width: int | None = None
    comma: bool | None = None
    for lineno, line in _lines(path):
        if comma is None:
            comma = "," in line
        fields = [f.strip() for f in line.split(",")] if comma else _WS.split(line.strip())
        if width is None:
            if len(fields) not in (2, 3):
                raise _bad(path, lineno, "2 or 3 fields 'user item [timestamp]'", line)
            width = len(fields)
            low = [f.lower() for f in fields]
            if low[0].startswith("user") and low[1].startswith("item"):
                continue
        if len(fields) != width:
            layout = "'user item timestamp'" if width == 3 else "'user item'"
            raise _bad(path, lineno, f"{width} fields {layout} like the first line", line)
        _ids(path, lineno, fields[0], fields[1], line, "user and item")
        users.append(fields[0])
        items.append(fields[1])
        times.append(
            float(len(times)) if width == 2 else _number(path, lineno, fields[2], "timestamp", line)
        )
    return _finish(path, users, items, times)


def _finish(path: Path, users: list[str], items: list[str], times: list[float]) -> RawInteractions:
    """Bundle parsed columns; an empty file is an error."""
    if not users:
        raise DataFormatError(f"{path}: no interactions found; expected one per line")
    return RawInteractions(users, items, np.asarray(times, dtype=np.float64))


def detect_format(path: Path) -> str:
    """Guess a file's format from its name and first non-blank line."""
    if path.suffix == ".inter":
        return "inter"
    if path.name == "ratings.dat":
        return "movielens-dat"
    first = next((line for _, line in _lines(path)), "")
    if re.search(r":(token|float)(_seq)?(\t|$)", first):
        return "inter"
    if "::" in first:
        return "movielens-dat"
    if path.name == "u.data" or (first.count("\t") == 3 and "," not in first):
        return "grouplens"
    return "csv"


READERS: dict[str, Callable[[Path], RawInteractions]] = {
    "grouplens": read_grouplens,
    "movielens-dat": read_movielens_dat,
    "inter": read_inter,
    "csv": read_csv,
}


def read_interactions(path: Path, fmt: str = "auto") -> RawInteractions:
    """Parse `path` in format `fmt` (one of FORMATS; "auto" detects it)."""
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    return READERS[fmt](path)


__all__ = [
    "FORMATS",
    "RawInteractions",
    "detect_format",
    "read_csv",
    "read_grouplens",
    "read_inter",
    "read_interactions",
    "read_movielens_dat",
]
