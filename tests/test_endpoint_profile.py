"""The endpoint benchmark's profile summary and CPU readings (no load, no timing asserts)."""

from __future__ import annotations

import os

from benchmarks.endpoint_load import (
    _cpu_seconds,
    _runqueue_wait_seconds,
    format_profile,
    summarize_profile,
)

_RAW = """\
_run_module_as_main (<frozen runpy>:198);BaseEventLoop._run_once (asyncio/base_events.py:1922);\
Handle._run (asyncio/events.py:80) 6
_run_module_as_main (<frozen runpy>:198);BaseEventLoop._run_once (asyncio/base_events.py:1884);\
EpollSelector.select (selectors.py:468) 2
Thread._bootstrap (threading.py:1002);StrategyEngine.compute (cloud_server/engine.py:150);\
HyperNetwork.forward (chord/hyper/hypernet.py:180) 9
Thread._bootstrap (threading.py:1002);StrategyEngine.compute (cloud_server/engine.py:156);\
assign_levels_batch (chord/levels/assign.py:35) 3
"""


def test_profile_summary_shares_and_table() -> None:
    s = summarize_profile(_RAW)
    assert s["samples"] == 20
    parts = s["parts"]
    assert parts["engine thread: StrategyEngine.compute"] == 0.6
    assert parts["  hypernetwork forward"] == 0.45
    assert parts["  assign_levels_batch"] == 0.15
    assert parts["event loop: BaseEventLoop._run_once"] == 0.4
    assert parts["  epoll wait (idle)"] == 0.1
    assert s["threads"] == {"other threads": 0.6, "main thread (event loop)": 0.4}
    # Line numbers are dropped, so one function's samples add up across lines.
    total = dict(s["top_total"])
    assert total["StrategyEngine.compute (cloud_server/engine.py)"] == 0.6
    assert dict(s["top_self"])["HyperNetwork.forward (chord/hyper/hypernet.py)"] == 0.45
    text = format_profile(s, "header")
    assert text.startswith("header") and " 60.0% engine thread" in text


def test_cpu_readings_of_this_process() -> None:
    pid = os.getpid()
    assert _cpu_seconds(pid) >= _cpu_seconds(pid, pid) >= 0
    assert _runqueue_wait_seconds(pid) >= 0
