"""`chord simulate` at start: refused runs leave nothing behind; a run prints no Python warning.

Runs devices in this process (--ray-address none) on the cached smoke run.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from chord.cli import main
from simulator.plotting import legend_if_labelled, log_scale_if_positive

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CHORD_TOKEN", raising=False)


def _simulate(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, list[str]]:
    code = main(["simulate", "--quiet", "--ray-address", "none", *flags])
    return code, capsys.readouterr().err.strip().splitlines()


def test_budget_outside_the_served_tier_is_refused_and_the_out_dir_can_be_reused(
    tmp_path: Path, smoke_run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """low reaches [1, 4] bits: 7.5 made every device fail (exit 1) with a legend warning.

    A run refused before any device ran leaves nothing in --out, so the same command can run
    again (before: "already holds a simulation; use --resume", and --resume failed the same way).
    """
    toml = tmp_path / "fleet.toml"
    toml.write_text('[[tiers]]\nname = "low"\nshare = 1.0\nbudget_bits = 7.5\n')
    out = tmp_path / "sim"
    flags = ("--config", str(toml), "--devices", "2", "--run-dir", str(smoke_run_dir),
             "--out", str(out))  # fmt: skip
    expect = (
        "chord simulate: error: tiers[0] ('low').budget_bits is 7.5, outside what the server's "
        "'low' tier reaches; send a budget in [1, 4]"
    )
    for _ in range(2):  # the second run gets the same answer, not "already holds a simulation"
        assert _simulate(capsys, *flags) == (2, [expect])
        assert not out.exists()
    out.mkdir()  # an --out that existed before keeps existing, emptied of what the run wrote
    (out / "notes.txt").write_text("mine\n")
    assert _simulate(capsys, *flags) == (2, [expect])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_trace_client_ids_that_are_not_integers_run(
    tmp_path: Path, smoke_run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Client ids "--1" and "²" ended the run with `invalid literal for int()`."""
    traces = tmp_path / "cap.json"
    entry = {"computation": 5, "communication": 100}
    traces.write_text(json.dumps({"--1": entry, "\u00b2": entry, "2": entry}))
    out = tmp_path / "sim"
    code, err = _simulate(capsys, "--devices", "2", "--run-dir", str(smoke_run_dir),
                          "--traces", str(traces), "--out", str(out))  # fmt: skip
    assert (code, err) == (0, [])
    assert json.loads((out / "summary.json").read_text())["completed"] == 2


def test_virtual_clock_run_prints_no_python_warning(
    tmp_path: Path, smoke_run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An hour of 3 devices printed matplotlib's "Data has no positive values" warning."""
    out = tmp_path / "sim"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = _simulate(capsys, "--devices", "3", "--clock", "virtual", "--duration-s",
                              "3600", "--run-dir", str(smoke_run_dir), "--out", str(out))
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if "simulator" in w.filename or "matplotlib" in w.filename]
    assert (code, err, ours) == (0, [], [])
    assert (out / "timeline.png").stat().st_size > 0


