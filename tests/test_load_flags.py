"""`chord bench load`: every flag checked before any load is sent, in one line naming its range."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.loadgen import (
    LoadConfig,
    LoadConfigError,
    _aggregate,
    format_summary,
    send_schedule,
)
from benchmarks.schedules import ScheduleError, read_arrivals
from chord.cli import main as chord_main
from chord.startcheck import StartupError, check_in_range, exact
from cloud_server import EmbeddedServer
from cloud_server.config import ServerConfig
from tests.server_fixtures import spec_of

TARGET = "127.0.0.1:9"  # nothing listens: a check that passes would fail the run, not hang


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EmbeddedServer]:
    """The real strategy server in echo mode, in this process, on port 0."""
    with EmbeddedServer(ServerConfig(echo=True)) as server:
        yield server


def _bench(argv: list[str]) -> int:
    """Run `chord bench load ARGV` in this process."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(["load", *argv]))


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a refused command (never a traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rps", float("nan"), "rps (--rps) is nan; send a finite number of calls per second "
         "(0 = closed loop) in [0, 1000000]"),
        ("seed", -1, "seed (--seed) is -1; send an integer in 0..18446744073709551615"),
        ("channels_per_process", 100_000, "channels_per_process (--channels) is 100000; send an "
         "integer in 1..64"),
        ("channels_per_process", 0, "channels_per_process (--channels) is 0; send an integer"),
        ("concurrency", 10**6, "concurrency (--concurrency) is 1000000; send an integer in "
         "1..100000"),
        ("max_requests", 0, "max_requests (--max-requests) is 0; send an integer in 1.."),
        ("speedup", float("nan"), "speedup (--speedup) is nan; send a finite number of virtual "
         "seconds per real second in (0, 1000000000]"),
        ("timeout_s", float("inf"), "timeout_s (--timeout) is inf"),
        ("budget_bits", 32.5, "budget_bits (--budget-bits) is 32.5; send a finite number of bits"),
        ("tls_server_name", "bad name", "tls_server_name (--tls-server-name) 'bad name' is not "
         "an IP address or host name"),
        ("warmup_s", 600.000001, "warmup_s (--warmup) is 600.000001; send a finite number of "
         "seconds in [0, 600]"),
    ],
)
def test_every_numeric_field_is_checked_with_its_range(
    field: str, value: object, message: str
) -> None:
    """Each out-of-range or non-finite field is refused, naming the field, its flag and range."""
    with pytest.raises(LoadConfigError) as err:
        LoadConfig(target=TARGET, **{field: value}).validate()  # type: ignore[arg-type]
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rps", "nan"], "rps (--rps) is nan"),
        (["--seed", "-1"], "seed (--seed) is -1"),
        (["--channels", "100000"], "channels_per_process (--channels) is 100000"),
        (["--slo-p99-ms", "0"], "--slo-p99-ms is 0; send a finite number of milliseconds in "
         "(0, 3600000]"),
        (["--slo-p99-ms", "50", "--search-tolerance", "nan"], "--search-tolerance is nan"),
        (["--slo-p99-ms", "50", "--search-start-rps", "0"], "--search-start-rps is 0"),
        (["--load-schedule", "step", "--load-start", "nan", "--load-step", "1"],
         "--load-start is nan"),
        # A ramp whose end lies behind its start would sit at the end from the first call.
        (["--load-schedule", "step", "--load-start", "200", "--load-step", "10", "--load-end",
          "100", "--load-step-duration", "1s"],
         "--load-end 100 lies below --load-start 200, but --load-step 10 rises"),
        (["--load-schedule", "line", "--load-start", "100", "--load-step", "-10", "--load-end",
          "200"], "--load-end 200 lies above --load-start 100, but --load-step -10 falls"),
        # Ramp flags without a ramp, a rate that schedules no call, flags that contradict.
        (["--load-start", "20"], "--load-start shape a step or line schedule, but the schedule "
         "is const"),
        (["--rps", "0.001", "--duration", "1"], "--rps 0.001 for --duration 1 s schedules no "
         "call"),
        (["--slo-p99-ms", "50", "--rps", "100"], "--slo-p99-ms searches for the highest rate "
         "itself; leave out --rps"),
        (["--json", ""], "--json is empty; send a file path"),
        (["--format", "ghz", "--output", "/tmp/same-report.json", "--json",
          "/tmp/../tmp/same-report.json"], "--output and --json both name"),
    ],
)
def test_cli_refuses_bad_flags_in_one_line_before_any_call(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused with exit 2 before the (absent) target is contacted."""
    assert _bench(["--target", TARGET, "--timeout", "1", *argv]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("chord bench load: error: ") and message in line


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "-1 is outside 0..5; send 0..5"),
    ("1_0", "'1_0' is not a whole number; send 0..5"),
])
def test_search_confirm_is_a_small_count(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`chord bench load --search-confirm` takes 0..5 plain digits; else one argparse line."""
    with pytest.raises(SystemExit) as info:
        chord_main(["bench", "load", "--target", TARGET, "--slo-p99-ms", "50",
                    "--search-confirm", value])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"chord bench load: error: argument --search-confirm: {message}"
    )


def _arrivals(path: Path, body: str) -> Path:
    path.write_text("t_s,device_id,reason\n" + body)
    return path


