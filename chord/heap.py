"""The garbage collector in long-running processes: startup objects out of its full passes.

CPython's full (generation 2) collection walks every container object the process holds. A
server that has loaded a run holds about 264,000 of them (torch, numba, grpc, the run), and one
full pass over them took 150-250 ms on the 2-core AMD EPYC host (measured 2026-12-02 with
gc.callbacks): a stall of the event loop that lands on every call in flight and, near
capacity, on the backlog behind them. One such pass fails a 3 s probe's p99 of 50 ms. A
load-generator process holds about 173,000 and stalled 100-135 ms, which an open-loop generator
then reports as the server's latency, since each call's latency runs from its scheduled send
time.

`gc.freeze()` (Python 3.7+) moves every object tracked at that moment to a permanent
generation that later collections ignore. Its documentation gives copy-on-write in pre-fork
servers as the reason it exists; shorter full passes are the use here. Called once the
process has loaded what it keeps for its lifetime, it leaves the collector working only on
objects made afterwards: what requests create. Frozen objects that later become cyclic
garbage are never reclaimed, so freeze only what lives as long as the process.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect the garbage startup left behind, then freeze what remains (gc.freeze).

    Call once per process, after it has loaded what it keeps until it exits, from a process that
    is only a server or a load generator (not a test or a notebook: their later garbage would be
    frozen with it). Returns the number of objects now in the permanent generation.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