def test_plot_helpers_never_warn() -> None:
    """No legend without labelled artists; no log axis without positive data."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        legend_if_labelled(ax)  # nothing drawn (every device failed)
        assert ax.get_legend() is None
        ax.bar([0, 1], [0.0, 0.0], label="one-time")
        log_scale_if_positive(ax, "y", np.zeros(2))
        assert ax.get_yscale() == "linear"
        log_scale_if_positive(ax, "y", [np.nan, np.inf, -1.0])
        assert ax.get_yscale() == "linear"
        fig.canvas.draw()
        ax.bar([2, 3], [0.0, 3.0], label="strategies")
        log_scale_if_positive(ax, "y", [0.0, 0.0, 0.0, 3.0])
        assert ax.get_yscale() == "log"
        legend_if_labelled(ax)
        assert ax.get_legend() is not None
        fig.canvas.draw()
    plt.close(fig)


def test_run_dir_that_does_not_load_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's own ERROR log line and a traceback came before; now the loader's one line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}\n")
    (run / "backbone.pt").write_bytes(b"")
    (run / "hypernet.pt").write_bytes(b"")
    out = tmp_path / "sim"
    code, err = _simulate(capsys, "--devices", "2", "--run-dir", str(run), "--out", str(out))
    assert (code, err) == (2, [
        f"chord simulate: error: the embedded server cannot serve run directory {run} ({run}/"
        "run.json is not a chord-run/1 file); send a directory written by `chord simulate "
        "--prepare-run DIR`, or leave --run-dir out to use the cached run"
    ])
    assert not out.exists()


def test_sigterm_stops_the_run_in_one_line_and_keeps_it_resumable(
    tmp_path: Path, smoke_run_dir: Path
) -> None:
    """SIGTERM unwinds like Ctrl-C: every `finally` runs (Ray, the server), one line, exit 130."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "sim"
    toml = tmp_path / "slow.toml"
    toml.write_text("[faults]\nnet_delay_ms = 40.0\n")  # slow devices: the signal lands mid-run
    cmd = [sys.executable, "-m", "chord.cli", "simulate", "--config", str(toml), "--devices",
           "40", "--run-dir", str(smoke_run_dir), "--ray-address", "none", "--batch-size", "1",
           "--quiet", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("CHORD_TOKEN", None)
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    db = out / "reports.db"
    deadline = time.time() + 120  # a bound on waiting, not a measured figure
    while time.time() < deadline and proc.poll() is None:
        try:
            if db.exists() and sqlite3.connect(db).execute(
                "SELECT COUNT(*) FROM devices"
            ).fetchone()[0]:
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the simulation ended before it could be stopped"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.strip().splitlines()) == (
        130, [f"chord simulate: stopped; finish it with --resume {out}"]
    )


def test_rounds_csv_has_no_nan_or_infinity_cells(tmp_path: Path) -> None:
    """SQLite keeps inf (NaN becomes NULL): both leave rounds.csv as an empty cell."""
    import csv
    import sqlite3

    from simulator.report import write_rounds_csv
    from simulator.store import ReportStore

    store = ReportStore(tmp_path / "reports.db")
    cols = [r[1] for r in store.query("PRAGMA table_info(rounds)")]
    real = [r[1] for r in store.query("PRAGMA table_info(rounds)") if r[2] == "REAL"]
    assert real, cols
    values = {c: 0 for c in cols} | {"device_id": "d", "round": 0}
    values |= {real[0]: math.inf, real[-1]: math.nan}
    with sqlite3.connect(tmp_path / "reports.db") as con:
        con.execute(f"INSERT INTO rounds ({', '.join(values)}) VALUES "
                    f"({', '.join('?' * len(values))})", list(values.values()))  # fmt: skip
    write_rounds_csv(tmp_path / "rounds.csv", store)
    with (tmp_path / "rounds.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert (row[real[0]], row[real[-1]]) == ("", "")
    assert not any(v.lower() in ("nan", "inf", "-inf") for v in row.values())


def test_a_failed_tls_handshake_is_named_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CA that did not sign the server's certificate: the cause was retried 10 times over
    60 s before the run gave up; now it stops after one attempt, naming the CA flag."""
    from cloud_server import EmbeddedServer, ServerConfig
    from tests.tls_certs import self_signed

    (tmp_path / "server").mkdir()
    (tmp_path / "other").mkdir()
    cert, key = self_signed(tmp_path / "server")
    other, _ = self_signed(tmp_path / "other")
    with EmbeddedServer(ServerConfig(echo=True, tls_cert=cert, tls_key=key)) as server:
        code, err = _simulate(capsys, "--server", server.address, "--tls-ca", str(other),
                              "--devices", "2", "--out", str(tmp_path / "sim"))
    assert (code, err) == (2, [
        f"chord simulate: error: {server.address}: the TLS handshake failed: the server's "
        "certificate is not signed by the CA given (CERTIFICATE_VERIFY_FAILED); send the CA "
        "certificate that signed it as --tls-ca"
    ])
    assert not (tmp_path / "sim").exists()