def test_peak_window_is_checked_before_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--peak-window 0 (or nan) used to fail with ZeroDivisionError after the whole replay; a
    duration takes ghz's form now (a unit on every number), so nan is no duration at all."""
    path = _arrivals(tmp_path / "ok.csv", "1,a,first\n2,b,first\n")
    assert _bench(["--target", TARGET, "--arrivals", str(path), "--speedup", "10",
                   "--peak-window", "0s"]) == 2
    line = _one_error_line(capsys)
    assert "--peak-window is 0; send a finite number of virtual seconds" in line
    with pytest.raises(SystemExit) as info:
        _bench(["--target", TARGET, "--arrivals", str(path), "--peak-window", "nan"])
    assert info.value.code == 2
    assert "duration 'nan' is not understood" in capsys.readouterr().err


def test_arrival_times_are_bounded_with_file_and_line(tmp_path: Path) -> None:
    """t_s 1e15 overflowed the event loop's clock; now the row is refused by line."""
    path = _arrivals(tmp_path / "far.csv", "1,a,first\n1e15,d,first\n")
    with pytest.raises(ScheduleError, match=r"far\.csv:3: t_s '1e15' is not a finite number of "
                       r"virtual seconds in \[0, 31622400\] \(a year\)"):
        read_arrivals(path)


def test_a_replay_longer_than_an_hour_of_real_time_names_the_speedup(tmp_path: Path) -> None:
    """7200 virtual s at 1x is two real hours: refused, saying the speedup that fits."""
    path = _arrivals(tmp_path / "long.csv", "0,a,first\n7200,b,first\n")
    cfg = LoadConfig(target=TARGET, arrivals=str(path), speedup=1.0)
    with pytest.raises(LoadConfigError, match=r"at most 3600 s: send --speedup >= 2$"):
        send_schedule(cfg)
    assert send_schedule(LoadConfig(target=TARGET, arrivals=str(path), speedup=2.0)) is not None


def test_an_arrivals_file_with_only_its_header_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ran 10 s and printed `p99 there nan ms`; now exit 2 before any call."""
    path = _arrivals(tmp_path / "empty.csv", "")
    assert _bench(["--target", TARGET, "--arrivals", str(path)]) == 2
    line = _one_error_line(capsys)
    assert "empty.csv: no arrivals after the header; send a file with at least one row" in line


def test_blank_and_whitespace_lines_are_skipped_and_lines_keep_their_numbers(
    tmp_path: Path,
) -> None:
    """Trailing whitespace-only lines (an editor's) read as nothing; errors keep file lines."""
    path = _arrivals(tmp_path / "trailing.csv", "1,a,first\n   \n2,b,drift\n \t\n\n")
    arrivals = read_arrivals(path)
    assert arrivals.device_ids == ("a", "b") and arrivals.t_s.tolist() == [1.0, 2.0]
    _arrivals(path, "1,a,first\n  \nlater,b,drift\n")
    with pytest.raises(ScheduleError, match=r"trailing\.csv:4: t_s is 'later', not a plain"):
        read_arrivals(path)


def test_tier_and_budget_are_checked_against_the_served_spec_up_front(
    echo_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tier ultra and an unreachable --budget-bits: one line each, exit 2, no load run."""
    spec = spec_of(echo_server.address)
    assert _bench(["--target", echo_server.address, "--tier", "ultra"]) == 2
    names = ", ".join(t.name for t in spec.tiers)
    assert _one_error_line(capsys) == (
        f"chord bench load: error: --tier 'ultra' is not served by {echo_server.address}; "
        f"send one of: {names} (or none for the first)"
    )
    high = next(t for t in spec.tiers if t.name == "high")
    over = high.max_budget_bits + 0.5
    assert _bench(["--target", echo_server.address, "--tier", "high", "--budget-bits",
                   repr(over)]) == 2
    line = _one_error_line(capsys)
    assert (
        f"--budget-bits {exact(over)} is outside tier 'high''s reachable range on "
        f"{echo_server.address}; send a value in [{exact(high.min_budget_bits)}, "
        f"{exact(high.max_budget_bits)}]"
    ) in line


def test_a_run_with_no_completed_call_prints_no_latency_figures() -> None:
    """No call: the summary says so instead of 0.00 ms or nan percentiles."""
    cfg = LoadConfig(target=TARGET)
    text = format_summary(_aggregate(cfg, [], [], None, None))
    assert "none measured (no call completed in the window)" in text
    assert "nan" not in text and "Slowest" not in text and "99 % in" not in text


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.0000001, "1.0000001"), (3600001.0, "3600001"), (2.0**40 + 1, "1099511627777")],
)
def test_out_of_range_values_are_shown_exactly(value: float, shown: str) -> None:
    """A value just out of range is printed without rounding it back into the range."""
    assert exact(value) == shown
    with pytest.raises(StartupError, match=rf"^x is {shown}; send"):
        check_in_range(value, "x", 0, 1)


def test_a_report_that_cannot_be_written_is_one_line_and_goes_to_stdout(
    echo_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk (/dev/full) fails the write after the run: one error line, exit 1, and the
    report printed to stdout instead of lost (it was a traceback)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    argv = ["--target", echo_server.address, "--duration", "0.3", "--concurrency", "2",
            "--json", "/dev/full"]
    assert _bench(argv) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines == ["chord bench load: error: cannot write /dev/full (No space left on device);"
                     " the report went to standard output instead: send a path you can write"]
    assert '"total":' in out and "Traceback" not in out + err
