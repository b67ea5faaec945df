"""`chord simulate` refuses settings that can never work, in one line, before any work starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import ray

from chord.cli import main
from simulator.config import FleetConfigError, load_config
from simulator.runner import probe_ray, run_simulation


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token from the caller's environment; a private dataset cache."""
    monkeypatch.delenv("CHORD_TOKEN", raising=False)
    monkeypatch.setenv("CHORD_CACHE_DIR", str(tmp_path / "cache"))


def _free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, list[str]]:
    """Run `chord simulate FLAGS --out DIR --quiet`; (exit status, stderr lines)."""
    code = main(["simulate", "--out", str(tmp_path / "sim"), "--quiet", *flags])
    return code, capsys.readouterr().err.strip().splitlines()


def test_ray_address_with_no_cluster_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: --ray-address 127.0.0.1:6390 with no cluster hung until killed."""
    port = _free_port()
    code, err = _simulate(tmp_path, capsys, "--ray-address", f"127.0.0.1:{port}")
    assert code == 2
    assert err == [
        f"chord simulate: error: cannot reach a Ray cluster at 127.0.0.1:{port} within 10 s "
        f"(Connection refused); start one there (`ray start --head --port {port}`) or pass "
        "--ray-address local"
    ]
    assert not (tmp_path / "sim").exists()  # refused before any work


def test_ray_address_where_something_else_listens_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listener that is not Ray's GCS (it never answers) passed the TCP probe, then hung."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = int(silent.getsockname()[1])
        code, err = _simulate(tmp_path, capsys, "--ray-address", f"127.0.0.1:{port}")
    assert code == 2
    assert err == [
        f"chord simulate: error: cannot join a Ray cluster at 127.0.0.1:{port} within 10 s "
        "(something listens there but no Ray GCS answered: is it Ray's GCS port, 6379 by "
        f"default, and not the dashboard 8265?); start one there (`ray start --head --port "
        f"{port}`) or pass --ray-address local"
    ]
    assert not (tmp_path / "sim").exists()


def test_probe_passes_a_real_ray_gcs(ray_session: None) -> None:
    """The readiness probe that refuses a silent listener lets a real GCS through."""
    probe_ray(ray.get_runtime_context().gcs_address)


def test_ray_address_from_the_environment_is_probed_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    code, err = _simulate(tmp_path, capsys, "--ray-address", "auto")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(
        f"chord simulate: error: cannot reach a Ray cluster at 127.0.0.1:{port}"
    )
    assert err[0].endswith("or pass --ray-address local (and unset RAY_ADDRESS)")
    monkeypatch.setenv("RAY_ADDRESS", "not an address")
    code, err = _simulate(tmp_path, capsys, "--ray-address", "auto")
    assert code == 2 and err[0].startswith("chord simulate: error: $RAY_ADDRESS 'not an address'")


@pytest.mark.parametrize(
    ("flags", "env_token", "expect"),
    [
        (("--server", "nohost"), "", "server (--server or `server` in the fleet TOML) 'nohost' "
         "is not HOST:PORT"),
        (("--server", "127.0.0.1:0"), "", "port is 0; send a port in 1..65535"),
        (("--ray-address", "my cluster"), "", "ray_address (--ray-address) 'my cluster' is not "
         "one of local, auto, none, HOST:PORT or ray://HOST:PORT"),
        (("--token", "s3cret\n"), "", "--token has a trailing '\\n', which gRPC metadata cannot "
         "carry (HTTP/2 peers strip it); send the token without leading or trailing whitespace"),
        ((), "s3cret\n", "$CHORD_TOKEN has a trailing '\\n', which gRPC metadata"),
        ((), "s3c\x01ret", "$CHORD_TOKEN contains '\\x01', which gRPC metadata cannot carry; "
         "send printable ASCII (0x20-0x7E)"),
        (("--tls-ca", "/nonexistent/ca.pem"), "", "transport.tls_root_ca (--tls-ca) "
         "'/nonexistent/ca.pem' is not an existing file"),
        (("--negatives", "0"), "", "--negatives must be >= 1, got 0"),
        (("--num-cpus", "-2"), "", "num_cpus (--num-cpus) is -2; send an integer in [0, 4096] "
         "(0 = this machine's CPUs)"),
        (("--run-dir", "/nonexistent/run"), "", "run_dir (--run-dir) '/nonexistent/run' is not "
         "an existing directory"),
        (("--traces", "/nonexistent/t.json"), "", "traces_file (--traces)"),
    ],
)
def test_settings_that_can_never_work_are_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...], env_token: str, expect: str,
) -> None:
    if env_token:
        monkeypatch.setenv("CHORD_TOKEN", env_token)
    code, err = _simulate(tmp_path, capsys, *flags)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("chord simulate: error: ") and expect in err[0], err[0]
    assert not (tmp_path / "sim").exists()


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("[transport]\ncall_timeout_s = nan\n", "transport.call_timeout_s is nan"),
        ("[transport]\nmax_attempts = 0\n",
         "transport.max_attempts is 0; send an integer in [1, 100]"),
        ('[[tiers]]\nname = "mid"\nshare = 1.0\nbudget_bits = inf\n',
         "tiers[0] ('mid').budget_bits is inf; send a finite number in [1, 8]"),
        ("[faults]\nnet_delay_ms = -5.0\n", "faults.net_delay_ms is -5.0"),
        ('server = "localhost"\n', "is not HOST:PORT"),
        ('ray_address = "10.0.0.1"\n', "ray_address (--ray-address) '10.0.0.1' is not"),
    ],
)
def test_fleet_toml_values_are_checked_like_flags(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(FleetConfigError) as info:
        load_config(path)
    assert expect in str(info.value)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('devices = "four"\n', "devices must be an integer, got 'four'"),
        ("negatives = 1e3\n", "negatives must be an integer, got 1000.0"),
        ("seed = true\n", "seed must be an integer, got True"),
        ("tiers = 3\n", "tiers must be a list of tables ([[tiers]] in TOML), got 3"),
        ("drift = 3\n", "drift must be a table, got 3"),
        ("[transport]\nmax_attempts = 2.5\n", "transport.max_attempts must be an integer, got 2.5"),
        ('[transport]\nreport_to_server = "yes"\n',
         "transport.report_to_server must be true or false, got 'yes'"),
        ('[[tiers]]\nname = "mid"\nshare = true\nbudget_bits = 3\n',
         "tiers[0].share must be a number, got True"),
        ('[clock]\nmodel_releases_s = [1, "x"]\n',
         "clock.model_releases_s[1] must be a number, got 'x'"),
    ],
)
def test_fleet_toml_values_of_the_wrong_type_are_named(
    tmp_path: Path, text: str, expect: str
) -> None:
    """Each field is checked against its annotation: bools are not ints, ints pass as floats."""
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(FleetConfigError) as info:
        load_config(path)
    assert str(info.value) == expect


def test_fleet_toml_ints_are_accepted_where_numbers_are_expected(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[clock]\nduration_s = 3600\n[[tiers]]\nname = "mid"\nshare = 1\n'
                    "budget_bits = 3\n")
    cfg = load_config(path)
    assert cfg.clock.duration_s == 3600 and cfg.tiers[0].budget_bits == 3


def test_small_catalogue_refused_before_the_server_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [f"u{u},{(u * 3 + s) % 75 + 1},{s}" for u in range(30) for s in range(10)]
    data = tmp_path / "small.csv"
    data.write_text("\n".join(lines) + "\n")
    code, err = _simulate(tmp_path, capsys, "--dataset", str(data), "--ray-address", "none",
                          "--devices", "2")
    assert code == 2
    assert err == [
        "chord simulate: error: small: sampled ranking needs 100 unseen negatives per user, "
        "but user u0 touched 10 of 75 items, leaving 65 unseen (the fewest of any user); pass "
        "--negatives 65 or fewer, or --full-ranking"
    ]


def test_full_ranking_fleet_reports_metrics_in_range(tmp_path: Path, smoke_run_dir: Path) -> None:
    """--full-ranking on devices: every target ranked among the whole catalogue."""
    from simulator.config import FleetConfig, TransportConfig

    cfg = FleetConfig(
        devices=3, run_dir=str(smoke_run_dir), ray_address="none", ranking="full",
        transport=TransportConfig(call_timeout_s=5.0, overall_timeout_s=30.0),
    )
    summary = run_simulation(cfg, tmp_path / "sim", progress=False)
    assert summary["completed"] == 3
    assert 0.0 <= summary["hr10"] <= 1.0


def test_unreachable_server_fails_in_one_line_within_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    toml = tmp_path / "fleet.toml"
    toml.write_text("[transport]\ncall_timeout_s = 0.5\noverall_timeout_s = 2.0\n")
    code, err = _simulate(tmp_path, capsys, "--config", str(toml), "--server",
                          f"127.0.0.1:{port}", "--ray-address", "none", "--devices", "2")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"chord simulate: error: cannot reach the strategy service at 127.0.0.1:{port} within 2 s"
    )
    assert err[0].endswith("check that `chord serve` listens there (and that --token / --tls-ca "
                           "match its settings)")
    # Refused before any device ran: nothing is left that would make the rerun say "use --resume".
    assert not (tmp_path / "sim").exists()


def test_actors_that_cannot_start_fail_in_one_line_instead_of_waiting(
    ray_session: None, tmp_path: Path
) -> None:
    """A joined cluster whose CPUs another job holds kept the run waiting for its actors forever
    (seen with `--ray-address auto` finding a busy cluster)."""
    from device_client.actor import HostConfig
    from simulator.backend import BackendError, RayBackend

    @ray.remote(num_cpus=2)
    class Hog:
        """Holds both CPUs of the session's cluster."""

        def ready(self) -> bool:
            return True

    hog = Hog.remote()  # type: ignore[attr-defined]
    ray.get(hog.ready.remote())
    try:
        backend = RayBackend(2)
        with pytest.raises(BackendError) as info:
            backend.build(HostConfig("127.0.0.1:1", artifact_cache_dir=str(tmp_path)),
                          start_timeout_s=3.0)  # fmt: skip
        assert str(info.value) == (
            "2 device actor(s) did not start within 3 s on a Ray cluster of 2 CPUs (other jobs "
            "may hold them: `ray status` shows what is used); free CPUs there, pass a smaller "
            "--actors, or --ray-address local for a private cluster"
        )
    finally:
        ray.kill(hog)
