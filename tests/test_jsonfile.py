"""No NaN or Infinity reaches a JSON file the project writes (chord.jsonfile)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from chord.jsonfile import dumps, finite_json, write_json


def test_non_finite_floats_become_null_everywhere(tmp_path: Path) -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": np.float32("nan"),
             "d": np.array([1.5, np.nan]), "e": {"f": np.float64(3.0)}}
    path = tmp_path / "out" / "metrics.json"
    write_json(path, value)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text) == {"a": None, "b": [1.0, None, [None, 2]], "c": None,
                                "d": [1.5, None], "e": {"f": 3.0}}
    assert finite_json(value)["e"] == {"f": 3.0}
    assert dumps({"x": math.nan}) == '{"x": null}'
