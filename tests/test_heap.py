"""chord.heap: a process's startup heap frozen out of the garbage collector's full passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_freeze_startup_heap_moves_the_loaded_heap_out_of_collections() -> None:
    """In its own interpreter: freezing the pytest process would keep its garbage forever."""
    code = (
        "import gc, torch; from chord.heap import freeze_startup_heap; "
        "n = freeze_startup_heap(); print(n, gc.get_freeze_count(), len(gc.get_objects()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
        cwd=ROOT,
    ).stdout.split()
    frozen, count, tracked = map(int, out)
    assert frozen == count > 10_000  # torch alone brings tens of thousands
    assert tracked < frozen // 10  # what a full collection still walks
