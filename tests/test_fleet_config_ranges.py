"""Every numeric fleet-config field has a documented range, checked finite and in range at start.

NaN compares False with everything, so `x <= 0` lets it through; each field is checked by one
table (simulator.config.FIELD_BOUNDS). Contradictory values and paths that can never work are
refused in one line too, before any work starts.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import pytest

from chord.cli import main
from chord.startcheck import max_parallel
from simulator.config import (
    FIELD_BOUNDS,
    ChurnConfig,
    ClockConfig,
    DriftConfig,
    FaultConfig,
    FleetConfig,
    FleetConfigError,
    TierProfile,
    TransportConfig,
    check_runnable,
    config_from_dict,
    load_config,
    max_local_cpus,
    save_config,
)
from tests.tls_certs import self_signed

SECTIONS: dict[str, type[Any]] = {
    "": FleetConfig, "tiers.": TierProfile, "drift.": DriftConfig, "churn.": ChurnConfig,
    "faults.": FaultConfig, "transport.": TransportConfig, "clock.": ClockConfig,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHORD_TOKEN", raising=False)


def _numeric_fields() -> set[str]:
    """Dotted names of every int, float or tuple-of-float field of the config dataclasses."""
    out = set()
    for prefix, cls in SECTIONS.items():
        for name, kind in typing.get_type_hints(cls).items():
            if kind in (int, float) or (typing.get_origin(kind) is tuple and typing.get_args(
                kind
            )[0] in (int, float)):
                out.add(prefix + name)
    return out


def test_every_numeric_field_has_a_documented_range() -> None:
    """A new numeric field without a range in FIELD_BOUNDS fails here (and a stale entry too)."""
    assert set(FIELD_BOUNDS) == _numeric_fields()


def _layout(key: str, value: Any) -> dict[str, Any]:
    """A TOML-layout dict setting the dotted field `key` to value (a valid config otherwise)."""
    section, _, name = key.rpartition(".")
    if section == "tiers":
        return {"tiers": [{"name": "mid", "share": 1.0, "budget_bits": 3.0, name: value},
                          {"name": "low", "share": 1.0, "budget_bits": 2.5}]}
    if section == "clock" and name == "model_releases_s":
        return {"clock": {name: [value]}}
    return {section: {name: value}} if section else {name: value}


def _outside(key: str) -> list[Any]:
    """Values every field must refuse: NaN, +-inf, and just outside each end of its range."""
    b = FIELD_BOUNDS[key]
    below = b.lo if b.lo_open else (b.lo - 1 if b.integer else b.lo - 1e-9 * max(1, abs(b.lo)))
    above = b.hi if b.hi_open else (b.hi + 1 if b.integer else b.hi * (1 + 1e-9) + 1e-9)
    values: list[Any] = [below, above]
    if not b.integer:
        values += [math.nan, math.inf, -math.inf]
    return [v for v in values if v != b.off]


@pytest.mark.parametrize("key", sorted(FIELD_BOUNDS))
def test_each_field_refuses_nan_infinity_and_values_outside_its_range(key: str) -> None:
    name = key.rpartition(".")[2]
    for value in _outside(key):
        with pytest.raises(FleetConfigError) as info:
            config_from_dict(_layout(key, value))
        message = str(info.value)
        if key == "negatives" and value < 1:  # the evaluation protocol's own message, as in train
            assert message == (f"--negatives must be >= 1, got {value}; or pass --full-ranking "
                               "to rank against the whole catalogue")
            continue
        assert "\n" not in message and name in message.split(" is ")[0], (value, message)
        assert f"send {FIELD_BOUNDS[key].describe()}" in message, (value, message)


# Fields another field must agree with, set so that only the field under test is at an end.
COMPANIONS: dict[str, dict[str, Any]] = {
    "transport.call_timeout_s": {"overall_timeout_s": 86_400.0},
    "transport.backoff_base_s": {"backoff_max_s": 3600.0},
    "transport.backoff_max_s": {"backoff_base_s": 0.0},
    "clock.model_releases_s": {"duration_s": 366 * 86_400.0},
}


def test_each_field_accepts_both_ends_of_its_range() -> None:
    for key, b in FIELD_BOUNDS.items():
        for value in (b.lo, b.hi):
            if (value == b.lo and b.lo_open) or (value == b.hi and b.hi_open):
                continue
            value = int(value) if b.integer else float(value)
            data = _layout(key, value)
            if key in COMPANIONS:
                data[key.rpartition(".")[0]].update(COMPANIONS[key])
            if key in ("faults.kill_actor_after", "faults.restart_server_after"):
                data["devices"] = value + 1  # a fault must fire within the fleet
            if key == "num_cpus":
                data["ray_address"] = "none"  # the local cap depends on this machine
            cfg = config_from_dict(data)
            assert cfg is not None


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        # Each is a case the tester found accepted (a traceback, a hang or a silent exit 0 later).
        ("[clock]\nduration_s = nan\n", "clock.duration_s (--duration-s) is nan; send a finite "
         "number in (0, 31622400] (virtual seconds, 366 days)"),
        ("[clock]\nduration_s = inf\n", "clock.duration_s (--duration-s) is inf; send a finite "
         "number in (0, 31622400] (virtual seconds, 366 days)"),
        ("[clock]\nsessions_per_day = nan\n",
         "clock.sessions_per_day is nan; send a finite number in (0, 1440]"),
        ("[clock]\ninteractions_per_hour = nan\n",
         "clock.interactions_per_hour is nan; send a finite number in (0, 3600]"),
        ("[clock]\npeak_hour = 99.0\n",
         "clock.peak_hour is 99.0; send a finite number in [0, 24) (hour of the day)"),
        ("[clock]\nrefresh_interval_s = inf\n", "clock.refresh_interval_s is inf; send a finite "
         "number in [60, 31622400] or 0 (seconds; 0 = never)"),
        ("[clock]\nrefresh_interval_s = 0.001\n", "clock.refresh_interval_s is 0.001; send a "
         "finite number in [60, 31622400] or 0 (seconds; 0 = never)"),
        ("[clock]\nsession_minutes = inf\n",
         "clock.session_minutes is inf; send a finite number in (0, 527040]"),
        ('[[tiers]]\nname = "low"\nshare = 1.0\nbudget_bits = 2.0\n'
         '[[tiers]]\nname = "low"\nshare = 1.0\nbudget_bits = 3.0\n',
         "tiers[1].name 'low' repeats tiers[0]; send each tier once (merge their shares)"),
        ('[[tiers]]\nname = ""\nshare = 1.0\nbudget_bits = 2.0\n',
         "tiers[0].name is empty; send a tier the server serves (e.g. low, mid, high)"),
        ('[[tiers]]\nname = "low"\nshare = 1.0\nbudget_bits = 9.5\n',
         "tiers[0] ('low').budget_bits is 9.5; send a finite number in [1, 8] (bits per weight; "
         "the tier's own range applies)"),
        ("[transport]\ncall_timeout_s = 30.0\noverall_timeout_s = 1.0\n",
         "transport.overall_timeout_s (1 s) is shorter than transport.call_timeout_s (30 s), so "
         "no call gets its deadline; send overall_timeout_s >= call_timeout_s"),
        ("[transport]\nbackoff_base_s = 5.0\nbackoff_max_s = 0.1\n",
         "transport.backoff_max_s (0.1 s) is below transport.backoff_base_s (5 s); send "
         "backoff_max_s >= backoff_base_s"),
        ("devices = 10\n[faults]\nkill_actor_after = 99999999999999999999999\n",
         "faults.kill_actor_after is 99999999999999999999999; send an integer in [0, 9999999] "
         "(0 = never)"),
        ("devices = 10\n[faults]\nrestart_server_after = 10\n",
         "faults.restart_server_after is 10, so it would never fire in a fleet of 10 devices; "
         "send 1 to 9, or 0 for never"),
        ('server = "::1:50051"\n', "server (--server or `server` in the fleet TOML) "
         "'::1:50051' has an IPv6 host without brackets; send [::1]:50051 ([IPv6]:PORT)"),
        ('device_cache_dir = "/proc/cache"\n', "device_cache_dir '/proc/cache' cannot be created "
         "('/proc' is not a writable directory: No such file or directory); send a path under a "
         "directory you can write"),
        ('device_cache_dir = "/etc/passwd"\n',
         "device_cache_dir '/etc/passwd' is a file; send a directory path"),
        ("seed = 9223372036854775807\n",
         "seed (--seed) is 9223372036854775807; send an integer in [0, 4294967295]"),
        ("batch_size = 99999999999\n",
         "batch_size (--batch-size) is 99999999999; send an integer in [1, 10000]"),
    ],
)
def test_fleet_toml_cases_are_refused_in_one_line(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(FleetConfigError) as info:
        load_config(path)
    assert str(info.value) == expect


def test_local_ray_cpus_are_bounded_by_this_machine() -> None:
    """--num-cpus 100000 started a local Ray that never answered (and left a worker behind)."""
    limit = max_local_cpus()
    check_runnable(FleetConfig(num_cpus=limit))
    with pytest.raises(FleetConfigError) as info:
        check_runnable(FleetConfig(num_cpus=limit + 1))
    assert str(info.value).startswith(f"num_cpus (--num-cpus) is {limit + 1}, more than a local "
                                      "Ray can use on this machine")
    assert str(info.value).endswith(f"send at most {limit} (4 per CPU), or 0 for all CPUs")
    # A cluster joined by address has its own CPUs: the local cap does not apply.
    check_runnable(FleetConfig(num_cpus=limit + 1, ray_address="none"))
    check_runnable(FleetConfig(actors=limit))
    with pytest.raises(FleetConfigError) as info:
        check_runnable(FleetConfig(actors=limit + 1))
    assert str(info.value).startswith(f"actors (--actors) is {limit + 1}, more than a local Ray")
    assert str(info.value).endswith(f"send at most {limit} (4 per CPU), or 0 for one per CPU")


def test_behaviour_trace_on_the_round_clock_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was read, then ignored: the round clock has no availability windows."""
    trace = tmp_path / "beh.json"
    trace.write_text('{"1": {"active": [0], "inactive": [5], "finish_time": 10}}')
    code, err = _simulate(tmp_path, capsys, "--ray-address", "none", "--behaviour-trace",
                          str(trace))  # fmt: skip
    assert (code, err) == (2, [
        "chord simulate: error: clock.behaviour_trace (--behaviour-trace) sets when devices are "
        "online on the virtual clock, but the clock is 'rounds'; add --clock virtual ([clock] "
        'mode = "virtual") or leave the trace out'
    ])
    assert not (tmp_path / "sim").exists()
    # In a TOML file the trace may wait for the flag that turns the virtual clock on.
    toml = tmp_path / "fleet.toml"
    toml.write_text(f'[clock]\nbehaviour_trace = "{trace}"\n')
    assert load_config(toml).clock.behaviour_trace == str(trace)


