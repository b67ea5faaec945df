"""The fleet-scale benchmark's measuring tools: the process-tree sampler and the profile summary."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from benchmarks.fleet_profile import buckets, parse, summarize
from benchmarks.fleet_scale import TreeMemorySampler, process_role

RAW = "\n".join(
    [
        'process 10:"";thread (10): MainThread;<module> (benchmarks/fleet_scale.py:1);'
        "run_simulation (simulator/runner.py:5) 3",
        'process 10:"";thread (11): chord-engine_0;Thread.run (threading.py:9);'
        "StrategyEngine.compute (cloud_server/engine.py:139) 5",
        'process 10:"";process 20:"ray::DeviceActor.run_batch";thread (20): MainThread;'
        "<module> (ray/_private/workers/default_worker.py:1);VirtualDevice._round (a/device.py:3);"
        "build_runtime (chord/quant/adapt.py:70);to_ort (chord/quant/onnx_runtime.py:800);"
        "_quantized_weights (chord/quant/lowbit.py:420) 7",
        'process 10:"";process 20:"ray::DeviceActor.run_batch";thread (20): MainThread;'
        "<module> (ray/_private/workers/default_worker.py:1);VirtualDevice._score (d.py:9) 2",
    ]
)


def test_profile_summary_splits_processes_and_buckets(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw"
    raw.write_text(RAW + "\n")
    procs = parse(raw)
    assert {k.split(" ")[0] for k in procs} == {"driver", "ray-worker"}
    worker = next(v for k, v in procs.items() if k.startswith("ray-worker"))
    got = buckets(worker)
    assert got["device: build_runtime, quantize weights (_quantized_weights)"] == 7
    assert got["device: score candidates (+ negatives, metrics)"] == 2
    text = summarize(raw, top=5, rate=50, title="t")
    assert "server: hypernetwork + level assignment" in text and "ray-worker 20" in text


def test_sampler_sees_memory_and_cpu_of_the_tree() -> None:
    with TreeMemorySampler(os.getpid(), 0.05, pss_every=2) as sampler:
        end = time.process_time() + 0.2
        while time.process_time() < end:  # burn a little CPU to be seen
            sum(range(1000))
        time.sleep(0.2)
    assert sampler.peak_rss_kb > 0 and sampler.peak_pss_kb > 0 and sampler.peak_procs >= 1
    assert sampler.cpu_by_role().get("driver", 0.0) > 0
    assert process_role(os.getpid(), os.getpid()) == "driver"


def test_single_process_profile_is_named_by_its_label(tmp_path: Path) -> None:
    # `py-spy record --pid` writes stacks without a process frame.
    raw = tmp_path / "one.raw"
    raw.write_text(
        "thread (20): device-lane_0;VirtualDevice._round (a/device.py:3);"
        "build_runtime (chord/quant/adapt.py:70) 4\n"
        "thread (21): device-lane_1;VirtualDevice._score (d.py:9) 1\n"
    )
    procs = parse(raw, label="ray-worker 20")
    assert list(procs) == ["ray-worker 20"]
    assert buckets(procs["ray-worker 20"])["device: build_runtime, ONNX graph + ORT session"] == 4
    text = summarize(raw, rate=100, label="ray-worker 20")
    assert "=== ray-worker 20: 5 samples ===" in text and "device-lane_0" in text
    assert list(parse(raw)) == ["process 0"]


def test_step_timers_time_the_named_calls_and_put_them_back() -> None:
    import json

    from benchmarks.device_stages import STEPS, _owner, step_timers

    for path, attr, _ in STEPS:  # every step names a function the device really calls
        assert callable(_owner(path).__dict__[attr]), (path, attr)
    original = json.dumps
    with step_timers([("json", "dumps", "dump")]) as spent:
        assert json.dumps is not original and json.dumps({"a": 1}) == '{"a": 1}'
        assert set(spent) == {"dump"} and spent["dump"] >= 0.0
    assert json.dumps is original


def test_a_day_on_another_device_runtime_is_its_own_result() -> None:
    """fleet_day --device-runtime int8 writes fleet_day_int8 and its note names the flag."""
    from benchmarks import fleet_day

    assert fleet_day.result_name("") == fleet_day.result_name("ort") == "fleet_day"
    assert fleet_day.result_name("int8") == "fleet_day_int8"
    row = {
        "devices": 1000, "requests": 4575, "wall_s": 50.0, "cpu_s": 90.0, "peak_rss_mb": 1600.0,
        "peak_pss_mb": 1100.0, "accounted_once": True, "cpu_s_by_role": {"driver": 30.0},
        "loadavg_before": "1 1 1", "loadavg_after": "2 2 2",
    }  # fmt: skip
    for runtime, flag in (("int8", True), ("", False)):
        cfg = fleet_day.FleetDayConfig(runtime=runtime)
        payload = {"rows": [row], "scale": fleet_day.scale_figures([row]),
                   "config": dataclasses.asdict(cfg)}  # fmt: skip
        text = fleet_day.notes(payload)
        assert ("--device-runtime int8" in text) is flag
        assert f"results/{fleet_day.result_name(runtime)}_timeline.png" in text
