"""The fleet simulator end to end: a real server on port 0, a real local Ray, a real store."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device_client.device import DeviceReport, RoundRecord
from simulator.cli import add_arguments, build_config
from simulator.config import (
    ChurnConfig,
    DriftConfig,
    FaultConfig,
    FleetConfig,
    FleetConfigError,
    TransportConfig,
    config_from_dict,
    load_config,
    read_saved_config,
    save_config,
)
from simulator.fleet import plan_fleet, tier_assignment
from simulator.runner import run_simulation
from simulator.store import ReportStore
from simulator.traces import TraceError, load_capacities

REPO = Path(__file__).resolve().parent.parent
QUICK_TRANSPORT = TransportConfig(
    call_timeout_s=5.0,
    overall_timeout_s=30.0,
    max_attempts=30,
    backoff_base_s=0.02,
    backoff_max_s=0.3,
)


def _cfg(run_dir: Path, **kw: object) -> FleetConfig:
    """A small fleet on the smoke run."""
    base: dict[str, object] = dict(
        devices=24, run_dir=str(run_dir), batch_size=3, actors=2, transport=QUICK_TRANSPORT
    )
    base.update(kw)
    return FleetConfig(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- config, plan, store (no Ray)


def test_toml_config_and_cli_overrides(tmp_path: Path) -> None:
    example = load_config(REPO / "simulator" / "fleet.example.toml")
    assert [t.name for t in example.tiers] == ["low", "mid", "high"]
    toml = tmp_path / "fleet.toml"
    toml.write_text(
        "devices = 7\n[drift]\nrounds = 3\n[faults]\nnet_loss = 0.1\n"
        '[[tiers]]\nname = "mid"\nshare = 1.0\nbudget_bits = 3.0\n'
    )
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = build_config(parser.parse_args(["--config", str(toml), "--devices", "9", "--token", "t"]))
    assert cfg.devices == 9 and cfg.drift.rounds == 3 and cfg.faults.net_loss == 0.1
    assert cfg.transport.token == "t" and len(cfg.tiers) == 1
    save_config(cfg, tmp_path / "saved.json")
    assert read_saved_config(tmp_path / "saved.json") == cfg
    with pytest.raises(FleetConfigError, match="unknown keys"):
        config_from_dict({"drift": {"roundz": 2}})
    with pytest.raises(FleetConfigError, match="net_loss"):
        FleetConfig(faults=FaultConfig(net_loss=1.5))


def test_tier_assignment_meets_shares() -> None:
    tiers = FleetConfig().tiers
    got = tier_assignment(tiers, 101, seed=0)
    counts = {t.name: sum(x.name == t.name for x in got) for t in tiers}
    assert counts == {"low": 30, "mid": 51, "high": 20}  # largest remainder goes to mid (.5)
    assert [t.name for t in tier_assignment(tiers, 101, seed=0)] == [t.name for t in got]


def test_fedscale_traces(tmp_path: Path) -> None:
    path = tmp_path / "traces.json"
    path.write_text(
        json.dumps(
            {
                "1": {"computation": 10.0, "communication": 500.0},
                "2": {"computation": 40.0, "communication": 2000.0},
            }
        )
    )
    seqs = [np.arange(1, 12), np.arange(3, 20)]
    jobs = plan_fleet(
        FleetConfig(devices=4, traces_file=str(path), trace_reference_ms=10.0), seqs, "x"
    )
    assert [j.bandwidth_kbps for j in jobs] == [500.0, 2000.0, 500.0, 2000.0]
    assert [j.compute_factor for j in jobs] == [1.0, 4.0, 1.0, 4.0]
    assert [j.user_index for j in jobs] == [0, 1, 0, 1]  # devices cycle over users
    path.write_text(json.dumps({"1": {"computation": "fast"}}))
    with pytest.raises(TraceError):
        load_capacities(path)


def test_plan_is_seeded() -> None:
    seqs = [np.arange(1, 30) for _ in range(5)]
    cfg = FleetConfig(
        devices=50,
        drift=DriftConfig(rounds=4),
        churn=ChurnConfig(offline_prob=0.3),
        faults=FaultConfig(corrupt_code_prob=0.2, seed=1),
    )
    a, b = plan_fleet(cfg, seqs, "t"), plan_fleet(cfg, seqs, "t")
    assert [(j.tier, j.offline_rounds, j.corrupt_rounds) for j in a] == [
        (j.tier, j.offline_rounds, j.corrupt_rounds) for j in b
    ]
    assert any(j.offline_rounds for j in a) and all(0 not in j.offline_rounds for j in a)
    assert any(j.corrupt_rounds for j in a)


def test_store_is_idempotent(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "r.db")
    rep = DeviceReport(
        "d1", "mid", 0, rounds=[RoundRecord("d1", 0, "mid", hr10=1.0), RoundRecord("d1", 1, "mid")]
    )
    assert store.add(rep) is True
    assert store.add(dataclasses.replace(rep, status="failed")) is False
    assert len(store.devices()) == 1 and store.devices()[0]["status"] == "completed"
    assert len(store.rounds()) == 2
    store.close()
    assert sqlite3.connect(tmp_path / "r.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---------------------------------------------------------------- end to end with Ray


def test_mixed_tier_fleet_with_drift_churn_and_bad_codes(
    tmp_path: Path,
    ray_session: None,
    smoke_run_dir: Path,
) -> None:
    cfg = _cfg(
        smoke_run_dir,
        drift=DriftConfig(rounds=3, interactions_per_round=2),
        churn=ChurnConfig(offline_prob=0.3),
        faults=FaultConfig(seed=2, corrupt_code_prob=0.3),
    )
    s = run_simulation(cfg, tmp_path / "sim", progress=False)
    assert (s["devices"], s["completed"], s["failed"], s["missing"]) == (24, 24, 0, 0)
    assert set(s["per_tier"]) == {"low", "mid", "high"}
    assert sum(t["devices"] for t in s["per_tier"].values()) == 24
    # Higher tiers get more bits.
    bits = {t: s["per_tier"][t]["avg_bits"] for t in s["per_tier"]}
    assert bits["low"] < bits["mid"] < bits["high"]
    assert s["offline_rounds"] > 0
    assert any(k.endswith(":rejected") for k in s["faults"])
    assert "previous" in s["strategy_sources"] or "uniform_fallback" in s["strategy_sources"]
    assert s["comm_reduction"] > 100
    assert 0 < s["hr10"] <= 1 and s["requests"] == 24 * 3 - s["offline_rounds"]
    out = tmp_path / "sim"
    for name in (
        "summary.json",
        "report.md",
        "rounds.csv",
        "latency_cdf.png",
        "accuracy_per_tier.png",
        "bytes_per_adaptation.png",
        "fleet.json",
    ):
        assert (out / name).exists(), name
    rows = sqlite3.connect(out / "reports.db").execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
    assert rows == 24 * 3


def test_killed_actor_and_restarted_server_lose_nothing(
    tmp_path: Path,
    ray_session: None,
    smoke_run_dir: Path,
) -> None:
    cfg = _cfg(
        smoke_run_dir,
        devices=30,
        faults=FaultConfig(
            seed=4, kill_actor_after=6, restart_server_after=12, net_loss=0.1, net_delay_ms=2.0
        ),
    )
    s = run_simulation(cfg, tmp_path / "chaos", progress=False)
    failed = sqlite3.connect(tmp_path / "chaos" / "reports.db").execute(
        "SELECT device_id, reason, detail FROM devices WHERE status != 'completed'"
    )
    assert (s["completed"], s["failed"], s["missing"], s["duplicates"]) == (30, 0, 0, 0), list(
        failed
    )
    assert s["faults_injected"] == {"actor_killed": 1, "server_restarted": 1}
    assert s["backend"]["actors_replaced"] == 1 and s["backend"]["batches_rerun"] >= 1
    assert s["server_restarts"] == 1
    ids = [
        r[0]
        for r in sqlite3.connect(tmp_path / "chaos" / "reports.db").execute(
            "SELECT device_id FROM devices"
        )
    ]
    assert sorted(ids) == [f"dev-{i:05d}" for i in range(30)]


def test_lanes_and_more_actors_than_cpus_store_every_device_once(
    tmp_path: Path,
    ray_session: None,
    smoke_run_dir: Path,
) -> None:
    # 3 actors share the session's 2 CPUs, each runs 3 devices at once and holds 2 batches.
    cfg = _cfg(smoke_run_dir, devices=18, actors=3, lanes=3)
    s = run_simulation(cfg, tmp_path / "lanes", progress=False)
    assert (s["completed"], s["failed"], s["missing"], s["duplicates"]) == (18, 0, 0, 0)
    assert s["backend"]["actors"] == 3 and s["requests"] == 18 * 2
    db = sqlite3.connect(tmp_path / "lanes" / "reports.db")
    ids = [r[0] for r in db.execute("SELECT device_id FROM devices")]
    assert sorted(ids) == [f"dev-{i:05d}" for i in range(18)]
    assert len({r[0] for r in db.execute("SELECT worker_pid FROM devices")}) == 3
    sources = {r[0] for r in db.execute("SELECT strategy_source FROM rounds")}
    assert sources == {"cloud"}  # every round really fetched, quantized and scored
    assert db.execute("SELECT MIN(n_targets), MIN(quantize_ms) FROM rounds").fetchone()[0] == 1


def test_local_ray_workers_run_at_the_drivers_priority(ray_session: None) -> None:
    # Ray's default starts workers 15 nice levels below the driver (the device actors would
    # then yield both cores to any other job); start_local_ray keeps them level.
    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote(), timeout=60) == os.nice(0)


def test_lanes_config_is_validated() -> None:
    with pytest.raises(FleetConfigError, match="lanes"):
        FleetConfig(lanes=0)


def test_resume_after_sigkill(tmp_path: Path, smoke_run_dir: Path) -> None:
    out = tmp_path / "killed"
    toml = tmp_path / "slow.toml"
    # Slow devices (an injected 40 ms per RPC) so the kill lands mid-run; no Ray in the child.
    toml.write_text("[faults]\nnet_delay_ms = 40.0\n")
    cmd = [
        sys.executable,
        "-m",
        "chord.cli",
        "simulate",
        "--config",
        str(toml),
        "--devices",
        "40",
        "--run-dir",
        str(smoke_run_dir),
        "--ray-address",
        "none",
        "--batch-size",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    db = out / "reports.db"
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                stored = sqlite3.connect(db).execute("SELECT COUNT(*) FROM devices").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 5:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the simulation ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = sqlite3.connect(db).execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    assert 5 <= before < 40
    s = run_simulation(FleetConfig(), out, resume=True, progress=False)
    assert (s["devices"], s["completed"], s["missing"], s["duplicates"]) == (40, 40, 0, 0)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM devices").fetchone()[0] == 40
    assert con.execute("SELECT COUNT(DISTINCT device_id) FROM rounds").fetchone()[0] == 40
    assert any(e["kind"] == "resumed" for e in s["events"])


def test_embedded_server_with_two_workers(
    tmp_path: Path,
    ray_session: None,
    smoke_run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`server_workers = 2`: the simulator's own cloud is a `chord serve --workers 2` child.

    Run from a folder holding another `chord` package, as the tester did from an old clone:
    the child must still run this installation's server (it ran the folder's code before)."""
    shadow = tmp_path / "elsewhere" / "chord"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("the shadowing copy was imported")\n')
    monkeypatch.chdir(shadow.parent)
    cfg = _cfg(smoke_run_dir, devices=12, actors=2, lanes=3, server_workers=2)
    s = run_simulation(cfg, tmp_path / "workers", progress=False)
    assert (s["completed"], s["failed"], s["missing"], s["duplicates"]) == (12, 0, 0, 0)
    db = sqlite3.connect(tmp_path / "workers" / "reports.db")
    sources = {r[0] for r in db.execute("SELECT strategy_source FROM rounds")}
    assert sources == {"cloud"}


def test_server_workers_config_is_validated() -> None:
    with pytest.raises(FleetConfigError, match="server_workers"):
        FleetConfig(server_workers=0)
    with pytest.raises(FleetConfigError, match="restart_server_after"):
        FleetConfig(server_workers=2, faults=FaultConfig(restart_server_after=5))


def test_embedded_server_remembers_for_the_fleets_retry_horizon(smoke_run_dir: Path) -> None:
    """The in-process server keeps GetStrategy replies and stored reports as long as a device
    may still retry (twice the overall call timeout), not `chord serve`'s 300 s; a restart
    keeps that setting."""
    from cloud_server.embedded import EmbeddedServer
    from simulator.cloud import Cloud
    from simulator.runner import retry_horizon_s

    horizon = retry_horizon_s(_cfg(smoke_run_dir))
    assert horizon == 2 * QUICK_TRANSPORT.overall_timeout_s
    cloud = Cloud.start_embedded(smoke_run_dir, retry_horizon_s=horizon)
    try:
        cloud.restart()
        server = cloud._embedded
        assert isinstance(server, EmbeddedServer)
        assert server.service.cache.window_s == horizon
        assert server.service.reports.max_age_s == horizon
    finally:
        cloud.stop()
