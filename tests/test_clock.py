"""The virtual clock: seeded arrivals, no requests while offline, triggers, a day end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from simulator.clock import diurnal_windows, plan_device, plan_requests
from simulator.config import ClockConfig, FleetConfig, FleetConfigError
from simulator.fleet import iter_jobs, plan_fleet
from simulator.runner import run_simulation
from simulator.traces import BehaviourTrace
from tests.test_simulator import QUICK_TRANSPORT

DAY = ClockConfig(mode="virtual")


def _inside(t: float, windows: tuple[tuple[float, float], ...]) -> bool:
    return any(lo <= t < hi for lo, hi in windows)


def test_same_seed_same_arrivals_other_seed_other_arrivals() -> None:
    a = [plan_device(DAY, 0, f"dev-{i:05d}", 200).requests for i in range(50)]
    b = [plan_device(DAY, 0, f"dev-{i:05d}", 200).requests for i in range(50)]
    c = [plan_device(DAY, 1, f"dev-{i:05d}", 200).requests for i in range(50)]
    assert a == b
    assert a != c
    assert sum(len(r) for r in a) > 50  # devices come back and drift over a day


def test_diurnal_model_peaks_near_the_peak_hour() -> None:
    c = dataclasses.replace(DAY, peak_hour=20.0, diurnal_amplitude=1.0, sessions_per_day=20)
    rng = np.random.default_rng(0)
    starts = [lo for _ in range(300) for lo, _ in diurnal_windows(c, rng)]
    hours = np.asarray(starts) / 3600
    evening = np.sum((hours >= 17) & (hours < 23))
    morning = np.sum((hours >= 5) & (hours < 11))
    assert evening > 3 * morning


def test_offline_device_makes_no_request_in_its_offline_window() -> None:
    # Online 0-1000 s and 5000-6000 s of every 10,000 s; a busy user drifting often.
    trace = BehaviourTrace("1", (0.0, 5000.0), (1000.0, 6000.0), 10_000.0)
    c = dataclasses.replace(
        DAY, duration_s=30_000.0, interactions_per_hour=200.0, drift_every=2,
        refresh_interval_s=300.0, model_releases_s=(2500.0, 15_500.0),
    )  # fmt: skip
    plan = plan_device(c, 0, "dev-00001", 400, trace)
    assert plan.windows == ((0, 1000), (5000, 6000), (10_000, 11_000), (15_000, 16_000),
                            (20_000, 21_000), (25_000, 26_000))  # fmt: skip
    times = [r[0] for r in plan.requests]
    assert times == sorted(times)
    assert all(_inside(t, plan.windows) for t in times)
    assert not [t for t in times if 1000 <= t < 5000 or 6000 <= t < 10_000]
    triggers = {r[1] for r in plan.requests}
    assert triggers == {"arrival", "drift", "interval", "model_version"}
    # The release at 2500 s (offline) is picked up when the device is back at 5000 s.
    assert (5000.0, "model_version") in [(r[0], r[1]) for r in plan.requests]
    # The release at 15,500 s (online) is asked for at once.
    assert (15_500.0, "model_version") in [(r[0], r[1]) for r in plan.requests]
    assert [r[1] for r in plan.requests].count("arrival") == 1


def test_positions_partition_the_replayed_tail() -> None:
    c = dataclasses.replace(DAY, drift_every=3)
    windows = [(0.0, 100.0), (200.0, 300.0)]
    times = [10.0, 20.0, 30.0, 40.0, 250.0]
    reqs = plan_requests(c, windows, times, first_position=20)
    assert reqs == [
        (0.0, "arrival", 20, 23),  # scores the first three interactions, then drift
        (30.0, "drift", 23, 25),
    ]
    # Every replayed position is scored by exactly one strategy.
    plan = plan_device(DAY, 3, "dev-00003", 60)
    spans = [range(a, b) for _, _, a, b in plan.requests]
    covered = [p for s in spans for p in s]
    assert covered == list(range(60 - plan.interactions, 60))
    assert all(a >= DAY.min_history for _, _, a, _ in plan.requests)


def test_clock_config_is_validated() -> None:
    with pytest.raises(FleetConfigError, match=r"clock\.mode"):
        ClockConfig(mode="wall")
    with pytest.raises(FleetConfigError, match="model_releases_s"):
        FleetConfig(clock=ClockConfig(model_releases_s=(90_000.0,)))
    from simulator.config import ChurnConfig

    with pytest.raises(FleetConfigError, match=r"churn\.offline_prob = 0"):
        FleetConfig(clock=DAY, churn=ChurnConfig(offline_prob=0.1))


def test_virtual_day_end_to_end(tmp_path: Path, smoke_run_dir: Path) -> None:
    clock = ClockConfig(
        mode="virtual", duration_s=6 * 3600.0, sessions_per_day=12.0, peak_hour=3.0,
        interactions_per_hour=20.0, drift_every=3, model_releases_s=(3 * 3600.0,),
        staleness_sample=0.5,
    )  # fmt: skip
    cfg = FleetConfig(
        devices=12, run_dir=str(smoke_run_dir), ray_address="none", batch_size=4,
        transport=QUICK_TRANSPORT, clock=clock,
    )  # fmt: skip
    s = run_simulation(cfg, tmp_path / "day", progress=False)
    out = tmp_path / "day"
    assert (s["completed"], s["failed"], s["missing"], s["duplicates"]) == (12, 0, 0, 0)
    t = s["timeline"]
    with (out / "arrivals.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["t_s", "device_id", "reason"]
    stamps = [float(r[0]) for r in rows[1:]]
    assert stamps == sorted(stamps) and len(stamps) == t["requests"] == s["requests"] > 12
    # Every request lies in an online window of its device's (re-planned, seeded) day.
    plans = {j.device_id: j for j in plan_fleet(cfg, _users(), "x")}
    for t_s, device_id, reason in rows[1:]:
        sched = plans[device_id].schedule
        assert (round(float(t_s), 3), reason) in [(round(r[0], 3), r[1]) for r in sched]
    assert t["requests_by_trigger"]["arrival"] == 12 - t["devices_never_online"]
    assert t["requests_by_trigger"]["model_version"] > 0
    assert t["staleness_probes"] > 0 and t["staleness"]["fresh_ndcg10"] is not None
    series = json.loads((out / "timeline.json").read_text())
    assert len(series["online_per_minute"]) == 360 and sum(series["requests_per_minute"]) == len(
        stamps
    )
    hourly = series["bytes_per_hour"]
    assert sum(hourly["one_time"]) > 0 and sum(hourly["strategies"]) > 0
    assert sum(hourly["reports"]) > 0
    assert (out / "timeline.png").stat().st_size > 10_000
    assert "## Virtual clock" in (out / "report.md").read_text()
    db = sqlite3.connect(out / "reports.db")
    assert db.execute("SELECT COUNT(DISTINCT device_id), COUNT(*) FROM devices").fetchone() == (
        12,
        12,
    )


def _users() -> list[np.ndarray]:
    from simulator.runner import load_users

    return load_users("ml-100k")[0]


def test_clock_from_toml_and_flags(tmp_path: Path) -> None:
    import argparse

    from simulator.cli import add_arguments, build_config
    from simulator.config import read_saved_config, save_config

    toml = tmp_path / "day.toml"
    toml.write_text("[clock]\ndrift_every = 4\nmodel_releases_s = [3600, 7200]\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = ["--config", str(toml), "--clock", "virtual", "--duration-s", "43200"]
    trace = tmp_path / "b.pkl"
    trace.write_bytes(b"")
    cfg = build_config(parser.parse_args([*args, "--behaviour-trace", str(trace)]))
    assert (cfg.clock.mode, cfg.clock.duration_s, cfg.clock.drift_every) == ("virtual", 43200, 4)
    assert cfg.clock.model_releases_s == (3600.0, 7200.0)
    assert cfg.clock.behaviour_trace == str(trace)
    with pytest.raises(FleetConfigError, match="behaviour_trace"):
        build_config(parser.parse_args([*args, "--behaviour-trace", str(tmp_path / "none.pkl")]))
    save_config(cfg, tmp_path / "saved.json")
    assert read_saved_config(tmp_path / "saved.json") == cfg


def test_virtual_day_survives_a_killed_actor_and_a_server_restart(
    tmp_path: Path, ray_session: None, smoke_run_dir: Path
) -> None:
    from simulator.config import FaultConfig

    clock = ClockConfig(
        mode="virtual", duration_s=4 * 3600.0, sessions_per_day=12.0, peak_hour=2.0,
        interactions_per_hour=20.0, drift_every=3, staleness_sample=0.0,
    )  # fmt: skip
    cfg = FleetConfig(
        devices=24, run_dir=str(smoke_run_dir), batch_size=3, actors=2, lanes=2,
        transport=QUICK_TRANSPORT, clock=clock,
        faults=FaultConfig(seed=3, kill_actor_after=5, restart_server_after=10, net_loss=0.1),
    )  # fmt: skip
    s = run_simulation(cfg, tmp_path / "chaos", progress=False)
    assert (s["completed"], s["failed"], s["missing"], s["duplicates"]) == (24, 0, 0, 0)
    assert s["faults_injected"] == {"actor_killed": 1, "server_restarted": 1}
    assert s["backend"]["batches_rerun"] >= 1
    db = sqlite3.connect(tmp_path / "chaos" / "reports.db")
    ids = sorted(r[0] for r in db.execute("SELECT device_id FROM devices"))
    assert ids == [f"dev-{i:05d}" for i in range(24)]
    # Each planned request was made exactly once and is listed once in arrivals.csv.
    planned = sum(len(j.schedule) for j in plan_fleet(cfg, _users(), "x"))
    with (tmp_path / "chaos" / "arrivals.csv").open() as fh:
        assert sum(1 for _ in fh) - 1 == planned == s["requests"]


def test_fleet_follows_a_behaviour_trace_file(tmp_path: Path) -> None:
    trace = {
        "11": {"active": [0, 40_000], "inactive": [3_600, 50_000], "finish_time": 86_400},
        "12": {"active": [70_000], "inactive": [80_000], "finish_time": 86_400},
    }
    path = tmp_path / "behave.json"
    path.write_text(json.dumps(trace))
    clock = dataclasses.replace(DAY, behaviour_trace=str(path), interactions_per_hour=30.0)
    users = [np.arange(1, 80), np.arange(5, 60)]
    jobs = plan_fleet(FleetConfig(devices=4, clock=clock), users, "t")
    windows = {0: ((0, 3_600), (40_000, 50_000)), 1: ((70_000, 80_000),)}
    for i, job in enumerate(jobs):  # device i follows trace client i % 2, in id order
        assert job.virtual and job.schedule
        assert all(_inside(t, windows[i % 2]) for t, *_ in job.schedule), job.schedule
        assert job.schedule[0][:2] == (float(windows[i % 2][0][0]), "arrival")


def test_staleness_sample_is_a_share_capped_at_a_number_of_devices() -> None:
    def probes(devices: int, **clock: float) -> int:
        cfg = FleetConfig(devices=devices, clock=dataclasses.replace(DAY, **clock))
        return sum(j.staleness_probe for j in iter_jobs(cfg, _users(), "x"))

    # 5% of 400 devices is 20 in expectation; a cap of 10 halves the share; 0 lifts the cap.
    assert 10 <= probes(400) <= 32
    capped = probes(400, staleness_max_devices=10)
    assert 3 <= capped <= 18 and capped < probes(400)
    assert probes(400, staleness_sample=0.5, staleness_max_devices=0) > 150
    assert probes(400, staleness_sample=0.0) == 0
    with pytest.raises(FleetConfigError, match=r"clock\.staleness_max_devices"):
        ClockConfig(staleness_max_devices=-1)