def test_resumed_config_with_an_overflowing_number_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fleet.json edited to "duration_s": 1e400 was read as inf and accepted on --resume."""
    out = tmp_path / "sim"
    out.mkdir()
    save_config(FleetConfig(), out / "fleet.json")
    text = (out / "fleet.json").read_text()
    assert '"duration_s": 86400.0' in text
    (out / "fleet.json").write_text(text.replace('"duration_s": 86400.0', '"duration_s": 1e400'))
    line = text[: text.index('"duration_s"')].count("\n") + 1
    assert main(["simulate", "--quiet", "--resume", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"chord simulate: error: saved fleet config {out / 'fleet.json'}:{line}: 1e400 is beyond "
        "the range of a double (about 1.8e308); send a finite number"
    ]


def _simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, list[str]]:
    code = main(["simulate", "--out", str(tmp_path / "sim"), "--quiet", *flags])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        # Tracebacks before: "cannot convert float NaN to integer" / OverflowError.
        (("--clock", "virtual", "--duration-s", "nan"), "clock.duration_s (--duration-s) is nan; "
         "send a finite number in (0, 31622400] (virtual seconds, 366 days)"),
        (("--clock", "virtual", "--duration-s", "1e400"), "clock.duration_s (--duration-s) is "
         "inf; send a finite number in (0, 31622400] (virtual seconds, 366 days)"),
        (("--devices", "0"), "devices (--devices) is 0; send an integer in [1, 10000000]"),
        # float() of this int raises OverflowError: ints are finite and only compared.
        (("--devices", "9" * 400), "devices (--devices) is 99999999999999999999... (400 "
         "characters); send an integer in [1, 10000000]"),
        (("--seed", "-1"), "seed (--seed) is -1; send an integer in [0, 4294967295]"),
        (("--batch-size", "0"), "batch_size (--batch-size) is 0; send an integer in [1, 10000]"),
        (("--duration-s", "3600"), "--duration-s sets the span of the virtual clock, but the "
         "clock is 'rounds'; add --clock virtual, or leave --duration-s out (the round clock "
         "runs [drift] rounds)"),
        (("--lanes", "1000"), "lanes (--lanes) is 1000; send an integer in [1, 64]"),
        (("--actors", "100000"),
         "actors (--actors) is 100000; send an integer in [0, 1024] (0 = the cluster's CPUs)"),
        (("--server-workers", "100000"),
         "server_workers (--server-workers) is 100000; send an integer in [1, 64]"),
        (("--server", "::1:50051"), "server (--server or `server` in the fleet TOML) "
         "'::1:50051' has an IPv6 host without brackets; send [::1]:50051 ([IPv6]:PORT)"),
    ],
)
def test_simulate_flags_out_of_range_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], expect: str
) -> None:
    code, err = _simulate(tmp_path, capsys, "--ray-address", "none", *flags)
    assert (code, err) == (2, [f"chord simulate: error: {expect}"])
    assert not (tmp_path / "sim").exists()


def test_num_cpus_beyond_the_machine_is_refused_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tester's case (no result in 120 s, then a Ray worker left behind) and the local cap."""
    code, err = _simulate(tmp_path, capsys, "--devices", "2", "--num-cpus", "100000")
    assert (code, err) == (2, [
        "chord simulate: error: num_cpus (--num-cpus) is 100000; send an integer in [0, 4096] "
        "(0 = this machine's CPUs)"
    ])
    over = str(max_local_cpus() + 1)
    code, err = _simulate(tmp_path, capsys, "--devices", "2", "--num-cpus", over)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"chord simulate: error: num_cpus (--num-cpus) is {over}, more than")
    assert not (tmp_path / "sim").exists()


