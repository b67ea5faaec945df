"""The endpoint load generator against real strategy servers on 127.0.0.1, port 0."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.loadgen import (
    LoadConfig,
    LoadConfigError,
    LoadResult,
    LoadRunError,
    _aggregate,
    run_load,
)
from benchmarks.server_process import ServerProcess
from cloud_server import EmbeddedServer
from cloud_server.config import ServerConfig
from tests.server_fixtures import tiny_run_dir
from tests.tls_certs import self_signed

TOKEN = "s3cret-load-token"


def _check_consistent(res: LoadResult) -> None:
    """Counts add up and percentiles are ordered."""
    assert res.total == sum(res.status_codes.values())
    assert res.ok == res.status_codes.get("OK", 0)
    assert res.errors == res.total - res.ok
    assert sum(res.error_distribution.values()) <= res.errors
    assert 0 < res.min_ms <= res.p50_ms <= res.p90_ms <= res.p99_ms <= res.max_ms
    assert res.min_ms <= res.mean_ms <= res.max_ms
    assert res.rps == pytest.approx(res.total / res.elapsed_s)


@pytest.fixture(scope="module")
def strategy_server() -> Iterator[ServerProcess]:
    """A plaintext, micro-batching server of the tiny test run, in its own process."""
    cfg = ServerConfig(run_dir=tiny_run_dir(), max_batch=16, max_wait_ms=2.0)
    with ServerProcess(cfg, start_timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key."""
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_server(tls_files: tuple[Path, Path]) -> Iterator[EmbeddedServer]:
    """An echo-mode server in this process (a background thread) requiring TLS and a token."""
    cert, key = tls_files
    cfg = ServerConfig(echo=True, tls_cert=cert, tls_key=key, token=TOKEN)
    with EmbeddedServer(cfg) as server:
        yield server


def test_strategy_load_over_two_processes_adds_up(strategy_server: ServerProcess) -> None:
    """GetStrategy load from two processes: every request counted, all OK, ordered percentiles."""
    res = run_load(
        LoadConfig(
            target=strategy_server.target,
            concurrency=8,
            duration_s=1.5,
            processes=2,
            warmup_s=0.3,
        )
    )
    _check_consistent(res)
    assert res.processes == 2 and len(res.per_process_rps) == 2
    assert all(r > 0 for r in res.per_process_rps)
    assert res.status_codes == {"OK": res.total} and res.errors == 0
    assert res.total >= 10
    assert 1.4 <= res.elapsed_s <= 3.0
    # The real model ran (micro-batches of concurrent requests share one forward pass).
    assert res.server_batch_mean is not None and 1 <= res.server_batch_mean <= 16
    # Server timings and the generator's own CPU over the measured window are reported.
    assert res.server_model_ms_mean is not None and res.server_model_ms_mean > 0
    assert res.server_total_ms_mean is not None and res.server_queue_ms_mean is not None
    assert res.server_total_ms_mean >= res.server_model_ms_mean
    assert res.client_cpu_s is not None and res.client_cpu_s > 0
    assert res.window is not None and res.window[1] - res.window[0] >= 1.4


@pytest.mark.parametrize("method", ["spec", "health"])
def test_other_methods(strategy_server: ServerProcess, method: str) -> None:
    """GetModelSpec and the health check can be loaded too."""
    res = run_load(
        LoadConfig(target=strategy_server.target, concurrency=4, duration_s=0.5, method=method)
    )
    _check_consistent(res)
    assert res.ok == res.total > 0
    assert res.server_batch_mean is None


def test_max_requests_stops_early(strategy_server: ServerProcess) -> None:
    """The request cap ends the run long before the duration; a second identical run against the
    same (deduplicating) server is all OK too, so request ids never repeat across runs."""
    cfg = LoadConfig(target=strategy_server.target, concurrency=4, duration_s=30, max_requests=40)
    for _ in range(2):
        res = run_load(cfg)
        _check_consistent(res)
        assert res.total == 40 and res.status_codes == {"OK": 40}
        assert res.elapsed_s < 10


def test_unreachable_target_raises() -> None:
    """A target that refuses connections fails the run with a named error."""
    with pytest.raises(LoadRunError, match=r"no server answered at 127\.0\.0\.1:9 within 1 s"):
        run_load(LoadConfig(target="127.0.0.1:9", concurrency=1, duration_s=0.5, timeout_s=1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", "localhost"),
        ("method", "stream"),
        ("concurrency", 0),
        ("duration_s", 0.0),
        ("tls_ca", "/nonexistent/ca.pem"),
        ("token", "s3cret\n"),
        ("token", ""),
        ("timeout_s", float("nan")),
        ("budget_bits", float("inf")),
    ],
)
def test_bad_config_is_rejected(field: str, value: object) -> None:
    """Each invalid field raises LoadConfigError naming it."""
    kwargs: dict[str, object] = {"target": "127.0.0.1:50051", field: value}
    with pytest.raises(LoadConfigError, match=field.split("_")[0]):
        run_load(LoadConfig(**kwargs))  # type: ignore[arg-type]


