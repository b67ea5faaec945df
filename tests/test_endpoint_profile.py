"""The endpoint benchmark's profile summary, CPU readings and flags (no load, no timing asserts)."""

from __future__ import annotations

import os

import pytest

from benchmarks.endpoint_load import (
    _cpu_seconds,
    _runqueue_wait_seconds,
    format_profile,
    goals_note,
    judge_goals,
    model_room_note,
    same_rate_text,
    summarize_profile,
    worker_spread_note,
)
from benchmarks.endpoint_load import main as endpoint_main

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


@pytest.mark.parametrize(("flag", "message"), [
    ("-1", "-1 is outside 0..20; send 0..20"),
    ("two", "'two' is not a whole number; send 0..20"),
])
def test_cpu_pairs_flag_refuses_a_bad_count(
    flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cpu-pairs takes 0 (skip the paired probes) to 20; anything else is one argparse line."""
    with pytest.raises(SystemExit) as info:
        endpoint_main(["--cpu-pairs", flag])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m benchmarks.endpoint_load: error: argument --cpu-pairs: {message}"
    )


def test_same_rate_text_lists_every_pair() -> None:
    """The note names each worker count's rate and every pair's ratio, not only the median."""
    same = {"w1": {"rps": 849.6, "ratios": [1.5, 1.62, 1.481], "median_ratio": 1.5},
            "w2": {"rps": 700.0, "ratios": [1.7], "median_ratio": 1.7}}
    assert same_rate_text(same) == "w1 at 850 rps: 1.50, 1.62, 1.48; w2 at 700 rps: 1.70"
    assert same_rate_text({}) == "not measured"


def test_worker_spread_note_names_the_split_and_probes_that_missed_a_worker() -> None:
    """Multi-worker configs get their replies by worker; a probe that reached one worker of two
    is counted, since it measured one worker; single-worker configs are not mentioned."""
    by_config = {
        "echo_w1": {"workers": 1, "replies_by_worker_at_capacity": {"0": 900},
                    "probes": [{"workers_seen": {"0": 900}}]},
        "echo_w2": {
            "workers": 2,
            "replies_by_worker_at_capacity": {"0": 600, "1": 400},
            "probes": [{"workers_seen": {"0": 600, "1": 400}}, {"workers_seen": {"1": 700}}],
        },
    }
    note = worker_spread_note(by_config, 32)
    assert "holds 32 connections" in note
    assert "echo_w2 worker 0 600, worker 1 400 (busiest 60%)" in note
    assert "(they measured fewer workers): echo_w2 1 of 2" in note
    assert "echo_w1" not in note
    assert worker_spread_note({"echo_w1": by_config["echo_w1"]}, 32) == ""


def _payload(shared_cpus_w2: list[int]) -> dict[str, object]:
    """A run's judged figures: one met and one missed per kind, a figure not measured, and the
    2-worker strategy server sharing the given cores with its load generator."""
    return {
        "batching_speedup": 1.8,
        "strategy_over_echo": None,
        "p99_ms": 30.0,
        "capacity_strategy_over_echo_w1": 0.446,
        "capacity_strategy_over_echo_w2": 0.61,
        "cpu_strategy_over_echo_same_rate_w1": 1.748,
        "cpu_strategy_over_echo_own_capacity_w1": 2.3,
        "workers_2_over_1_strategy": 1.7,
        "capacity": {"strategy_w2": {"shared_cpus": shared_cpus_w2}},
    }


def test_goals_are_judged_with_their_bounds_and_named_in_the_note() -> None:
    """Each judged figure is compared with its own bound; a figure not measured and a reported
    one (own capacity) are not judged; the 2-worker goal counts only where the load generator
    had cores of its own, and otherwise the note says why it was not judged."""
    shared = _payload([1])
    met = judge_goals(shared)
    assert met == {
        "batching_speedup": False,
        "p99_ms": True,
        "capacity_strategy_over_echo_w1": False,
        "capacity_strategy_over_echo_w2": True,
        "cpu_strategy_over_echo_same_rate_w1": False,
    }
    note = goals_note(shared, met)
    assert "capacity_strategy_over_echo_w1 0.446 >= 0.6 (NOT met)" in note
    assert "cpu_strategy_over_echo_same_rate_w1 1.75 <= 1.7 (NOT met)" in note
    assert "p99_ms 30 <= 50 (met)" in note
    assert "workers_2_over_1_strategy 1.7 not judged (the load generator shared core 1" in note
    own = _payload([])
    assert judge_goals(own)["workers_2_over_1_strategy"] is True
    assert "not judged" not in goals_note(own, judge_goals(own))
    assert goals_note({}, {}) == ""


def test_model_room_note_compares_the_goal_room_with_the_engine_cost() -> None:
    """The room is (1.7 - 1) x echo's median CPU per request at the paired rate; the engine's
    cost per request is listed per batch size."""
    echo = [{"echo": {"server_cpu_ms_per_req": v}} for v in (0.4, 0.5, 0.3)]
    same = {"w1": {"rps": 1427.0, "pairs": echo}}
    engine = [{"batch": 4.0, "compute_ms_per_request": 0.305},
              {"batch": 32.0, "compute_ms_per_request": 0.161}]
    note = model_room_note(engine, same)
    assert "at most w1 at 1427 rps 0.280 ms (0.7 x echo's 0.400)" in note
    assert "0.305 ms at batch 4, 0.161 ms at batch 32 per request" in note
    assert model_room_note([], same) == "" and model_room_note(engine, {}) == ""