def test_run_dir_that_is_not_a_run_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A traceback ending in RunError ("lacks run.json") came only after the fleet started."""
    not_a_run = tmp_path / "somewhere"
    not_a_run.mkdir()
    (not_a_run / "run.json").write_text("{}")
    code, err = _simulate(tmp_path, capsys, "--ray-address", "none", "--run-dir", str(not_a_run))
    assert (code, err) == (2, [
        f"chord simulate: error: run_dir (--run-dir) {str(not_a_run)!r} is not a run directory "
        "(it lacks backbone.pt, hypernet.pt); send a directory written by `chord simulate "
        "--prepare-run DIR`, or leave --run-dir out to use the cached run"
    ])
    assert not (tmp_path / "sim").exists()


def test_tls_ca_with_the_plaintext_embedded_server_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It failed only after every retry ("Tls handshake failed"): no embedded server has TLS."""
    cert, _ = self_signed(tmp_path)
    code, err = _simulate(tmp_path, capsys, "--ray-address", "none", "--tls-ca", str(cert))
    assert (code, err) == (2, [
        "chord simulate: error: transport.tls_root_ca (--tls-ca) verifies a TLS server, but the "
        "embedded server speaks plaintext; leave --tls-ca out, or pass --server HOST:PORT of a "
        "`chord serve --tls-cert ... --tls-key ...`"
    ])


