"""The one parser of numbers in users' files: plain ASCII decimals, JSON numbers as JSON numbers.

Python's int() and float() read far more than a data file means: `1_000` (a code literal's
digit separator), digits of other scripts (Arabic-Indic `١` is 1), surrounding whitespace,
`nan`, `inf` and `infinity` in any case. A file that holds any of those was not written by the
tool its reader expects, so each reader (interaction files, traces, arrivals, saved run state)
parses its numbers here and refuses everything else, naming the file and line (or client and
field) itself. Accepted text is the JSON number grammar (RFC 8259 section 6) with a leading
"+" and leading zeros tolerated, as CSV writers emit them: `-?[0-9]+(.[0-9]*)?([eE][+-]?[0-9]+)?`
or `.5`. JSON values must be JSON numbers: a string "100" and `true` are both refused.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["MAX_DIGITS", "NumberError", "json_float", "json_int", "parse_float", "parse_int"]

MAX_DIGITS = 4300  # Python's default int() limit (sys.get_int_max_str_digits)

_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT = re.compile(r"[+-]?[0-9]+")
_SEND = "send ASCII digits only (like 12, -3 or 0.5; no '_', spaces, or other scripts' digits)"


class NumberError(ValueError):
    """A value that is not a plain number; the message says what was found and what to send.

    It names neither file nor line: the reader that called adds them.
    """


def _shown(text: str) -> str:
    """text as repr, cut to 40 characters so a long cell does not flood the message."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_float(text: str, what: str) -> float:
    """The finite float of `text`, a plain ASCII decimal (see the module docstring).

    what: the field's name for the message ("timestamp", "t_s"). Raises NumberError for any
    other text (whitespace, `_`, non-ASCII digits, nan/inf) and for a value beyond a double.
    """
    if not _FLOAT.fullmatch(text):
        raise NumberError(f"{what} is {_shown(text)}, not a plain decimal number; {_SEND}")
    value = float(text)
    if not math.isfinite(value):
        raise NumberError(
            f"{what} is {_shown(text)}, beyond the range of a double (about 1.8e308); "
            "send a finite number"
        )
    return value


def parse_int(text: str, what: str) -> int:
    """The int of `text`: ASCII digits with an optional sign; NumberError otherwise."""
    if not _INT.fullmatch(text) or len(text) > MAX_DIGITS:
        raise NumberError(f"{what} is {_shown(text)}, not a plain integer; {_SEND}")
    return int(text)


def json_float(value: Any, what: str) -> float:
    """A JSON number (int or float, not bool, not a string) as a finite float.

    Raises NumberError naming `what` and the type found; an int beyond a double is refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NumberError(f"{what} must be a JSON number, got {_kind(value)}; send a number")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise NumberError(f"{what} is beyond the range of a double; send a finite number")
    return out


def json_int(value: Any, what: str) -> int:
    """A JSON integer (not bool, not a float, not a string); NumberError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise NumberError(f"{what} must be a JSON integer, got {_kind(value)}; send an integer")
    return value


def _kind(value: Any) -> str:
    """How a value that is not a number is named in a message: its JSON type and a short form."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    names = {str: "a string", list: "a list", dict: "an object"}
    for kind, name in names.items():
        if isinstance(value, kind):
            text = repr(value)
            return f"{name} {text[:40]}" if len(text) <= 40 else f"{name} {text[:37]}..."
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"the fraction {value!r}"
    return type(value).__name__
