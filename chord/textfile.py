"""Reading the text files users hand the project (TOML, JSON, JSONL): BOM-blind, line-exact errors.

Every reader of a user's file goes through `read_text`: a UTF-8 byte-order mark is dropped, at
the start of the file and at the start of any line (files joined with `cat` keep each part's
mark), so a file with one reads exactly like the file without it, and a byte that is not UTF-8 is
reported by file, line and column, never by an offset inside a decode buffer. `loads_json` parses
strict JSON (RFC 8259: no NaN or Infinity tokens, no number that overflows a double, no key twice
in one object) and names the line of an error.
"""

from __future__ import annotations

import codecs
import itertools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chord.plain_numbers import MAX_DIGITS as MAX_INT_DIGITS


class TextFileError(ValueError):
    """A file that cannot be read as UTF-8 text or parsed; the message names file and line."""


def drop_boms(raw: bytes) -> bytes:
    """raw without a UTF-8 byte-order mark at its start or at the start of any line.

    U+FEFF there is never content: it is the mark of a file that was joined to another one.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    return raw.replace(b"\n" + codecs.BOM_UTF8, b"\n")


def read_text(path: str | Path) -> str:
    """The file's text: strict UTF-8, BOMs dropped (drop_boms), newlines kept as they are.

    Raises TextFileError naming the file (unreadable, or UTF-16/32 by its byte-order mark) or
    the file, line and column of the first byte that is not UTF-8.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TextFileError(f"{p}: cannot read ({exc.strerror}); send a readable file") from None
    _refuse_wide(p, raw[:4])
    raw = drop_boms(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _not_utf8(p, line, raw[exc.start], column) from None


def _not_utf8(path: Path, line: int, byte: int, column: int) -> TextFileError:
    """The error of a byte that is not UTF-8, by file, line and 1-based column."""
    return TextFileError(
        f"{path}:{line}: byte 0x{byte:02x} at column {column} is not UTF-8; "
        "re-encode the file as UTF-8"
    )


_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _refuse_wide(path: Path, head: bytes) -> None:
    """Raise TextFileError when head starts with a UTF-16 or UTF-32 byte-order mark."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise TextFileError(
                f"{path}: the file is {name} text (it starts with a {name} byte-order mark); "
                f"re-encode it as UTF-8 (e.g. iconv -f {name} -t UTF-8)"
            )


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line ending) of every line, read one at a time.

    The same rules as read_text (strict UTF-8, BOMs dropped), in memory bounded by the longest
    line: for files that grow without bound (a server's report log, interaction dumps).
    Raises TextFileError naming the file (unreadable, or UTF-16/32 by its byte-order mark) or
    the file, line and column of a byte that is not UTF-8.
    """
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise TextFileError(f"{p}: cannot read ({exc.strerror}); send a readable file") from None
    with fh:
        _refuse_wide(p, fh.peek(4)[:4])
        for lineno, raw in enumerate(fh, start=1):
            raw = drop_boms(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(p, lineno, raw[exc.start], exc.start + 1) from None
            yield lineno, line.rstrip("\r\n")


class _TokenError(ValueError):
    """A JSON token json.loads parses but no reader here can use; its hooks do not say where.

    token: the text to find (to name its line); reason: the message after the line.
    """

    def __init__(self, token: str, reason: str) -> None:
        super().__init__(reason)
        self.token = token
        self.reason = reason


def _no_constants(token: str) -> Any:
    """parse_constant hook: NaN, Infinity and -Infinity are not JSON numbers."""
    raise _TokenError(token, f"{token} is not a JSON number; send a finite number")


def _finite_float(token: str) -> float:
    """parse_float hook: a number literal that overflows a double (1e400) is refused, not inf."""
    value = float(token)
    if not math.isfinite(value):
        raise _TokenError(
            token, f"{token} is beyond the range of a double (about 1.8e308); send a finite number"
        )
    return value


def _bounded_int(token: str) -> int:
    """parse_int hook: Python refuses int() of over 4300 digits with a bare ValueError."""
    if len(token.lstrip("-")) > MAX_INT_DIGITS:
        raise _TokenError(
            token[:20],
            f"an integer of {len(token.lstrip('-'))} digits is too long; send at most "
            f"{MAX_INT_DIGITS} digits",
        )
    return int(token)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a key given twice in one object is refused (RFC 8259 4: names SHOULD
    be unique; json.loads would silently keep the last value)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


class _DuplicateKeyError(ValueError):
    """A key given twice in one JSON object."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _token_line(text: str, token: str) -> int:
    """1-based line of the first `token` outside a JSON string (1 when not found)."""
    in_string = escaped = False
    line = 1
    for i, ch in enumerate(text):
        if ch == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if text.startswith(token, i):
            return line
        if ch == '"':
            in_string = True
    return 1


def _key_line(text: str, key: str) -> int:
    """1-based line of the second occurrence of `key` as an object key (1 when not found)."""
    pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:")
    matches = list(itertools.islice(pattern.finditer(text), 2))
    if len(matches) < 2:
        pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
        matches = list(itertools.islice(pattern.finditer(text), 2))
    return text.count("\n", 0, matches[1].start()) + 1 if len(matches) == 2 else 1


def loads_json(text: str, where: str, first_line: int = 1) -> Any:
    """Strict JSON of `text`; TextFileError names `where`, the line and what to send instead.

    Refused beyond json.loads: NaN/Infinity tokens, number literals that overflow a double
    (1e400 would read as inf), integers of over MAX_INT_DIGITS digits, and a key given twice
    in one object. first_line: the file line `text` starts on (JSONL rows).
    """
    try:
        return json.loads(
            text,
            parse_constant=_no_constants,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise TextFileError(
            f"{where}:{first_line + exc.lineno - 1}: invalid JSON at column {exc.colno} "
            f"({exc.msg})"
        ) from None
    except _TokenError as exc:
        line = first_line + _token_line(text, exc.token) - 1
        raise TextFileError(f"{where}:{line}: {exc.reason}") from None
    except _DuplicateKeyError as exc:
        line = first_line + _key_line(text, exc.key) - 1
        raise TextFileError(
            f"{where}:{line}: key {exc.key!r} appears twice in one object; send each key once"
        ) from None


def read_json(path: str | Path) -> Any:
    """read_text + loads_json."""
    return loads_json(read_text(path), str(path))


__all__ = ["TextFileError", "drop_boms", "iter_lines", "loads_json", "read_json", "read_text"]
