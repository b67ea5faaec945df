"""Chaos run of the fleet: every simulator fault at once with a fixed seed; nothing lost or doubled.

    python -m benchmarks.chaos [--devices 100] [--run-preset quick] [--out DIR] [--results-dir DIR]

Faults: a device actor killed mid-run (ray.kill), the embedded server restarted mid-run on the
same port, client-side network delay and loss, corrupted strategy codes, and churn. The table
lists, per fault, how often it was injected, how often the fleet recovered, and the devices lost
and duplicated (goal: 0 and 0).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import ResultStore, add_output_arguments, markdown_table
from chord.startcheck import path_arg
from simulator.config import ChurnConfig, DriftConfig, FaultConfig, FleetConfig, TransportConfig
from simulator.runner import run_simulation

SEED = 7


def chaos_config(devices: int, run_preset: str, run_dir: str) -> FleetConfig:
    """The fixed-seed chaos fleet."""
    return FleetConfig(
        devices=devices,
        seed=SEED,
        mode="pretrained",  # the chaos figures were measured on the pretrained fleet
        run_preset=run_preset,
        run_dir=run_dir,
        batch_size=5,
        drift=DriftConfig(rounds=2, interactions_per_round=1),
        churn=ChurnConfig(offline_prob=0.1),
        faults=FaultConfig(
            seed=SEED,
            kill_actor_after=devices // 4,
            restart_server_after=devices // 2,
            net_delay_ms=5.0,
            net_jitter_ms=10.0,
            net_loss=0.1,
            corrupt_code_prob=0.1,
        ),
        transport=TransportConfig(overall_timeout_s=60.0, max_attempts=30, backoff_max_s=0.5),
    )


def _stored(db: Path) -> tuple[int, int, int]:
    """(device rows, distinct device ids, round rows minus distinct (device, round))."""
    con = sqlite3.connect(db)
    rows, distinct = con.execute(
        "SELECT COUNT(*), COUNT(DISTINCT device_id) FROM devices"
    ).fetchone()
    extra = con.execute(
        "SELECT COUNT(*) - (SELECT COUNT(*) FROM (SELECT DISTINCT device_id, round FROM rounds)) "
        "FROM rounds"
    ).fetchone()[0]
    return int(rows), int(distinct), int(extra)


def fault_table(s: dict[str, Any], db: Path) -> list[dict[str, Any]]:
    """One row per fault: injected, recovered, devices lost, duplicated."""
    rows, distinct, extra_rounds = _stored(db)
    lost = s["devices"] - distinct + s["failed"]
    duplicated = s["duplicates"] + (rows - distinct) + extra_rounds
    inj = s["faults_injected"]
    return [
        {
            "fault": "device actor killed (ray.kill)",
            "injected": inj.get("actor_killed", 0),
            "recovered": s["backend"]["actors_replaced"],
        },
        {
            "fault": "cloud server restarted (same port)",
            "injected": inj.get("server_restarted", 0),
            "recovered": s["server_restarts"] if s["failed"] == 0 else 0,
        },
        {
            "fault": "network: dropped RPC attempts",
            "injected": s["injected_losses"],
            "recovered": s["injected_losses"] if s["failed"] == 0 else None,
        },
        {
            "fault": "corrupted strategy code",
            "injected": s["codes_corrupted"],
            "recovered": s["codes_rejected"],
        },
        {
            "fault": "churn: offline rounds",
            "injected": s["offline_rounds"],
            "recovered": s["offline_rounds"],
        },
        {
            "fault": "all (devices)",
            "injected": s["devices"],
            "recovered": s["completed"],
            "lost": lost,
            "duplicated": duplicated,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the chaos fleet and write results/chaos.json and its RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--run-preset", default="quick", choices=["smoke", "quick", "full"])
    parser.add_argument("--run-dir", default="", help="serve this run directory instead")
    parser.add_argument("--out", type=path_arg, help="simulation folder (default: a temporary one)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    cfg = chaos_config(args.devices, args.run_preset, args.run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "chaos"
        s = run_simulation(cfg, out, progress=True)
        table = fault_table(s, out / "reports.db")
    lost = table[-1]["lost"]
    dup = table[-1]["duplicated"]
    payload = {
        "seed": SEED,
        "devices": args.devices,
        "run_preset": args.run_preset,
        "faults": table,
        "lost": lost,
        "duplicated": dup,
        "wall_s": s["wall_s"],
        "failures": s["failures"],
        "events": s["events"],
    }
    md = markdown_table(table, ["fault", "injected", "recovered", "lost", "duplicated"])
    notes = (
        f"Seed {SEED}, {args.devices} devices, 2 rounds each, 2 Ray actors on this host. "
        f"Devices lost: {lost}, duplicated: {dup} (goal 0 and 0). A killed actor's batch is re-run "
        "on a replacement actor; reports are stored idempotently by (device_id, round)."
    )
    ResultStore.default(args.results_dir).write("chaos", payload, md, notes)
    print(md)
    return 0 if lost == 0 and dup == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
