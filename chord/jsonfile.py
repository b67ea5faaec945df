"""The one way the project writes JSON: strict (no NaN or Infinity tokens), atomic, newline-ended.

`json.dumps` writes NaN and Infinity by default, which RFC 8259 JSON does not allow and most
readers (jq, JavaScript, Go) reject. Every non-finite float is written as null instead, and
`allow_nan=False` guards the rest, so no file this project writes carries those tokens.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def finite_json(value: Any) -> Any:
    """A copy of `value` with every non-finite float (NaN, +inf, -inf) replaced by None.

    Walks dicts, lists and tuples (tuples become lists, as JSON has no tuple); numpy scalars
    and arrays are converted through their `.tolist()`.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__ == "numpy":
        return finite_json(tolist())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of `value` (non-finite floats as null); kwargs go to json.dumps."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any, *, indent: int | None = 2, **kwargs: Any) -> None:
    """Write `value` as strict JSON (plus a newline) to `path` atomically (temp file + replace)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(value, indent=indent, **kwargs) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["dumps", "finite_json", "write_json"]