def test_tls_and_token_pass_through(
    secure_server: EmbeddedServer, tls_files: tuple[Path, Path]
) -> None:
    """With the CA and the token every call succeeds; without the token the server refuses."""
    cert, _ = tls_files
    good = run_load(
        LoadConfig(
            target=secure_server.address,
            concurrency=4,
            duration_s=0.7,
            tls_ca=str(cert),
            tls_server_name="localhost",
            token=TOKEN,
        )
    )
    _check_consistent(good)
    assert good.ok == good.total > 0
    assert good.to_json()["config"]["token"] == "<redacted>"

    refused = run_load(
        LoadConfig(
            target=secure_server.address,
            concurrency=2,
            duration_s=0.4,
            method="spec",
            tls_ca=str(cert),
            tls_server_name="localhost",
        )
    )
    _check_consistent(refused)
    assert refused.ok == 0 and set(refused.status_codes) == {"UNAUTHENTICATED"}
    assert any("bearer token" in m for m in refused.error_distribution)

    with pytest.raises(LoadRunError, match="UNAUTHENTICATED"):
        run_load(
            LoadConfig(
                target=secure_server.address,
                concurrency=1,
                duration_s=0.3,
                tls_ca=str(cert),
                tls_server_name="localhost",
                token="wrong",
            )
        )


def test_cli_load_writes_json(
    strategy_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`chord bench load ... --json OUT` prints a ghz-like summary and writes the keys."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "load.json"
    args = parser.parse_args(
        [
            "load",
            "--target",
            strategy_server.target,
            "--concurrency",
            "4",
            "--duration",
            "0.5",
            "--json",
            str(out),
        ]
    )
    assert cli.run(args) == 0
    text = capsys.readouterr().out
    assert "Requests/sec:" in text and "[OK]" in text and "99 % in" in text
    data = json.loads(out.read_text())
    for key in ("total", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "status_codes", "errors"):
        assert key in data
    assert data["status_codes"]["OK"] == data["total"] > 0


def test_cli_load_bad_token_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: a token with a newline made `chord bench load` die with a traceback."""
    from chord.cli import main

    monkeypatch.setenv("CHORD_TOKEN", "s3cret\n")
    assert main(["bench", "load", "--target", "127.0.0.1:50051", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        "chord bench load: error: $CHORD_TOKEN has a trailing '\\n', which "
        "gRPC metadata cannot carry"
    )


def test_cli_load_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from chord.cli import main

    code = main(["bench", "load", "--target", "127.0.0.1:9", "--duration", "0.5",
                 "--concurrency", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    # Refused at once (one TCP connect), not after the 10 s call timeout.
    assert err[0] == (
        "chord bench load: error: cannot reach the strategy server at 127.0.0.1:9 within 10 s "
        "(Connection refused); check that `chord serve` listens there"
    )


def test_cli_load_names_a_failed_tls_handshake(
    secure_server: EmbeddedServer, tls_files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong CA, or a certificate for another name, was reported after the whole timeout as
    "no server answered ... (pass --tls-ca ...)" although --tls-ca was passed."""
    from chord.cli import main

    other, _ = self_signed(tmp_path)  # a CA that did not sign the server's certificate
    cert, _ = tls_files
    for flags, expect in (
        (("--tls-ca", str(other)), "the server's certificate is not signed by the CA given "
         "(CERTIFICATE_VERIFY_FAILED); send the CA certificate that signed it as --tls-ca"),
        (("--tls-ca", str(cert), "--tls-server-name", "other.example"),
         "is not issued for the host name connected to (hostname verification); pass the name "
         "it was issued for as --tls-server-name NAME"),
    ):
        code = main(["bench", "load", "--target", secure_server.address, "--token", TOKEN,
                     "--duration", "1", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1
        assert err[0].startswith(f"chord bench load: error: {secure_server.address}: the TLS ")
        assert expect in err[0]


def test_cli_load_reports_unmeasured_latencies_as_null(
    secure_server: EmbeddedServer, tls_files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--rps 1e-9 for 1 s schedules no call: it ran, wrote p50/p90/p99/min/mean 0.0 and exited
    1 without a line saying why; it is now refused before the run, in one line, writing
    nothing. A run in which no call completed (a server that never answers) still reports its
    latency figures as null, not 0.0."""
    from chord.cli import main

    cert, _ = tls_files
    out = tmp_path / "o.json"
    code = main(["bench", "load", "--target", secure_server.address, "--token", TOKEN,
                 "--tls-ca", str(cert), "--tls-server-name", "localhost", "--method", "health",
                 "--rps", "1e-9", "--duration", "1", "--json", str(out)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "chord bench load: error: --rps 1e-09 for --duration 1 s schedules no call; send a rate "
        "and duration whose product is at least 1"
    ]
    assert not out.exists()
    cfg = LoadConfig(target=secure_server.address)
    data = _aggregate(cfg, [], [], None, None).to_json()
    assert data["total"] == 0
    assert [data[k] for k in ("min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")] == [
        None] * 6


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (("--details",), "--details lists every call in the ghz report; add --format ghz"),
        (("--output", "x.json"), "--output writes the --format ghz report; add --format ghz"),
        (("--load-step-duration", "5"), "duration '5' lacks a unit; send e.g. 5s or 5ms"),
    ],
)
def test_cli_load_refuses_flags_that_would_do_nothing(
    flags: tuple[str, ...], expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from chord.cli import main

    with contextlib.suppress(SystemExit):
        code = main(["bench", "load", "--target", "127.0.0.1:9", "--duration", "1", *flags])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expect in err[-1] and "Traceback" not in "\n".join(err)