def test_unusable_cache_dir_from_the_environment_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CHORD_CACHE_DIR=/proc/x ended in a FileNotFoundError traceback."""
    monkeypatch.setenv("CHORD_CACHE_DIR", "/proc/x")
    code, err = _simulate(tmp_path, capsys, "--ray-address", "none", "--devices", "2")
    assert (code, err) == (2, [
        "chord simulate: error: $CHORD_CACHE_DIR '/proc/x' cannot be created ('/proc' is not a "
        "writable directory: No such file or directory); send a path under a directory you can "
        "write (or unset it for ~/.cache/chord)"
    ])
    assert not (tmp_path / "sim").exists()


def test_server_workers_beyond_the_serve_cap_or_without_an_embedded_server_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--server-workers 12 on 2 cores spawned the server group, which then refused in two
    lines; a count for a server this run does not start did nothing. Both: one line, at once."""
    over = str(max_parallel() + 1)
    code, err = _simulate(tmp_path, capsys, "--ray-address", "none", "--server-workers", over)
    assert (code, err) == (2, [
        f"chord simulate: error: server_workers (--server-workers) is {over}; send an integer "
        f"in 1..{max_parallel()} (server processes; at most 4 per usable core)"
    ])
    code, err = _simulate(tmp_path, capsys, "--ray-address", "none", "--server-workers", "2",
                          "--server", "127.0.0.1:50051")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(
        "chord simulate: error: server_workers (--server-workers) is 2, but the server is "
        "'127.0.0.1:50051', which this run does not start"
    )
    assert not (tmp_path / "sim").exists()
