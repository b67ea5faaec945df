"""`chord serve`: every flag checked before anything binds, in one line with its unit and range."""

from __future__ import annotations

import os

import pytest

from chord.cli import main


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `chord serve ARGV` in this process; it must exit 2 with exactly one stderr line."""
    assert main(["serve", "--echo", "--host", "127.0.0.1", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("chord serve: error: ")
    return err[0]


def test_workers_are_capped_at_four_per_core(capsys: pytest.CaptureFixture[str]) -> None:
    """`--workers 100000` spawned 238 processes before failing; now refused, saying the limit."""
    limit = 4 * len(os.sched_getaffinity(0))
    line = _refused(["--workers", "100000"], capsys)
    assert line.endswith(
        f"--workers is 100000; send an integer in 1..{limit} (server processes; at most 4 per "
        "core)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # The flag is in milliseconds: the message used to ask for seconds.
        (["--max-wait-ms", "-5"], "max_wait_ms (--max-wait-ms) is -5; send a finite number of "
         "milliseconds in [0, 60000]"),
        (["--max-wait-ms", "nan"], "max_wait_ms (--max-wait-ms) is nan"),
        # --help says 0 = off: the message used to say 0 = any free port.
        (["--metrics-port", "70000"], "metrics_port (--metrics-port) is 70000; send an integer "
         "in 0..65535 (a TCP port; 0 = no exporter)"),
        (["--torch-threads", "-2"], "--torch-threads is -2; send an integer in 0.."),
        (["--max-batch", "0"], "max_batch (--max-batch) is 0; send an integer in 1..4096"),
        (["--max-concurrency", "0"], "max_concurrency (--max-concurrency) is 0"),
        (["--grace-s", "inf"], "grace_s (--grace-s) is inf; send a finite number of seconds in "
         "[0, 3600]"),
        (["--max-receive-mib", "nan"], "--max-receive-mib is nan; send a finite number of MiB"),
        (["--max-receive-mib", "4096"], "--max-receive-mib is 4096; send a finite number of MiB "
         "in [0.0009765625, 1024]"),
        (["--port", "70000"], "--port is 70000; send a port in 0..65535 (0 = any free port)"),
        # Refused before the model loads (it was found only when the exporter failed to bind).
        (["--port", "45678", "--metrics-port", "45678"], "--metrics-port 45678 is also --port"),
    ],
)
def test_each_flag_names_its_unit_and_range(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before binding, in one line with the flag, its unit and its range."""
    assert message in _refused(argv, capsys)
